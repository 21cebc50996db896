// One identity's hour against the shipped mnist policy, through the public API: requests of
// up to 64 digits, sent one at a time, sized so that each fits what is left of the identity's
// privacy budget, until the budget or the queries run out. Used by the attackers (who fill
// the budget) and the honest callers (fixed request sizes) of bench/privacy/shipped.ts.
//
// What each request was charged is read, not assumed: an answer carries
// privacy_epsilon_spent and privacy_epsilon_left; a refusal carries nothing, so the stage that
// refused it is read from the gateway's log line ('request refused'), and it was charged
// exactly when that stage runs after privacy-charge (screening's output-side verdicts).
// After a 403 attack_suspected the caller sits out the screening cool-down: the evaluation's
// clock moves forward by it.

import type { TestGateway } from '../../kit/gateway.ts'
import { argmax } from './mlp.ts'
import { inferDigits } from './client.ts'

export const MAX_BATCH = 64

export interface PolicyCost {
  /** ε of one charge (an answer, or a screening verdict). */
  epsilon: number
  /** The window's budget, ε. */
  budget: number
  windowMs: number
  /** Charged screening verdicts per item (0: screening off): each item's squeezing verdict is released on its own. */
  verdicts: number
  /** The screening cool-down after a 403 attack_suspected, ms (0: none). */
  cooldownMs: number
}

export interface Item {
  id: number
  image: Float32Array
}

export interface WindowResult {
  /** The label released for each answered item. */
  answers: { id: number; label: number }[]
  requests: number
  answeredRequests: number
  /** Refused requests by code. */
  refusals: Record<string, number>
  /** Refused requests by code and the stage that refused (from the gateway's log). */
  refusalStages: Record<string, number>
  /** Items sent in refused requests (lost to the caller). */
  refusedItems: number
  /** Items withheld by screening from answered batches (the rest of the batch answered). */
  withheldItems: number
  /** ε charged in this window (answers and charged refusals). */
  epsilon: number
  cooldowns: number
}

export interface SessionTarget {
  gw: Pick<TestGateway, 'url' | 'agent' | 'token' | 'logged' | 'logs' | 'gateway'>
  /** The gateway's clock, as the evaluation moves it (bench/privacy/clock.ts, or a test's FakeClock). */
  clock: { advance(ms: number): void }
  cost: PolicyCost
}

/** Charges of budget left, from an ε figure (micro-ε rounding tolerated). */
const units = (epsilon: number, per: number) => Math.floor(epsilon / per + 1e-6)

/**
 * Spends one window of `sub`'s budget (which must be unspent: the caller moves the clock a
 * window on between calls). `take(n)` hands out the next at most n items (fewer or none at the
 * end). Requests carry at most `maxBatch` items; with `fixed`, exactly that many (an honest
 * caller who never splits a request to fit), otherwise the last request is shrunk to fit.
 */
export async function spendWindow(t: SessionTarget, sub: string, take: (n: number) => Item[], o: { maxBatch?: number; fixed?: boolean } = {}): Promise<WindowResult> {
  const { epsilon, budget, verdicts, cooldownMs } = t.cost
  const maxBatch = o.maxBatch ?? MAX_BATCH
  const stages = t.gw.gateway.stages.map((s) => s.name)
  const chargedAfter = stages.indexOf('privacy-charge')
  const token = await t.gw.token({ sub, ttlSeconds: 6 * 3600 })
  const r: WindowResult = { answers: [], requests: 0, answeredRequests: 0, refusals: {}, refusalStages: {}, refusedItems: 0, withheldItems: 0, epsilon: 0, cooldowns: 0 }
  let left = units(budget, epsilon)
  let spentAtLastAnswer = 0
  let chargedSince = 0
  for (;;) {
    const room = Math.floor(left / (1 + verdicts))
    const n = o.fixed ? (room >= maxBatch ? maxBatch : 0) : Math.min(maxBatch, room)
    if (n <= 0) break
    const items = take(n)
    if (items.length === 0 || (o.fixed && items.length < maxBatch)) break
    const since = t.gw.logs.length
    const res = await inferDigits({ url: t.gw.url, dispatcher: t.gw.agent }, items.map((i) => i.image), token)
    r.requests++
    if ('rows' in res) {
      r.answeredRequests++
      // An item screening withheld from an answered batch is a refused item, not an answer.
      res.rows.forEach((row, k) => (row ? r.answers.push({ id: items[k]!.id, label: argmax(row) }) : r.withheldItems++))
      spentAtLastAnswer = Number(res.parameters.privacy_epsilon_spent ?? 0)
      chargedSince = 0
      left = units(Number(res.parameters.privacy_epsilon_left ?? 0), epsilon)
      continue
    }
    r.refusals[res.code] = (r.refusals[res.code] ?? 0) + 1
    r.refusedItems += items.length
    if (res.code === 'privacy_budget_exhausted') break
    const line = await t.gw.logged((l) => l.msg === 'request refused' && l.code === res.code, since)
    const where = `${res.code} (${String(line.stage)})`
    r.refusalStages[where] = (r.refusalStages[where] ?? 0) + 1
    if (stages.indexOf(String(line.stage)) > chargedAfter && chargedAfter >= 0) {
      chargedSince += items.length * (1 + verdicts) * epsilon
      left -= items.length * (1 + verdicts)
    }
    if (res.code === 'attack_suspected' && cooldownMs > 0) {
      r.cooldowns++
      t.clock.advance(cooldownMs + 1000)
    } else if (res.status !== 422 && res.status !== 403) {
      throw new Error(`${sub}: unexpected refusal ${res.status} ${res.code} ${JSON.stringify(t.gw.logs.slice(since))}`)
    }
  }
  r.epsilon = spentAtLastAnswer + chargedSince
  return r
}

/** Empty totals, and a way to add a window's result to them. */
export function emptyTotals(): Omit<WindowResult, 'answers'> {
  return { requests: 0, answeredRequests: 0, refusals: {}, refusalStages: {}, refusedItems: 0, withheldItems: 0, epsilon: 0, cooldowns: 0 }
}

export function addWindow(to: Omit<WindowResult, 'answers'>, w: WindowResult): void {
  to.requests += w.requests
  to.answeredRequests += w.answeredRequests
  to.refusedItems += w.refusedItems
  to.withheldItems += w.withheldItems
  to.epsilon += w.epsilon
  to.cooldowns += w.cooldowns
  for (const [k, v] of Object.entries(w.refusals)) to.refusals[k] = (to.refusals[k] ?? 0) + v
  for (const [k, v] of Object.entries(w.refusalStages)) to.refusalStages[k] = (to.refusalStages[k] ?? 0) + v
}
