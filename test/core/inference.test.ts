// The inference runtime with real models in real onnxruntime worker threads: batched
// results equal unbatched ones, a crashed worker fails only its batch and is replaced, a
// model whose file does not match its digest is not served while the others are.
import t from 'tap'
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { ModelRegistry } from '../../src/inference/registry.ts'
import { buildConfig } from '../../src/config/load.ts'
import { systemClock, type Logger } from '../../src/deps.ts'
import type { Tensor } from '../../src/inference/tensor.ts'
import { repoRoot } from '../../kit/paths.ts'

/** A logger that keeps what it is told, to assert on log lines. */
function memoryLog() {
  const lines: { level: string; obj: object; msg?: string }[] = []
  const at = (level: string) => (obj: object, msg?: string) => void lines.push({ level, obj, msg })
  const log: Logger = { info: at('info'), warn: at('warn'), error: at('error') }
  return { log, lines }
}

function registry(raw: Record<string, unknown>, baseDir = repoRoot, log = memoryLog().log) {
  const config = buildConfig({ models: raw }, 'test')
  return new ModelRegistry(config.models, baseDir, { clock: systemClock, log })
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

t.test('a crashed worker fails its request with 503 and is replaced', async (t) => {
  const { log, lines } = memoryLog()
  const reg = registry({ serve: [{ name: 'mnist', batching: { enabled: false } }] }, repoRoot, log)
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
  const pending = m.batcher!.submit(x, systemClock.monotonicMs() + 30_000)
  await killing
  await t.rejects(pending, { code: 'worker_failed', status: 503 })
  t.ok(lines.some((l) => l.level === 'error' && /crashed/.test(l.msg ?? '')), 'the crash is logged')
  for (let i = 0; i < 100 && backend.liveWorkers === 0; i++) await new Promise((r) => setTimeout(r, 50))
  t.equal(backend.liveWorkers, 1, 'a replacement worker is running')
  const out = await m.batcher!.submit(x, systemClock.monotonicMs() + 30_000)
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
