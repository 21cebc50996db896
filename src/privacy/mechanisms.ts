// The noise mechanisms on score vectors, and how each is calibrated and charged.
// docs/privacy.md states the guarantee in full; in short:
//
// What is protected. For one answer, the query f maps the model's score vector for one
// input (one row of an output such as `probabilities`, C classes) to the integer vector
//     n = snap_k(p),   n ∈ N_k = { n ∈ Z^C : n_i >= 0, Σ n_i = 2^k },
// where snap_k projects p onto the probability simplex (negative and non-finite entries
// to 0, then divide by the sum; all zero becomes uniform) and rounds it to multiples of
// 2^-k with the largest-remainder method, so the sum stays exactly 2^k.
//
// Neighbouring relation: ANY two score vectors (any two inputs, any two models). This is
// the strongest relation there is for a single answer: whatever the model and input, the
// distribution of the released answer changes by a factor of at most e^ε. Composed over
// a caller's answers (the accountant), the caller's whole transcript is (Σε)-close under
// the deployed model and under any other model, which is what bounds extraction,
// inversion and membership inference through this caller's answers.
//
// Sensitivity on the grid (units of 2^-k, S = 2^k), over all pairs n, n' in N_k:
//     L1: ‖n - n'‖₁ <= 2S           (Σ|n_i - n'_i| <= Σn_i + Σn'_i)
//     L2: ‖n - n'‖₂ <= √2 · S       (Σd_i² <= max|d_i| · Σ|d_i| <= S · 2S)
// Both bounds are attained (two one-hot vectors), so they are the exact sensitivities.
//
// Laplace:  add discrete Laplace noise of scale 2S/ε to every coordinate: exactly ε-DP.
// Gaussian: add discrete Gaussian noise of variance σ² = 2S²/(2ρ) = S²/ρ: exactly ρ-zCDP,
//           with ρ chosen so that ρ-zCDP implies the policy's per-answer (ε, δ)-DP:
//           ρ = (√(ln(1/δ) + ε) - √ln(1/δ))², the inverse of Bun & Steinke's
//           ε = ρ + 2√(ρ ln(1/δ)) (TCC 2016, Proposition 1.3).
//
// The grid and epsilon: the rounding to 2^-k happens to the INPUT of the mechanism (it is
// part of f), and the noise is integer-valued, so the released integers are exactly
// ε-DP (or ρ-zCDP) with the sensitivities above. The granularity k costs no epsilon; it
// sets the resolution of released scores before rounding (2^-k) and the size of the
// integers the samplers handle. In score units the noise scale is 2/ε whatever k is.
//
// Everything after the noise (clamp to [0, 2^k], renormalise, top-k, arg-max, rounding to
// d decimals) reads only the noisy integers, never the true scores, so it is
// post-processing and keeps the guarantee. Label-only answers are the arg-max of the
// noisy vector: report-noisy-max, charged at the same ε as the full vector (which is what
// report-noisy-max costs anyway here: per-coordinate sensitivity is S and the scale 2S/ε).
//
// Verdicts: a screening refusal decided on the model's raw scores (feature squeezing) is one
// more bit about the model. It reaches the caller only through randomized response: the bit is
// flipped with probability 1/(1 + e^ε), so for any two values of the bit (any two models) the
// odds of each released verdict differ by exactly e^ε: ε-DP, charged as one answer's ε.
//
// k-ary randomized response on the label (`mechanism: randomized-response`, label mode only).
// The query is the model's arg-max a ∈ {0..k-1} (ties to the lower index; any deterministic
// function of the score vector will do, since the relation is any two score vectors). The
// released label is a with probability e^ε/(e^ε + k - 1) and each other label with probability
// 1/(e^ε + k - 1). For any two arg-maxes a, a' and any released label, the two probabilities
// differ by a factor of at most e^ε (the largest over the smallest): exactly ε-DP, charged as
// one answer's ε like the noisy answers. Nothing about the scores beyond the arg-max is
// released, so, unlike report-noisy-max, the label's accuracy does not depend on how
// confident the model is.
// The exact sampler (randomizedResponseLabel), by rejection, with q = e^-ε: propose a label j
// uniformly among the k (an exact uniform integer, random.ts); accept j = a always and any other
// j with probability q (bernoulliExpNeg, samplers.ts: exact for the rational ε in micro-
// epsilon). An accepted round releases a with weight (1/k)·1 and each other label with weight
// (1/k)·q, so the released label is a with probability 1/(1 + (k-1)q) = e^ε/(e^ε + k - 1) and
// each other label with q/(1 + (k-1)q) = 1/(e^ε + k - 1), exactly, although both are
// irrational: no floating-point number is created, only integer comparisons of random bits.
// It generalises randomizedResponseFlip (k = 2, with a fair coin for the proposal). A round
// ends with probability (1 + (k-1)q)/k >= 1/k, the same whichever label a is, so the number
// of rounds (the time taken) says nothing about a: at most k rounds on average.

