// White-box adversarial examples against the mnist CNN, with gradients from its trained
// weights (models/mnist/cnn.ts, the same weights model.onnx holds): the harness computes
// them, the gateway only ever sees the final images. L-infinity attacks, pixels in [0, 1].
//
//   FGSM (Goodfellow et al. 2015): x + eps * sign(grad of the loss)
//   PGD  (Madry et al. 2018): a uniform random start in the eps-ball, then `steps` steps of
//        alpha * sign(grad), projected back onto the ball and [0, 1] after each

import { lossInputGradient, type Params } from '../../models/mnist/cnn.ts'

const clip01 = (v: number) => (v < 0 ? 0 : v > 1 ? 1 : v)

/** FGSM examples for several eps from one gradient. */
export function fgsm(p: Params, x: Float32Array, label: number, eps: readonly number[]): Float32Array[] {
  const g = lossInputGradient(p, x, label).grad
  return eps.map((e) => x.map((v, i) => clip01(v + e * Math.sign(g[i]!))))
}

export function pgd(p: Params, x: Float32Array, label: number, o: { eps: number; steps: number; alpha: number; random: () => number }): Float32Array {
  const lo = x.map((v) => Math.max(0, v - o.eps))
  const hi = x.map((v) => Math.min(1, v + o.eps))
  let a = x.map((v, i) => Math.min(hi[i]!, Math.max(lo[i]!, v + (o.random() * 2 - 1) * o.eps)))
  for (let s = 0; s < o.steps; s++) {
    const g = lossInputGradient(p, a, label).grad
    a = a.map((v, i) => Math.min(hi[i]!, Math.max(lo[i]!, v + o.alpha * Math.sign(g[i]!))))
  }
  return a
}
