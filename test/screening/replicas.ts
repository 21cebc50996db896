// Redis clients for the shared-screening tests, one per replica, each opened as a gateway opens
// its own (src/state/redis.ts: no offline queue, command timeout, key prefix); closed at
// teardown. Replicas of one gateway share a key prefix; each test takes a prefix of its own.

import { randomUUID } from 'node:crypto'
import { Redis } from 'ioredis'
import type { Test } from 'tap'
import type { RedisConfig } from '../../src/config/scaleout.ts'
import { silentLogger } from '../../src/deps.ts'
import { SharedState } from '../../src/state/redis.ts'
import { REDIS_SERVER, startRedis } from '../helpers/scaleout.ts'

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

/**
 * The Redis these tests share (BULWARK_TEST_REDIS_URL, or a redis-server of their own), a raw
 * client on it to inspect keys, this run's key prefix and the replicas' clients; null, with a
 * skipped test saying why, when no redis-server is installed.
 */
export async function sharedScreeningRedis(t: Test) {
  const sharedUrl = process.env.BULWARK_TEST_REDIS_URL
  if (!sharedUrl && !REDIS_SERVER) {
    t.test('needs redis-server (.ci/run installs it)', { skip: 'redis-server is not installed' }, () => {})
    return null
  }
  const url = sharedUrl ?? (await startRedis(t)).url
  const run = randomUUID()
  const raw = new Redis(url, { lazyConnect: true })
  await raw.connect()
  t.teardown(() => raw.quit())
  return { url, run, raw, replicas: replicaClients(t, url, `bulwark-test:${run}:`) }
}
