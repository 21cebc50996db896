// What a caller sees of one score row: clamp, renormalise, then the output mode (all
// scores, the k best, or the label alone), then rounding to d decimals, in that order.
// These functions read only what they are given: when noise is on, that is the noisy
// vector, so everything here is post-processing and costs no privacy.
//
// The response keeps the model's output name, datatype and shape in every mode, so
// clients built from the model metadata keep working:
//   scores  every class, renormalised to sum to 1, rounded;
//   top-k   the k highest-ranked classes keep their (renormalised, rounded) score, every
//           other class reads 0;
//   label   one-hot: 1 for the highest-ranked class, 0 elsewhere.
// Ties in rank go to the lower class index. After rounding, scores need not sum to 1.

export type OutputMode = 'scores' | 'top-k' | 'label'

export interface RowSpec {
  mode: OutputMode
  /** Classes kept in top-k mode. */
  topK: number
  /** Decimals kept; applied last. */
  roundDecimals: number
}

/** x rounded to d decimals, to nearest (ties away from zero), from x's exact binary value. */
export function roundDecimals(x: number, d: number): number {
  // toFixed rounds the exact value of the double, without the double rounding that
  // Math.round(x * 10^d) / 10^d suffers (1.005 * 100 = 100.49999999999999).
  return Number(x.toFixed(d))
}

/**
 * Non-negative mass, normalised to sum 1; all zero (or no finite mass) becomes uniform.
 * Reads `mass[from..to)`.
 */
export function renormalise(mass: ArrayLike<number>, from = 0, to = mass.length): number[] {
  const c = to - from
  const out = new Array<number>(c)
  let total = 0
  for (let i = 0; i < c; i++) {
    const v = mass[from + i]!
    out[i] = Number.isFinite(v) && v > 0 ? v : 0
    total += out[i]!
  }
  if (!(total > 0) || !Number.isFinite(total)) return out.fill(1 / c)
  for (let i = 0; i < c; i++) out[i] = out[i]! / total
  return out
}

/** Class indices by rank, best first; ties to the lower index. */
export function rankOrder(rank: ArrayLike<number>): number[] {
  return [...Array(rank.length).keys()].sort((a, b) => rank[b]! - rank[a]! || a - b)
}

/** Index of the highest rank; ties to the lower index. */
export function argmax(rank: ArrayLike<number>): number {
  let best = 0
  for (let i = 1; i < rank.length; i++) if (rank[i]! > rank[best]!) best = i
  return best
}

/**
 * The released row. `rank` orders the classes (top-k, label); `mass` gives the scores
 * (clamped at 0 and renormalised here). Without noise both are the model's scores; with
 * noise `rank` is the noisy vector and `mass` the noisy vector clamped to the grid range.
 */
export function releaseRow(rank: ArrayLike<number>, mass: ArrayLike<number>, spec: RowSpec): number[] {
  const c = rank.length
  if (spec.mode === 'label') {
    const out = new Array<number>(c).fill(0)
    out[argmax(rank)] = 1
    return out
  }
  const p = renormalise(mass)
  if (spec.mode === 'top-k' && spec.topK < c) {
    const keep = new Set(rankOrder(rank).slice(0, spec.topK))
    for (let i = 0; i < c; i++) if (!keep.has(i)) p[i] = 0
  }
  for (let i = 0; i < c; i++) p[i] = roundDecimals(p[i]!, spec.roundDecimals)
  return p
}
