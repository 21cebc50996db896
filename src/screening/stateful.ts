// Stateful detection of query-based black-box attacks (Chen, Carlini, Wagner, "Stateful
// Detection of Black-Box Adversarial Attacks", 2019). Decision- and score-based attacks
// (boundary, HopSkipJump, NES) estimate the model's boundary or gradient by sending long runs
// of queries that differ by tiny perturbations. Per principal, the detector keeps a ring of
// its recent queries (pooled to a compact vector, src/screening/encoder.ts); the score of a
// query is the mean RMS distance to its k nearest earlier queries, and a score below the
// threshold raises the alarm. Benign callers, even ones who send many digits of one class,
// rarely have k earlier queries that close.
//
// Exact repeats (same bytes, by keyed digest) are neither scored against the copy nor stored
// again: a retried request teaches the caller nothing new.
//
// Why not Blacklight's hashed fingerprints: on mnist, distinct benign digits share up to 41
// of their 50 top window hashes (strokes look alike wherever they are), while an attack
// query with pixel noise of 0.005 shares about 35 with its neighbour, so no threshold
// separates them (docs/screening.md has the measurement). Distances between pooled queries
// separate them by a factor of two and more.
//
// Cost per item: one pooling pass and at most historyPerPrincipal partial distances over
// `dims` values (early exit once a distance cannot be among the k nearest). Memory: dims*4+8
// bytes per stored query, bounded per principal (the ring) and over principals (LRU store).
// With `state.redis` the ring lives in Redis instead (stateful-shared.ts), judged the same way
// (shared-ring.ts: Redis says which queries are repeats, a replica's copy scores the rest).

import type { StatefulPolicy } from '../config/screening-policy.ts'
import type { Detector, DetectorResult, ScreenBatch, ScreeningMode } from './detector.ts'
import { squaredDistance, type Encoder } from './encoder.ts'
import { PrincipalStore } from './principal-store.ts'
import { VectorRing } from './vector-ring.ts'

export interface StatefulOptions extends Pick<StatefulPolicy, 'k' | 'historyPerPrincipal' | 'maxPrincipals' | 'maxStoredQueries'> {
  threshold: number
  mode: ScreeningMode
  encoder: Encoder
}

/** One caller's recent queries, with the digest of each (to tell exact repeats). */
export class History extends VectorRing {
  digests: Float64Array
  readonly seen = new Set<number>()

  constructor(dims: number, capacity: number) {
    super(dims, capacity, 16)
    this.digests = new Float64Array(Math.min(capacity, 16))
  }

  addQuery(v: Float32Array, digest: number): void {
    if (this.count === this.capacity) this.seen.delete(this.digests[this.next]!)
    const slot = this.add(v)
    this.digests[slot] = digest
    this.seen.add(digest)
  }

  protected override grow(slots: number): void {
    super.grow(slots)
    const digests = new Float64Array(slots)
    digests.set(this.digests)
    this.digests = digests
  }
}

/** Mean of the k smallest distances from `v` to the history (RMS per value), or null with fewer than k. */
export function meanNearestDistance(h: VectorRing, v: Float32Array, k: number): number | null {
  if (h.count < k) return null
  // The k smallest squared distances so far, ascending.
  const best = new Float64Array(k).fill(Infinity)
  for (let row = 0; row < h.count; row++) {
    const d = squaredDistance(v, h.vectors, row, best[k - 1]!)
    if (d >= best[k - 1]!) continue
    let i = k - 1
    while (i > 0 && best[i - 1]! > d) {
      best[i] = best[i - 1]!
      i--
    }
    best[i] = d
  }
  let sum = 0
  for (let i = 0; i < k; i++) sum += Math.sqrt(best[i]! / h.dims)
  return sum / k
}

/**
 * Judges a batch against a principal's history and records it there, item by item: an exact
 * repeat (its digest is in the history) is skipped; any other item is scored against the
 * history, earlier items of the batch included, then added. Returns the smallest score
 * (Infinity: nothing scored). The shared ring (shared-ring.ts) judges the same way, so one
 * replica and many judge alike.
 */
export function judgeBatch(history: History, digests: ArrayLike<number>, encoded: (i: number) => Float32Array, k: number): number {
  return scoreInTurn(history, digests.length, (i) => !history.seen.has(digests[i]!), encoded, (v, i) => history.addQuery(v, digests[i]!), k)
}

/**
 * The judging rule both forms share: in order, each of `count` queries that is new (asked when
 * its turn comes, after the earlier ones were added) is scored against `ring`, then added.
 * Returns the smallest score (Infinity: nothing scored).
 */
export function scoreInTurn(ring: VectorRing, count: number, isNew: (i: number) => boolean, encoded: (i: number) => Float32Array, add: (v: Float32Array, i: number) => void, k: number): number {
  let score = Infinity
  for (let i = 0; i < count; i++) {
    if (!isNew(i)) continue
    const v = encoded(i)
    const d = meanNearestDistance(ring, v, k)
    if (d !== null && d < score) score = d
    add(v, i)
  }
  return score
}

/** What the stateful detector is, in process or shared (stateful-shared.ts) alike. */
export const STATEFUL_DETECTOR = { name: 'stateful', needs: 'input', alarmWhen: 'below', refusal: 'attack_suspected' } as const

export function createStatefulDetector(o: StatefulOptions): Detector {
  if (o.k > o.historyPerPrincipal) throw new RangeError(`stateful: k (${o.k}) must not exceed historyPerPrincipal (${o.historyPerPrincipal})`)
  const store = new PrincipalStore<History>({
    maxPrincipals: o.maxPrincipals,
    maxUnits: Math.max(o.maxStoredQueries, o.historyPerPrincipal),
    create: () => new History(o.encoder.dims, o.historyPerPrincipal),
    units: (h) => h.count,
  })
  return {
    ...STATEFUL_DETECTOR,
    mode: o.mode,
    inspect(batch: ScreenBatch): DetectorResult | null {
      const history = store.use(batch.principal)
      const score = judgeBatch(history, batch.digests, (i) => o.encoder.encode(batch.items[i]!), o.k)
      store.settle(batch.principal)
      if (score === Infinity) return null
      return { score, threshold: o.threshold, alarm: score < o.threshold }
    },
    memory: () => ({ principals: store.principals, stored: store.units, evictions: store.evictions }),
  }
}
