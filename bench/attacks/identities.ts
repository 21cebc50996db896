// An attacker with several identities (tokens for m subjects) spreads its queries over them:
// query q goes to the next identity in turn that the gateway has not yet refused
// ('round-robin'), or every query goes to one identity until it is refused ('sequential',
// what an attack that learns from its refusals does). A refusal
// that ends an identity (403 attack_suspected, then the policy's cool-down) retires it and
// costs that query (the attack drops it, as it drops a 422); the next query goes to the next
// identity. When every identity is retired the attack ends.
//
// Retired identities stay retired for the rest of the run: the evaluation's runs are shorter
// than the bundled one-minute cool-down, so an identity would rarely come back in time.

import type { ScoreOracle } from './black-box.ts'

export class IdentitySchedule {
  readonly m: number
  private readonly retired: boolean[]
  private cursor = 0
  /** Identities that have answered at least one query or been retired. */
  private readonly touched = new Set<number>()

  private readonly mode: 'round-robin' | 'sequential'

  constructor(m: number, mode: 'round-robin' | 'sequential' = 'round-robin') {
    if (!Number.isInteger(m) || m < 1) throw new RangeError(`identities: m must be a positive integer, got ${m}`)
    this.m = m
    this.mode = mode
    this.retired = new Array<boolean>(m).fill(false)
  }

  /** The identity for the next query (of those not retired), or null when none is left. */
  next(): number | null {
    for (let tries = 0; tries < this.m; tries++) {
      const i = this.cursor
      if (this.mode === 'round-robin' || this.retired[i]) this.cursor = (this.cursor + 1) % this.m
      if (!this.retired[i]) {
        this.touched.add(i)
        return i
      }
    }
    return null
  }

  retire(i: number): void {
    this.retired[i] = true
  }

  get left(): number {
    return this.retired.filter((r) => !r).length
  }

  /** How many identities the attack has used so far. */
  get used(): number {
    return this.touched.size
  }
}

export interface Reply {
  status: number
  code: string | null
  probs: Float32Array | null
}

/**
 * A score oracle over m identities: each query goes to the schedule's next identity; a 403
 * retires that identity. A refusal is final once every identity is retired; before that it is
 * not (the attack drops the query and goes on). `onRetire` tells an adaptive attack that it
 * was caught. One oracle call is one request, so the attack's query counts are requests sent.
 */
export function rotatingOracle(
  send: (identity: number, x: Float32Array) => Promise<Reply>,
  schedule: IdentitySchedule,
  onRetire?: () => void,
): ScoreOracle {
  return async (x) => {
    const id = schedule.next()
    if (id === null) return { refused: '403 attack_suspected (every identity refused)', final: true }
    const r = await send(id, x)
    if (r.status === 200 && r.probs) return { probs: r.probs }
    if (r.status !== 403) return { refused: `${r.status} ${r.code}`, final: false }
    schedule.retire(id)
    onRetire?.()
    return { refused: `${r.status} ${r.code}`, final: schedule.left === 0 }
  }
}
