// A small convolutional classifier in plain TypeScript, for the extraction attacker's
// surrogate in the shipped-policy evaluation (bench/privacy/shipped.ts):
//
//   input side x side -> conv 3x3, F filters (valid) + ReLU -> max-pool 2x2 -> dense C -> softmax
//
// Small on purpose: it trains on 2 cores in seconds to a minute, and still learns the spatial
// structure an MLP has to learn pixel by pixel. Training minimises cross-entropy against
// target distributions (one-hot labels from a label-only API) with Adam. `inputGradient` gives
// d logit_c / d input, which Jacobian-based augmentation (Papernot et al. 2017) follows.
// Seeded and deterministic.

import { Adam, softmaxT } from './mlp.ts'
import type { Rng } from './rng.ts'
import { permutation } from './rng.ts'

export interface Cnn {
  readonly side: number
  readonly filters: number
  readonly classes: number
  /** [filters, 9] */
  wc: Float32Array
  bc: Float32Array
  /** [classes, filters * pooled * pooled] */
  wd: Float32Array
  bd: Float32Array
}

export interface CnnTrainOptions {
  /** Example presentations in all (epochs = steps / examples, the last one partial). */
  steps: number
  batchSize: number
  learningRate: number
}

const convSide = (m: Cnn) => m.side - 2
const poolSide = (m: Cnn) => Math.floor(convSide(m) / 2)
const features = (m: Cnn) => m.filters * poolSide(m) * poolSide(m)

export function createCnn(side: number, filters: number, classes: number, rng: Rng): Cnn {
  const m: Cnn = { side, filters, classes, wc: new Float32Array(filters * 9), bc: new Float32Array(filters), wd: new Float32Array(0), bd: new Float32Array(classes) }
  for (let i = 0; i < m.wc.length; i++) m.wc[i] = rng.normal() * Math.sqrt(2 / 9)
  m.wd = new Float32Array(classes * features(m))
  const std = Math.sqrt(1 / features(m))
  for (let i = 0; i < m.wd.length; i++) m.wd[i] = rng.normal() * std
  return m
}

/** Scratch buffers of one forward pass (reused across examples). */
interface Trace {
  conv: Float32Array // post-ReLU, [filters, cs, cs]
  pooled: Float32Array // [filters, ps, ps]
  argmax: Int32Array // index into conv for each pooled cell
  z: Float32Array
}

const traceFor = (m: Cnn): Trace => ({
  conv: new Float32Array(m.filters * convSide(m) ** 2),
  pooled: new Float32Array(features(m)),
  argmax: new Int32Array(features(m)),
  z: new Float32Array(m.classes),
})

function forward(m: Cnn, x: Float32Array, t: Trace): Float32Array {
  const s = m.side
  const cs = convSide(m)
  const ps = poolSide(m)
  for (let f = 0; f < m.filters; f++) {
    const w = f * 9
    const k0 = m.wc[w]!, k1 = m.wc[w + 1]!, k2 = m.wc[w + 2]!, k3 = m.wc[w + 3]!, k4 = m.wc[w + 4]!
    const k5 = m.wc[w + 5]!, k6 = m.wc[w + 6]!, k7 = m.wc[w + 7]!, k8 = m.wc[w + 8]!
    const b = m.bc[f]!
    const base = f * cs * cs
    for (let y = 0; y < cs; y++) {
      const r0 = y * s
      const r1 = r0 + s
      const r2 = r1 + s
      for (let xx = 0; xx < cs; xx++) {
        const v =
          b +
          k0 * x[r0 + xx]! + k1 * x[r0 + xx + 1]! + k2 * x[r0 + xx + 2]! +
          k3 * x[r1 + xx]! + k4 * x[r1 + xx + 1]! + k5 * x[r1 + xx + 2]! +
          k6 * x[r2 + xx]! + k7 * x[r2 + xx + 1]! + k8 * x[r2 + xx + 2]!
        t.conv[base + y * cs + xx] = v > 0 ? v : 0
      }
    }
    for (let py = 0; py < ps; py++) {
      for (let px = 0; px < ps; px++) {
        let best = base + 2 * py * cs + 2 * px
        for (const d of [1, cs, cs + 1]) if (t.conv[base + 2 * py * cs + 2 * px + d]! > t.conv[best]!) best = base + 2 * py * cs + 2 * px + d
        const o = f * ps * ps + py * ps + px
        t.pooled[o] = t.conv[best]!
        t.argmax[o] = best
      }
    }
  }
  const n = features(m)
  for (let c = 0; c < m.classes; c++) {
    let v = m.bd[c]!
    const row = c * n
    for (let i = 0; i < n; i++) v += m.wd[row + i]! * t.pooled[i]!
    t.z[c] = v
  }
  return t.z
}

