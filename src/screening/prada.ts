// Model-extraction detection (PRADA: Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting
// against DNN Model Stealing Attacks", EuroS&P 2019). Benign callers send natural inputs,
// whose distances to their nearest earlier input of the same predicted class are roughly
// normally distributed. Extraction attacks that synthesise queries (Jacobian-based
// augmentation, perturbed seeds) send many inputs unnaturally close to earlier ones, which
// skews that distribution. Per principal and predicted class c the detector keeps a growing
// set G_c and a threshold T_c, and for each query x (Algorithm 1 of the paper):
//
//   d = min over y in G_c of ||x - y||   (none for the first warmupPerClass queries of a class,
//                                          which only seed G_c: a refinement of ours, see the policy)
//   record d in the principal's distances D
//   if d > T_c: add x to G_c, and T_c = max(T_c, mean - std of the distances that grew G_c)
//   once |D| >= minQueries: alarm if Shapiro-Wilk W(D) < wThreshold
//
// Bounded: G_c is a ring of growingSetPerClass entries, D keeps the last windowSize
// distances, and principals live in an LRU store capped in entries and stored queries.
// Inputs are compared after the same pooling as the stateful detector (encoder.ts; the test
// statistic is scale-free). Exact repeats are skipped: a retry is not a new query.
// With `state.redis` the state lives in Redis instead (prada-shared.ts), judged by the same
// `judgeBatch` on each replica's copy of it (prada-copy.ts).
//
// Which queries, and which class. Every query the model answered for the caller is recorded,
// a query that another detector refuses included (screen-output judges with every output-side
// detector): the caller learned something from each, if only the refusal. Queries refused
// before the model ran (cool-down, stateful, feature bounds) have no predicted class, and one
// refused for its budget was never read. When the model's answers carry noise, the predicted
// class is the arg-max of the released (noised, paid-for) row, never of the raw scores, so the
// state, the verdict and the cool-down it starts are post-processing of what the caller paid for
// (src/stages/screening.ts, docs/privacy.md).

import type { ExtractionPolicy } from '../config/screening-policy.ts'
import type { Detector, DetectorResult, ScreenBatch, ScreeningMode } from './detector.ts'
import { squaredDistance, type Encoder } from './encoder.ts'
import { PrincipalStore } from './principal-store.ts'
import { VectorRing } from './vector-ring.ts'
import { shapiroWilkSorted } from './shapiro-wilk.ts'

export interface PradaOptions
  extends Pick<ExtractionPolicy, 'wThreshold' | 'minQueries' | 'windowSize' | 'warmupPerClass' | 'growingSetPerClass' | 'maxPrincipals' | 'maxStoredQueries'> {
  mode: ScreeningMode
  encoder: Encoder
}

/** One class's growing set, with the running sums of the distances that grew it (for T_c). */
export class GrowingSet extends VectorRing {
  n = 0
  sum = 0
  sumSq = 0
  threshold = 0

  constructor(dims: number, capacity: number) {
    super(dims, capacity, 8)
  }
}

export class PradaState {
  readonly classes = new Map<number, GrowingSet>()
  readonly distances: Float64Array
  /** Digests of the last windowSize distinct queries (a set and its ring), for skipping repeats. */
  readonly seen = new Set<number>()
  readonly seenRing: Float64Array
  seenNext = 0
  count = 0
  next = 0
  stored = 0

  constructor(windowSize: number) {
    this.distances = new Float64Array(windowSize)
    this.seenRing = new Float64Array(windowSize).fill(NaN)
  }

  /** Remembers a digest; false if it was already there (an exact repeat). */
  remember(digest: number): boolean {
    if (this.seen.has(digest)) return false
    const old = this.seenRing[this.seenNext]!
    if (!Number.isNaN(old)) this.seen.delete(old)
    this.seenRing[this.seenNext] = digest
    this.seenNext = (this.seenNext + 1) % this.seenRing.length
    this.seen.add(digest)
    return true
  }

  /** The window's distances in ascending order, kept up to date once sortedWindow() was asked for. */
  #sorted: Float64Array | null = null

