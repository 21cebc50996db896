// The privacy budget accountant: how much privacy loss each (principal, model) key has
// spent in the sliding window, and whether one more answer fits.
//
// Composition. An answer's cost has two integer parts (mechanisms.ts):
//   - epsilonMicros: pure ε-DP answers (Laplace); these add up (basic composition, which
//     holds for adaptively chosen queries). Integers, so 10 × 0.1 is exactly 1.0.
//   - rhoNanos: ρ-zCDP answers (discrete Gaussian); these add up too (zCDP composition,
//     also adaptive), and the sum is stated as (ε, δ)-DP at the budget's δ through
//     ε = ρ + 2√(ρ ln(1/δ)) (Bun & Steinke 2016). For many answers this grows like √n
//     where basic composition of (ε, δ) answers grows like n.
// A window holding both parts is (ε_pure + ε_zCDP(ρ, δ), δ)-DP (basic composition of the
// two). `epsilonSpent` reports that figure; a charge is accepted only if it stays within
// the budget's ε. The zCDP comparison converts the remaining ε to an allowed ρ, rounded
// down to a whole nano-rho, so float error can only refuse, never over-spend.
//
// Window. Each charge records the window it was charged under (w). A charge made at time t
// counts against a budget while now < t + max(w, budget.windowMs): a policy whose window was
// shortened since (or a model removed and added back) does not cut short the window the
// charge was made under, and a lengthened window holds it for the new length. It frees at
// exactly that instant. It is forgotten only once both its own window and the accountant's
// retention (the longest window of the policies in use) have passed, so no retention, however
// short, drops a charge that still counts. When a charge does not fit, retryAfterMs is how
// long until enough of the oldest charges have freed for it to fit; Infinity when it can
// never fit (it costs more than the whole budget).
//
// Time. Charges are stamped and freed by a ChargeClock (below): wall time that never runs
// faster than the monotonic clock, so a wall clock stepping forward frees nothing early,
// and one stepping back only makes charges count longer.
//
// The interface is async and keyed by an opaque string so that a shared store (Redis,
// with the check-and-add in one Lua script) can replace the file-backed one when several
// replicas serve one model: the budget travels with each call, the store keeps no policy.

import type { Clock } from '../deps.ts'
import { EPSILON_UNITS, RHO_UNITS, epsilonForRho, rhoFor, type PrivacyCost } from './mechanisms.ts'

export interface PrivacyBudget {
  /** ε allowed per window, micro-epsilon. */
  epsilonMicros: number
  /** δ at which zCDP spending is stated; only used once a Gaussian answer is in the window. */
  delta: number
  /** Sliding window length. */
  windowMs: number
}

export interface ChargeResult {
  /** Whether the charge fitted and was recorded. */
  ok: boolean
  /** ε spent in the window, including this charge when ok. */
  epsilonSpent: number
  /** ε left in the window (budget minus spent, at least 0). */
  epsilonLeft: number
  /** δ of the window's guarantee: 0 with only pure-DP answers, else the budget's δ. */
  delta: number
  /** When not ok: milliseconds until the charge would fit (Infinity: never). 0 when ok. */
  retryAfterMs: number
}

export interface PrivacyAccountant {
  /** Records `cost` against `key` if it fits in `budget`'s window; durable before it resolves. */
  charge(key: string, cost: PrivacyCost, budget: PrivacyBudget): Promise<ChargeResult>
  /**
   * What `key` has spent and has left, without charging. With `ifCharged`: also whether a
   * charge of that cost would fit now (ok; the figures then as a charge would report them)
   * and if not when it would (retryAfterMs), still recording nothing; without it, ok is
   * always true.
   */
  balance(key: string, budget: PrivacyBudget, ifCharged?: PrivacyCost): Promise<ChargeResult>
  /** Flushes and releases resources; later calls fail. */
  close(): Promise<void>
}

/** Longest window a policy may set (7 days); the default retention of recorded charges. */
export const MAX_WINDOW_MS = 7 * 24 * 3600 * 1000

