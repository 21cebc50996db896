// Per-principal state with bounded memory: at most maxPrincipals entries, and at most
// maxUnits units (stored queries) over all of them. The least recently seen principal is
// evicted first, in constant time at any size (an LruMap). Each detector holds one store per
// model, so the bound over the gateway is the sum over models with screening on, which the
// policies fix.

import { LruMap } from '../state/lru.ts'

export interface StoreOptions<T> {
  maxPrincipals: number
  maxUnits: number
  create: () => T
  /** Units the state holds now (stored queries); read after each change. */
  units: (state: T) => number
}

export class PrincipalStore<T> {
  private readonly entries: LruMap<{ state: T; units: number }>
  private readonly opts: StoreOptions<T>
  private totalUnits = 0
  private evicted = 0

  constructor(opts: StoreOptions<T>) {
    if (opts.maxPrincipals < 1 || opts.maxUnits < 1) throw new RangeError('PrincipalStore needs room for at least one principal and one unit')
    this.opts = opts
    // Past maxPrincipals, a new principal evicts the least recently seen.
    this.entries = new LruMap(opts.maxPrincipals, (_key, entry) => this.forget(entry.units))
  }

  /** The principal's state (created if new), marked most recently used. */
  use(key: string): T {
    const entry = this.entries.get(key)
    if (entry) return entry.state
    const created = { state: this.opts.create(), units: 0 }
    this.entries.set(key, created)
    return created.state
  }

  /** Re-reads the principal's size after a change and evicts others until within bounds. */
  settle(key: string): void {
    const entry = this.entries.peek(key)
    if (!entry) return
    const units = this.opts.units(entry.state)
    this.totalUnits += units - entry.units
    entry.units = units
    while (this.totalUnits > this.opts.maxUnits && this.entries.size > 1) {
      let oldest = this.entries.oldestKey()!
      if (oldest === key) {
        this.entries.get(key) // the one being settled stays: it becomes the most recent
        oldest = this.entries.oldestKey()!
      }
      this.forget(this.entries.peek(oldest)!.units)
      this.entries.delete(oldest)
    }
  }

  private forget(units: number): void {
    this.totalUnits -= units
    this.evicted++
  }

  has(key: string): boolean {
    return this.entries.has(key)
  }

  get principals(): number {
    return this.entries.size
  }

  get units(): number {
    return this.totalUnits
  }

  get evictions(): number {
    return this.evicted
  }
}
