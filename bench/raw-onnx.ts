// The ceiling: onnxruntime-node in this process, no server, no copies beyond ORT's own.
// Items per second for each batch size and thread count; the best is the gateway's target.

import { performance } from 'node:perf_hooks'
import * as ort from 'onnxruntime-node'

export interface RawResult {
  batch: number
  threads: number
  itemsPerSec: number
  msPerItem: number
  p50: number
  p99: number
}

export async function rawOnnx(modelBytes: Uint8Array, inputName: string, itemShape: number[], batches: number[], threads: number[], durationMs: number): Promise<RawResult[]> {
  const results: RawResult[] = []
  for (const t of threads) {
    const session = await ort.InferenceSession.create(modelBytes, { intraOpNumThreads: t, interOpNumThreads: 1, graphOptimizationLevel: 'all', executionProviders: ['cpu'] })
    for (const b of batches) {
      const per = itemShape.reduce((a, c) => a * c, 1)
      const data = new Float32Array(b * per).map((_, i) => Math.sin(i) * 0.9)
      const feeds = { [inputName]: new ort.Tensor('float32', data, [b, ...itemShape]) }
      for (let i = 0; i < 3; i++) await session.run(feeds) // warm-up
      const lat: number[] = []
      const start = performance.now()
      while (performance.now() - start < durationMs) {
        const t0 = performance.now()
        await session.run(feeds)
        lat.push(performance.now() - t0)
      }
      const seconds = (performance.now() - start) / 1000
      lat.sort((x, y) => x - y)
      const items = lat.length * b
      results.push({
        batch: b,
        threads: t,
        itemsPerSec: items / seconds,
        msPerItem: (seconds * 1000) / items,
        p50: lat[Math.floor(lat.length * 0.5)]!,
        p99: lat[Math.min(lat.length - 1, Math.floor(lat.length * 0.99))]!,
      })
    }
    await session.release()
  }
  return results
}
