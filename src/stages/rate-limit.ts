// Stage: rate-limit.
// Reads: ctx.callerKey, ctx.target.model, the model's policy (rateLimit.requestsPerWindow
//        per windowMs).
// Writes: nothing on the context; holds one in-flight slot per admitted request until the
//         exchange ends (its onDestroy: the response is done or the connection died).
// Throws: rate_limited (429, with Retry-After and X-RateLimit-Limit/Remaining/Reset) when the
//         principal has used up the model's window, or already has maxInFlightPerPrincipal
//         requests in flight across all models.
//
// Counting is @fastify/rate-limit's: one limiter per model, created with its
// `createRateLimit()` (the plugin's API for running a limit inside one's own hook), so its store
// (in memory, LRU-bounded; Redis when replicas must share counts) does the bookkeeping. That
// store reads Date.now() itself rather than our Clock, so tests of the window use real time.
// The limiter is injected (`limiterFor`): the stage does not know about Fastify.

import { BulwarkError } from '../errors.ts'
import type { PolicySet } from '../config/policy.ts'
import { fixedView, type PolicyView } from '../config/policy-store.ts'
import type { RateLimitsConfig } from '../config/security.ts'
import type { RequestContext, Stage } from '../types.ts'

export interface LimitVerdict {
  exceeded: boolean
  limit: number
  remaining: number
  /** Seconds until the window resets. */
  resetSeconds: number
}

/**
 * Counts one request for `key` and says whether it is over the limit. `limits`, when given,
 * replaces the ones the limiter was made with for this count (a reloaded policy): the counts
 * are kept, only the bound and the window change.
 */
export type Limiter = (key: string, limits?: { max: number; windowMs: number }) => Promise<LimitVerdict>

export interface RateLimitDeps {
  /** A limiter with its own counters, for one model's limits; `scope` names them (the model) in a shared store. */
  limiterFor(limits: { max: number; windowMs: number; scope: string }): Limiter
}

/** Each model's limits, by model name (a view of the live policies, or fixed ones). */
export type ModelLimits = ReadonlyMap<string, { max: number; windowMs: number }>

export function compileModelLimits(policies: PolicySet): ModelLimits {
  return new Map([...policies].map(([model, p]) => [model, { max: p.rateLimit.requestsPerWindow, windowMs: p.rateLimit.windowMs }]))
}

export interface RateLimitStage extends Stage {
  /** Frees the in-flight slot the request holds, if any. Idempotent. */
  onDestroy(ctx: RequestContext): void
  /** Requests in flight for a caller key (for tests and metrics). */
  inFlight(key: string): number
}

/** Defaults for a model without a policy (only reachable when authorization is off). */
const UNLISTED = { requestsPerWindow: 100, windowMs: 1000 }

export function createRateLimitStage(config: { rateLimits: RateLimitsConfig; policies: PolicySet | PolicyView<ModelLimits> }, deps: RateLimitDeps): RateLimitStage {
  const maxInFlight = config.rateLimits.maxInFlightPerPrincipal
  const view = config.policies instanceof Map ? fixedView(compileModelLimits(config.policies)) : (config.policies as PolicyView<ModelLimits>)
  // One limiter per model name ever given a policy, made on first use and kept: a reloaded
  // policy changes the bound and the window it counts with, never the counts themselves, and a
  // model whose policy went and came back finds its callers' counts where they were.
  const limiters = new Map<string, Limiter>()
  const limiterOf = (model: string, limits: { max: number; windowMs: number }) => {
    let l = limiters.get(model)
    if (!l) limiters.set(model, (l = deps.limiterFor({ ...limits, scope: model })))
    return l
  }
  // One shared limiter for every model name without a policy, so made-up names create no state.
  const unlisted = { max: UNLISTED.requestsPerWindow, windowMs: UNLISTED.windowMs }
  const unlistedLimiter = deps.limiterFor({ ...unlisted, scope: '~unlisted' })
  const inFlight = new Map<string, number>()
  const held = new WeakMap<RequestContext, string>()

  return {
    name: 'rate-limit',
    phase: 'headers',
    verbs: ['infer', 'metadata'],
    async run(ctx: RequestContext) {
      const key = ctx.callerKey
      const n = inFlight.get(key) ?? 0
      if (n >= maxInFlight) {
        throw new BulwarkError('rate_limited', 'too many requests in flight; retry after Retry-After seconds', {
          reason: `principal ${key} already has ${n} requests in flight (rateLimits.maxInFlightPerPrincipal ${maxInFlight})`,
          headers: { 'retry-after': '1' },
        })
      }
      const model = ctx.target.model
      const limits = view.for(ctx).get(model)
      const entry = limits ?? unlisted
      const v = await (limits ? limiterOf(model, limits) : unlistedLimiter)(key, entry)
      if (v.exceeded) {
        const reset = String(Math.max(1, v.resetSeconds))
        throw new BulwarkError('rate_limited', 'too many requests; retry after Retry-After seconds', {
          reason: `principal ${key} exceeded ${entry.max} requests per ${entry.windowMs} ms on model ${JSON.stringify(model.slice(0, 64))}`,
          headers: { 'retry-after': reset, 'x-ratelimit-limit': String(v.limit), 'x-ratelimit-remaining': '0', 'x-ratelimit-reset': reset },
        })
      }
      // Re-read: another request of this principal may have taken a slot while we awaited the store.
      const now = inFlight.get(key) ?? 0
      if (now >= maxInFlight) {
        throw new BulwarkError('rate_limited', 'too many requests in flight; retry after Retry-After seconds', {
          reason: `principal ${key} already has ${now} requests in flight (rateLimits.maxInFlightPerPrincipal ${maxInFlight})`,
          headers: { 'retry-after': '1' },
        })
      }
      inFlight.set(key, now + 1)
      held.set(ctx, key)
    },
    onDestroy(ctx: RequestContext) {
      const key = held.get(ctx)
      if (key === undefined) return
      held.delete(ctx)
      const n = (inFlight.get(key) ?? 1) - 1
      if (n <= 0) inFlight.delete(key)
      else inFlight.set(key, n)
    },
    inFlight(key: string) {
      return inFlight.get(key) ?? 0
    },
  }
}
