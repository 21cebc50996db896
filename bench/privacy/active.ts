// Active query selection for the extraction attacker (bench/privacy/shipped.ts): spend each
// answer where the surrogate is least sure (margin sampling: the smallest gap between its two
// most probable classes), over a candidate set of natural digits and Jacobian-based
// augmentations of the digits already answered (Papernot et al., "Practical Black-Box Attacks
// against Machine Learning", AsiaCCS 2017: step each pixel by λ in the sign of the gradient of
// the surrogate's logit for the label the API gave, toward the decision boundary it does not
// know yet).

import { inputGradient, type Cnn } from './cnn.ts'
import { pool2 } from './extraction.ts'
import { IMAGE_SIZE } from '../../models/mnist/data.ts'

/** Top-1 minus top-2 probability of each row. */
export function margins(probs: ArrayLike<number>[]): number[] {
  return probs.map((p) => {
    let a = -Infinity
    let b = -Infinity
    for (let i = 0; i < p.length; i++) {
      const v = p[i]!
      if (v > a) {
        b = a
        a = v
      } else if (v > b) b = v
    }
    return a - b
  })
}

/** Indices of the n rows with the smallest margin, most uncertain first (ties: lower index). */
export function mostUncertain(probs: ArrayLike<number>[], n: number): number[] {
  const m = margins(probs)
  return [...m.keys()].sort((i, j) => m[i]! - m[j]! || i - j).slice(0, n)
}

/**
 * One Jacobian-based augmentation of a 28x28 digit for a surrogate that reads 14x14
 * average-pooled digits: the gradient through the pooling is the pooled cell's gradient / 4,
 * so each pixel steps by λ in the sign of its cell's gradient (pixels of a zero-gradient cell
 * stay), clamped to [0, 1].
 */
export function jacobianStep(m: Cnn, image: Float32Array, label: number, lambda: number): Float32Array {
  const g = inputGradient(m, pool2(image), label)
  const side = IMAGE_SIZE / 2
  const out = new Float32Array(image.length)
  for (let y = 0; y < IMAGE_SIZE; y++) {
    for (let x = 0; x < IMAGE_SIZE; x++) {
      const gi = g[(y >> 1) * side + (x >> 1)]!
      const v = image[y * IMAGE_SIZE + x]! + (gi > 0 ? lambda : gi < 0 ? -lambda : 0)
      out[y * IMAGE_SIZE + x] = v < 0 ? 0 : v > 1 ? 1 : v
    }
  }
  return out
}