/** The cost a plain balance asks about. */
export const NO_COST: PrivacyCost = Object.freeze({ epsilonMicros: 0, rhoNanos: 0 })

/** One recorded charge. */
export interface LedgerEntry {
  /** Time of the charge (its accountant's ChargeClock), ms since the epoch. */
  t: number
  e: number
  r: number
  /**
   * The window it was charged under, ms: it counts at least this long after t. 0 when none was
   * recorded (a charge recorded before windows were): the budget's window alone decides.
   */
  w: number
  /** Whether the entry is on disk (file accountant); entries loaded from disk are. */
  durable: boolean
  /**
   * Set on a new charge while it may still absorb later charges of the same key made in
   * the same millisecond (one entry instead of many, with identical arithmetic: they free
   * at the same instant). A writer clears it when it takes the entry to write it.
   */
  pending?: boolean
}

/** A step of the wall clock larger than this is reported (smaller ones are clock jitter). */
const STEP_REPORT_MS = 1000

/**
 * The time an accountant stamps and frees charges by. It is wall time, because charges outlive
 * the process and only the wall clock says how long a restart took. But while the process
 * runs it never moves faster than the monotonic clock, so a forward step of the wall clock
 * (an operator, NTP correcting a clock that was behind, a VM resumed after a suspend) frees
 * nothing early: every charge keeps counting for its window of elapsed time. It follows the
 * wall clock back when that steps backward, so it is never ahead of it; charges then count
 * that much longer, never shorter. After a forward step it stays behind the wall clock by the
 * step for good (catching up would free every live charge early by as much); the file
 * accountant records the difference in its journal, so that a restart keeps it too.
 */
export class ChargeClock {
  readonly #clock: Clock
  #base: number
  #baseMono: number
  /** How far behind the wall clock this time was when last reported. */
  #reported: number
  readonly #onStep: (behindMs: number) => void

  /**
   * Starts at `startMs` (default: the wall clock now; never later than it). `onStep` hears of
   * each forward step of the wall clock, with how far behind it this time now is.
   */
  constructor(clock: Clock, startMs = clock.nowMs(), onStep: (behindMs: number) => void = () => {}) {
    this.#clock = clock
    this.#base = Math.min(Math.floor(startMs), clock.nowMs())
    this.#baseMono = clock.monotonicMs()
    this.#reported = clock.nowMs() - this.#base
    this.#onStep = onStep
  }

