// The dynamic batcher against a backend that computes a known function per item (the
// batcher is under test here; the real ONNX backend is tested in inference.test.ts), and
// what one request may not do to the others of its batch: a short deadline ends that request
// alone, a refusal of its content reaches that request alone, and its pooled body is not
// reused before the batcher is done with it.
import t from 'tap'
import { BulwarkError, isBulwarkError } from '../../src/errors.ts'
import type { Timer } from '../../src/deps.ts'
import { DynamicBatcher } from '../../src/inference/batcher.ts'
import type { Backend, BatchCall } from '../../src/inference/backend.ts'
import { bodyBuffers } from '../../src/inference/buffer-pool.ts'
import type { Tensor } from '../../src/inference/tensor.ts'
import { FakeClock } from '../helpers/fake-clock.ts'

/** Sums each item's elements; holds every batch until release() so tests control timing. */
class SummingBackend implements Backend {
  readonly concurrency: number
  readonly executionProvider = 'test'
  readonly batches: number[] = []
  private held: (() => void)[] = []
  constructor(concurrency = 1) {
    this.concurrency = concurrency
  }
  async execute(inputs: Tensor[]): Promise<Tensor[]> {
    const x = inputs[0]!
    const n = x.shape[0]!
    this.batches.push(n)
    await new Promise<void>((r) => this.held.push(r))
    const per = x.data.length / n
    const out = new Float32Array(n)
    for (let i = 0; i < n; i++) for (let j = 0; j < per; j++) out[i]! += (x.data as Float32Array)[i * per + j]!
    return [{ name: 'sum', datatype: 'FP32', shape: [n, 1], data: out }]
  }
  release(): void {
    for (const r of this.held.splice(0)) r()
  }
  async close(): Promise<void> {}
}

const clock = new FakeClock()
const tensor = (items: number, value: number, width = 3): Tensor[] => [
  { name: 'x', datatype: 'FP32', shape: [items, width], data: new Float32Array(items * width).fill(value) },
]
/** Lets the batcher's promise chains run (no time passes). */
const tick = () => clock.tick()

function batcher(backend: Backend, over: Partial<ConstructorParameters<typeof DynamicBatcher>[0]> = {}) {
  return new DynamicBatcher({ model: 'm', backend, maxBatchSize: 8, maxQueueDelayMicros: 0, maxQueueSize: 16, outputNames: ['sum'], clock, ...over })
}

t.test('requests queued while the worker is busy run as one batch, each getting its own slice', async (t) => {
  const backend = new SummingBackend()
  const b = batcher(backend)
  const first = b.submit(tensor(1, 1), 1e9)
  const rest = [b.submit(tensor(2, 2), 1e9), b.submit(tensor(1, 3), 1e9), b.submit(tensor(3, 4), 1e9)]
  await tick()
  t.same(backend.batches, [1], 'the first request runs alone while the others queue')
  backend.release()
  t.same(Array.from((await first)[0]!.data as Float32Array), [3])
  await tick()
  t.same(backend.batches, [1, 6], 'the queued requests form one batch of 6 items')
  backend.release()
  const results = await Promise.all(rest)
  t.same(results.map((r) => Array.from(r[0]!.data as Float32Array)), [[6, 6], [9], [12, 12, 12]])
  t.same(results.map((r) => r[0]!.shape), [[2, 1], [1, 1], [3, 1]])
})

t.test('batches never exceed maxBatchSize and keep FIFO order', async (t) => {
  const backend = new SummingBackend()
  const b = batcher(backend, { maxBatchSize: 4 })
  const all = [b.submit(tensor(1, 0), 1e9), b.submit(tensor(3, 1), 1e9), b.submit(tensor(3, 2), 1e9), b.submit(tensor(1, 3), 1e9)]
  for (let i = 0; i < 4; i++) {
    await tick()
    backend.release()
  }
  await Promise.all(all)
  t.same(backend.batches, [1, 4, 3])
})

t.test('requests of different shapes are never mixed in a batch', async (t) => {
  const backend = new SummingBackend()
  const b = batcher(backend)
  const all = [b.submit(tensor(1, 1, 3), 1e9), b.submit(tensor(1, 1, 5), 1e9), b.submit(tensor(1, 1, 3), 1e9), b.submit(tensor(1, 1, 5), 1e9)]
  for (let i = 0; i < 4; i++) {
    await tick()
    backend.release()
  }
  const out = await Promise.all(all)
  t.same(backend.batches, [1, 2, 1])
  t.same(out.map((o) => o[0]!.data[0]), [3, 5, 3, 5])
})

