// A small classifier in plain TypeScript, for the privacy evaluation: the extraction
// surrogate (trained on what the gateway returned) and the inversion evaluator (trained on
// the true labels of the train split, independently of the served CNN).
//
//   input 784 -> [dense H + ReLU] -> dense C -> softmax
//
// hidden = 0 gives softmax regression (Tramèr et al. 2016 extract such models exactly from
// confidence scores); hidden > 0 one hidden layer. Training minimises cross-entropy against
// soft targets at temperature T (Hinton et al.'s distillation): with the model's full scores
// as targets and T > 1, the surrogate also learns from the small scores the model gives the
// wrong classes, which is what confidence values leak beyond the label. One-hot targets
// (label-only answers) carry only the label at any T. Seeded and deterministic.

import type { Rng } from './rng.ts'
import { permutation } from './rng.ts'

export interface MlpOptions {
  hidden: number
  epochs: number
  batchSize: number
  learningRate: number
  /** Distillation temperature (1: plain cross-entropy). */
  temperature: number
  /** L2 weight decay per step, relative to the learning rate. */
  weightDecay: number
}

export interface Mlp {
  readonly inputs: number
  readonly hidden: number
  readonly classes: number
  /** [hidden, inputs] (or [classes, inputs] when hidden = 0). */
  w1: Float32Array
  b1: Float32Array
  /** [classes, hidden]; empty when hidden = 0. */
  w2: Float32Array
  b2: Float32Array
}

export function createMlp(inputs: number, hidden: number, classes: number, rng: Rng): Mlp {
  const first = hidden > 0 ? hidden : classes
  const w1 = new Float32Array(first * inputs)
  const std1 = hidden > 0 ? Math.sqrt(2 / inputs) : 0
  for (let i = 0; i < w1.length; i++) w1[i] = rng.normal() * std1
  const w2 = new Float32Array(hidden > 0 ? classes * hidden : 0)
  const std2 = Math.sqrt(1 / Math.max(1, hidden))
  for (let i = 0; i < w2.length; i++) w2[i] = rng.normal() * std2
  return { inputs, hidden, classes, w1, b1: new Float32Array(first), w2, b2: new Float32Array(hidden > 0 ? classes : 0) }
}

function dense(x: Float32Array, w: Float32Array, b: Float32Array, out: Float32Array): void {
  const n = x.length
  for (let o = 0; o < out.length; o++) {
    let s = b[o]!
    const row = o * n
    for (let i = 0; i < n; i++) s += w[row + i]! * x[i]!
    out[o] = s
  }
}

/** Logits of one input (and the hidden activations, when there is a hidden layer). */
export function logits(m: Mlp, x: Float32Array, h = new Float32Array(m.hidden)): Float32Array {
  if (m.hidden === 0) {
    const z = new Float32Array(m.classes)
    dense(x, m.w1, m.b1, z)
    return z
  }
  dense(x, m.w1, m.b1, h)
  for (let i = 0; i < h.length; i++) if (!(h[i]! > 0)) h[i] = 0
  const z = new Float32Array(m.classes)
  dense(h, m.w2, m.b2, z)
  return z
}

export function argmax(v: ArrayLike<number>): number {
  let best = 0
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i
  return best
}

export function predict(m: Mlp, x: Float32Array): number {
  return argmax(logits(m, x))
}

export function softmaxT(z: ArrayLike<number>, t: number): Float64Array {
  let max = -Infinity
  for (let i = 0; i < z.length; i++) max = Math.max(max, z[i]! / t)
  const p = new Float64Array(z.length)
  let sum = 0
  for (let i = 0; i < z.length; i++) sum += p[i] = Math.exp(z[i]! / t - max)
  for (let i = 0; i < p.length; i++) p[i]! /= sum
  return p
}

/**
 * The distillation target at temperature t for a released score row: proportional to
 * score^(1/t) (softmax of log-scores over t); zero scores stay zero, so a one-hot label
 * stays one-hot. Negative or non-finite entries count as zero; an all-zero row is uniform.
 */
