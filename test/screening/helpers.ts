// Seeded randomness and small fixtures for the screening tests.

import { mulberry32, normalFrom } from '../../models/mnist/train.ts'
import type { ItemLayout } from '../../src/screening/squeezers.ts'

export const MNIST_LAYOUT: ItemLayout = { channels: 1, height: 28, width: 28, lo: 0, hi: 1 }

/** The training script's seeded generator (mulberry32) and Box-Muller normals. */
export const seeded = mulberry32
export const gaussian = normalFrom

/** The kit's seeded RandomSource (for the digest keys: any fixed key will do). */
export { seededRandom } from '../../kit/random.ts'

/** x + N(0, sigma^2) per value, clipped to [0, 1]. */
export function jitter(x: Float32Array, sigma: number, normal: () => number): Float32Array {
  return x.map((v) => Math.min(1, Math.max(0, v + sigma * normal())))
}

let nextDigest = 1
/** Distinct digests for items a test knows to be distinct. */
export const freshDigest = () => nextDigest++