import type { RandomReader } from './random.ts'
import { bernoulliExpNeg, sampleDiscreteGaussian, sampleDiscreteLaplace, sampleDiscreteLaplaceSmall, smallLaplaceScale } from './samplers.ts'
import { renormalise } from './postprocess.ts'

/** Epsilon is handled in integer micro-epsilon: basic composition is then exact. */
export const EPSILON_UNITS = 1_000_000
/** zCDP's rho is handled in integer nano-rho. */
export const RHO_UNITS = 1_000_000_000

/** What one answer (one row of one protected output) costs. Integers, so sums are exact. */
export interface PrivacyCost {
  /** Pure ε-DP part, micro-epsilon; composes by addition (basic composition). */
  epsilonMicros: number
  /** zCDP part, nano-rho; composes by addition (zCDP composition). */
  rhoNanos: number
}

/** The cost of n answers of cost c: both parts add up (basic and zCDP composition). */
export const scaleCost = (c: PrivacyCost, n: number): PrivacyCost => ({ epsilonMicros: c.epsilonMicros * n, rhoNanos: c.rhoNanos * n })

export const zeroCost: PrivacyCost = Object.freeze({ epsilonMicros: 0, rhoNanos: 0 })

export type NoiseSpec =
  | {
      mechanism: 'laplace'
      bits: number
      scaleNum: bigint
      scaleDen: bigint
      /** The scale in lowest terms as numbers, when the sampler's number path takes it. */
      small: { t: number; s: number } | null
      cost: PrivacyCost
    }
  | { mechanism: 'gaussian'; bits: number; varNum: bigint; varDen: bigint; cost: PrivacyCost }

/** k-ary randomized response on the label: no additive noise, no grid (see the file header). */
export interface RandomizedResponseSpec {
  mechanism: 'randomized-response'
  /** ε of one answer, micro-epsilon: what the sampler uses and what the answer costs. */
  epsilonMicros: number
  cost: PrivacyCost
}

/** How a protected answer is made private: additive noise on the scores, or randomized response on the label. */
export type ReleaseSpec = NoiseSpec | RandomizedResponseSpec

/** Micro-epsilon for a policy epsilon: the value is used at 10^-6 resolution. */
export function toEpsilonMicros(epsilon: number): number {
  const micros = Math.round(epsilon * EPSILON_UNITS)
  if (!Number.isSafeInteger(micros) || micros < 1) throw new RangeError(`epsilon ${epsilon} is below 0.000001 or not finite`)
  return micros
}

/** The largest rho such that rho-zCDP implies (epsilon, delta)-DP by Bun & Steinke's conversion. */
export function rhoFor(epsilon: number, delta: number): number {
  if (!(epsilon > 0) || !(delta > 0 && delta < 1)) throw new RangeError(`rhoFor: need epsilon > 0 and 0 < delta < 1`)
  const L = Math.log(1 / delta)
  const r = Math.sqrt(L + epsilon) - Math.sqrt(L)
  return r * r
}

