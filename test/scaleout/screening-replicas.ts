// Redis clients for the shared-screening tests, one per replica, each opened as a gateway opens
// its own (src/state/redis.ts: no offline queue, command timeout, key prefix); closed at
// teardown. Replicas of one gateway share a key prefix; each test takes a prefix of its own.

import type { RedisConfig } from '../../src/config/scaleout.ts'
import { silentLogger } from '../../src/deps.ts'
import { SharedState } from '../../src/state/redis.ts'

export function redisConfig(url: string, keyPrefix: string, over: Partial<RedisConfig> = {}): RedisConfig {
  return {
    url,
    keyPrefix,
    connectTimeoutMs: 2000,
    commandTimeoutMs: 500,
    rateLimitsWhenUnavailable: 'refuse',
    screeningWhenUnavailable: 'refuse',
    screeningStateTtlMs: 3_600_000,
    ...over,
  }
}

export function replicaClients(t: { teardown(fn: () => unknown): void }, url: string, prefix: string) {
  const states: SharedState[] = []
  t.teardown(() => Promise.all(states.map((s) => s.close())))
  return {
    /** `n` replicas' connections sharing the key prefix `<prefix><name>:`. */
    async open(name: string, n: number, over: Partial<RedisConfig> = {}): Promise<SharedState[]> {
      const opened: SharedState[] = []
      for (let i = 0; i < n; i++) opened.push(await SharedState.open(redisConfig(url, `${prefix}${name}:`, over), '.', silentLogger))
      states.push(...opened)
      return opened
    },
  }
}
