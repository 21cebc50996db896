// Graceful shutdown of the real process: SIGTERM stops accepting, lets in-flight and queued
// requests finish, then exits 0.
import t from 'tap'
import { spawn } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { request } from 'undici'
import { repoRoot } from './core-gateway.ts'
import { ocrImage, binaryRequest } from '../../bench/payloads.ts'
import { freePort } from '../../bench/gateway-process.ts'

const [apiPort, adminPort] = [await freePort(), await freePort()]
const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-shutdown-'))
const configFile = path.join(dir, 'bulwark.yaml')
writeFileSync(configFile, [
  `server: { listen: "127.0.0.1:${apiPort}", admin: "127.0.0.1:${adminPort}", shutdownGraceMs: 20000 }`,
  `models: { directory: ${JSON.stringify(path.join(repoRoot, 'models'))}, serve: [{ name: ocr-cls, batching: { enabled: false } }] }`,
  'tls: { enabled: false }',
  'auth: { enabled: false }',
  'authorization: { enabled: false }',
  'rateLimits: { enabled: false }',
  'outputPrivacy: { enabled: false }',
  'audit: { enabled: false }',
].join('\n'))

const child = spawn(process.execPath, [path.join(repoRoot, 'bin/bulwark.js'), 'serve', '--config', configFile], {
  cwd: dir,
  env: { ...process.env, BULWARK_LOG_LEVEL: 'warn' },
  stdio: ['ignore', 'pipe', 'pipe'],
})
let stderr = ''
child.stderr.on('data', (d) => (stderr += d))
const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
t.teardown(() => void child.kill('SIGKILL'))

async function waitReady(): Promise<void> {
  for (let i = 0; i < 200; i++) {
    try {
      const res = await request(`http://127.0.0.1:${adminPort}/readyz`)
      await res.body.dump()
      if (res.statusCode === 200) return
    } catch {}
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`gateway did not become ready: ${stderr}`)
}

t.test('SIGTERM drains in-flight and queued requests, then exits 0', async (t) => {
  await waitReady()
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