  /** The time now, whole ms since the epoch. */
  nowMs(): number {
    const wall = this.#clock.nowMs()
    const mono = this.#clock.monotonicMs()
    const t = Math.floor(this.#base + (mono - this.#baseMono))
    if (wall <= t) {
      this.#base = wall
      this.#baseMono = mono
      this.#reported = 0
      return wall
    }
    if (wall - t > this.#reported + STEP_REPORT_MS) {
      this.#reported = wall - t
      this.#onStep(wall - t)
    }
    return t
  }
}

const KEY_RE = /^[\x21-\x7e]{1,256}$/

/** Largest whole nano-rho that `epsilonMicros` of ε allows at `delta`. */
function rhoAllowedNanos(epsilonMicros: number, delta: number): number {
  if (epsilonMicros <= 0) return 0
  return Math.floor(rhoFor(epsilonMicros / EPSILON_UNITS, delta) * RHO_UNITS)
}

function fits(e: number, r: number, budget: PrivacyBudget): boolean {
  if (e > budget.epsilonMicros) return false
  return r === 0 || r <= rhoAllowedNanos(budget.epsilonMicros - e, budget.delta)
}

/** Whether `cost` alone fits in an empty window of `budget` (if not, it never will). */
export function costFits(cost: PrivacyCost, budget: PrivacyBudget): boolean {
  return fits(cost.epsilonMicros, cost.rhoNanos, budget)
}

function spentEpsilon(e: number, r: number, delta: number): number {
  return e / EPSILON_UNITS + (r > 0 ? epsilonForRho(r / RHO_UNITS, delta) : 0)
}

function leftEpsilon(e: number, r: number, budget: PrivacyBudget): number {
  if (r === 0) return Math.max(0, budget.epsilonMicros - e) / EPSILON_UNITS
  return Math.max(0, budget.epsilonMicros / EPSILON_UNITS - spentEpsilon(e, r, budget.delta))
}

export function checkBudget(budget: PrivacyBudget, retentionMs: number): void {
  if (!Number.isSafeInteger(budget.epsilonMicros) || budget.epsilonMicros < 1) throw new RangeError('budget.epsilonMicros must be a positive integer')
  if (!(budget.delta > 0 && budget.delta < 1)) throw new RangeError('budget.delta must lie in (0, 1)')
  if (!Number.isSafeInteger(budget.windowMs) || budget.windowMs < 1) throw new RangeError('budget.windowMs must be a positive integer')
  if (budget.windowMs > retentionMs) {
    throw new RangeError(`budget.windowMs ${budget.windowMs} exceeds the accountant's retention ${retentionMs}; open it with a longer retentionMs`)
  }
}

export function checkCost(cost: PrivacyCost): void {
  for (const v of [cost.epsilonMicros, cost.rhoNanos]) {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError('cost parts must be non-negative integers')
  }
}

export function checkKey(key: string): void {
  if (!KEY_RE.test(key)) throw new RangeError('accountant keys are 1..256 printable ASCII characters without spaces')
}

/**
 * One key's charges under one window, in time order, with running sums so that a window's
 * total costs a binary search instead of a scan (a busy principal may hold thousands of
 * charges in one window). Entries before `head` have expired; they are dropped in bulk, not
 * one by one. All entries share one window, so they free, and expire, in time order.
 */
class Series {
  entries: LedgerEntry[] = []
  /** cumE[i] = e of entries[0..i], likewise cumR. */
  cumE: number[] = []
  cumR: number[] = []
  head = 0

  get live(): number {
    return this.entries.length - this.head
  }

  push(entry: LedgerEntry): void {
    const n = this.entries.length
    this.entries.push(entry)
    this.cumE.push((n > 0 ? this.cumE[n - 1]! : 0) + entry.e)
    this.cumR.push((n > 0 ? this.cumR[n - 1]! : 0) + entry.r)
  }

  /** Adds a charge to the last entry (same key, same millisecond). */
  addToLast(e: number, r: number): LedgerEntry {
    const last = this.entries.length - 1
    const entry = this.entries[last]!
    entry.e += e
    entry.r += r
    this.cumE[last]! += e
    this.cumR[last]! += r
    return entry
  }

  /** The newest entry, if it may still absorb a charge made at `t`. */
  openAt(t: number): boolean {
    const last = this.entries[this.entries.length - 1]
    return last !== undefined && this.entries.length > this.head && last.t === t && last.pending === true
  }

  /** Inserts out of time order (journal replay, a clock stepped back), rebuilding the sums after it. */
  insert(entry: LedgerEntry): void {
    let i = this.entries.length
    while (i > this.head && this.entries[i - 1]!.t > entry.t) i--
    if (i === this.entries.length) return this.push(entry)
    this.entries.splice(i, 0, entry)
    this.rebuild(i)
  }

  private rebuild(from: number): void {
    this.cumE.length = this.cumR.length = from
    for (let i = from; i < this.entries.length; i++) {
      this.cumE.push((i > 0 ? this.cumE[i - 1]! : 0) + this.entries[i]!.e)
      this.cumR.push((i > 0 ? this.cumR[i - 1]! : 0) + this.entries[i]!.r)
    }
  }

