// The upstream backend against small fake OIP servers: least-outstanding balancing, at most
// one retry (after its jitter) and only when nothing was sent, which errors count against the
// breaker (the pod's faults) and which do not (the request's, or the client's short deadline),
// which refuse the batch's content (for the batcher to retry its requests apart), responses
// checked against the manifest, Retry-After when every breaker is open, and pooled request
// bodies never reused while a call may still read them. The
// servers are real sockets; the backend's timers (call deadline, retry pause) run on a fake
// clock, so a test moves time instead of waiting for it.

import http from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { trace } from '@opentelemetry/api'
import { buildConfig } from '../../src/config/load.ts'
import type { UpstreamConfig } from '../../src/config/scaleout.ts'
import { randomUnit, silentLogger, type RandomSource, type Timer } from '../../src/deps.ts'
import { bodyBuffers } from '../../src/inference/buffer-pool.ts'
import type { Manifest } from '../../src/inference/manifest.ts'
import type { Tensor } from '../../src/inference/tensor.ts'
import { UpstreamBackend } from '../../src/inference/upstream-backend.ts'
import { freePort } from '../../kit/gateway-process.ts'
import { FakeClock } from '../helpers/fake-clock.ts'

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

/** What the server does with a request: answer (status, body), answer when released ('hold'), or never ('hang'). */
type Behaviour = (req: { items: number; rows: Float32Array[]; timeout: number | undefined }) => { status: number; body?: unknown; raw?: Buffer } | 'hold' | 'hang'

interface Fake {
  url: string
  calls: number[]
  /** Resolves when the server next receives a request. */
  nextArrival(): Promise<void>
  /** Answers every held request (200). */
  release(): void
  close(): Promise<void>
}

/** An OIP server for the toy model: y = [sum(x), x0] per row, unless `behave` says otherwise. */
async function fake(t: { teardown(fn: () => unknown): void }, behave?: Behaviour): Promise<Fake> {
  const calls: number[] = []
  let arrivals: (() => void)[] = []
  let held: (() => void)[] = []
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
      for (const arrived of arrivals.splice(0)) arrived()
      const b = behave?.({ items, rows, timeout: header.parameters?.timeout })
      if (b === 'hang') return
      if (b && b !== 'hold' && b.status !== 200) {
        res.writeHead(b.status, { 'content-type': 'application/json' }).end(JSON.stringify(b.body ?? { error: 'x' }))
        return
      }
      const out = new Float32Array(items * 2)
      rows.forEach((r, i) => {
        out[i * 2] = r.reduce((a, b) => a + b, 0)
        out[i * 2 + 1] = r[0]!
      })
      const raw = b && b !== 'hold' ? b.raw : undefined
      const head = Buffer.from(JSON.stringify({ model_name: 'toy', outputs: [{ name: 'y', datatype: 'FP32', shape: [items, 2], parameters: { binary_data_size: out.byteLength } }] }))
      const payload = raw ?? Buffer.concat([head, Buffer.from(out.buffer)])
      const headers = raw ? { 'content-type': 'application/json' } : { 'content-type': 'application/octet-stream', 'inference-header-content-length': String(head.byteLength) }
      const answer = () => res.writeHead(200, headers).end(payload)
      if (b === 'hold') held.push(answer)
      else answer()
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  const close = () => new Promise<void>((r) => {
    server.closeAllConnections()
    server.close(() => r())
  })
  t.teardown(close)
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    calls,
    nextArrival: () => new Promise<void>((r) => arrivals.push(r)),
    release: () => {
      const answers = held
      held = []
      for (const answer of answers) answer()
    },
    close,
  }
}

/** A fake clock that also says when a timer of a given length is set (the retry's pause). */
class WatchedClock extends FakeClock {
  private watchers: { ms: number; resolve: () => void }[] = []
  override setTimeout(fn: () => void, ms: number): Timer {
    const timer = super.setTimeout(fn, ms)
    for (const w of this.watchers.filter((w) => w.ms === ms)) {
      this.watchers.splice(this.watchers.indexOf(w), 1)
      w.resolve()
    }
    return timer
  }
  timerOf(ms: number): Promise<void> {
    return new Promise((resolve) => this.watchers.push({ ms, resolve }))
  }
}

/** A random source whose every byte is `byte`: randomUnit gives byte/256 (about), so the retry's pause is fixed. */
const fixedRandom = (byte: number): RandomSource => ({ bytes: (n) => new Uint8Array(n).fill(byte), uuid: () => '00000000-0000-4000-8000-000000000000' })