export function cnnLogits(m: Cnn, x: Float32Array): Float32Array {
  return Float32Array.from(forward(m, x, traceFor(m)))
}

/** Softmax probabilities of every input (one reused trace). */
export function cnnProbabilities(m: Cnn, xs: Float32Array[]): Float64Array[] {
  const t = traceFor(m)
  return xs.map((x) => softmax(forward(m, x, t)))
}

export function cnnPredict(m: Cnn, xs: Float32Array[]): number[] {
  const t = traceFor(m)
  return xs.map((x) => {
    const z = forward(m, x, t)
    let best = 0
    for (let c = 1; c < z.length; c++) if (z[c]! > z[best]!) best = c
    return best
  })
}

/** Softmax probabilities of a logit row. */
export const softmax = (z: ArrayLike<number>): Float64Array => softmaxT(z, 1)

/**
 * Back-propagates dz (d loss / d logits) through the trace of the last forward pass: adds the
 * parameter gradients into `g` (when given) and returns d loss / d input (when `dx` is given).
 */
function backward(m: Cnn, x: Float32Array, t: Trace, dz: ArrayLike<number>, g: Cnn | null, dx: Float32Array | null, dconv: Float32Array): void {
  const n = features(m)
  const dpool = new Float32Array(n)
  for (let c = 0; c < m.classes; c++) {
    const d = dz[c]!
    if (d === 0) continue
    const row = c * n
    if (g) {
      g.bd[c]! += d
      for (let i = 0; i < n; i++) g.wd[row + i]! += d * t.pooled[i]!
    }
    for (let i = 0; i < n; i++) dpool[i]! += d * m.wd[row + i]!
  }
  dconv.fill(0)
  for (let i = 0; i < n; i++) if (t.pooled[i]! > 0) dconv[t.argmax[i]!] = dpool[i]!
  const s = m.side
  const cs = convSide(m)
  for (let f = 0; f < m.filters; f++) {
    const base = f * cs * cs
    const w = f * 9
    for (let y = 0; y < cs; y++) {
      for (let xx = 0; xx < cs; xx++) {
        const d = dconv[base + y * cs + xx]!
        if (d === 0) continue
        const r = y * s + xx
        for (let ky = 0; ky < 3; ky++) {
          for (let kx = 0; kx < 3; kx++) {
            const p = r + ky * s + kx
            if (g) g.wc[w + ky * 3 + kx]! += d * x[p]!
            if (dx) dx[p]! += d * m.wc[w + ky * 3 + kx]!
          }
        }
        if (g) g.bc[f]! += d
      }
    }
  }
}

/** d logit_c / d input at x. */
export function inputGradient(m: Cnn, x: Float32Array, c: number): Float32Array {
  const t = traceFor(m)
  forward(m, x, t)
  const dz = new Float64Array(m.classes)
  dz[c] = 1
  const dx = new Float32Array(x.length)
  backward(m, x, t, dz, null, dx, new Float32Array(t.conv.length))
  return dx
}

/** Trains `m` in place on (inputs, target distributions); continues from its current weights. */
export function trainCnn(m: Cnn, xs: Float32Array[], targets: ArrayLike<number>[], o: CnnTrainOptions, rng: Rng, adam = cnnOptimizer(m)): Cnn {
  const g: Cnn = { ...m, wc: new Float32Array(m.wc.length), bc: new Float32Array(m.bc.length), wd: new Float32Array(m.wd.length), bd: new Float32Array(m.bd.length) }
  const grads = [g.wc, g.bc, g.wd, g.bd]
  const params = [m.wc, m.bc, m.wd, m.bd]
  const t = traceFor(m)
  const dconv = new Float32Array(t.conv.length)
  const dz = new Float64Array(m.classes)
  let done = 0
  while (done < o.steps) {
    const order = permutation(xs.length, rng)
    for (let start = 0; start < order.length && done < o.steps; start += o.batchSize) {
      for (const a of grads) a.fill(0)
      const end = Math.min(order.length, start + o.batchSize, start + o.steps - done)
      for (let j = start; j < end; j++) {
        const x = xs[order[j]!]!
        const target = targets[order[j]!]!
        const p = softmax(forward(m, x, t))
        for (let c = 0; c < m.classes; c++) dz[c] = p[c]! - target[c]!
        backward(m, x, t, dz, g, null, dconv)
      }
      const scale = 1 / (end - start)
      for (const a of grads) for (let i = 0; i < a.length; i++) a[i]! *= scale
      adam.apply(params, grads, o.learningRate, 0)
      done += end - start
    }
  }
  return m
}

/** An Adam state for `m`, to keep across calls of trainCnn (the attacker trains in rounds). */
export function cnnOptimizer(m: Cnn): Adam {
  return new Adam([m.wc, m.bc, m.wd, m.bd])
}
