// Worker thread for bench/eval-screening.ts: makes the white-box examples of a slice of the
// held-out digits (the gradients are the slow part of the evaluation).

import { parentPort, workerData } from 'node:worker_threads'
import { loadWeights } from '../../models/mnist/cnn.ts'
import { fgsm, pgd } from './white-box.ts'

export interface WhiteBoxJob {
  kind: 'fgsm' | 'pgd'
  images: Float32Array[]
  labels: number[]
  eps: number[]
  steps?: number
  alpha?: number
  seed?: number
}

const job = workerData as WhiteBoxJob
const weights = loadWeights()
let s = (job.seed ?? 1) >>> 0
const random = () => {
  s = (s + 0x6d2b79f5) >>> 0
  let t = s
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}
const out: Float32Array[][] = job.images.map((x, i) =>
  job.kind === 'fgsm' ? fgsm(weights, x, job.labels[i]!, job.eps) : [pgd(weights, x, job.labels[i]!, { eps: job.eps[0]!, steps: job.steps!, alpha: job.alpha!, random })],
)
parentPort!.postMessage(out)
