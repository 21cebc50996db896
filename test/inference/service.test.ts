// The inference runtime with real models in real onnxruntime worker threads: batched
// results equal unbatched ones, a crashed worker fails only its batch and is replaced after
// its backoff, a model whose file does not match its digest is not served while the others
// are. And the one place a batch is split: a request past the model's maxBatchSize runs in
// chunks, concurrently, its outputs joined in order.
import t from 'tap'
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { ModelRegistry } from '../../src/inference/registry.ts'
import { buildConfig } from '../../src/config/load.ts'
import { systemClock, type Clock, type Logger } from '../../src/deps.ts'
import type { Backend } from '../../src/inference/backend.ts'
import { DynamicBatcher } from '../../src/inference/batcher.ts'
import { InferenceService } from '../../src/inference/service.ts'
import type { Tensor } from '../../src/inference/tensor.ts'
import { FakeClock } from '../helpers/fake-clock.ts'
import { Changes } from '../../kit/wait.ts'
import { repoRoot } from '../../kit/paths.ts'

/** A logger that keeps what it is told, to assert on log lines and to wait for one. */
function memoryLog() {
  const lines: { level: string; obj: object; msg?: string }[] = []
  const written = new Changes()
  const at = (level: string) => (obj: object, msg?: string) => {
    lines.push({ level, obj, msg })
    written.notify()
  }
  const log: Logger = { info: at('info'), warn: at('warn'), error: at('error') }
  return { log, lines, logged: (msg: string) => written.until(() => lines.find((l) => l.msg === msg)) }
}

function registry(raw: Record<string, unknown>, baseDir = repoRoot, log = memoryLog().log, clock: Clock = systemClock) {
  const config = buildConfig({ models: raw }, 'test')
  return new ModelRegistry(config.models, baseDir, { clock, log })
}

let seed = 12345
const rand = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32)
const randomInput = (name: string, itemShape: number[], lo: number, hi: number): Tensor[] => {
  const n = itemShape.reduce((a, b) => a * b, 1)
  return [{ name, datatype: 'FP32', shape: [1, ...itemShape], data: Float32Array.from({ length: n }, () => lo + rand() * (hi - lo)) }]
}

for (const [model, input, itemShape, lo, hi] of [
  ['mnist', 'input', [1, 28, 28], 0, 1],
  ['ocr-cls', 'x', [3, 48, 192], -1, 1],
] as const) {
  t.test(`${model}: a batched result equals the unbatched result for every item`, async (t) => {
    const batched = registry({ serve: [{ name: model, batching: { enabled: true, maxBatchSize: 16 } }] })
    const single = registry({ serve: [{ name: model, batching: { enabled: false } }] })
    t.teardown(async () => {
      await batched.close()
      await single.close()
    })
    await Promise.all([batched.load(), single.load()])
    const inputs = Array.from({ length: 12 }, () => randomInput(input, [...itemShape], lo, hi))
    const sizes: number[] = []
    const b = batched.ready(model, null).batcher!
    // Submitted together: the first runs alone, the other 11 queue behind it and run as a batch.
    const together = await Promise.all(inputs.map((x) => b.submit(x, systemClock.monotonicMs() + 30_000)))
    const alone: Tensor[][] = []
    for (const x of inputs) alone.push(await single.ready(model, null).batcher!.submit(x, systemClock.monotonicMs() + 30_000))
    sizes.push(...[together.length])
    let maxDiff = 0
    for (let i = 0; i < inputs.length; i++) {
      const a = together[i]![0]!.data as Float32Array
      const s = alone[i]![0]!.data as Float32Array
      t.equal(a.length, s.length)
      for (let j = 0; j < a.length; j++) maxDiff = Math.max(maxDiff, Math.abs(a[j]! - s[j]!))
    }
    t.ok(maxDiff < 1e-5, `max |batched - unbatched| = ${maxDiff.toExponential(2)} (float rounding only)`)
  })
}

