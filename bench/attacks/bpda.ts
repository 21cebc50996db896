// A white-box attack that knows feature squeezing: its squeezers and its threshold (He,
// Wei, Chen, Carlini, Song, "Adversarial example defenses: ensembles of weak defenses are not
// strong", WOOT 2017; Athalye, Carlini, Wagner, ICML 2018 for BPDA). The attacker minimises
//
//   m_t(x) + sum_j [ m_t(s_j(x)) + c * max(0, L1(p(x), p(s_j(x))) - slack * threshold) ]
//   with m_t(v) = max(max_{j != t} z_j(v) - z_t(v), -kappa)
//
// (z: logits, p: softmax, s_j: the policy's squeezers) by projected gradient steps, with the
// squeezers' gradient taken as the identity (Backward Pass Differentiable Approximation: bit
// depth and median filters have zero or undefined gradients, but s_j(x) ~ x; or, with
// `backward`, a smooth stand-in such as a sigmoid for the bit-depth step). Gradients come
// from models/mnist/cnn.ts, the weights model.onnx holds. It stops at the first iterate that
// the detector, computed exactly as the gateway does, would pass and the model misclassifies
// (both with a little margin, for float differences between this code and onnxruntime).
//
// Besides the detector term, each squeezed variant is pushed to the same wrong class t (the
// model's runner-up for x): the two answers can only agree if both are wrong.
//
// Norms: L-infinity (sign steps, clipped to the eps-ball) and L2 (normalised gradient steps,
// projected onto the eps-ball); pixels stay in [0, 1].

import { backward, forward, probGradToLogitGrad, type Params } from '../../models/mnist/cnn.ts'
import { squeezingScore } from '../../src/screening/feature-squeezing.ts'

export interface BpdaOptions {
  norm: 'linf' | 'l2'
  eps: number
  steps: number
  alpha: number
  /** The policy's squeezers (src/screening/squeezers.ts parseSqueezers). */
  squeeze: (x: Float32Array) => Float32Array[]
  threshold: number
  /** Aim for scores under slack * threshold (the detector's score is not smooth). */
  slack: number
  /** Weight of the detector term against the misclassification term. */
  c: number
  kappa: number
  /** Per-pixel factor for gradients coming back through the squeezers (absent: the identity). */
  backward?: (x: Float32Array) => Float32Array
  /** The wrong class to aim at (default: the model's runner-up for x). */
  target?: number
}

export interface BpdaResult {
  /** The first iterate that evades the detector and is misclassified, or null. */
  image: Float32Array | null
  /** Gradient steps taken. */
  steps: number
  /** Squeezing score of the returned image (or of the last iterate). */
  score: number
}

const clip01 = (v: number) => (v < 0 ? 0 : v > 1 ? 1 : v)

/** Whether the model misclassifies x with a logit margin, and the detector's exact score. */
export function judge(p: Params, x: Float32Array, y: number, squeeze: (x: Float32Array) => Float32Array[]): { wrong: boolean; margin: number; score: number } {
  const a = forward(p, x)
  let other = -Infinity
  for (let j = 0; j < 10; j++) if (j !== y) other = Math.max(other, a.logits[j]!)
  const score = squeezingScore(a.probs, squeeze(x).map((v) => forward(p, v).probs))
  return { wrong: other > a.logits[y]!, margin: other - a.logits[y]!, score }
}

/** d/dz of a targeted margin max(max_{j != t} z_j - z_t, -kappa), added into dz with weight w. */
function addMargin(dz: Float32Array, z: Float32Array, t: number, kappa: number, w: number): void {
  let best = -1
  for (let j = 0; j < 10; j++) if (j !== t && (best < 0 || z[j]! > z[best]!)) best = j
  if (z[best]! - z[t]! <= -kappa) return
  dz[best]! += w
  dz[t]! -= w
}

/**
 * The objective's gradient with respect to x. The variants' gradients come back through the
 * squeezers by `o.backward` (the identity when absent: plain BPDA).
 */
