// Per-principal state with bounded memory: at most maxPrincipals entries, and at most
// maxUnits units (stored queries) over all of them. The least recently seen principal is
// evicted first (a Map keeps insertion order; touching an entry re-inserts it). Each
// detector holds one store per model, so the bound over the gateway is the sum over models
// with screening on, which the policies fix.

export interface StoreOptions<T> {
  maxPrincipals: number
  maxUnits: number
  create: () => T
  /** Units the state holds now (stored queries); read after each change. */
  units: (state: T) => number
}

export class PrincipalStore<T> {
  private readonly entries = new Map<string, { state: T; units: number }>()
  private readonly opts: StoreOptions<T>
  private totalUnits = 0
  private evicted = 0

  constructor(opts: StoreOptions<T>) {
    if (opts.maxPrincipals < 1 || opts.maxUnits < 1) throw new RangeError('PrincipalStore needs room for at least one principal and one unit')
    this.opts = opts
  }

  /** The principal's state (created if new), marked most recently used. */
  use(key: string): T {
    const entry = this.entries.get(key)
    if (entry) {
      this.entries.delete(key)
      this.entries.set(key, entry)
      return entry.state
    }
    const created = { state: this.opts.create(), units: 0 }
    this.entries.set(key, created)
    this.evictOthers(key)
    return created.state
  }

  /** Re-reads the principal's size after a change and evicts others until within bounds. */
  settle(key: string): void {
    const entry = this.entries.get(key)
    if (!entry) return
    const units = this.opts.units(entry.state)
    this.totalUnits += units - entry.units
    entry.units = units
    this.evictOthers(key)
  }

  private evictOthers(keep: string): void {
    for (const [key, entry] of this.entries) {
      if (this.entries.size <= this.opts.maxPrincipals && this.totalUnits <= this.opts.maxUnits) return
      if (key === keep) continue
      this.entries.delete(key)
      this.totalUnits -= entry.units
      this.evicted++
    }
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
