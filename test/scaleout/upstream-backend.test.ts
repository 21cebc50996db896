// The upstream backend against small fake OIP servers: least-outstanding balancing, at most
// one retry and only when nothing was sent, which errors count against the breaker (the pod's
// faults) and which do not (the request's, or the client's short deadline), responses checked
// against the manifest, Retry-After when every breaker is open, and batches past the model's
// maximum sent in pieces.

import http from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { trace } from '@opentelemetry/api'
import { buildConfig } from '../../src/config/load.ts'
import type { UpstreamConfig } from '../../src/config/scaleout.ts'
import { cryptoRandom, silentLogger, systemClock } from '../../src/deps.ts'
import type { Manifest } from '../../src/inference/manifest.ts'
import type { Tensor } from '../../src/inference/tensor.ts'
import { UpstreamBackend } from '../../src/inference/upstream-backend.ts'
import { freePort } from '../../kit/gateway-process.ts'

const manifest: Manifest = {
  name: 'toy',
  version: '1',
  platform: 'onnxruntime_onnx',
  sha256: '0'.repeat(64),
  file: 'none.onnx',
  maxBatchSize: 2,
  inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 3] }],
  outputs: [{ name: 'y', datatype: 'FP32', shape: [-1, 2] }],
}

type Behaviour = (req: { items: number; rows: Float32Array[]; timeout: number | undefined }) => { status: number; body?: unknown; delayMs?: number; raw?: Buffer } | 'hang'

interface Fake {
  url: string
  calls: number[]
  close(): Promise<void>
}

/** An OIP server for the toy model: y = [sum(x), x0] per row, unless `behave` says otherwise. */
async function fake(t: { teardown(fn: () => unknown): void }, behave?: Behaviour): Promise<Fake> {
  const calls: number[] = []
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      const n = Number(req.headers['inference-header-content-length'])
      const header = JSON.parse(body.subarray(0, n).toString())
      const items = header.inputs[0].shape[0] as number
      const data = new Float32Array(body.buffer.slice(body.byteOffset + n, body.byteOffset + body.byteLength))
      const cols = header.inputs[0].shape[1] as number
      const rows = Array.from({ length: items }, (_, i) => data.subarray(i * cols, i * cols + cols))
      calls.push(items)
      const b = behave?.({ items, rows, timeout: header.parameters?.timeout })
      if (b === 'hang') return
      if (b && b.status !== 200) {
        setTimeout(() => res.writeHead(b.status, { 'content-type': 'application/json' }).end(JSON.stringify(b.body ?? { error: 'x' })), b.delayMs ?? 0)
        return
      }
      const out = new Float32Array(items * 2)
      rows.forEach((r, i) => {
        out[i * 2] = r.reduce((a, b) => a + b, 0)
        out[i * 2 + 1] = r[0]!
      })
      const head = Buffer.from(JSON.stringify({ model_name: 'toy', outputs: [{ name: 'y', datatype: 'FP32', shape: [items, 2], parameters: { binary_data_size: out.byteLength } }] }))
      const payload = b?.raw ?? Buffer.concat([head, Buffer.from(out.buffer)])
      const headers = b?.raw ? { 'content-type': 'application/json' } : { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(head.byteLength) }
      setTimeout(() => res.writeHead(200, headers).end(payload), b?.delayMs ?? 0)
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const close = () => new Promise<void>((r) => {
    server.closeAllConnections()
    server.close(() => r())
  })
  t.teardown(close)
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, calls, close }
}

function upstreamConfig(endpoints: string[], over: Record<string, unknown> = {}): UpstreamConfig {
  return buildConfig({ models: { serve: [{ name: 'toy', upstream: { endpoints, ...over } }] } }, 'test').models.serve[0]!.upstream!
}

function backend(t: { teardown(fn: () => unknown): void }, endpoints: string[], over: Record<string, unknown> = {}, m: Manifest = manifest): UpstreamBackend {
  const b = new UpstreamBackend({ model: 'toy', manifest: m, config: upstreamConfig(endpoints, over), tls: null, clock: systemClock, random: cryptoRandom, log: silentLogger, tracer: trace.getTracer('test') })
  t.teardown(() => b.close())
  return b
}

const rows = (...r: number[][]): Tensor[] => [{ name: 'x', datatype: 'FP32', shape: [r.length, 3], data: Float32Array.from(r.flat()) }]
const call = (deadlineInMs = 5000) => ({ deadlineMs: systemClock.monotonicMs() + deadlineInMs })

t.test('answers are decoded and checked against the manifest', async (t) => {
  const f = await fake(t)
  const b = backend(t, [f.url])
  const [y] = await b.execute(rows([1, 2, 3], [4, 5, 6]), ['y'], call())
  t.same(y!.shape, [2, 2])
  t.same(Array.from(y!.data as Float32Array), [6, 1, 15, 4])

  const broken = await fake(t, () => ({ status: 200, raw: Buffer.from('{"outputs":[{"name":"y","datatype":"FP64","shape":[1,2],"data":[1,2]}]}') }))
  await t.rejects(backend(t, [broken.url]).execute(rows([1, 2, 3]), ['y'], call()), { code: 'upstream_unavailable', reason: /datatype FP64, the manifest says FP32/ })
})

