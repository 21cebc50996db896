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
// not (docs/screening.md measures it).
//
// With `state.redis` the index is one shared ring per model in Redis (shared-ring.ts), under
// `<prefix>screening:stateful-callers:<model>:n<size>d<dims>u8:all` (`:d`, `:v`; capped at `size`
// queries, expiring `ttlMs` after the last query of any caller), and each replica judges on its
// copy, brought up to date per request with what the other replicas appended since (one round
// trip; the same verdicts as one process taking every request in the order Redis took them).
//
// Cost per item: one pooling pass and at most `size` partial distances (early exit), as a
// full per-caller history. Memory: size * 4 * dims bytes per model, fixed (the copy, with
// Redis); in Redis size * (dims + 16) bytes.

import type { Detector, DetectorResult, ScreenBatch, ScreeningMode, SharedDetector } from './detector.ts'
import type { Encoder } from './encoder.ts'
import { RingCopy, sharedRing } from './shared-ring.ts'
import { sharedDigest, stateKey, type ScreeningStore } from './shared-store.ts'
import { History, judgeBatch } from './stateful.ts'

export interface CallersIndexOptions {
  k: number
  /** Queries kept over all callers (a ring: the oldest is overwritten). */
  size: number
  threshold: number
  mode: ScreeningMode
  encoder: Encoder
}

/** What the index is, in process or shared alike. */
const CALLERS_INDEX = { name: 'stateful-callers', needs: 'input', alarmWhen: 'below', refusal: 'attack_suspected' } as const

function checkSize(o: CallersIndexOptions): void {
  if (o.k > o.size) throw new RangeError(`stateful acrossCallers: k (${o.k}) must not exceed the history size (${o.size})`)
}

export function createCallersIndexDetector(o: CallersIndexOptions): Detector {
  checkSize(o)
  const history = new History(o.encoder.dims, o.size)
  return {
    ...CALLERS_INDEX,
    mode: o.mode,
    inspect(batch: ScreenBatch): DetectorResult | null {
      const score = judgeBatch(history, batch.digests, (i) => o.encoder.encode(batch.items[i]!), o.k)
      if (score === Infinity) return null
      return { score, threshold: o.threshold, alarm: score < o.threshold }
    },
    memory: () => ({ principals: 1, stored: history.count, evictions: 0 }),
  }
}

/** The index in Redis, shared by the replicas of a gateway. */
export function createSharedCallersIndexDetector(o: CallersIndexOptions, model: string, store: ScreeningStore): SharedDetector {
  checkSize(o)
  const dims = o.encoder.dims
  const ring = sharedRing(store, o.size, dims, `stateful-callers index on model ${model}`)
  const copy = new RingCopy(dims, o.size)
  const key = stateKey('stateful-callers', model, `n${o.size}d${dims}u8`, 'all')
  return {
    ...CALLERS_INDEX,
    mode: o.mode,
    shared: true,
    async inspect(batch: ScreenBatch): Promise<DetectorResult | null> {
      const score = await ring.judge(key, copy, batch.items.map(sharedDigest), batch.items.map((item) => o.encoder.encode(item)), o.k)
      if (score === Infinity) return null
      return { score, threshold: o.threshold, alarm: score < o.threshold }
    },
    memory: () => ({ principals: 1, stored: copy.count, evictions: 0 }),
  }
}