  record(d: number): void {
    if (this.#sorted) {
      // Keep the sorted copy in step: the distance this one overwrites leaves, d enters.
      const full = this.count === this.distances.length
      if (full) removeSorted(this.#sorted, this.count, this.distances[this.next]!)
      insertSorted(this.#sorted, full ? this.count - 1 : this.count, d)
    }
    this.distances[this.next] = d
    this.next = (this.next + 1) % this.distances.length
    if (this.count < this.distances.length) this.count++
  }

  /**
   * The window's distances, sorted: built once by sorting, then maintained by record() with a
   * binary search and a move per query instead of a sort of the whole window (1,000 values).
   * A state whose distances are set in bulk (the shared store restores a fresh one per
   * request) builds it on first use.
   */
  sortedWindow(): Float64Array {
    if (!this.#sorted) {
      this.#sorted = new Float64Array(this.distances.length)
      this.#sorted.set(this.distances.subarray(0, this.count))
      this.#sorted.subarray(0, this.count).sort()
    }
    return this.#sorted.subarray(0, this.count)
  }

  /** Forgets the sorted window: the shared store's copy changed the distances other than by record(). */
  distancesChanged(): void {
    this.#sorted = null
  }

  /** A new, empty growing set for a class (a hook: the shared store tracks what it writes). */
  newClass(dims: number, capacity: number): GrowingSet {
    return new GrowingSet(dims, capacity)
  }
}

/** Inserts v into a[0..n) (ascending), which has room for one more. */
function insertSorted(a: Float64Array, n: number, v: number): void {
  let lo = 0
  let hi = n
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (a[mid]! <= v) lo = mid + 1
    else hi = mid
  }
  a.copyWithin(lo + 1, lo, n)
  a[lo] = v
}

/** Removes one element equal to v from a[0..n) (ascending). */
function removeSorted(a: Float64Array, n: number, v: number): void {
  let lo = 0
  let hi = n
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (a[mid]! < v) lo = mid + 1
    else hi = mid
  }
  if (lo < n && a[lo] === v) a.copyWithin(lo, lo + 1, n)
}

export function argmax(p: Float32Array): number {
  let best = 0
  for (let i = 1; i < p.length; i++) if (p[i]! > p[best]!) best = i
  return best
}

/**
 * Runs Algorithm 1 over a batch on one principal's state (recording every distinct item) and
 * tests the window. Both stores run this, so one replica and many judge alike.
 */
export function judgeBatch(s: PradaState, batch: ScreenBatch, probabilities: readonly Float32Array[], o: PradaOptions): DetectorResult | null {
  batch.items.forEach((item, i) => {
    if (!s.remember(batch.digests[i]!)) return
    const c = argmax(probabilities[i]!)
    let g = s.classes.get(c)
    if (!g) s.classes.set(c, (g = s.newClass(o.encoder.dims, o.growingSetPerClass)))
    const v = o.encoder.encode(item)
    if (g.count < o.warmupPerClass) {
      g.add(v)
      s.stored++
      return
    }
    const d = g.nearest(v)
    s.record(d)
    if (d > g.threshold) {
      if (g.count < g.capacity) s.stored++
      g.add(v)
      g.n++
      g.sum += d
      g.sumSq += d * d
      const mean = g.sum / g.n
      const std = Math.sqrt(Math.max(0, g.sumSq / g.n - mean * mean))
      g.threshold = Math.max(g.threshold, mean - std)
    }
  })
  if (s.count < o.minQueries) return null
  let w: number
  try {
    w = shapiroWilkSorted(s.sortedWindow()).w
  } catch {
    w = 0 // every distance equal: as far from natural inputs as a sample can be
  }
  return { score: w, threshold: o.wThreshold, alarm: w < o.wThreshold }
}

/** What the extraction detector is, in process or shared (prada-shared.ts) alike. */
export const PRADA_DETECTOR = { name: 'extraction', needs: 'output', alarmWhen: 'below', refusal: 'attack_suspected' } as const

export function createPradaDetector(o: PradaOptions): Detector {
  const store = new PrincipalStore<PradaState>({
    maxPrincipals: o.maxPrincipals,
    maxUnits: o.maxStoredQueries,
    create: () => new PradaState(o.windowSize),
    units: (s) => s.stored,
  })
  return {
    ...PRADA_DETECTOR,
    mode: o.mode,
    inspect(batch: ScreenBatch): DetectorResult | null {
      const probabilities = batch.probabilities
      if (!probabilities) throw new Error('extraction detector needs the model output')
      const s = store.use(batch.principal)
      const result = judgeBatch(s, batch, probabilities, o)
      store.settle(batch.principal)
      return result
    },
    memory: () => ({ principals: store.principals, stored: store.units, evictions: store.evictions }),
  }
}
