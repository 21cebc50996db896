// What an enforced attack_suspected alarm answers besides a 403 (screening.onAlarm; the links
// in src/stages/screening.ts decide when): the degraded mechanism, and the count of queries a
// delayed refusal still waits for.
//
// Degraded: every row of every released output has its classes permuted by one uniformly
// random permutation per item (the same one for each output of the item, so several outputs
// agree with each other as a real answer's do). The answer keeps its shape, datatype and
// value distribution (a one-hot stays a one-hot, a top-k row keeps k values), and its arg-max
// becomes a uniformly random class whatever the input: post-processing of the answer that
// was paid for, so it costs nothing more.

import type { RandomSource } from '../deps.ts'
import type { Tensor } from '../inference/tensor.ts'
import { RandomReader } from '../privacy/random.ts'

/** A uniformly random permutation of 0..n-1 (Fisher-Yates, unbiased draws). */
function permutation(rng: RandomReader, n: number): number[] {
  const p = Array.from({ length: n }, (_, i) => i)
  for (let i = n - 1; i > 0; i--) {
    const j = rng.uniformSmall(i + 1)
    ;[p[i], p[j]] = [p[j]!, p[i]!]
  }
  return p
}

export function createDegrader(random: RandomSource): (groups: readonly (readonly Tensor[])[], batch: number) => void {
  const rng = new RandomReader(random)
  /**
   * Permutes, in place, the rows of the batch-first tensors of each group (each group: one
   * answer, e.g. the raw outputs and the paid copies); one permutation per item and row length.
   */
  return (groups, batch) => {
    const perms = new Map<number, number[][]>()
    for (const t of groups.flat()) {
      if (t.shape[0] !== batch || batch === 0) continue
      const per = t.data.length / batch
      let p = perms.get(per)
      if (!p) perms.set(per, (p = Array.from({ length: batch }, () => permutation(rng, per))))
      const data = t.data as unknown as { [i: number]: number | bigint; slice(a: number, b: number): ArrayLike<number | bigint> }
      for (let i = 0; i < batch; i++) {
        const row = data.slice(i * per, (i + 1) * per)
        for (let k = 0; k < per; k++) data[i * per + p[i]![k]!] = row[k]!
      }
    }
  }
}

/**
 * Callers whose alarm earned a delayed refusal: per model and caller, the queries still
 * answered before it. In process (per replica); past `max` entries the oldest is forgotten.
 */
export class DelayedRefusals {
  readonly #left = new Map<string, { left: number; detector: string }>()
  readonly #max: number
  constructor(max: number) {
    this.#max = max
  }

  /** Records an alarm; an alarm while one is pending does not move the refusal. Returns the queries left. */
  alarm(model: string, principal: string, queries: number, detector: string): number {
    const key = `${model}\u0000${principal}`
    const had = this.#left.get(key)
    if (had) return had.left
    this.#left.set(key, { left: queries, detector })
    if (this.#left.size > this.#max) this.#left.delete(this.#left.keys().next().value!)
    return queries
  }

  /** One more query from the caller: null when nothing is pending, else whether it is the refused one (and which detector earned it). */
  next(model: string, principal: string): { refuse: boolean; detector: string } | null {
    const key = `${model}\u0000${principal}`
    const had = this.#left.get(key)
    if (!had) return null
    if (had.left > 0) {
      had.left--
      return { refuse: false, detector: had.detector }
    }
    this.#left.delete(key)
    return { refuse: true, detector: had.detector }
  }
}