t.test('a crashed worker fails its request with 503 and is replaced after its backoff', async (t) => {
  const { log, lines, logged } = memoryLog()
  const clock = new FakeClock()
  const reg = registry({ serve: [{ name: 'mnist', workers: 1, batching: { enabled: false } }] }, repoRoot, log, clock)
  t.teardown(() => reg.close())
  await reg.load()
  const m = reg.ready('mnist', null)
  const backend = m.backend as unknown as { all: Set<{ worker: import('node:worker_threads').Worker }>; liveWorkers: number }
  const x = randomInput('input', [1, 28, 28], 0, 1)
  // Kill the worker thread while it holds the request, as a native crash would. The kill
  // starts first (the backend learns of it only from the 'exit' event, a turn later), so the
  // request is handed to a dying worker and never answered: deterministic, whatever the
  // machine's load (submitting first let a fast worker answer before the kill landed).
  const [victim] = [...backend.all]
  const killing = victim!.worker.terminate()
  const pending = m.batcher!.submit(x, clock.monotonicMs() + 30_000)
  await killing
  await t.rejects(pending, { code: 'worker_failed', status: 503 })
  t.ok(lines.some((l) => l.level === 'error' && /crashed/.test(l.msg ?? '')), 'the crash is logged')
  t.equal(clock.pendingTimers, 1, 'the replacement waits for its backoff')
  await clock.tick(99)
  t.equal(clock.pendingTimers, 1, 'not yet started 99 ms after the crash')
  await clock.tick(1)
  t.equal(clock.pendingTimers, 0, 'started once the 100 ms backoff passed')
  // The replacement is a worker thread loading the model: its line says when it serves.
  await logged('replacement inference worker ready')
  t.equal(backend.liveWorkers, 1, 'a replacement worker is running')
  const out = await m.batcher!.submit(x, clock.monotonicMs() + 30_000)
  t.same(out[0]!.shape, [1, 10], 'and serves again')
})

t.test('a model whose file does not match its digest is not served; the others are', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-models-'))
  cpSync(path.join(repoRoot, 'models/mnist'), path.join(dir, 'mnist'), { recursive: true })
  cpSync(path.join(repoRoot, 'models/ocr-cls'), path.join(dir, 'ocr-cls'), { recursive: true })
  const onnx = path.join(dir, 'mnist/model.onnx')
  const bytes = readFileSync(onnx)
  bytes[bytes.length - 5]! ^= 0x01 // one bit of one weight
  writeFileSync(onnx, bytes)
  const { log, lines } = memoryLog()
  const reg = registry({ directory: dir, serve: [{ name: 'mnist' }, { name: 'ocr-cls' }] }, dir, log)
  t.teardown(() => reg.close())
  await reg.load()
  t.equal(reg.get('mnist', null).state, 'failed')
  t.match(reg.get('mnist', null).reason, /SHA-256 of .*model\.onnx is [0-9a-f]{64}, manifest says/)
  t.equal(reg.get('ocr-cls', null).state, 'ready')
  t.notOk(reg.allReady())
  t.throws(() => reg.ready('mnist', null), { code: 'model_not_ready', status: 503 })
  const errors = lines.filter((l) => l.level === 'error')
  t.equal(errors.length, 1, 'one clear log line')
  t.match(errors[0]!.obj, { model: 'mnist' })
})

t.test('an unavailable execution provider falls back to cpu with a log line', async (t) => {
  const { log, lines } = memoryLog()
  const reg = registry({ serve: [{ name: 'mnist', executionProviders: ['cuda', 'cpu'] }] }, repoRoot, log)
  t.teardown(() => reg.close())
  await reg.load()
  const m = reg.ready('mnist', null)
  t.equal(m.backend!.executionProvider, 'cpu')
  t.ok(lines.some((l) => l.level === 'warn' && /execution provider cuda unavailable/.test(l.msg ?? '')), 'fallback logged')
})

/** Doubles every element; counts the items of each batch and how many batches ran at once. */
class DoublingBackend implements Backend {
  readonly concurrency = 4
  readonly executionProvider = 'test'
  readonly batches: number[] = []
  running = 0
  mostAtOnce = 0
  private held: (() => void)[] = []
  async execute(inputs: Tensor[], outputNames: readonly string[]): Promise<Tensor[]> {
    const x = inputs[0]!
    this.batches.push(x.shape[0]!)
    this.mostAtOnce = Math.max(this.mostAtOnce, ++this.running)
    await new Promise<void>((r) => this.held.push(r))
    this.running--
    return outputNames.map((name) => ({ name, datatype: 'FP32' as const, shape: x.shape, data: (x.data as Float32Array).map((v) => 2 * v) }))
  }
  release(): void {
    for (const r of this.held.splice(0)) r()
  }
  async close(): Promise<void> {}
}