t.test('batching off runs every request on its own', async (t) => {
  const backend = new SummingBackend()
  const b = batcher(backend, { maxBatchSize: 1 })
  const all = [b.submit(tensor(1, 1), 1e9), b.submit(tensor(1, 1), 1e9), b.submit(tensor(1, 1), 1e9)]
  for (let i = 0; i < 3; i++) {
    await tick()
    backend.release()
  }
  await Promise.all(all)
  t.same(backend.batches, [1, 1, 1])
})

t.test('a full queue refuses at once with 503 and Retry-After', async (t) => {
  const backend = new SummingBackend()
  const b = batcher(backend, { maxQueueSize: 2 })
  const running = b.submit(tensor(1, 1), 1e9)
  await tick()
  const queued = [b.submit(tensor(1, 1), 1e9), b.submit(tensor(1, 1), 1e9)]
  await t.rejects(b.submit(tensor(1, 1), 1e9), { code: 'queue_full', status: 503, headers: { 'retry-after': '1' } })
  t.equal(b.queueDepth, 2)
  backend.release()
  await running
  await tick()
  backend.release()
  await Promise.all(queued)
})

t.test('a request whose deadline passes while queued gets 504 and leaves the queue', async (t) => {
  const backend = new SummingBackend()
  const b = batcher(backend)
  const running = b.submit(tensor(1, 1), 1e9)
  await tick()
  const doomed = b.submit(tensor(1, 1), clock.monotonicMs() + 20)
  let outcome: unknown = 'pending'
  doomed.catch((err: unknown) => (outcome = err))
  await clock.tick(19)
  t.equal(outcome, 'pending', 'still queued just before its deadline')
  t.equal(b.queueDepth, 1)
  await clock.tick(1)
  t.match(outcome, { code: 'deadline_exceeded', status: 504, reason: 'deadline passed while queued' })
  t.equal(b.queueDepth, 0)
  backend.release()
  await running
})

t.test('a deadline already past is refused without queueing', async (t) => {
  const b = batcher(new SummingBackend())
  await t.rejects(b.submit(tensor(1, 1), clock.monotonicMs() - 1), { code: 'deadline_exceeded' })
})

t.test('maxQueueDelayMicros lets an idle worker wait for company', async (t) => {
  const backend = new SummingBackend()
  const b = batcher(backend, { maxQueueDelayMicros: 30_000 })
  const a = b.submit(tensor(1, 1), 1e9)
  const c = b.submit(tensor(1, 2), 1e9)
  await clock.tick(29)
  t.same(backend.batches, [], 'nothing runs before the delay')
  await clock.tick(1)
  t.same(backend.batches, [2], 'both requests ran together when it passed')
  backend.release()
  await Promise.all([a, c])
})

t.test('a request whose deadline passes while it runs gets 504; its batch-mates still get their answers', async (t) => {
  const backend = new SummingBackend()
  const b = batcher(backend)
  const blocker = b.submit(tensor(1, 1), 1e9)
  await tick()
  const short = b.submit(tensor(1, 2), clock.monotonicMs() + 50)
  const long = b.submit(tensor(1, 3), 1e9)
  backend.release()
  await blocker
  await tick()
  t.same(backend.batches, [1, 2], 'both queued requests run together')
  const expired = t.rejects(short, { code: 'deadline_exceeded', reason: 'deadline passed while running' })
  await clock.tick(50)
  await expired
  backend.release()
  t.same(Array.from((await long)[0]!.data as Float32Array), [9])
})

t.test('a submission larger than maxBatchSize runs alone, as sent', async (t) => {
  const backend = new SummingBackend()
  const b = batcher(backend, { maxBatchSize: 2 })
  const blocker = b.submit(tensor(1, 1), 1e9)
  await tick()
  const big = b.submit(tensor(5, 1), 1e9)
  const small = [b.submit(tensor(1, 2), 1e9), b.submit(tensor(1, 3), 1e9)]
  for (let i = 0; i < 3; i++) {
    backend.release()
    await tick()
  }
  t.same(backend.batches, [1, 5, 2], 'the large one whole, then the two small ones together')
  t.same((await big)[0]!.shape, [5, 1])
  await Promise.all([blocker, ...small])
})

t.test('a backend failure fails every request of that batch and the batcher goes on', async (t) => {
  let fail = true
  const backend: Backend = {
    concurrency: 1,
    executionProvider: 'test',
    async execute(inputs) {
      if (fail) throw Object.assign(new Error('boom'), { code: 'worker_failed' })
      return [{ name: 'sum', datatype: 'FP32', shape: [inputs[0]!.shape[0]!, 1], data: new Float32Array(inputs[0]!.shape[0]!) }]
    },
    async close() {},
  }
  const b = batcher(backend)
  await t.rejects(b.submit(tensor(1, 1), 1e9), { message: 'boom' })
  fail = false
  t.equal((await b.submit(tensor(2, 1), 1e9))[0]!.shape[0], 2)
})

