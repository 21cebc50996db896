// Graceful shutdown of the real process: SIGTERM stops accepting, lets in-flight and queued
// requests finish, then exits 0.
import t from 'tap'
import { request } from 'undici'
import { ocrImage, binaryRequest } from '../../kit/payloads.ts'
import { noDefences, startGateway } from '../../kit/gateway-process.ts'

// A real `bulwark serve` child process, serving ocr-cls with every defence off.
const gw = await startGateway({
  ...noDefences,
  server: { shutdownGraceMs: 20000 },
  models: { serve: [{ name: 'ocr-cls', batching: { enabled: false } }] },
})
const { apiPort, adminPort, child, exited } = gw
t.teardown(() => void child.kill('SIGKILL'))

t.test('SIGTERM drains in-flight and queued requests, then exits 0', async (t) => {
  const r = binaryRequest('ocr-cls', 'x', [1, 3, 48, 192], ocrImage(1))
  // 24 requests: one runs, the rest wait in the model queue when the signal arrives.
  const inflight = Array.from({ length: 24 }, () =>
    request(`http://127.0.0.1:${apiPort}${r.path}`, { method: 'POST', headers: r.headers, body: r.body }).then(async (res) => {
      await res.body.dump()
      return res.statusCode
    }),
  )
  // Signal once the gateway holds them all: one running, 23 in the model queue.
  for (let i = 0; i < 300; i++) {
    const res = await request(`http://127.0.0.1:${adminPort}/metrics`)
    const depth = Number(/bulwark_queue_depth\{model="ocr-cls"\} (\d+)/.exec(await res.body.text())?.[1] ?? 0)
    if (depth >= 23) break
    await new Promise((r) => setTimeout(r, 5))
  }
  child.kill('SIGTERM')
  const statuses = await Promise.all(inflight)
  t.same(statuses, new Array(24).fill(200), 'every request sent before SIGTERM was answered')
  t.equal(await exited, 0, 'exit code 0')
  await t.rejects(request(`http://127.0.0.1:${apiPort}/v2/health/live`), 'no longer accepting connections')
})
