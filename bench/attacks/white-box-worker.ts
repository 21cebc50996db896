// Worker thread for bench/eval-screening.ts: makes the white-box examples of a slice of the
// held-out digits (the gradients are the slow part of the evaluation): FGSM, PGD, and the
// adaptive BPDA attack on feature squeezing (bpda.ts).

import { parentPort, workerData } from 'node:worker_threads'
import { loadWeights } from '../../models/mnist/cnn.ts'
import { parseSqueezers } from '../../src/screening/squeezers.ts'
import { bpda, softBitDepthBackward } from './bpda.ts'
import { fgsm, pgd } from './white-box.ts'

export interface WhiteBoxJob {
  kind: 'fgsm' | 'pgd' | 'bpda-linf' | 'bpda-l2'
  images: Float32Array[]
  labels: number[]
  eps: number[]
  steps?: number
  alpha?: number
  seed?: number
  /** bpda: the detector the attack knows. */
  squeezers?: string[]
  threshold?: number
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
const squeeze = parseSqueezers(job.squeezers ?? [], { channels: 1, height: 28, width: 28, lo: 0, hi: 1 })
// BPDA: an empty list where the attack found nothing that passes the detector.
const adaptive = (x: Float32Array, y: number): Float32Array[] => {
  const norm = job.kind === 'bpda-linf' ? 'linf' : 'l2'
  const r = bpda(weights, x, y, { norm, eps: job.eps[0]!, steps: job.steps!, alpha: job.alpha!, squeeze, threshold: job.threshold!, slack: 0.8, c: 1, kappa: 2, backward: softBitDepthBackward(0.2) })
  return r.image ? [r.image] : []
}
const out: Float32Array[][] = job.images.map((x, i) =>
  job.kind === 'fgsm'
    ? fgsm(weights, x, job.labels[i]!, job.eps)
    : job.kind === 'pgd'
      ? [pgd(weights, x, job.labels[i]!, { eps: job.eps[0]!, steps: job.steps!, alpha: job.alpha!, random })]
      : adaptive(x, job.labels[i]!),
)
parentPort!.postMessage(out)