function upstreamConfig(endpoints: string[], over: Record<string, unknown> = {}): UpstreamConfig {
  return buildConfig({ models: { serve: [{ name: 'toy', upstream: { endpoints, ...over } }] } }, 'test').models.serve[0]!.upstream!
}

interface BackendOptions {
  over?: Record<string, unknown>
  manifest?: Manifest
  clock?: FakeClock
  random?: RandomSource
}

function backend(t: { teardown(fn: () => unknown): void }, endpoints: string[], o: BackendOptions = {}): { b: UpstreamBackend; clock: FakeClock } {
  const clock = o.clock ?? new FakeClock()
  const b = new UpstreamBackend({ model: 'toy', manifest: o.manifest ?? manifest, config: upstreamConfig(endpoints, o.over), tls: null, clock, random: o.random ?? fixedRandom(0), log: silentLogger, tracer: trace.getTracer('test') })
  t.teardown(() => b.close())
  return { b, clock }
}

const rows = (...r: number[][]): Tensor[] => [{ name: 'x', datatype: 'FP32', shape: [r.length, 3], data: Float32Array.from(r.flat()) }]
const call = (clock: FakeClock, deadlineInMs = 5000) => ({ deadlineMs: clock.monotonicMs() + deadlineInMs })

/** The promise's outcome so far: 'pending', 'resolved', or the rejection. */
function watch(p: Promise<unknown>): () => unknown {
  let state: unknown = 'pending'
  p.then(() => (state = 'resolved'), (err: unknown) => (state = err))
  return () => state
}

t.test('answers are decoded and checked against the manifest', async (t) => {
  const f = await fake(t)
  const { b, clock } = backend(t, [f.url])
  const [y] = await b.execute(rows([1, 2, 3], [4, 5, 6]), ['y'], call(clock))
  t.same(y!.shape, [2, 2])
  t.same(Array.from(y!.data as Float32Array), [6, 1, 15, 4])
  t.same(f.calls, [2], 'one call for the whole batch')

  const broken = await fake(t, () => ({ status: 200, raw: Buffer.from('{"outputs":[{"name":"y","datatype":"FP64","shape":[1,2],"data":[1,2]}]}') }))
  const other = backend(t, [broken.url])
  await t.rejects(other.b.execute(rows([1, 2, 3]), ['y'], call(other.clock)), { code: 'upstream_unavailable', reason: /datatype FP64, the manifest says FP32/ })
})

t.test('least outstanding requests: an endpoint still busy gets no new call while another is free', async (t) => {
  const slow = await fake(t, () => 'hold')
  const fast = await fake(t)
  const { b, clock } = backend(t, [slow.url, fast.url])
  const pending: Promise<unknown>[] = []
  for (let i = 0; i < 30; i++) {
    const p = b.execute(rows([i, 0, 0]), ['y'], call(clock))
    pending.push(p)
    // Each call ends where it went: answered by the fast endpoint, or held by the slow one.
    await Promise.race([p, slow.nextArrival()])
  }
  t.same([slow.calls.length, fast.calls.length], [1, 29], 'the slow endpoint got the first call only')
  slow.release()
  await Promise.all(pending)
})

t.test('one retry, on another endpoint, only when the connection failed before sending', async (t) => {
  const dead = `http://127.0.0.1:${await freePort()}`
  const ok = await fake(t)
  const retrying = backend(t, [dead, ok.url], { over: { breaker: { volumeThreshold: 1000 } } })
  for (let i = 0; i < 10; i++) await retrying.b.execute(rows([i, 1, 1]), ['y'], call(retrying.clock))
  t.equal(ok.calls.length, 10, 'every call served: the refused connections were retried on the live endpoint')

  const noRetry = backend(t, [dead], { over: { retry: { enabled: false } } })
  await t.rejects(noRetry.b.execute(rows([1, 1, 1]), ['y'], call(noRetry.clock)), { code: 'upstream_unavailable', reason: /ECONNREFUSED/ })

  const failing = await fake(t, () => ({ status: 500, body: { error: 'boom', code: 'internal' } }))
  const f = backend(t, [failing.url])
  await t.rejects(f.b.execute(rows([1, 1, 1]), ['y'], call(f.clock)), { code: 'upstream_unavailable', headers: { 'retry-after': '1' } })
  t.same(failing.calls, [1], 'a 500 is not retried: the request may have had effects')
})