export function softTarget(row: ArrayLike<number>, t: number): Float64Array {
  const out = new Float64Array(row.length)
  let sum = 0
  for (let i = 0; i < row.length; i++) {
    const v = row[i]!
    sum += out[i] = Number.isFinite(v) && v > 0 ? Math.pow(v, 1 / t) : 0
  }
  if (!(sum > 0)) return out.fill(1 / row.length)
  for (let i = 0; i < out.length; i++) out[i]! /= sum
  return out
}

export class Adam {
  readonly m: Float32Array[]
  readonly v: Float32Array[]
  step = 0
  constructor(params: Float32Array[]) {
    this.m = params.map((p) => new Float32Array(p.length))
    this.v = params.map((p) => new Float32Array(p.length))
  }
  apply(params: Float32Array[], grads: Float32Array[], lr: number, decay: number): void {
    this.step++
    const b1 = 0.9
    const b2 = 0.999
    const c1 = 1 - b1 ** this.step
    const c2 = 1 - b2 ** this.step
    for (let k = 0; k < params.length; k++) {
      const p = params[k]!
      const g = grads[k]!
      const m = this.m[k]!
      const v = this.v[k]!
      for (let i = 0; i < p.length; i++) {
        const gi = g[i]!
        m[i] = b1 * m[i]! + (1 - b1) * gi
        v[i] = b2 * v[i]! + (1 - b2) * gi * gi
        p[i]! -= lr * ((m[i]! / c1) / (Math.sqrt(v[i]! / c2) + 1e-8) + decay * p[i]!)
      }
    }
  }
}

/** Trains `m` in place on (inputs, target distributions). */
export function train(m: Mlp, xs: Float32Array[], targets: ArrayLike<number>[], o: MlpOptions, rng: Rng): Mlp {
  const params = m.hidden > 0 ? [m.w1, m.b1, m.w2, m.b2] : [m.w1, m.b1]
  const grads = params.map((p) => new Float32Array(p.length))
  const adam = new Adam(params)
  const h = new Float32Array(m.hidden)
  const dz = new Float32Array(m.classes)
  const dh = new Float32Array(m.hidden)
  const t = o.temperature
  for (let epoch = 0; epoch < o.epochs; epoch++) {
    const order = permutation(xs.length, rng)
    for (let start = 0; start < order.length; start += o.batchSize) {
      for (const g of grads) g.fill(0)
      const end = Math.min(order.length, start + o.batchSize)
      for (let j = start; j < end; j++) {
        const x = xs[order[j]!]!
        const target = targets[order[j]!]!
        const z = logits(m, x, h)
        const p = softmaxT(z, t)
        // d(cross-entropy at temperature t)/dz = (p - target) / t; the usual t² rescaling
        // keeps the gradient size comparable across temperatures.
        for (let c = 0; c < m.classes; c++) dz[c] = (p[c]! - target[c]!) * t
        if (m.hidden === 0) {
          accumulate(grads[0]!, grads[1]!, dz, x)
        } else {
          accumulate(grads[2]!, grads[3]!, dz, h)
          dh.fill(0)
          for (let c = 0; c < m.classes; c++) {
            const g = dz[c]!
            const row = c * m.hidden
            for (let i = 0; i < m.hidden; i++) dh[i]! += g * m.w2[row + i]!
          }
          for (let i = 0; i < m.hidden; i++) if (!(h[i]! > 0)) dh[i] = 0
          accumulate(grads[0]!, grads[1]!, dh, x)
        }
      }
      const scale = 1 / (end - start)
      for (const g of grads) for (let i = 0; i < g.length; i++) g[i]! *= scale
      adam.apply(params, grads, o.learningRate, o.weightDecay)
    }
  }
  return m
}

function accumulate(gw: Float32Array, gb: Float32Array, d: Float32Array, x: Float32Array): void {
  const n = x.length
  for (let o = 0; o < d.length; o++) {
    const g = d[o]!
    if (g === 0) continue
    gb[o]! += g
    const row = o * n
    for (let i = 0; i < n; i++) gw[row + i]! += g * x[i]!
  }
}

/** Fraction of inputs on which `m` predicts `labels`. */
export function agreement(m: Mlp, xs: Float32Array[], labels: number[]): number {
  let ok = 0
  for (let i = 0; i < xs.length; i++) if (predict(m, xs[i]!) === labels[i]) ok++
  return ok / xs.length
}