/** The epsilon that rho-zCDP gives at delta (Bun & Steinke Proposition 1.3). */
export function epsilonForRho(rho: number, delta: number): number {
  if (rho <= 0) return 0
  return rho + 2 * Math.sqrt(rho * Math.log(1 / delta))
}

/** Discrete Laplace on the 2^-bits grid, calibrated to epsilon per answer. */
export function calibrateLaplace(epsilon: number, bits: number): NoiseSpec {
  const epsilonMicros = toEpsilonMicros(epsilon)
  const l1 = 2n << BigInt(bits) // 2S
  // scale = 2S / ε = 2S · 10^6 / εµ, as a rational, so the mechanism is exactly εµ·10^-6-DP.
  const scaleNum = l1 * BigInt(EPSILON_UNITS)
  const scaleDen = BigInt(epsilonMicros)
  return { mechanism: 'laplace', bits, scaleNum, scaleDen, small: smallLaplaceScale(scaleNum, scaleDen), cost: { epsilonMicros, rhoNanos: 0 } }
}

/** Discrete Gaussian on the 2^-bits grid, calibrated so one answer is (epsilon, delta)-DP. */
export function calibrateGaussian(epsilon: number, delta: number, bits: number): NoiseSpec {
  // Floor: the rho charged (and used for σ) is at most the one (ε, δ) allows.
  const rhoNanos = Math.floor(rhoFor(epsilon, delta) * RHO_UNITS)
  if (rhoNanos < 1) throw new RangeError(`epsilon ${epsilon} with delta ${delta} gives rho below 10^-9; raise epsilon or delta`)
  // σ² = Δ₂² / (2ρ) = 2S² / (2ρ) = S² · 10^9 / ρ_nanos, an exact rational.
  const s2 = 1n << BigInt(2 * bits)
  return {
    mechanism: 'gaussian',
    bits,
    varNum: s2 * BigInt(RHO_UNITS),
    varDen: BigInt(rhoNanos),
    cost: { epsilonMicros: 0, rhoNanos },
  }
}

/**
 * snap_k: the score row projected onto the simplex and rounded to integers that sum to
 * exactly 2^bits (largest remainder; ties to the lower index). Deterministic: it is the
 * query, not part of the noise. The row is `row[from..to)`: a tensor's row, without a view.
 */
export function snapToGrid(row: ArrayLike<number>, bits: number, from = 0, to = row.length): number[] {
  const S = 2 ** bits
  const c = to - from
  const p = renormalise(row, from, to)
  const out = new Array<number>(c)
  const rem = new Array<number>(c)
  let sum = 0
  for (let i = 0; i < c; i++) {
    const q = Math.min(S, p[i]! * S)
    out[i] = Math.floor(q)
    rem[i] = q - out[i]!
    sum += out[i]!
  }
  let deficit = S - sum
  if (deficit > 0 && deficit < c) {
    // The common case: hand one unit each to the `deficit` largest remainders (ties to the
    // lower index), picked by selection: cheaper than sorting for a handful of classes.
    for (; deficit > 0; deficit--) {
      let best = -1
      for (let i = 0; i < c; i++) if (rem[i]! >= 0 && (best < 0 || rem[i]! > rem[best]!)) best = i
      out[best]!++
      rem[best] = -1
    }
  }
  if (deficit !== 0) {
    const order = [...out.keys()].sort((a, b) => rem[b]! - rem[a]! || a - b)
    // deficit > 0: hand out the missing units to the largest remainders. Float error can
    // in principle leave a surplus; take it back from the smallest remainders.
    for (let j = 0; deficit > 0; j = (j + 1) % c, deficit--) out[order[j]!]!++
    for (let j = c - 1; deficit < 0; j = (j - 1 + c) % c) {
      if (out[order[j]!]! > 0) {
        out[order[j]!]!--
        deficit++
      }
    }
  }
  return out
}

/**
 * One noise draw per coordinate, added to the grid integers. Plain numbers: the grid is at
 * most 2^bits and a draw beyond 2^53 has probability far below 2^-1000 at the scales a
 * policy allows, so the sums are exact integers.
 */