  /** Index of the first live entry with t > time. */
  firstAfter(time: number): number {
    let lo = this.head
    let hi = this.entries.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.entries[mid]!.t > time) hi = mid
      else lo = mid + 1
    }
    return lo
  }

  /** Sums of entries [from, end). */
  sums(from: number): { e: number; r: number } {
    const last = this.entries.length - 1
    if (from > last) return { e: 0, r: 0 }
    const beforeE = from > 0 ? this.cumE[from - 1]! : 0
    const beforeR = from > 0 ? this.cumR[from - 1]! : 0
    return { e: this.cumE[last]! - beforeE, r: this.cumR[last]! - beforeR }
  }

  /** Drops entries with t <= horizon; returns how many. Compacts the arrays now and then. */
  expire(horizon: number): number {
    const first = this.firstAfter(horizon)
    const dropped = first - this.head
    this.head = first
    if (this.head > 1024 && this.head * 2 > this.entries.length) {
      // The running sums are differences, so any constant offset may be dropped with them.
      const offE = this.cumE[this.head - 1]!
      const offR = this.cumR[this.head - 1]!
      this.entries = this.entries.slice(this.head)
      this.cumE = this.cumE.slice(this.head).map((v) => v - offE)
      this.cumR = this.cumR.slice(this.head).map((v) => v - offR)
      this.head = 0
    }
    return dropped
  }
}

/** The entries of one series that count now: from `first` on, each freeing at its t + spanMs. */
interface Counted {
  series: Series
  first: number
  spanMs: number
}

/**
 * Milliseconds until enough of the counted charges have freed for a window holding `e`, `r`
 * to fit `budget`: they free in time order within a series, and series are merged by when
 * their charges free. Call only when the new charge fits on its own.
 */
function retryAfter(counted: readonly Counted[], e: number, r: number, budget: PrivacyBudget, nowMs: number): number {
  if (counted.length === 1) {
    // One window (the usual case): no merge, no allocation.
    const { series, first, spanMs } = counted[0]!
    for (let i = first; i < series.entries.length; i++) {
      const entry = series.entries[i]!
      e -= entry.e
      r -= entry.r
      if (fits(e, r, budget)) return Math.max(1, entry.t + spanMs - nowMs)
    }
    return Infinity
  }
  const frees: { at: number; e: number; r: number }[] = []
  for (const { series, first, spanMs } of counted) {
    for (let i = first; i < series.entries.length; i++) frees.push({ at: series.entries[i]!.t + spanMs, e: series.entries[i]!.e, r: series.entries[i]!.r })
  }
  frees.sort((a, b) => a.at - b.at)
  for (const f of frees) {
    e -= f.e
    r -= f.r
    if (fits(e, r, budget)) return Math.max(1, f.at - nowMs)
  }
  return Infinity
}

/**
 * The in-memory state and arithmetic that every accountant shares: per key and per window a
 * charge was made under, the charges still kept, sorted by time. A key holds one window
 * unless its policy's window changed; then the older charges keep their own until it passes.
 */
export class Ledger {
  readonly retentionMs: number
  readonly #keys = new Map<string, Map<number, Series>>()

  constructor(retentionMs: number) {
    this.retentionMs = retentionMs
  }

  /** Adds an entry (from disk or a charge), keeping time order. */
  add(key: string, entry: LedgerEntry): void {
    let windows = this.#keys.get(key)
    if (!windows) this.#keys.set(key, (windows = new Map()))
    let series = windows.get(entry.w)
    if (!series) windows.set(entry.w, (series = new Series()))
    series.insert(entry)
  }

