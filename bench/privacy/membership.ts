// Label-only membership inference (Choquette-Choo, Tramèr, Carlini, Papernot, "Label-Only
// Membership Inference Attacks", ICML 2021), the data-augmentation variant: a model tends to
// keep its label on shifted and noisy copies of a digit it was trained on more often than on
// one it never saw. The attacker queries the candidate and its copies, scores it by how many
// answers carry the candidate's true label, and calls it a member above a threshold. Reported
// as true-positive rate at a fixed false-positive rate (Carlini et al. 2022, "Membership
// Inference Attacks From First Principles": the low-FPR regime is what matters) and as AUC.

import { shift } from '../../models/mnist/train.ts'
import type { Rng } from './rng.ts'

/** Shifts (dx, dy) the attacker queries besides the candidate itself. */
export const SHIFTS: readonly [number, number][] = [
  [1, 0], [-1, 0], [0, 1], [0, -1],
  [2, 0], [-2, 0], [0, 2], [0, -2],
]
/** Gaussian-noise copies and their σ (the boundary-distance flavour of the same attack). */
export const NOISE_SIGMA = 0.25
export const NOISE_COPIES = 3

/** The candidate, its shifted copies, then `noisy` noisy copies (seeded). */
export function membershipQueries(image: Float32Array, rng: Rng, noisy = NOISE_COPIES): Float32Array[] {
  const out = [image, ...SHIFTS.map(([dx, dy]) => shift(image, dx, dy))]
  for (let k = 0; k < noisy; k++) {
    out.push(image.map((v) => Math.min(1, Math.max(0, v + NOISE_SIGMA * rng.normal()))))
  }
  return out
}

/**
 * The share of the released labels that equal the candidate's true label (of the queries
 * that were answered: screening may refuse some).
 */
export function labelScore(labels: readonly number[], trueLabel: number): number {
  return labels.length === 0 ? NaN : labels.filter((l) => l === trueLabel).length / labels.length
}

export interface TprAtFpr {
  /** Share of members called members. */
  tpr: number
  /** Share of non-members called members (at most the target). */
  fpr: number
  /** Members are scores >= threshold (Infinity: nobody). */
  threshold: number
}

/**
 * The best true-positive rate of a threshold rule "score >= τ" whose false-positive rate on
 * `nonMembers` is at most `target`. With fewer than 1 / target non-members, that means no
 * false positive at all.
 */
export function tprAtFpr(members: readonly number[], nonMembers: readonly number[], target: number): TprAtFpr {
  const thresholds = [...new Set([...members, ...nonMembers])].sort((a, b) => a - b)
  let best: TprAtFpr = { tpr: 0, fpr: 0, threshold: Infinity }
  for (const tau of thresholds) {
    const fpr = nonMembers.filter((s) => s >= tau).length / nonMembers.length
    if (fpr > target) continue
    const tpr = members.filter((s) => s >= tau).length / members.length
    if (tpr > best.tpr) best = { tpr, fpr, threshold: tau }
  }
  return best
}

/** Area under the ROC curve: P(member score > non-member score), ties counted half. */
export function auc(members: readonly number[], nonMembers: readonly number[]): number {
  if (members.length === 0 || nonMembers.length === 0) return NaN
  const sorted = [...nonMembers].sort((a, b) => a - b)
  const below = (x: number, strict: boolean) => {
    let lo = 0
    let hi = sorted.length
    while (lo < hi) {
      const mid = (lo + hi) >> 1
      if (strict ? sorted[mid]! < x : sorted[mid]! <= x) lo = mid + 1
      else hi = mid
    }
    return lo
  }
  let sum = 0
  for (const m of members) sum += below(m, true) + (below(m, false) - below(m, true)) / 2
  return sum / (members.length * nonMembers.length)
}
