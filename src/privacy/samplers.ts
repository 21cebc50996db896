// Exact samplers for differential-privacy noise: Bernoulli(exp(-γ)) for rational γ, the
// discrete Laplace and the discrete Gaussian on the integers.
//
// Which sampler, and why. Sampling Laplace noise as `-b·sign(u)·ln(1-2|u|)` in floating
// point, then adding it to a float, is broken: the set of doubles a noisy value can take
// depends on the true value, so the low-order bits identify it (Mironov, "On significance
// of the least significant bits for differential privacy", CCS 2012). The fixes in use are
// (a) Mironov's snapping mechanism, which costs a larger epsilon, (b) Google's library,
// which samples a two-sided geometric on a power-of-2 grid, and (c) OpenDP, which uses
// the exact samplers of Canonne, Kamath and Steinke ("The Discrete Gaussian for
// Differential Privacy", NeurIPS 2020). We follow (c): the algorithms below are CKS
// Algorithms 1, 2 and 3, run on BigInt integers and rationals only, with uniform integers
// from rejection sampling on CSPRNG bytes. No floating-point number is ever created while
// sampling, so the output distribution is exactly the stated one (up to the quality of
// the random source), and the mechanism needs no epsilon inflation.
//
// The grid is the caller's business (mechanisms.ts): scores are first rounded to integers
// in units of 2^-k, noise is added in those units, and only the noisy integers are turned
// back into numbers (post-processing).
//
// Running time depends on the noise drawn (rejection loops), never on the value being
// protected: the caller adds the noise afterwards.

import { gcd, isqrt, type RandomReader } from './random.ts'

/**
 * True with probability exp(-γ) for γ = num/den, exactly (CKS Algorithm 1). num >= 0, den >= 1.
 * For γ <= 1 it counts how many Bernoulli(γ/k) successes come in a row (k = 1, 2, ...);
 * the count is even with probability exp(-γ). For γ > 1 it multiplies floor(γ) draws of
 * exp(-1) with one of exp(-(γ - floor(γ))), stopping at the first failure.
 */
export function bernoulliExpNeg(rng: RandomReader, num: bigint, den: bigint): boolean {
  if (num < 0n || den < 1n) throw new RangeError(`bernoulliExpNeg: bad γ ${num}/${den}`)
  if (num === den) return bernoulliInvE(rng)
  if (num < den) {
    let k = 1n
    while (rng.bernoulli(num, den * k)) k++
    return (k & 1n) === 1n
  }
  const whole = num / den
  for (let i = 0n; i < whole; i++) {
    if (!bernoulliInvE(rng)) return false
  }
  return bernoulliExpNeg(rng, num - whole * den, den)
}

/**
 * True with probability e^-1 exactly, reading 2 random bits on average: a uniform random
 * real compared with e^-1 one binary digit at a time (see random.ts), where CKS Algorithm 1
 * takes about e draws of Bernoulli(1/k). The samplers need e^-1 for every unit of a
 * geometric count. The first 64 digits are computed once; the rest, needed with
 * probability 2^-64, when asked for.
 */
export function bernoulliInvE(rng: RandomReader): boolean {
  for (let i = 1; ; i++) {
    const digit = i <= 32 ? (INV_E_HI >>> (32 - i)) & 1 : i <= 64 ? (INV_E_LO >>> (64 - i)) & 1 : Number(invEFloor(i) & 1n)
    const b = rng.coin() ? 1 : 0
    if (b !== digit) return b < digit
  }
}

/**
 * floor(e^-1 · 2^n), exactly. The partial sums S_K = A_K / K! of e^-1 = Σ (-1)^k / k!
 * alternate around it (A_0 = 1, A_K = K·A_(K-1) + (-1)^K) and it lies strictly between two
 * consecutive ones, so once both have the same floor, so does e^-1.
 */
export function invEFloor(n: number): bigint {
  const scale = 1n << BigInt(n)
  let a = 1n
  let fact = 1n
  let prev = scale // floor(2^n · S_0)
  for (let k = 1n; ; k++) {
    a = k * a + (k % 2n === 0n ? 1n : -1n)
    fact *= k
    const floor = (scale * a) / fact // a > 0 for k >= 2, and S_1 = 0: BigInt division floors here
    if (floor === prev) return floor
    prev = floor
  }
}

const INV_E_64 = invEFloor(64)
const INV_E_HI = Number(INV_E_64 >> 32n)
const INV_E_LO = Number(INV_E_64 & 0xffff_ffffn)

/**
 * A sample Z of the discrete Laplace distribution with scale t = scaleNum/scaleDen:
 * P[Z = z] = (1 - e^{-1/t}) / (1 + e^{-1/t}) · e^{-|z|/t} for every integer z
 * (CKS Algorithm 2). Adding it to an integer-valued query of L1 sensitivity Δ is
 * (Δ/t)-differentially private.
 */
export function sampleDiscreteLaplace(rng: RandomReader, scaleNum: bigint, scaleDen: bigint): bigint {
  if (scaleNum < 1n || scaleDen < 1n) throw new RangeError(`sampleDiscreteLaplace: bad scale ${scaleNum}/${scaleDen}`)
  const { t, s } = lowestTerms(scaleNum, scaleDen)
  if (t <= SMALL && s <= SMALL) return BigInt(discreteLaplaceSmall(rng, Number(t), Number(s)))
  return sampleDiscreteLaplaceBig(rng, t, s)
}

