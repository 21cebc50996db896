// Graceful shutdown of the real process: SIGTERM stops accepting, lets in-flight and queued
// requests finish, then exits 0 as soon as they are done: the kept-alive connections they
// came on are closed after their answers, so the grace period does not run out.
import t from 'tap'
import { request } from 'undici'
import { ocrImage, binaryRequest } from '../../kit/payloads.ts'
import { noDefences, startGateway } from '../../kit/gateway-process.ts'
import { eventually } from '../../kit/wait.ts'

// A real `bulwark serve` child process, serving ocr-cls with every defence off.
const gw = await startGateway({
  ...noDefences,
  // Longer than the test may run: had the shutdown waited out its grace period, the test would time out.
  server: { shutdownGraceMs: 600_000 },
  models: { serve: [{ name: 'ocr-cls', batching: { enabled: false } }] },
})
const { apiPort, adminPort, child, exited } = gw
t.teardown(() => void child.kill('SIGKILL'))

const N = 24
const BATCH = 16

t.test('SIGTERM drains in-flight and queued requests, then exits 0', async (t) => {
  // N requests of BATCH crops each: enough model work that, once all are inside the gateway,
  // some still wait in the model queue.
  const r = binaryRequest('ocr-cls', 'x', [BATCH, 3, 48, 192], ocrImage(BATCH))
  const inflight = Array.from({ length: N }, () =>
    request(`http://127.0.0.1:${apiPort}${r.path}`, { method: 'POST', headers: r.headers, body: r.body }).then(async (res) => {
      await res.body.dump()
      return res.statusCode
    }),
  )
  // Signal once the gateway holds them all (in flight, or answered) and some still wait in the model queue.
  const held = async () => {
    const text = await (await request(`http://127.0.0.1:${adminPort}/metrics`)).body.text()
    const metric = (re: RegExp) => Number(re.exec(text)?.[1] ?? 0)
    const inside = metric(/bulwark_inflight_requests (\d+)/) + metric(/bulwark_requests_total\{code="ok",model="ocr-cls",status="200",verb="infer"\} (\d+)/)
    return inside === N && metric(/bulwark_queue_depth\{model="ocr-cls"\} (\d+)/) > 0
  }
  // real wait: the requests are inside another process, which says nothing when they arrive; its metrics are read until they show.
  await eventually(held, { timeoutMs: 10_000, everyMs: 5, what: 'every request inside the gateway, some queued' })
  child.kill('SIGTERM')
  const statuses = await Promise.all(inflight)
  t.same(statuses, new Array(24).fill(200), 'every request sent before SIGTERM was answered')
  t.equal(await exited, 0, 'exit code 0')
  await t.rejects(request(`http://127.0.0.1:${apiPort}/v2/health/live`), 'no longer accepting connections')
})