t.test('the retry waits its random pause (0..maxJitterMs) first', async (t) => {
  const dead = `http://127.0.0.1:${await freePort()}`
  const ok = await fake(t)
  const random = fixedRandom(0x80)
  const pauseMs = randomUnit(fixedRandom(0x80)) * 20
  const clock = new WatchedClock()
  const { b } = backend(t, [dead, ok.url], { clock, random, over: { retry: { maxJitterMs: 20 } } })
  const paused = clock.timerOf(pauseMs)
  const answer = watch(b.execute(rows([1, 1, 1]), ['y'], call(clock)))
  await paused
  await clock.tick(pauseMs - 0.5)
  t.same([answer(), ok.calls.length], ['pending', 0], `nothing sent again before the pause (${pauseMs.toFixed(1)} ms) is over`)
  const retried = ok.nextArrival()
  await clock.tick(0.5)
  await retried
  t.equal(ok.calls.length, 1, 'then the retry goes to the live endpoint')
})

t.test('the breaker counts the pod\'s faults, not the request\'s or the client\'s deadline', async (t) => {
  const breaker = { volumeThreshold: 3, errorThresholdPercentage: 50, resetTimeoutMs: 60_000, callTimeoutMs: 400 }
  const refusing = await fake(t, () => ({ status: 422, body: { error: 'no', code: 'suspicious_input' } }))
  const r = backend(t, [refusing.url], { over: { breaker } })
  for (let i = 0; i < 5; i++) await t.rejects(r.b.execute(rows([1, 1, 1]), ['y'], call(r.clock)), { code: 'suspicious_input', status: 422 })
  t.equal(r.b.status()[0]!.state, 'closed', 'an upstream Bulwark refusing the input keeps its code; not a failure')

  const hanging = await fake(t, () => 'hang')
  /** Sends a call to the hanging endpoint and moves the clock to one ms short of `ms`, then to `ms`. */
  const timeOut = async (h: { b: UpstreamBackend; clock: FakeClock }, deadlineInMs: number, ms: number) => {
    const arrived = hanging.nextArrival()
    const answer = watch(h.b.execute(rows([1, 1, 1]), ['y'], call(h.clock, deadlineInMs)))
    await arrived
    await h.clock.tick(ms - 1)
    t.equal(answer(), 'pending', `still waiting ${ms - 1} ms in`)
    await h.clock.tick(1)
    return answer()
  }
  const h = backend(t, [hanging.url], { over: { breaker } })
  for (let i = 0; i < 5; i++) t.match(await timeOut(h, 50, 50), { code: 'deadline_exceeded' }, 'the call ends at the client\'s deadline')
  t.equal(h.b.status()[0]!.state, 'closed', 'a client\'s short deadline never opens the breaker')
  const slow = backend(t, [hanging.url], { over: { breaker } })
  for (let i = 0; i < 3; i++) t.match(await timeOut(slow, 5000, 400), { code: 'upstream_unavailable', reason: /callTimeoutMs 400/ })
  t.equal(slow.b.status()[0]!.state, 'open', 'calls slower than callTimeoutMs do')
  t.match(slow.b.problem(), /every upstream endpoint of toy has its circuit breaker open/)
  const refused = await slow.b.execute(rows([1, 1, 1]), ['y'], call(slow.clock)).catch((e) => e)
  t.match(refused, { code: 'upstream_unavailable', status: 503 })
  t.equal(refused.headers['retry-after'], '60', 'Retry-After: the seconds until the breaker half-opens')
  await slow.clock.tick(15_000)
  const later = await slow.b.execute(rows([1, 1, 1]), ['y'], call(slow.clock)).catch((e) => e)
  t.equal(later.headers['retry-after'], '45', 'counted down on the clock')
})

t.test('the upstream is told the deadline (OIP timeout, microseconds)', async (t) => {
  let seen: number | undefined
  const f = await fake(t, (r) => ((seen = r.timeout), { status: 200 }))
  const { b, clock } = backend(t, [f.url])
  await b.execute(rows([1, 1, 1]), ['y'], call(clock, 2000))
  t.equal(seen, 2_000_000, 'the remaining 2000 ms')
})