t.test('drain resolves once queued and running work is done', async (t) => {
  const backend = new SummingBackend()
  const b = batcher(backend)
  const work = [b.submit(tensor(1, 1), 1e9), b.submit(tensor(1, 1), 1e9)]
  let drained = false
  const d = b.drain().then(() => (drained = true))
  await tick()
  t.notOk(drained)
  backend.release()
  await tick()
  backend.release()
  await Promise.all([...work, d])
  t.ok(drained)
})

/**
 * Runs each batch until release(), or fails it at the call's deadline as the upstream backend
 * does (deadline_exceeded); records each call's deadline.
 */
class DeadlineBackend implements Backend {
  readonly concurrency = 1
  readonly executionProvider = 'test'
  readonly deadlines: number[] = []
  private held: (() => void)[] = []
  private readonly clock: FakeClock
  constructor(clock: FakeClock) {
    this.clock = clock
  }
  execute(inputs: Tensor[], _names: readonly string[], call: BatchCall): Promise<Tensor[]> {
    this.deadlines.push(call.deadlineMs)
    const n = inputs[0]!.shape[0]!
    const per = inputs[0]!.data.length / n
    return new Promise((resolve, reject) => {
      const timer = this.clock.setTimeout(() => reject(new BulwarkError('deadline_exceeded', 'the request deadline passed')), call.deadlineMs - this.clock.monotonicMs())
      this.held.push(() => {
        timer.cancel()
        resolve([{ name: 'sum', datatype: 'FP32', shape: [n, 1], data: Float32Array.from({ length: n }, (_, i) => (inputs[0]!.data as Float32Array)[i * per]! * per) }])
      })
    })
  }
  release(): void {
    for (const r of this.held.splice(0)) r()
  }
  async close(): Promise<void> {}
}

/** The promise's outcome so far: 'pending', the resolved value, or the rejection. */
function watch<T>(p: Promise<T>): () => T | unknown {
  let state: unknown = 'pending'
  p.then((v) => (state = v), (err: unknown) => (state = err))
  return () => state
}

const sumOf = (out: Tensor[]) => Array.from(out[0]!.data as Float32Array)

t.test('a short deadline in a batch gets its own 504; the call runs on, to the latest deadline, for the others', async (t) => {
  const clock = new FakeClock()
  const backend = new DeadlineBackend(clock)
  const b = batcher(backend, { clock })
  const blocker = b.submit(tensor(1, 1), clock.monotonicMs() + 10_000)
  await clock.tick()
  // One caller's 50 ms deadline queued with another caller's three 5 s ones.
  const hostile = watch(b.submit(tensor(1, 9), clock.monotonicMs() + 50))
  const others = [2, 3, 4].map((v) => watch(b.submit(tensor(1, v), clock.monotonicMs() + 5000)))
  backend.release()
  await blocker
  await clock.tick()
  t.equal(backend.deadlines[1], clock.monotonicMs() + 5000, 'the batch\'s call runs to its latest deadline')
  await clock.tick(50)
  t.match(hostile(), { code: 'deadline_exceeded', reason: 'deadline passed while running' }, 'the short deadline ends its own request')
  t.same(others.map((o) => o()), ['pending', 'pending', 'pending'], 'the others still wait for the call')
  backend.release()
  await clock.tick()
  t.same(others.map((o) => sumOf(o() as Tensor[])), [[6], [9], [12]], 'and get their answers')
})

t.test('an answer that comes back after a request\'s deadline is not given to it, even if its timer is late', async (t) => {
  /** Timers that never fire: the batcher's deadline timers stand for ones an overloaded event loop runs late. */
  class LateTimers extends FakeClock {
    override setTimeout(_fn: () => void, _ms: number): Timer {
      return { cancel() {} }
    }
  }
  const clock = new LateTimers()
  const backend = new SummingBackend()
  const b = batcher(backend, { clock })
  const blocker = b.submit(tensor(1, 1), 1e9)
  await tick()
  const short = watch(b.submit(tensor(1, 2), clock.monotonicMs() + 50))
  const long = b.submit(tensor(1, 3), 1e9)
  backend.release()
  await blocker
  await tick()
  clock.advance(50)
  backend.release()
  t.same(sumOf(await long), [9])
  t.match(short(), { code: 'deadline_exceeded', status: 504 })
})

