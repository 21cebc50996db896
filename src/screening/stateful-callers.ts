// The stateful detector's model-wide view: one history of the recent queries of every caller
// of the model (as Blacklight keeps one index for all its users), judged exactly like a
// caller's own history (stateful.ts judgeBatch: mean RMS distance to the k nearest, exact
// repeats by keyed digest skipped). A probing run split over many identities keeps each
// identity's own history short, but not this one: 20 identities sending 20 near-duplicates
// each fill it with close neighbours as fast as one identity sending 400.
//
// The alarm refuses the caller whose query has k close neighbours here (and starts its
// cool-down), whoever sent the neighbours. A benign caller is refused only if its input is a
// near-duplicate (not an exact copy) of k recent queries, which distinct natural inputs are
// not (docs/screening.md measures it). It lives in this process: with `state.redis` each
// replica keeps its own.
//
// Cost per item: one pooling pass and at most `size` partial distances (early exit), as a
// full per-caller history. Memory: size * (4 * dims + 8) bytes per model, fixed.

import type { Detector, DetectorResult, ScreenBatch, ScreeningMode } from './detector.ts'
import type { Encoder } from './encoder.ts'
import { History, judgeBatch } from './stateful.ts'

export interface CallersIndexOptions {
  k: number
  /** Queries kept over all callers (a ring: the oldest is overwritten). */
  size: number
  threshold: number
  mode: ScreeningMode
  encoder: Encoder
}

export function createCallersIndexDetector(o: CallersIndexOptions): Detector {
  if (o.k > o.size) throw new RangeError(`stateful acrossCallers: k (${o.k}) must not exceed the history size (${o.size})`)
  const history = new History(o.encoder.dims, o.size)
  return {
    name: 'stateful-callers',
    needs: 'input',
    alarmWhen: 'below',
    refusal: 'attack_suspected',
    mode: o.mode,
    inspect(batch: ScreenBatch): DetectorResult | null {
      const score = judgeBatch(history, batch.digests, (i) => o.encoder.encode(batch.items[i]!), o.k)
      if (score === Infinity) return null
      return { score, threshold: o.threshold, alarm: score < o.threshold }
    },
    memory: () => ({ principals: 1, stored: history.count, evictions: 0 }),
  }
}
