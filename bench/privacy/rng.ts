// Seeded randomness for the attacker and the evaluator (the gateway's noise comes from the
// operating system's CSPRNG and is not seeded). Same seed, same attack. Floats from
// mulberry32, the generator of the model training script, not the kit's seeded RandomSource
// (kit/random.ts, bytes): a seed gives the same attack and surrogate as in earlier runs.

import { mulberry32, normalFrom } from '../../models/mnist/train.ts'

export interface Rng {
  /** Uniform in [0, 1). */
  uniform(): number
  /** Standard normal. */
  normal(): number
  /** Uniform integer in [0, n). */
  int(n: number): number
}

export function seededRng(seed: number): Rng {
  const uniform = mulberry32(seed)
  const normal = normalFrom(uniform)
  return { uniform, normal, int: (n) => Math.floor(uniform() * n) }
}

/** A seeded Fisher-Yates permutation of 0..n-1. */
export function permutation(n: number, rng: Rng): number[] {
  const p = [...Array(n).keys()]
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(i + 1)
    ;[p[i], p[j]] = [p[j]!, p[i]!]
  }
  return p
}
