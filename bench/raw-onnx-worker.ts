// One raw onnxruntime session in a worker thread, for bench/raw-onnx.ts's parallel ceiling:
// runs the batch back to back until told the time is up, then reports how many it ran.

import { parentPort, workerData } from 'node:worker_threads'
import * as ort from 'onnxruntime-node'

const { model, inputName, shape, threads, durationMs } = workerData as { model: Uint8Array; inputName: string; shape: number[]; threads: number; durationMs: number }
const session = await ort.InferenceSession.create(model, { intraOpNumThreads: threads, interOpNumThreads: 1, graphOptimizationLevel: 'all', executionProviders: ['cpu'] })
const data = new Float32Array(shape.reduce((a, c) => a * c, 1)).map((_, i) => Math.sin(i) * 0.9)
const feeds = { [inputName]: new ort.Tensor('float32', data, shape) }
for (let i = 0; i < 3; i++) await session.run(feeds) // warm-up
parentPort!.postMessage({ type: 'ready' })
await new Promise((resolve) => parentPort!.once('message', resolve)) // start together
let runs = 0
const start = performance.now()
while (performance.now() - start < durationMs) {
  await session.run(feeds)
  runs++
}
const seconds = (performance.now() - start) / 1000
// Released before reporting: the parent waits for this thread to end by itself, since
// terminating it in the middle of release() aborts the process (a Napi::Error, seen once).
await session.release()
parentPort!.postMessage({ type: 'done', runs, seconds })
