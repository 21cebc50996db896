// Seeded randomness and small fixtures for the screening tests.

import { mulberry32, normalFrom } from '../../models/mnist/train.ts'
import type { RandomSource } from '../../src/deps.ts'
import type { ItemLayout } from '../../src/screening/squeezers.ts'

export const MNIST_LAYOUT: ItemLayout = { channels: 1, height: 28, width: 28, lo: 0, hi: 1 }

/** The training script's seeded generator (mulberry32) and Box-Muller normals. */
export const seeded = mulberry32
export const gaussian = normalFrom

/** A RandomSource from a seed (for the digest keys). */
export function seededRandom(seed: number): RandomSource {
  const rnd = seeded(seed)
  return {
    bytes: (n) => Uint8Array.from({ length: n }, () => Math.floor(rnd() * 256)),
    uuid: () => '00000000-0000-4000-8000-000000000000',
  }
}

/** x + N(0, sigma^2) per value, clipped to [0, 1]. */
export function jitter(x: Float32Array, sigma: number, normal: () => number): Float32Array {
  return x.map((v) => Math.min(1, Math.max(0, v + sigma * normal())))
}

let nextDigest = 1
/** Distinct digests for items a test knows to be distinct. */
export const freshDigest = () => nextDigest++
