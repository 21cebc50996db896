// Token buckets per key (a client, an address), held in a map bounded to maxKeys: the least
// recently seen key is forgotten first, and a forgotten key comes back with a full bucket,
// which is what it would have had after idling for burst / perSecond. Time is monotonic ms
// from the caller's injected clock.
// The map is an LruMap: forgetting the oldest key costs the same at any size.

import { LruMap } from '../state/lru.ts'

interface Bucket {
  tokens: number
  /** Monotonic ms the tokens were last brought up to date. */
  atMs: number
}

export class TokenBuckets {
  private readonly perMs: number
  private readonly burst: number
  private readonly buckets: LruMap<Bucket>

  constructor(o: { perSecond: number; burst: number; maxKeys: number; onForget?: () => void }) {
    this.perMs = o.perSecond / 1000
    this.burst = o.burst
    const onForget = o.onForget
    this.buckets = new LruMap<Bucket>(o.maxKeys, onForget ? () => onForget() : undefined)
  }

  /** Keys holding a bucket right now. */
  get size(): number {
    return this.buckets.size
  }

  /** Takes one token for `key` at `nowMs`: 0 when there was one, else the ms until there will be. */
  take(key: string, nowMs: number): number {
    const b = this.refill(key, nowMs)
    if (b.tokens >= 1) {
      b.tokens -= 1
      return 0
    }
    return (1 - b.tokens) / this.perMs
  }

  /**
   * Takes `n` tokens for `key` at `nowMs` whether it has them or not: the bucket may go into
   * debt, down to one burst below empty, and `take` refuses until the debt is paid back. A
   * negative `n` gives tokens back, up to a full bucket.
   */
  charge(key: string, nowMs: number, n: number): void {
    const b = this.refill(key, nowMs)
    b.tokens = Math.min(this.burst, Math.max(-this.burst, b.tokens - n))
  }

  /** `key`'s bucket brought up to `nowMs`, and moved to the most recently seen end. */
  private refill(key: string, nowMs: number): Bucket {
    let b = this.buckets.get(key) // marks it most recently seen
    if (b === undefined) {
      b = { tokens: this.burst, atMs: nowMs }
      this.buckets.set(key, b) // past maxKeys, forgets the least recently seen
    } else {
      b.tokens = Math.min(this.burst, b.tokens + (nowMs - b.atMs) * this.perMs)
      b.atMs = nowMs
    }
    return b
  }
}
