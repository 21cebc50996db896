// Feature squeezing (Xu, Evans, Qi, "Feature Squeezing: Detecting Adversarial Examples in
// Deep Neural Networks", NDSS 2018). Each item runs on the model together with its squeezed
// variants, in the same batch; the item's score is the largest L1 distance between the
// softmax of the original and that of a squeezed variant (0 = the squeezers change nothing,
// 2 = the prediction moved entirely). Adversarial perturbations are small, precise changes
// that squeezing removes, so their predictions move; natural inputs' predictions do not.
// The threshold is calibrated on benign data for a target false-positive rate
// (src/screening/calibration.ts, `bulwark calibrate MODEL`).

import type { Detector, DetectorResult, ScreenBatch, ScreeningMode } from './detector.ts'
export interface FeatureSqueezingOptions {
  /** An item's squeezed variants (squeezers.ts parseSqueezers). */
  squeeze: (item: Float32Array) => Float32Array[]
  threshold: number
  mode: ScreeningMode
}

export function l1Distance(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0
  for (let i = 0; i < a.length; i++) s += Math.abs(a[i]! - b[i]!)
  return s
}

/** The score of one item: max over variants of L1(p(original), p(variant)). */
export function squeezingScore(original: ArrayLike<number>, variants: readonly ArrayLike<number>[]): number {
  let score = 0
  for (const v of variants) score = Math.max(score, l1Distance(original, v))
  return score
}

export function createFeatureSqueezingDetector(o: FeatureSqueezingOptions): Detector {
  return {
    name: 'feature-squeezing',
    needs: 'output',
    alarmWhen: 'above',
    refusal: 'suspicious_input',
    mode: o.mode,
    perItem: true,
    variants: o.squeeze,
    inspect(batch: ScreenBatch, variantProbabilities): DetectorResult {
      const probabilities = batch.probabilities
      if (!probabilities || !variantProbabilities) throw new Error('feature squeezing needs the model output for each item and its variants')
      const scores = probabilities.map((p, i) => squeezingScore(p, variantProbabilities[i]!))
      const score = scores.reduce((a, b) => Math.max(a, b), 0)
      return { score, threshold: o.threshold, alarm: score > o.threshold, items: scores.map((x) => x > o.threshold) }
    },
  }
}
