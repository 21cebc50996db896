// The dynamic batcher against a backend that computes a known function per item (the
// batcher is under test here; the real ONNX backend is tested in inference.test.ts).
import t from 'tap'
import { DynamicBatcher } from '../../src/inference/batcher.ts'
import type { Backend } from '../../src/inference/backend.ts'
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
