// What a policy reload keeps of a model's screening: the per-caller history of its stateful
// detectors (query runs, extraction statistics). A detector's history depends on the settings
// that shape it (k, pool size, history length, window, ...), not on the threshold or the mode,
// which only judge each score: a reload that changes only those keeps the detector and judges
// its scores by the new threshold and mode; one that changes what shapes the history starts a
// new detector, with an empty history (that model's callers are judged afresh).

import type { ScreeningMode } from '../config/screening-policy.ts'
import type { AnyDetector, DetectorResult } from './detector.ts'

interface Kept {
  /** The settings that shape the history, as one string. */
  key: string
  threshold: number
  mode: ScreeningMode
}

const kept = new WeakMap<AnyDetector, Kept>()
/** A detector judged by other settings -> the detector that holds the history. */
const bases = new WeakMap<AnyDetector, AnyDetector>()

/** The detector keeping history under `key`: the previous generation's (rejudged when threshold or mode changed), else a new one. */
export function keepHistory(previous: readonly AnyDetector[] | undefined, key: string, judging: { threshold: number; mode: ScreeningMode }, make: () => AnyDetector): AnyDetector {
  const base = previous?.map((d) => bases.get(d) ?? d).find((d) => kept.get(d)?.key === key)
  if (!base) {
    const d = make()
    kept.set(d, { key, ...judging })
    return d
  }
  const own = kept.get(base)!
  return own.threshold === judging.threshold && own.mode === judging.mode ? base : rejudged(base, judging.threshold, judging.mode)
}

/** `base` with its scores judged against another threshold, in another mode; the history stays `base`'s. */
function rejudged(base: AnyDetector, threshold: number, mode: ScreeningMode): AnyDetector {
  const judge = (r: DetectorResult | null): DetectorResult | null => r && { score: r.score, threshold, alarm: base.alarmWhen === 'below' ? r.score < threshold : r.score > threshold }
  const d: AnyDetector = base.shared
    ? { ...base, mode, inspect: async (batch, variants) => judge(await base.inspect(batch, variants)) }
    : { ...base, mode, inspect: (batch, variants) => judge(base.inspect(batch, variants)) }
  bases.set(d, base)
  return d
}
