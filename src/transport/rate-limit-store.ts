// Adapts @fastify/rate-limit to the rate-limit stage's Limiter: the plugin's
// `createRateLimit(options)` returns a checker that runs the plugin's own counting (its store,
// its window arithmetic) without installing a route hook, so the check runs inside the
// pipeline at the rate-limit stage's place rather than as a separate Fastify hook.
//
// The checker takes a request and asks `keyGenerator` for the key; we hand it a minimal
// request-shaped object carrying the principal key (the plugin reads only
// `routeOptions.config.rateLimit.groupId` from the request besides what keyGenerator reads).
// Each limiter counts on its own: each call to createRateLimit gets its own child store (in
// Redis, keys carrying the limiter's scope: the model).
//
// Stores. One replica: the plugin's in-memory store (LRU-bounded, reads Date.now() itself, not
// our Clock). Several replicas (`state.redis`): `redisRateLimitStore`, a store for the plugin
// that counts in Redis, so a principal's window is one window across replicas. It counts
// exactly as the in-memory store does (fixed window: the first request of a window starts it,
// each request adds one, the window's end resets it), in one Lua script per request (INCR,
// and PEXPIRE when the window starts), under `<prefix>ratelimit:<scope>:<principal>`, keys
// expiring with their window. When Redis cannot be reached the check fails: refused with 503
// state_unavailable, or let through when `rateLimitsWhenUnavailable: allow`.

import type { FastifyInstance, FastifyRequest } from 'fastify'
import type { FastifyRateLimitStore, FastifyRateLimitStoreCtor } from '@fastify/rate-limit' // also its FastifyInstance.createRateLimit typing
import type { Redis } from 'ioredis'
import { BulwarkError } from '../errors.ts'
import type { Limiter } from '../stages/rate-limit.ts'

interface KeyCarrier {
  key: string
  /** The bound and window of this count (a reloaded policy's, or the limiter's own). */
  max: number
  windowMs: number
  routeOptions: { config: Record<string, never> }
}

export interface LimiterOptions {
  max: number
  windowMs: number
  /** What the limit is for (the model name); counts of different scopes never mix. */
  scope: string
}

/** A Limiter over the plugin; `api` must have @fastify/rate-limit registered. */
export function fastifyLimiter(api: FastifyInstance, limits: LimiterOptions, storeEntries: number): Limiter {
  const check = api.createRateLimit({
    // Read per count, so a reloaded policy changes the bound and the window, not the counts.
    max: (req) => (req as unknown as KeyCarrier).max,
    timeWindow: (req) => (req as unknown as KeyCarrier).windowMs,
    keyGenerator: (req) => (req as unknown as KeyCarrier).key,
    // Passed through to the child store (LRU size, scope); not in the plugin's option types.
    ...({ cache: storeEntries, bulwarkScope: limits.scope } as object),
  })
  return async (key, now = limits) => {
    let r
    try {
      r = await check({ key, max: now.max, windowMs: now.windowMs, routeOptions: { config: {} } } satisfies KeyCarrier as unknown as FastifyRequest)
    } catch (err) {
      throw new BulwarkError('state_unavailable', 'rate limits cannot be checked right now; retry after the Retry-After delay', {
        reason: `rate-limit store: ${(err as Error).message}`,
        headers: { 'retry-after': '1' },
        cause: err,
      })
    }
    if (r.isAllowed) return { exceeded: false, limit: now.max, remaining: now.max, resetSeconds: 0 }
    return { exceeded: r.isExceeded, limit: r.max, remaining: r.remaining, resetSeconds: r.ttlInSeconds }
  }
}

// KEYS[1]: the counter. ARGV[1]: the window (ms). Returns {count, ms left in the window}.
const INCR_SCRIPT = `
local current = redis.call('INCR', KEYS[1])
local ttl = -1
if current > 1 then ttl = redis.call('PTTL', KEYS[1]) end
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {current, ttl}
`

type Callback = Parameters<FastifyRateLimitStore['incr']>[1]

interface RateLimitScript {
  bulwarkRateLimit(key: string, windowMs: number): Promise<[number, number]>
}

/**
 * A @fastify/rate-limit store class (the plugin's `store` option) counting in `redis`. The
 * plugin makes one child per createRateLimit call; the child's keys carry the limiter's
 * scope, so two limiters never share a counter.
 */
export function redisRateLimitStore(redis: Redis): FastifyRateLimitStoreCtor {
  const client = redis as Redis & RateLimitScript
  if (typeof (client as Partial<RateLimitScript>).bulwarkRateLimit !== 'function') {
    redis.defineCommand('bulwarkRateLimit', { numberOfKeys: 1, lua: INCR_SCRIPT })
  }
  class RedisRateLimitStore implements FastifyRateLimitStore {
    readonly prefix: string
    constructor(_params: unknown, prefix = 'ratelimit:') {
      this.prefix = prefix
    }
    incr(key: string, cb: Callback, timeWindow: number): void {
      client.bulwarkRateLimit(this.prefix + key, timeWindow).then(
        ([current, ttl]) => cb(null, { current: Number(current), ttl: Number(ttl) }),
        (err: Error) => cb(err),
      )
    }
    child(params: object): RedisRateLimitStore {
      const scope = (params as { bulwarkScope?: unknown }).bulwarkScope
      return new RedisRateLimitStore(params, `ratelimit:${typeof scope === 'string' ? scope : 'default'}:`)
    }
  }
  return RedisRateLimitStore
}
