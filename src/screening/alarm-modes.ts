// What an enforced attack_suspected alarm answers besides a 403 (screening.onAlarm; the links
// in src/stages/screening.ts decide when): the degraded mechanism, and the count of queries a
// delayed refusal still waits for.
//
// Degraded: every row of every released output has its classes permuted by one random
// permutation per item (the same one for each output of the item, so several outputs agree
// with each other as a real answer's do). The answer keeps its shape, datatype and value
// distribution (a one-hot stays a one-hot, a top-k row keeps k values), and its arg-max is a
// class the caller cannot predict: post-processing of the answer that was paid for, so it
// costs nothing more. The permutation is a keyed function of the item's keyed digest (HMAC
// under a secret drawn once from the injected random source): asking the same input twice
// gets the same degraded answer, as it would a real one, so a repeat does not give it away.

import { createHmac } from 'node:crypto'
import type { RandomSource } from '../deps.ts'
import type { Tensor } from '../inference/tensor.ts'
import { LruMap } from '../state/lru.ts'

/** The permutation of 0..n-1 that `key` selects (Fisher-Yates over an HMAC stream, unbiased by rejection). */
function permutation(secret: Uint8Array, key: number, n: number): number[] {
  let block = 0
  let bytes = new Uint8Array(0)
  let at = 0
  const byte = () => {
    if (at >= bytes.length) {
      bytes = createHmac('sha256', secret).update(`${key}:${n}:${block++}`).digest()
      at = 0
    }
    return bytes[at++]!
  }
  const p = Array.from({ length: n }, (_, i) => i)
  for (let i = n - 1; i > 0; i--) {
    const m = i + 1
    // Bytes below the largest multiple of m keep the draw uniform; n up to 256 classes.
    const limit = 256 - (256 % m)
    let b = byte()
    while (b >= limit) b = byte()
    const j = b % m
    ;[p[i], p[j]] = [p[j]!, p[i]!]
  }
  return p
}

export function createDegrader(random: RandomSource): (groups: readonly (readonly Tensor[])[], keys: readonly number[]) => void {
  const secret = random.bytes(32)
  /**
   * Permutes, in place, the rows of the batch-first tensors of each group (each group: one
   * answer, e.g. the raw outputs and the paid copies); item i's permutation is keyed by
   * keys[i] (its digest), one per row length. Rows longer than 256 values are left alone.
   */
  return (groups, keys) => {
    const batch = keys.length
    for (const t of groups.flat()) {
      if (t.shape[0] !== batch || batch === 0) continue
      const per = t.data.length / batch
      if (per > 256) continue
      const data = t.data as unknown as { [i: number]: number | bigint; slice(a: number, b: number): ArrayLike<number | bigint> }
      for (let i = 0; i < batch; i++) {
        const p = permutation(secret, keys[i]!, per)
        const row = data.slice(i * per, (i + 1) * per)
        for (let k = 0; k < per; k++) data[i * per + p[k]!] = row[k]!
      }
    }
  }
}

/**
 * Callers whose alarm earned a delayed refusal: per model and caller, the queries still
 * answered before it. In process (per replica); past `max` entries the oldest is forgotten.
 */
export class DelayedRefusals {
  readonly #left: LruMap<{ left: number; detector: string }>
  constructor(max: number) {
    this.#left = new LruMap(max)
  }

  /** Records an alarm; an alarm while one is pending does not move the refusal. Returns the queries left. */
  alarm(model: string, principal: string, queries: number, detector: string): number {
    const key = `${model}\u0000${principal}`
    const had = this.#left.peek(key)
    if (had) return had.left
    this.#left.set(key, { left: queries, detector })
    return queries
  }

  /** One more query from the caller: null when nothing is pending, else whether it is the refused one (and which detector earned it). */
  next(model: string, principal: string): { refuse: boolean; detector: string } | null {
    const key = `${model}\u0000${principal}`
    const had = this.#left.peek(key)
    if (!had) return null
    if (had.left > 0) {
      had.left--
      return { refuse: false, detector: had.detector }
    }
    this.#left.delete(key)
    return { refuse: true, detector: had.detector }
  }
}