export function addNoise(rng: RandomReader, grid: readonly number[], spec: NoiseSpec): number[] {
  const out = new Array<number>(grid.length)
  for (let i = 0; i < grid.length; i++) {
    let z: number
    if (spec.mechanism === 'gaussian') z = Number(sampleDiscreteGaussian(rng, spec.varNum, spec.varDen))
    else if (spec.small) z = sampleDiscreteLaplaceSmall(rng, spec.small)
    else z = Number(sampleDiscreteLaplace(rng, spec.scaleNum, spec.scaleDen))
    out[i] = grid[i]! + z
  }
  return out
}

/** The noise's standard deviation in score units (for documentation and reports). */
export function noiseStddev(spec: NoiseSpec): number {
  const S = 2 ** spec.bits
  if (spec.mechanism === 'laplace') {
    const b = Number(spec.scaleNum) / Number(spec.scaleDen) / S
    return Math.SQRT2 * b // discrete Laplace's variance is close to 2b² for b >> 1
  }
  return Math.sqrt(Number(spec.varNum) / Number(spec.varDen)) / S
}

/**
 * The flip of ε-DP randomized response on one bit: true with probability q/(1 + q), q = e^-ε,
 * exactly. Drawn before the bit is known (it does not depend on it); the released bit is the
 * true one XOR the flip. By rejection: propose "flip" or "keep" with a fair coin, accept "flip"
 * with probability q (an exact Bernoulli(e^-ε), samplers.ts) and "keep" always, so the
 * accepted flips are (q/2) / (q/2 + 1/2) = q/(1 + q) of the outcomes. At least half the rounds
 * end, so it reads a few bits on average.
 */
export function randomizedResponseFlip(rng: RandomReader, epsilonMicros: number): boolean {
  if (!Number.isSafeInteger(epsilonMicros) || epsilonMicros < 1) throw new RangeError('randomizedResponseFlip: epsilonMicros must be a positive integer')
  const num = BigInt(epsilonMicros)
  const den = BigInt(EPSILON_UNITS)
  for (;;) {
    if (!rng.coin()) return false
    if (bernoulliExpNeg(rng, num, den)) return true
  }
}

/** k-ary randomized response calibrated to epsilon per answer, charged as pure ε. */
export function calibrateRandomizedResponse(epsilon: number): RandomizedResponseSpec {
  const epsilonMicros = toEpsilonMicros(epsilon)
  return { mechanism: 'randomized-response', epsilonMicros, cost: { epsilonMicros, rhoNanos: 0 } }
}

/**
 * The label k-ary randomized response releases for true label `label` of `classes`: `label`
 * with probability e^ε/(e^ε + k - 1), each other with 1/(e^ε + k - 1), exactly (the rejection
 * construction in the file header).
 */
export function randomizedResponseLabel(rng: RandomReader, label: number, classes: number, epsilonMicros: number): number {
  if (!Number.isSafeInteger(epsilonMicros) || epsilonMicros < 1) throw new RangeError('randomizedResponseLabel: epsilonMicros must be a positive integer')
  if (!Number.isInteger(classes) || classes < 1 || classes > 2 ** 32) throw new RangeError(`randomizedResponseLabel: bad class count ${classes}`)
  if (!Number.isInteger(label) || label < 0 || label >= classes) throw new RangeError(`randomizedResponseLabel: label ${label} is not one of ${classes} classes`)
  const num = BigInt(epsilonMicros)
  const den = BigInt(EPSILON_UNITS)
  for (;;) {
    const j = rng.uniformSmall(classes)
    if (j === label || bernoulliExpNeg(rng, num, den)) return j
  }
}

/** P[randomized response releases the true label] = e^ε/(e^ε + k - 1), for documentation and tests (a float; never used to sample). */
export function randomizedResponseKeepProbability(epsilon: number, classes: number): number {
  return 1 / (1 + (classes - 1) * Math.exp(-epsilon))
}