function gradient(p: Params, x: Float32Array, t: number, o: BpdaOptions): Float32Array {
  const a = forward(p, x)
  const acts = o.squeeze(x).map((v) => forward(p, v))
  const dz = new Float32Array(10)
  addMargin(dz, a.logits, t, o.kappa, 1)
  const g = new Float32Array(x.length)
  acts.forEach((v) => {
    let l1 = 0
    const sign = new Float32Array(10)
    for (let k = 0; k < 10; k++) {
      l1 += Math.abs(a.probs[k]! - v.probs[k]!)
      sign[k] = Math.sign(a.probs[k]! - v.probs[k]!)
    }
    const dv = new Float32Array(10)
    // The squeezed input must be misclassified as t too, or the scores cannot agree.
    addMargin(dv, v.logits, t, o.kappa, 1)
    if (l1 > o.slack * o.threshold) {
      const viaOriginal = probGradToLogitGrad(a.probs, sign)
      for (let k = 0; k < 10; k++) dz[k]! += o.c * viaOriginal[k]!
      const viaVariant = probGradToLogitGrad(v.probs, sign.map((s) => -o.c * s))
      for (let k = 0; k < 10; k++) dv[k]! += viaVariant[k]!
    }
    const gv = backward(p, v, dv, null, true)!
    const through = o.backward?.(x)
    for (let i = 0; i < g.length; i++) g[i]! += through ? gv[i]! * through[i]! : gv[i]!
  })
  const gx = backward(p, a, dz, null, true)!
  for (let i = 0; i < g.length; i++) g[i]! += gx[i]!
  return g
}

/**
 * The backward pass of a 1-bit depth squeezer as a sigmoid of temperature `temp` around the
 * middle of [0, 1], scaled to 1 at the middle: pixels near 0.5, which a small step can flip,
 * get the gradient; pixels far from it get little (a step there changes nothing squeezed).
 */
export function softBitDepthBackward(temp: number): (x: Float32Array) => Float32Array {
  return (x) =>
    x.map((v) => {
      const s = 1 / (1 + Math.exp(-(v - 0.5) / temp))
      return 4 * s * (1 - s)
    })
}

/** The wrong class the attack aims at by default: the one the model ranks highest after the true label. */
export function target(p: Params, x: Float32Array, y: number): number {
  const z = forward(p, x).logits
  let t = -1
  for (let j = 0; j < 10; j++) if (j !== y && (t < 0 || z[j]! > z[t]!)) t = j
  return t
}

export function bpda(p: Params, x: Float32Array, y: number, o: BpdaOptions): BpdaResult {
  let adv = Float32Array.from(x)
  let last = judge(p, adv, y, o.squeeze)
  const t = o.target ?? target(p, x, y)
  for (let step = 1; step <= o.steps; step++) {
    const g = gradient(p, adv, t, o)
    if (o.norm === 'linf') {
      adv = adv.map((v, i) => clip01(Math.min(x[i]! + o.eps, Math.max(x[i]! - o.eps, v - o.alpha * Math.sign(g[i]!)))))
    } else {
      const gn = Math.hypot(...g) || 1
      adv = adv.map((v, i) => clip01(v - (o.alpha * g[i]!) / gn))
      let dn = 0
      for (let i = 0; i < x.length; i++) dn += (adv[i]! - x[i]!) ** 2
      dn = Math.sqrt(dn)
      if (dn > o.eps) adv = adv.map((v, i) => clip01(x[i]! + ((v - x[i]!) * o.eps) / dn))
    }
    last = judge(p, adv, y, o.squeeze)
    if (last.margin > 0.1 && last.score < 0.98 * o.threshold) return { image: adv, steps: step, score: last.score }
  }
  return { image: null, steps: o.steps, score: last.score }
}

export function distortion(a: Float32Array, b: Float32Array): { linf: number; l2: number } {
  let m = 0
  let s = 0
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!)
    m = Math.max(m, d)
    s += d * d
  }
  return { linf: m, l2: Math.sqrt(s) }
}
