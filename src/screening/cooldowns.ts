// The cool-down after an enforced stateful or extraction alarm: the principal is refused on
// that model for the policy's cooldownMs (src/stages/screening.ts).
//
// In process (one replica): per model, a map of monotonic deadlines; past maxEntries the
// principal blocked longest ago is forgotten. With `state.redis`: one key per model and
// principal, `<prefix>screening:cooldown:<model>:<principal>`, set with PX cooldownMs, so
// every replica refuses the caller, and the key (Redis's clock) ends the cool-down.

import type { Redis } from 'ioredis'
import type { Clock } from '../deps.ts'
import { LruMap } from '../state/lru.ts'
import { stateUnavailable } from './shared-store.ts'

export interface Cooldowns {
  /** Milliseconds the principal still sits out on the model; 0 when it does not. */
  left(model: string, principal: string): number | Promise<number>
  /** Starts (or restarts) the principal's cool-down on the model. */
  start(model: string, principal: string, ms: number): void | Promise<void>
}

export function memoryCooldowns(clock: Clock, maxEntries: number): Cooldowns {
  // model -> principal -> monotonic ms until which the principal is refused; a principal's
  // recency is when its cool-down last started (peek reads it without moving it).
  const cooldowns = new Map<string, LruMap<number>>()
  return {
    left(model, principal) {
      const m = cooldowns.get(model)
      const until = m?.peek(principal)
      if (until === undefined) return 0
      const left = until - clock.monotonicMs()
      if (left > 0) return left
      m!.delete(principal)
      return 0
    },
    start(model, principal, ms) {
      let m = cooldowns.get(model)
      if (!m) cooldowns.set(model, (m = new LruMap(maxEntries)))
      m.set(principal, clock.monotonicMs() + ms)
    },
  }
}

export function cooldownKey(model: string, principal: string): string {
  return `screening:cooldown:${model}:${principal}`
}

export function redisCooldowns(redis: Redis): Cooldowns {
  return {
    async left(model, principal) {
      let ms: number
      try {
        ms = await redis.pttl(cooldownKey(model, principal))
      } catch (err) {
        throw stateUnavailable(`cool-down on model ${model}`, err)
      }
      return ms > 0 ? ms : 0 // -2: no cool-down; -1 (no expiry) is never written
    },
    async start(model, principal, ms) {
      try {
        await redis.set(cooldownKey(model, principal), '1', 'PX', ms)
      } catch (err) {
        throw stateUnavailable(`cool-down on model ${model}`, err)
      }
    },
  }
}