t.test('a request past the model\'s maxBatchSize runs in chunks, concurrently, its outputs joined in order', async (t) => {
  const clock = new FakeClock()
  const backend = new DoublingBackend()
  const batcher = new DynamicBatcher({ model: 'toy', backend, maxBatchSize: 4, maxQueueDelayMicros: 0, maxQueueSize: 16, outputNames: ['y', 'z'], clock })
  const models = { ready: () => ({ batcher, manifest: { version: '7', maxBatchSize: 4 }, settings: { batching: { enabled: true } } }) } as unknown as ModelRegistry
  const service = new InferenceService(models)
  const x = Float32Array.from({ length: 20 }, (_, i) => i)
  const request = { parameters: {}, inputs: [{ name: 'x', datatype: 'FP32' as const, shape: [10, 2], data: x }], outputs: [{ name: 'z', binary: false }], binaryOutputs: false, batchSize: 10 }
  const answer = service.infer('toy', null, request, clock.monotonicMs() + 1000)
  await clock.tick()
  t.same(backend.batches, [4, 4, 2], 'chunks of at most 4 items, in the request\'s order')
  t.equal(backend.mostAtOnce, 3, 'all three run at once')
  backend.release()
  const result = await answer
  t.same(result.outputs.map((o) => [o.name, o.shape]), [['z', [10, 2]]], 'the asked-for output only, one batch of 10')
  t.same(Array.from(result.outputs[0]!.data as Float32Array), Array.from(x, (v) => 2 * v), 'rows in order')
  t.equal(result.modelVersion, '7')

  const whole = service.infer('toy', null, { ...request, inputs: [{ ...request.inputs[0]!, shape: [4, 2], data: x.subarray(0, 8) }], batchSize: 4 }, clock.monotonicMs() + 1000)
  await clock.tick()
  t.same(backend.batches.slice(3), [4], 'a request at the maximum goes as one batch')
  backend.release()
  t.same((await whole).outputs[0]!.shape, [4, 2])
})

t.test('with batching on, a request past the batcher\'s preferred size runs in chunks of it, 1 included; with batching off, as sent', async (t) => {
  const clock = new FakeClock()
  const manifest = { version: '1', maxBatchSize: 8 }
  const run = async (batching: boolean, batcherMax: number, items: number) => {
    const backend = new DoublingBackend()
    const batcher = new DynamicBatcher({ model: 'toy', backend, maxBatchSize: batcherMax, maxQueueDelayMicros: 0, maxQueueSize: 16, outputNames: ['y', 'z'], clock })
    const service = new InferenceService({ ready: () => ({ batcher, manifest, settings: { batching: { enabled: batching } } }) } as unknown as ModelRegistry)
    const x = Float32Array.from({ length: items * 2 }, (_, i) => i)
    const answer = service.infer('toy', null, { parameters: {}, inputs: [{ name: 'x', datatype: 'FP32' as const, shape: [items, 2], data: x }], outputs: [], binaryOutputs: false, batchSize: items }, clock.monotonicMs() + 1000)
    await clock.tick()
    const batches = [...backend.batches]
    backend.release()
    const y = (await answer).outputs.find((o) => o.name === 'y')!
    t.same(Array.from(y.data as Float32Array), Array.from(x, (v) => 2 * v), `batching ${batching ? 'on' : 'off'}, batcher of ${batcherMax}, ${items} items: rows in order`)
    return batches
  }
  t.same(await run(true, 2, 5), [2, 2, 1], 'batching on with a preferred size of 2: chunks of 2')
  t.same(await run(true, 1, 3), [1, 1, 1], 'batching on with a preferred size of 1: one item at a time')
  t.same(await run(false, 1, 3), [3], 'batching off: the request runs as sent')
})