t.test('least outstanding requests: a slow endpoint gets few calls', async (t) => {
  const slow = await fake(t, () => ({ status: 200, delayMs: 300 }))
  const fast = await fake(t, () => ({ status: 200, delayMs: 5 }))
  const b = backend(t, [slow.url, fast.url])
  const pending: Promise<unknown>[] = []
  for (let i = 0; i < 30; i++) {
    pending.push(b.execute(rows([i, 0, 0]), ['y'], call()))
    await new Promise((r) => setTimeout(r, 10))
  }
  await Promise.all(pending)
  t.ok(slow.calls.length <= 3 && fast.calls.length >= 27, `slow ${slow.calls.length}, fast ${fast.calls.length}`)
})

t.test('one retry, on another endpoint, only when the connection failed before sending', async (t) => {
  const dead = `http://127.0.0.1:${await freePort()}`
  const ok = await fake(t)
  const retrying = backend(t, [dead, ok.url], { breaker: { volumeThreshold: 1000 } })
  for (let i = 0; i < 10; i++) await retrying.execute(rows([i, 1, 1]), ['y'], call())
  t.equal(ok.calls.length, 10, 'every call served: the refused connections were retried on the live endpoint')

  const noRetry = backend(t, [dead], { retry: { enabled: false } })
  await t.rejects(noRetry.execute(rows([1, 1, 1]), ['y'], call()), { code: 'upstream_unavailable', reason: /ECONNREFUSED/ })

  const failing = await fake(t, () => ({ status: 500, body: { error: 'boom', code: 'internal' } }))
  const b = backend(t, [failing.url])
  await t.rejects(b.execute(rows([1, 1, 1]), ['y'], call()), { code: 'upstream_unavailable', headers: { 'retry-after': '1' } })
  t.same(failing.calls, [1], 'a 500 is not retried: the request may have had effects')
})

t.test('the breaker counts the pod\'s faults, not the request\'s or the client\'s deadline', async (t) => {
  const breaker = { volumeThreshold: 3, errorThresholdPercentage: 50, resetTimeoutMs: 60_000, callTimeoutMs: 400 }
  const refusing = await fake(t, () => ({ status: 422, body: { error: 'no', code: 'suspicious_input' } }))
  const r = backend(t, [refusing.url], { breaker })
  for (let i = 0; i < 5; i++) await t.rejects(r.execute(rows([1, 1, 1]), ['y'], call()), { code: 'suspicious_input', status: 422 })
  t.equal(r.status()[0]!.state, 'closed', 'an upstream Bulwark refusing the input keeps its code; not a failure')

  const hanging = await fake(t, () => 'hang')
  const h = backend(t, [hanging.url], { breaker })
  for (let i = 0; i < 5; i++) {
    const t0 = performance.now()
    await t.rejects(h.execute(rows([1, 1, 1]), ['y'], call(50)), { code: 'deadline_exceeded' })
    t.ok(performance.now() - t0 < 150, 'the call ends at the client\'s deadline')
  }
  t.equal(h.status()[0]!.state, 'closed', 'a client\'s short deadline never opens the breaker')
  const slow = backend(t, [hanging.url], { breaker })
  for (let i = 0; i < 3; i++) await t.rejects(slow.execute(rows([1, 1, 1]), ['y'], call(5000)), { code: 'upstream_unavailable', reason: /callTimeoutMs 400/ })
  t.equal(slow.status()[0]!.state, 'open', 'calls slower than callTimeoutMs do')
  t.match(slow.problem(), /every upstream endpoint of toy has its circuit breaker open/)
  const refused = await slow.execute(rows([1, 1, 1]), ['y'], call()).catch((e) => e)
  t.match(refused, { code: 'upstream_unavailable', status: 503 })
  t.ok(Number(refused.headers['retry-after']) >= 59, `Retry-After until the breaker half-opens (${refused.headers['retry-after']} s)`)
})

t.test('the upstream is told the deadline (OIP timeout, microseconds)', async (t) => {
  let seen: number | undefined
  const f = await fake(t, (r) => ((seen = r.timeout), { status: 200 }))
  await backend(t, [f.url]).execute(rows([1, 1, 1]), ['y'], call(2000))
  t.ok(seen !== undefined && seen > 1_900_000 && seen <= 2_000_000, `timeout ${seen} µs`)
})

t.test('a batch past the model\'s maximum goes up in pieces, answers in order', async (t) => {
  const f = await fake(t)
  const [y] = await backend(t, [f.url]).execute(rows([1, 0, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0], [5, 0, 0]), ['y'], call())
  t.same(f.calls.sort(), [1, 2, 2], 'maxBatchSize 2: calls of 2, 2 and 1')
  t.same(Array.from(y!.data as Float32Array), [1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
})

t.test('a large tensor goes up as its own bytes, part by part', async (t) => {
  const f = await fake(t)
  const wide: Manifest = { ...manifest, inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 20_000] }] }
  const x = new Float32Array(40_000).map((_, i) => (i % 7) / 8)
  const [y] = await backend(t, [f.url], {}, wide).execute([{ name: 'x', datatype: 'FP32', shape: [2, 20_000], data: x }], ['y'], call())
  const sum = (r: Float32Array) => r.reduce((a, b) => a + b, 0)
  t.same(Array.from(y!.data as Float32Array), [Math.fround(sum(x.subarray(0, 20_000))), 0, Math.fround(sum(x.subarray(20_000))), x[20_000]!], '160 KB in, the right answer back')
})
