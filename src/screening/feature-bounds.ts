// Per-feature bounds learned from a calibration set. Input validation
// already refuses values outside the manifest's range and NaN/Inf; this detector asks
// whether an item lies where the model's data lies. For each feature it knows the smallest
// and largest value seen on the calibration set; an item's score is the total amount, in
// units of the input's range, by which its values fall outside those bounds. Natural digits
// score near 0 (ink rarely lands where no calibration digit had any); perturbations spread
// over the whole image (FGSM) land far outside. The threshold is set by leave-one-out on the
// calibration set (src/screening/calibration.ts).

import type { Detector, DetectorResult, ScreenBatch, ScreeningMode } from './detector.ts'

export interface FeatureBoundsOptions {
  lower: Float32Array
  upper: Float32Array
  /** The input's range, to express the excess in units of it. */
  lo: number
  hi: number
  threshold: number
  mode: ScreeningMode
}

/** Total excess of `item` outside [lower, upper], in units of (hi - lo). */
export function boundsExcess(item: ArrayLike<number>, lower: ArrayLike<number>, upper: ArrayLike<number>, span: number): number {
  let s = 0
  for (let i = 0; i < item.length; i++) {
    const v = item[i]!
    if (v > upper[i]!) s += v - upper[i]!
    else if (v < lower[i]!) s += lower[i]! - v
  }
  return s / span
}

export function createFeatureBoundsDetector(o: FeatureBoundsOptions): Detector {
  const span = o.hi - o.lo
  return {
    name: 'feature-bounds',
    needs: 'input',
    alarmWhen: 'above',
    refusal: 'suspicious_input',
    mode: o.mode,
    perItem: true,
    inspect(batch: ScreenBatch): DetectorResult {
      const scores = batch.items.map((item) => {
        if (item.length !== o.lower.length) throw new Error(`feature bounds: item has ${item.length} values, the calibration ${o.lower.length}`)
        return boundsExcess(item, o.lower, o.upper, span)
      })
      const score = scores.reduce((a, b) => Math.max(a, b), 0)
      return { score, threshold: o.threshold, alarm: score > o.threshold, items: scores.map((x) => x > o.threshold) }
    },
  }
}
