// The Shapiro-Wilk test of normality, as Royston's algorithm AS R94 (Applied Statistics 44,
// 1995) computes it: the same coefficients and p-value approximation as R's shapiro.test and
// scipy.stats.shapiro, for 3 <= n <= 5000. PRADA (src/screening/prada.ts) compares W itself
// with its threshold; the p-value is reported alongside for operators.
//
// Pure functions, no state: the coefficients depend only on n and are cached per n, so the
// per-query cost of the extraction detector is one sort and two passes over the sample.

export const SW_MIN_N = 3
export const SW_MAX_N = 5000

/** Horner evaluation of c[0] + c[1] x + c[2] x^2 + ... */
function poly(c: readonly number[], x: number): number {
  let r = 0
  for (let i = c.length - 1; i >= 0; i--) r = r * x + c[i]!
  return r
}

/**
 * Inverse of the standard normal CDF (Acklam's rational approximation, relative error below
 * 1.2e-9, refined by one Halley step on erfc): ample for order-statistic scores.
 */
export function normalQuantile(p: number): number {
  if (!(p > 0 && p < 1)) {
    if (p === 0) return -Infinity
    if (p === 1) return Infinity
    return NaN
  }
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239]
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1]
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783]
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416]
  const pLow = 0.02425
  let x: number
  if (p < pLow) {
    const q = Math.sqrt(-2 * Math.log(p))
    x = (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1)
  } else if (p <= 1 - pLow) {
    const q = p - 0.5
    const r = q * q
    x = ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) /
      (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1)
  } else {
    const q = Math.sqrt(-2 * Math.log(1 - p))
    x = -(((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1)
  }
  // One Halley step: e = Phi(x) - p.
  const e = 0.5 * erfc(-x / Math.SQRT2) - p
  const u = e * Math.sqrt(2 * Math.PI) * Math.exp((x * x) / 2)
  return x - u / (1 + (x * u) / 2)
}

/**
 * Complementary error function (W. J. Cody's rational approximations, relative error near
 * machine precision on the whole real line).
 */
export function erfc(x: number): number {
  const ax = Math.abs(x)
  if (ax < 0.5) {
    // erf(x) = x P(x^2) / Q(x^2); erfc = 1 - erf loses nothing here (erf < 0.53).
    const t = x * x
    return 1 - (x * poly(ERF_P, t)) / poly(ERF_Q, t)
  }
  let r: number
  if (ax < 4) {
    r = (Math.exp(-ax * ax) * poly(ERFC_P, ax)) / poly(ERFC_Q, ax)
  } else {
    const z = 1 / (ax * ax)
    r = (Math.exp(-ax * ax) / ax) * (1 / Math.sqrt(Math.PI) - (z * poly(ERFC_TAIL_P, z)) / poly(ERFC_TAIL_Q, z))
  }
  return x < 0 ? 2 - r : r
}

// Cody's coefficients (ACM TOMS 715, CALERF), constant term first.
const ERF_P = [3209.3775891384694, 377.485237685302, 113.86415415105016, 3.1611237438705656, 0.18577770618460315]
const ERF_Q = [2844.2368334391706, 1282.6165260773723, 244.02463793444417, 23.601290952344122, 1]
const ERFC_P = [
  1230.339354797997, 2051.0783778260716, 1712.0476126340707, 881.9522212417691, 298.6351381974001, 66.11919063714163, 8.883149794388376,
  0.5641884969886701, 2.1531153547440383e-8,
]
const ERFC_Q = [1230.3393548037495, 3439.3676741437216, 4362.619090143247, 3290.7992357334597, 1621.3895745666903, 537.1811018620099, 117.6939508913125, 15.744926110709835, 1]
const ERFC_TAIL_P = [6.58749161529837803e-4, 1.60837851487422766e-2, 1.25781726111229246e-1, 3.60344899949804439e-1, 3.05326634961232344e-1, 1.63153871373020978e-2]
const ERFC_TAIL_Q = [2.33520497626869185e-3, 6.05183413124413191e-2, 5.27905102951428412e-1, 1.87295284992346725, 2.56852019228982242, 1]

/** P(Z > z) for a standard normal Z. */
export function normalUpperTail(z: number): number {
  return 0.5 * erfc(z / Math.SQRT2)
}

const coefficientCache = new Map<number, Float64Array>()
const COEFFICIENT_CACHE_MAX = 64

/**
 * The AS R94 coefficients a[0..n/2) for the lower half of the order statistics (positive
 * numbers; the full weight vector is -a mirrored onto +a).
 */
export function shapiroWilkCoefficients(n: number): Float64Array {
  const cached = coefficientCache.get(n)
  if (cached) return cached
  const half = Math.floor(n / 2)
  const a = new Float64Array(half)
  if (n === 3) {
    a[0] = Math.SQRT1_2
  } else {
    const c1 = [0, 0.221157, -0.147981, -2.07119, 4.434685, -2.706056]
    const c2 = [0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633]
    const m = new Float64Array(half)
    let summ2 = 0
    for (let i = 0; i < half; i++) {
      m[i] = normalQuantile((i + 1 - 0.375) / (n + 0.25))
      summ2 += m[i]! * m[i]!
    }
    summ2 *= 2
    const ssumm2 = Math.sqrt(summ2)
    const rsn = 1 / Math.sqrt(n)
    const a1 = poly(c1, rsn) - m[0]! / ssumm2
    let first: number
    let fac: number
    if (n > 5) {
      first = 2
      const a2 = -m[1]! / ssumm2 + poly(c2, rsn)
      fac = Math.sqrt((summ2 - 2 * m[0]! ** 2 - 2 * m[1]! ** 2) / (1 - 2 * a1 ** 2 - 2 * a2 ** 2))
      a[1] = a2
    } else {
      first = 1
      fac = Math.sqrt((summ2 - 2 * m[0]! ** 2) / (1 - 2 * a1 ** 2))
    }
    a[0] = a1
    for (let i = first; i < half; i++) a[i] = -m[i]! / fac
  }
  if (coefficientCache.size >= COEFFICIENT_CACHE_MAX) coefficientCache.delete(coefficientCache.keys().next().value!)
  coefficientCache.set(n, a)
  return a
}

export interface ShapiroWilkResult {
  /** The statistic, in (0, 1]; near 1 for a normal sample. */
  w: number
  /** Royston's p-value approximation for H0 "the sample is normal". */
  p: number
  n: number
}

/**
 * W and its p-value for a sample (not modified). Throws for n outside [3, 5000] or a sample
 * whose values are all equal (W is undefined there).
 */
export function shapiroWilk(sample: ArrayLike<number>): ShapiroWilkResult {
  const n = sample.length
  if (n < SW_MIN_N || n > SW_MAX_N) throw new RangeError(`Shapiro-Wilk needs between ${SW_MIN_N} and ${SW_MAX_N} values, got ${n}`)
  return shapiroWilkSorted(Float64Array.from(sample).sort())
}

/** shapiroWilk for a sample already in ascending order (a caller that keeps it sorted skips the sort). */
export function shapiroWilkSorted(x: Float64Array): ShapiroWilkResult {
  const n = x.length
  if (n < SW_MIN_N || n > SW_MAX_N) throw new RangeError(`Shapiro-Wilk needs between ${SW_MIN_N} and ${SW_MAX_N} values, got ${n}`)
  const range = x[n - 1]! - x[0]!
  if (!(range > 0)) throw new RangeError('Shapiro-Wilk is undefined for a sample whose values are all equal')
  const a = shapiroWilkCoefficients(n)
  // Scaled by the range, as AS R94 does, to keep the sums well conditioned.
  let mean = 0
  for (let i = 0; i < n; i++) mean += x[i]! / range
  mean /= n
  let ssq = 0
  for (let i = 0; i < n; i++) ssq += (x[i]! / range - mean) ** 2
  let sa = 0
  for (let i = 0; i < a.length; i++) sa += a[i]! * (x[n - 1 - i]! - x[i]!) / range
  let w = (sa * sa) / ssq
  if (w > 1) w = 1
  return { w, p: shapiroWilkPValue(w, n), n }
}

/** Royston's (1995) normalising approximation of the null distribution of W. */
export function shapiroWilkPValue(w: number, n: number): number {
  if (n === 3) {
    const p = (6 / Math.PI) * (Math.asin(Math.sqrt(w)) - Math.asin(Math.sqrt(0.75)))
    return Math.max(0, Math.min(1, p))
  }
  if (w >= 1) return 1
  let y = Math.log(1 - w)
  let m: number
  let s: number
  if (n <= 11) {
    const gamma = poly([-2.273, 0.459], n)
    if (y >= gamma) return 1e-99
    y = -Math.log(gamma - y)
    m = poly([0.544, -0.39978, 0.025054, -6.714e-4], n)
    s = Math.exp(poly([1.3822, -0.77857, 0.062767, -0.0020322], n))
  } else {
    const xx = Math.log(n)
    m = poly([-1.5861, -0.31082, -0.083751, 0.0038915], xx)
    s = Math.exp(poly([-0.4803, -0.082676, 0.0030302], xx))
  }
  return normalUpperTail((y - m) / s)
}
