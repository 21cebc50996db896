// Adapts @fastify/rate-limit to the rate-limit stage's Limiter: the plugin's
// `createRateLimit(options)` returns a checker that runs the plugin's own counting (its store,
// its window arithmetic) without installing a route hook, so the check runs inside the
// pipeline at the rate-limit stage's place rather than as a separate Fastify hook.
//
// The checker takes a request and asks `keyGenerator` for the key; we hand it a minimal
// request-shaped object carrying the principal key (the plugin reads only
// `routeOptions.config.rateLimit.groupId` from the request besides what keyGenerator reads).
// Each call to createRateLimit gets its own child store, so each model counts on its own.
// The in-memory store reads Date.now() directly (not our Clock) and is per process: several
// replicas need the plugin's Redis store to share counts.

import type { FastifyInstance, FastifyRequest } from 'fastify'
import type {} from '@fastify/rate-limit' // its FastifyInstance.createRateLimit typing
import type { Limiter } from '../stages/rate-limit.ts'

interface KeyCarrier {
  key: string
  routeOptions: { config: Record<string, never> }
}

/** A Limiter over the plugin; `api` must have @fastify/rate-limit registered. */
export function fastifyLimiter(api: FastifyInstance, limits: { max: number; windowMs: number }, storeEntries: number): Limiter {
  const check = api.createRateLimit({
    max: limits.max,
    timeWindow: limits.windowMs,
    keyGenerator: (req) => (req as unknown as KeyCarrier).key,
    // Passed through to the child store (LRU size); not in the plugin's option types.
    ...({ cache: storeEntries } as object),
  })
  return async (key) => {
    const r = await check({ key, routeOptions: { config: {} } } satisfies KeyCarrier as unknown as FastifyRequest)
    if (r.isAllowed) return { exceeded: false, limit: limits.max, remaining: limits.max, resetSeconds: 0 }
    return { exceeded: r.isExceeded, limit: r.max, remaining: r.remaining, resetSeconds: r.ttlInSeconds }
  }
}