  /** How long charges made under window `w` are kept: their window, or the retention if longer. */
  #keepMs(w: number): number {
    return Math.max(w, this.retentionMs)
  }

  /** Drops entries past both their own window and the retention; returns how many it dropped. */
  prune(nowMs: number): number {
    let dropped = 0
    for (const [key, windows] of this.#keys) {
      for (const [w, series] of windows) {
        dropped += series.expire(nowMs - this.#keepMs(w))
        if (series.live === 0) windows.delete(w)
      }
      if (windows.size === 0) this.#keys.delete(key)
    }
    return dropped
  }

  /** Every kept entry, by key (for compaction). */
  *entries(): Generator<[string, LedgerEntry]> {
    for (const [key, windows] of this.#keys) {
      for (const s of windows.values()) for (let i = s.head; i < s.entries.length; i++) yield [key, s.entries[i]!]
    }
  }

  get size(): number {
    let n = 0
    for (const windows of this.#keys.values()) for (const s of windows.values()) n += s.live
    return n
  }

  /**
   * The check-and-add: evaluates `cost` against `budget` at `nowMs` and, if it fits,
   * records it. Synchronous, so concurrent requests cannot both pass on the same budget.
   * Returns the result and, when ok, the entry that holds the charge: a new one, or (merged:
   * true) the key's pending entry of the same millisecond, which now holds it too.
   */
  charge(key: string, cost: PrivacyCost, budget: PrivacyBudget, nowMs: number, record = true): { result: ChargeResult; entry?: LedgerEntry; merged?: boolean } {
    const windows = this.#keys.get(key)
    const counted: Counted[] = []
    let e = 0
    let r = 0
    for (const [w, series] of windows ?? []) {
      series.expire(nowMs - this.#keepMs(w))
      const spanMs = Math.max(w, budget.windowMs)
      const first = series.firstAfter(nowMs - spanMs)
      const sums = series.sums(first)
      e += sums.e
      r += sums.r
      counted.push({ series, first, spanMs })
    }
    const deltaOf = (rho: number) => (rho > 0 ? budget.delta : 0)
    const ne = e + cost.epsilonMicros
    const nr = r + cost.rhoNanos
    if (fits(ne, nr, budget)) {
      let entry: LedgerEntry | undefined
      let merged = false
      if (record && (cost.epsilonMicros > 0 || cost.rhoNanos > 0)) {
        const series = windows?.get(budget.windowMs)
        if (series?.openAt(nowMs)) {
          entry = series.addToLast(cost.epsilonMicros, cost.rhoNanos)
          merged = true
        } else {
          entry = { t: nowMs, e: cost.epsilonMicros, r: cost.rhoNanos, w: budget.windowMs, durable: false, pending: true }
          this.add(key, entry)
        }
      }
      return {
        result: { ok: true, epsilonSpent: spentEpsilon(ne, nr, budget.delta), epsilonLeft: leftEpsilon(ne, nr, budget), delta: deltaOf(nr), retryAfterMs: 0 },
        ...(entry ? { entry, merged } : {}),
      }
    }
    // Does not fit: find the earliest moment enough of the oldest charges have freed.
    const retryAfterMs = fits(cost.epsilonMicros, cost.rhoNanos, budget) ? retryAfter(counted, ne, nr, budget, nowMs) : Infinity
    return {
      result: { ok: false, epsilonSpent: spentEpsilon(e, r, budget.delta), epsilonLeft: leftEpsilon(e, r, budget), delta: deltaOf(r), retryAfterMs },
    }
  }
}

/** An accountant that forgets on restart: for tests and for deployments that accept that. */
export class MemoryAccountant implements PrivacyAccountant {
  readonly #ledger: Ledger
  readonly #time: ChargeClock
  #closed = false

  constructor(options: { clock: Clock; retentionMs?: number }) {
    this.#time = new ChargeClock(options.clock)
    this.#ledger = new Ledger(options.retentionMs ?? MAX_WINDOW_MS)
  }

  async charge(key: string, cost: PrivacyCost, budget: PrivacyBudget): Promise<ChargeResult> {
    if (this.#closed) throw new Error('privacy accountant is closed')
    checkKey(key)
    checkCost(cost)
    checkBudget(budget, this.#ledger.retentionMs)
    return this.#ledger.charge(key, cost, budget, this.#time.nowMs()).result
  }

  async balance(key: string, budget: PrivacyBudget, ifCharged: PrivacyCost = NO_COST): Promise<ChargeResult> {
    checkKey(key)
    checkCost(ifCharged)
    checkBudget(budget, this.#ledger.retentionMs)
    return this.#ledger.charge(key, ifCharged, budget, this.#time.nowMs(), false).result
  }

  async close(): Promise<void> {
    this.#closed = true
  }
}