function lowestTerms(num: bigint, den: bigint): { t: bigint; s: bigint } {
  const g = gcd(num, den)
  return { t: num / g, s: den / g }
}

/**
 * The scale t/s in lowest terms as plain numbers when the number path can sample it (both
 * at most 2^20), else null. Computed once per policy, so the hot path skips the BigInt gcd.
 */
export function smallLaplaceScale(scaleNum: bigint, scaleDen: bigint): { t: number; s: number } | null {
  if (scaleNum < 1n || scaleDen < 1n) throw new RangeError(`smallLaplaceScale: bad scale ${scaleNum}/${scaleDen}`)
  const { t, s } = lowestTerms(scaleNum, scaleDen)
  return t <= SMALL && s <= SMALL ? { t: Number(t), s: Number(s) } : null
}

/** sampleDiscreteLaplace for a scale from smallLaplaceScale: the same draw, as a number. */
export function sampleDiscreteLaplaceSmall(rng: RandomReader, scale: { t: number; s: number }): number {
  return discreteLaplaceSmall(rng, scale.t, scale.s)
}

/**
 * A sample Z of the discrete Gaussian with variance parameter σ² = varNum/varDen:
 * P[Z = z] ∝ e^{-z²/(2σ²)} for every integer z (CKS Algorithm 3: discrete Laplace
 * proposals with scale t = floor(σ) + 1, accepted with probability
 * exp(-(|Y| - σ²/t)² / (2σ²))). Adding independent samples to each coordinate of an
 * integer-valued query of L2 sensitivity Δ is (Δ²/(2σ²))-zCDP (CKS §2: the Rényi
 * divergence of two discrete Gaussians shifted by integers μ, ν is at most
 * α(μ-ν)²/(2σ²), and it adds up over independent coordinates).
 */
export function sampleDiscreteGaussian(rng: RandomReader, varNum: bigint, varDen: bigint): bigint {
  if (varNum < 1n || varDen < 1n) throw new RangeError(`sampleDiscreteGaussian: bad variance ${varNum}/${varDen}`)
  const g = gcd(varNum, varDen)
  const a = varNum / g
  const b = varDen / g
  const t = isqrt(a / b) + 1n // floor(sqrt(a/b)) = floor(sqrt(floor(a/b)))
  // γ = (|Y| - σ²/t)² / (2σ²) = (|Y|·b·t - a)² / (2·a·b·t²)
  const den = 2n * a * b * t * t
  for (;;) {
    const y = sampleDiscreteLaplace(rng, t, 1n)
    const absY = y < 0n ? -y : y
    const d = absY * b * t - a
    if (bernoulliExpNeg(rng, d * d, den)) return y
  }
}

// --- The same algorithms on small integers, without BigInt ---
//
// For the scales output protection uses (t = 2·2^k/ε grid units, a few thousand to a few
// million), every quantity below fits a double's 53-bit integer range, and uniform draws
// stay under 2^32, so plain numbers compute exactly what the BigInt code computes, several
// times faster. The draws read the random source bit for bit as the BigInt path does
// (uniform(n) for n <= 2^32 is uniformSmall(n), bernoulli(num, den) for den <= 2^52 is
// bernoulliSmall), so both give the same sample from the same bytes;
// test/privacy/samplers.test.ts checks that.

/** Scales up to 2^20 take the number path; den·k then stays far below 2^52 (bernoulliSmall's limit). */
const SMALL = 1n << 20n

/** CKS Algorithm 1 on numbers: true with probability exp(-num/den). */
function bernoulliExpNegSmall(rng: RandomReader, num: number, den: number): boolean {
  if (num === den) return bernoulliInvE(rng)
  if (num < den) {
    let k = 1
    while (rng.bernoulliSmall(num, den * k)) k++
    return (k & 1) === 1
  }
  const whole = Math.floor(num / den)
  for (let i = 0; i < whole; i++) {
    if (!bernoulliInvE(rng)) return false
  }
  return bernoulliExpNegSmall(rng, num - whole * den, den)
}

/** CKS Algorithm 2 on numbers: discrete Laplace with scale t/s (t, s coprime, <= 2^20). */
function discreteLaplaceSmall(rng: RandomReader, t: number, s: number): number {
  for (;;) {
    const u = rng.uniformSmall(t)
    if (!bernoulliExpNegSmall(rng, u, t)) continue
    let v = 0
    while (bernoulliInvE(rng)) v++
    const x = u + t * v
    const y = (x - (x % s)) / s // exact integer division (x, s are exact integers)
    const negative = rng.coin()
    if (negative && y === 0) continue
    return negative ? -y : y
  }
}

/** CKS Algorithm 2 on BigInt, for any scale t/s (t, s coprime); exported for the equivalence test. */
export function sampleDiscreteLaplaceBig(rng: RandomReader, t: bigint, s: bigint): bigint {
  for (;;) {
    // X = U + t·V is geometric with parameter 1 - e^{-1/t}: U uniform below t, accepted
    // with probability e^{-U/t}, plus t times a geometric count of e^{-1} successes.
    const u = rng.uniform(t)
    if (!bernoulliExpNeg(rng, u, t)) continue
    let v = 0n
    while (bernoulliInvE(rng)) v++
    const y = (u + t * v) / s // geometric with parameter 1 - e^{-s/t}
    const negative = rng.coin()
    if (negative && y === 0n) continue // otherwise zero would be counted twice
    return negative ? -y : y
  }
}
