// Seeded randomness and small fixtures for the screening tests.

import type { RandomSource } from '../../src/deps.ts'
import type { ItemLayout } from '../../src/screening/squeezers.ts'

export const MNIST_LAYOUT: ItemLayout = { channels: 1, height: 28, width: 28, lo: 0, hi: 1 }

/** mulberry32: a small seeded generator of doubles in [0, 1). */
export function seeded(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

export function gaussian(rnd: () => number): () => number {
  return () => Math.sqrt(-2 * Math.log(1 - rnd())) * Math.cos(2 * Math.PI * rnd())
}

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
