// The ceiling: onnxruntime-node in this process, no server, no copies beyond ORT's own.
// Items per second for each batch size and thread count; the best is the gateway's target.

import { performance } from 'node:perf_hooks'
import { Worker } from 'node:worker_threads'
import * as ort from 'onnxruntime-node'

export interface RawResult {
  batch: number
  threads: number
  /** Sessions running at once, each in a worker thread of its own (1: this thread). */
  sessions?: number
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

/**
 * `sessions` sessions of `threads` intra-op threads each, in worker threads running at once:
 * the other way to use several cores (a session per core, as the gateway's workers do).
 * Items/s is the sum over sessions; latencies are not measured here.
 */
export async function rawOnnxParallel(modelBytes: Uint8Array, inputName: string, itemShape: number[], batch: number, sessions: number, threads: number, durationMs: number): Promise<RawResult> {
  const workers = Array.from({ length: sessions }, () => new Worker(new URL('./raw-onnx-worker.ts', import.meta.url), {
    workerData: { model: modelBytes, inputName, shape: [batch, ...itemShape], threads, durationMs },
  }))
  try {
    await Promise.all(workers.map((w) => new Promise((resolve, reject) => {
      w.once('message', resolve)
      w.once('error', reject)
    })))
    const done = workers.map((w) => new Promise<{ runs: number; seconds: number }>((resolve, reject) => {
      w.once('message', resolve)
      w.once('error', reject)
    }))
    const exited = workers.map((w) => new Promise((resolve) => w.once('exit', resolve)))
    for (const w of workers) w.postMessage('go')
    const results = await Promise.all(done)
    await Promise.all(exited) // each ends by itself once its session is released
    const itemsPerSec = results.reduce((n, r) => n + (r.runs * batch) / r.seconds, 0)
    return { batch, threads, sessions, itemsPerSec, msPerItem: 1000 / itemsPerSec, p50: NaN, p99: NaN }
  } finally {
    // Only on an error path is a worker still running here.
    await Promise.all(workers.filter((w) => w.threadId >= 0).map((w) => w.terminate()))
  }
}