t.test('a large tensor goes up as its own bytes, part by part', async (t) => {
  const f = await fake(t)
  const wide: Manifest = { ...manifest, inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 20_000] }] }
  const x = new Float32Array(40_000).map((_, i) => (i % 7) / 8)
  const { b, clock } = backend(t, [f.url], { manifest: wide })
  const [y] = await b.execute([{ name: 'x', datatype: 'FP32', shape: [2, 20_000], data: x }], ['y'], call(clock))
  const sum = (r: Float32Array) => r.reduce((a, b) => a + b, 0)
  t.same(Array.from(y!.data as Float32Array), [Math.fround(sum(x.subarray(0, 20_000))), 0, Math.fround(sum(x.subarray(20_000))), x[20_000]!], '160 KB in, the right answer back')
})

t.test('an upstream 4xx refuses the batch\'s content; the pod\'s faults and the deadline do not', async (t) => {
  const refusal = async (behave: Behaviour, deadlineInMs = 5000) => {
    const f = await fake(t, behave)
    const { b, clock } = backend(t, [f.url], { over: { retry: { enabled: false } } })
    const p = b.execute(rows([1, 1, 1]), ['y'], call(clock, deadlineInMs)).catch((e: unknown) => e)
    if (deadlineInMs < 5000) {
      await f.nextArrival()
      await clock.tick(deadlineInMs)
    }
    const err = await p
    return [(err as { code: string }).code, b.refusesContent(err)]
  }
  t.same(await refusal(() => ({ status: 422, body: { error: 'no', code: 'suspicious_input' } })), ['suspicious_input', true], 'an upstream Bulwark\'s refusal of the input')
  t.same(await refusal(() => ({ status: 400, body: { error: 'bad tensor' } })), ['internal', true], 'any other server\'s 400')
  t.same(await refusal(() => ({ status: 503, body: { error: 'busy' } })), ['upstream_unavailable', false], 'a 5xx is the pod\'s')
  t.same(await refusal(() => ({ status: 429, body: { error: 'slow down' } })), ['upstream_unavailable', false], 'so is a 429')
  t.same(await refusal(() => 'hang', 50), ['deadline_exceeded', false], 'a deadline is nobody\'s content')
})

t.test('a request\'s pooled body stays its own through the retry\'s pause, though its owner gives it back', async (t) => {
  const dead = `http://127.0.0.1:${await freePort()}`
  const ok = await fake(t)
  const pauseMs = randomUnit(fixedRandom(0x80)) * 20
  const clock = new WatchedClock()
  const { b } = backend(t, [dead, ok.url], { clock, random: fixedRandom(0x80), over: { retry: { maxJitterMs: 20 } } })
  // A lone request's tensor is a view of its pooled body (src/transport/read-body.ts).
  const body = bodyBuffers.take(12)
  new Float32Array(body, 0, 3).set([1, 2, 3])
  const paused = clock.timerOf(pauseMs)
  const answer = b.execute([{ name: 'x', datatype: 'FP32', shape: [1, 3], data: new Float32Array(body, 0, 3) }], ['y'], call(clock))
  await paused
  // The first endpoint refused the connection; while the retry waits, the request's client
  // goes away and the transport gives its body back, and another request arrives.
  bodyBuffers.give(body)
  const other = bodyBuffers.take(12)
  t.not(other, body, 'the other request gets another buffer')
  new Float32Array(other, 0, 3).set([7, 8, 9])
  await clock.tick(pauseMs)
  const [y] = await answer
  t.same(Array.from(y!.data as Float32Array), [6, 1], 'the retry sent the request\'s own bytes')
  t.equal(bodyBuffers.take(12), body, 'once the call is done, the body is back in the pool')
  bodyBuffers.give(other)
})

t.test('a call that ends without its answer never lets its pooled body be reused', async (t) => {
  const hanging = await fake(t, () => 'hang')
  const wide: Manifest = { ...manifest, inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 20_000] }] }
  const { b, clock } = backend(t, [hanging.url], { manifest: wide })
  // 160 KB: sent as the body's own bytes, part by part, which the socket may still hold after an abort.
  const body = bodyBuffers.take(160_000)
  const x = new Float32Array(body, 0, 40_000).fill(0.5)
  const arrived = hanging.nextArrival()
  const answer = b.execute([{ name: 'x', datatype: 'FP32', shape: [2, 20_000], data: x }], ['y'], call(clock, 50)).catch((e: unknown) => e)
  await arrived
  await clock.tick(50)
  t.match(await answer, { code: 'deadline_exceeded' })
  // The request is answered (504) and the transport gives its body back.
  bodyBuffers.give(body)
  t.not(bodyBuffers.take(160_000), body, 'the next request gets another buffer: the aborted call\'s bytes are nobody else\'s')
})