/** Sums each item like SummingBackend, but refuses any batch holding an item of value 666, as an upstream's 4xx does. */
class RefusingBackend implements Backend {
  readonly concurrency = 1
  readonly executionProvider = 'test'
  /** The items of each call. */
  readonly calls: number[][] = []
  private readonly fault: 'refuse' | 'fail'
  constructor(fault: 'refuse' | 'fail' = 'refuse') {
    this.fault = fault
  }
  async execute(inputs: Tensor[]): Promise<Tensor[]> {
    const n = inputs[0]!.shape[0]!
    const per = inputs[0]!.data.length / n
    const firsts = Array.from({ length: n }, (_, i) => (inputs[0]!.data as Float32Array)[i * per]!)
    this.calls.push(firsts)
    if (firsts.includes(666)) {
      if (this.fault === 'fail') throw new BulwarkError('upstream_unavailable', 'the upstream model is unavailable; retry later')
      throw new BulwarkError('suspicious_input', 'the upstream model refused the request (suspicious_input)')
    }
    return [{ name: 'sum', datatype: 'FP32', shape: [n, 1], data: Float32Array.from(firsts, (v) => v * per) }]
  }
  refusesContent(err: unknown): boolean {
    return this.fault === 'refuse' && isBulwarkError(err) && err.code === 'suspicious_input'
  }
  async close(): Promise<void> {}
}

/** One request per value, all in one batch (the idle worker waits for them), each request's sum or refusal. */
async function oneBatch(backend: Backend, values: number[]): Promise<unknown[]> {
  const b = batcher(backend, { maxBatchSize: values.length, maxQueueDelayMicros: 1000, maxQueueSize: 64 })
  return Promise.all(values.map((v) => b.submit(tensor(1, v), 1e9).then((out) => sumOf(out)[0], (err: unknown) => err)))
}

t.test('a refusal of one request\'s content reaches that request alone: the rest are retried apart and answered', async (t) => {
  const backend = new RefusingBackend()
  const values = [1, 2, 3, 666, 5, 6, 7, 8]
  const outcomes = await oneBatch(backend, values)
  t.same(outcomes.filter((o, i) => i !== 3), [3, 6, 9, 15, 18, 21, 24], 'every other request gets its own answer')
  t.match(outcomes[3], { code: 'suspicious_input', status: 422 }, 'the poisoned one gets the refusal')
  t.same(backend.calls, [values, [1, 2, 3, 666], [5, 6, 7, 8], [1], [2], [3], [666]], 'halves, then one by one once few')
  t.ok(backend.calls.length - 1 <= 2 * values.length - 2, 'extra calls within 2n - 2')
})

t.test('a batch of poisoned requests costs at most 2n - 2 further calls, and each still gets its own outcome', async (t) => {
  const backend = new RefusingBackend()
  const values = [666, 1, 666, 666, 2, 666, 666, 666, 666, 3, 666, 666, 666]
  const outcomes = await oneBatch(backend, values)
  values.forEach((v, i) => (v === 666 ? t.match(outcomes[i], { code: 'suspicious_input' }) : t.equal(outcomes[i], v * 3)))
  t.ok(backend.calls.length - 1 <= 2 * values.length - 2, `${backend.calls.length - 1} extra calls for ${values.length} requests`)
  t.ok(backend.calls.every((c, i) => i === 0 || c.length < values.length), 'each retry smaller than the batch')
})

t.test('a failure that is not a refusal of content fails the whole batch, with no retry', async (t) => {
  const backend = new RefusingBackend('fail')
  const outcomes = await oneBatch(backend, [1, 666, 3])
  t.same(outcomes.map((o) => (isBulwarkError(o) ? o.code : o)), ['upstream_unavailable', 'upstream_unavailable', 'upstream_unavailable'])
  t.equal(backend.calls.length, 1, 'one call')
})

t.test('a request\'s pooled body is not handed to another request before the batcher is done with it', async (t) => {
  const backend = new SummingBackend()
  const b = batcher(backend)
  const blocker = b.submit(tensor(1, 1), 1e9)
  await tick()
  // A request whose tensor views its pooled body, queued behind the blocker.
  const body = bodyBuffers.take(12)
  const x = new Float32Array(body, 0, 3).fill(5)
  const queued = b.submit([{ name: 'x', datatype: 'FP32', shape: [1, 3], data: x }], 1e9)
  // Its client goes away: the transport gives the body back while the request still waits.
  bodyBuffers.give(body)
  const other = bodyBuffers.take(12)
  t.not(other, body, 'another request gets another buffer')
  new Float32Array(other, 0, 3).fill(7)
  backend.release()
  await blocker
  await tick()
  backend.release()
  t.same(sumOf(await queued), [15], 'the batch read the request\'s own bytes')
  t.equal(bodyBuffers.take(12), body, 'once the request is settled, its body is back in the pool')
  bodyBuffers.give(other)
})
