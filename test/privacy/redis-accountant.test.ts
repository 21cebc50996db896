// The Redis privacy accountant keeps the file accountant's contract and arithmetic (the same
// verdicts, spent, left and Retry-After for any sequence of charges), is atomic across
// replicas (concurrent charges on two connections never overspend), keeps keys with TTLs,
// and fails closed with 503 state_unavailable when Redis is gone.

import { randomUUID } from 'node:crypto'
import t from 'tap'
import { Redis } from 'ioredis'
import { MemoryAccountant, type PrivacyBudget } from '../../src/privacy/accountant.ts'
import { RedisAccountant } from '../../src/privacy/redis-accountant.ts'
import { calibrateGaussian } from '../../src/privacy/mechanisms.ts'
import { cryptoRandom } from '../../src/deps.ts'
import { fakeClock, seededRandom } from './helpers.ts'
import { REDIS_SERVER, startRedis } from '../helpers/scaleout.ts'

const HOUR = 3_600_000
const eps = (e: number) => ({ epsilonMicros: Math.round(e * 1e6), rhoNanos: 0 })
const budget = (epsilon: number, windowMs = HOUR): PrivacyBudget => ({ epsilonMicros: Math.round(epsilon * 1e6), delta: 1e-6, windowMs })

// The Redis .ci/run started (keys under a prefix of this run's own), else one of our own.
const sharedUrl = process.env.BULWARK_TEST_REDIS_URL
if (!sharedUrl && !REDIS_SERVER) t.test('needs redis-server (.ci/run installs it)', { skip: 'redis-server is not installed' }, () => {})
else {
  const url = sharedUrl ?? (await startRedis(t)).url
  const run = randomUUID()
  const clients: Redis[] = []
  const client = (prefix = 'test:') => {
    const c = new Redis(url, { keyPrefix: `bulwark-test:${run}:${prefix}`, enableOfflineQueue: false, maxRetriesPerRequest: 0, commandTimeout: 500, lazyConnect: true })
    clients.push(c)
    return c
  }
  t.teardown(() => Promise.all(clients.map((c) => c.quit().catch(() => c.disconnect()))))

  t.test('the same verdicts as the in-memory ledger, charge by charge', async (t) => {
    const clock = fakeClock()
    const redis = client('same:')
    await redis.connect()
    const shared = new RedisAccountant({ redis, clock, random: cryptoRandom })
    const memory = new MemoryAccountant({ clock })
    const rng = seededRandom('redis-vs-memory')
    const gauss = calibrateGaussian(1, 1e-6, 16).cost
    const b = budget(4, 60_000)
    for (let i = 0; i < 300; i++) {
      const r = rng.bytes(2)
      clock.advance(r[0]! * 50)
      const cost = r[1]! % 3 === 0 ? gauss : eps(((r[1]! % 7) + 1) / 10)
      const key = `k${r[1]! % 3}`
      const [a, m] = [await shared.charge(key, cost, b), await memory.charge(key, cost, b)]
      if (JSON.stringify(a) !== JSON.stringify(m)) {
        t.same(a, m, `charge ${i} differs`)
        return
      }
    }
    t.pass('300 mixed Laplace and Gaussian charges over 3 keys: identical results')
    t.same(await shared.balance('k1', b), await memory.balance('k1', b), 'and balances')
  })

  t.test('basic composition is exact across replicas, and a refusal says when budget frees', async (t) => {
    const clock = fakeClock()
    const [ra, rb] = [client('exact:'), client('exact:')]
    await Promise.all([ra.connect(), rb.connect()])
    const a = new RedisAccountant({ redis: ra, clock, random: cryptoRandom })
    const b = new RedisAccountant({ redis: rb, clock, random: cryptoRandom })
    for (let i = 0; i < 10; i++) t.ok((await (i % 2 ? a : b).charge('k', eps(0.1), budget(1))).ok, `charge ${i + 1} on replica ${i % 2 ? 'a' : 'b'}`)
    const refused = await a.charge('k', eps(0.1), budget(1))
    t.match(refused, { ok: false, epsilonSpent: 1, epsilonLeft: 0, retryAfterMs: HOUR })
    const ttl = await ra.pttl('privacy:k')
    t.ok(ttl > 0 && ttl <= 7 * 24 * HOUR, `the key expires (${ttl} ms)`)
  })

  t.test('concurrent charges from two connections never overspend', async (t) => {
    const clock = fakeClock()
    const [ra, rb] = [client('race:'), client('race:')]
    await Promise.all([ra.connect(), rb.connect()])
    const accts = [new RedisAccountant({ redis: ra, clock, random: cryptoRandom }), new RedisAccountant({ redis: rb, clock, random: cryptoRandom })]
    const results = await Promise.all(Array.from({ length: 60 }, (_, i) => accts[i % 2]!.charge('hot', eps(0.5), budget(10))))
    t.equal(results.filter((r) => r.ok).length, 20, 'exactly budget / cost charges fit')
    t.equal(Math.max(...results.map((r) => r.epsilonSpent)), 10)
  })

  t.test('Redis gone: charges fail closed with 503 state_unavailable', async (t) => {
    const redis = new Redis('redis://127.0.0.1:1/0', { enableOfflineQueue: false, maxRetriesPerRequest: 0, lazyConnect: true, retryStrategy: () => null })
    redis.on('error', () => {})
    const acct = new RedisAccountant({ redis, clock: fakeClock(), random: cryptoRandom })
    await t.rejects(acct.charge('k', eps(0.1), budget(1)), { code: 'state_unavailable', status: 503, headers: { 'retry-after': '1' } })
    await t.rejects(acct.balance('k', budget(1)), { code: 'state_unavailable' })
    redis.disconnect()
  })
}
