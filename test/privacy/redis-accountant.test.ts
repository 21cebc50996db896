// The Redis privacy accountant keeps the file accountant's contract and arithmetic (the same
// verdicts, spent, left and Retry-After for any sequence of charges), is atomic across
// replicas (concurrent charges on two connections never overspend), keeps keys with TTLs,
// keeps time by the Redis server's clock and each charge for its own window, and fails closed
// with 503 state_unavailable when Redis is gone.

import { randomUUID } from 'node:crypto'
import t from 'tap'
import { Redis } from 'ioredis'
import { MemoryAccountant, type PrivacyBudget } from '../../src/privacy/accountant.ts'
import { RedisAccountant } from '../../src/privacy/redis-accountant.ts'
import { calibrateGaussian } from '../../src/privacy/mechanisms.ts'
import { cryptoRandom } from '../../src/deps.ts'
import { gatewayAccountant } from './gateway-accountant.ts'
import { fakeClock, seededRandom, tempDir } from './helpers.ts'
import { REDIS_SERVER, startRedis } from '../helpers/scaleout.ts'

const HOUR = 3_600_000
const MINUTE = 60_000
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
    const shared = new RedisAccountant({ redis, clockForTests: clock, random: cryptoRandom })
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
    t.same(await shared.balance('k1', b, eps(3.9)), await memory.balance('k1', b, eps(3.9)), 'and balances asked about a cost')
  })

  t.test('basic composition is exact across replicas, and a refusal says when budget frees', async (t) => {
    const clock = fakeClock()
    const [ra, rb] = [client('exact:'), client('exact:')]
    await Promise.all([ra.connect(), rb.connect()])
    const a = new RedisAccountant({ redis: ra, clockForTests: clock, random: cryptoRandom })
    const b = new RedisAccountant({ redis: rb, clockForTests: clock, random: cryptoRandom })
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
    const accts = [new RedisAccountant({ redis: ra, random: cryptoRandom }), new RedisAccountant({ redis: rb, random: cryptoRandom })]
    const results = await Promise.all(Array.from({ length: 60 }, (_, i) => accts[i % 2]!.charge('hot', eps(0.5), budget(10))))
    t.equal(results.filter((r) => r.ok).length, 20, 'exactly budget / cost charges fit')
    t.equal(Math.max(...results.map((r) => r.epsilonSpent)), 10)
  })

  /** The Redis server's clock, ms. */
  const serverMs = async (redis: Redis) => {
    const [s, us] = await redis.time()
    return Number(s) * 1000 + Math.floor(Number(us) / 1000)
  }

  t.test("charges are stamped with the Redis server's time and the window they were charged under", async (t) => {
    const redis = client('time:')
    await redis.connect()
    const acct = new RedisAccountant({ redis, random: cryptoRandom })
    const before = await serverMs(redis)
    t.ok((await acct.charge('k', eps(0.1), budget(1))).ok)
    const after = await serverMs(redis)
    const [member, score] = (await redis.zrange('privacy:k', '0', '-1', 'WITHSCORES')) as [string, string]
    t.ok(Number(score) >= before && Number(score) <= after, `stamped ${Number(score) - before} ms after the server's time before the call, at most ${after - before}`)
    t.match(member, /^100000:0:3600000:[0-9a-f-]{36}$/, 'cost, window, a unique id')
  })

  t.test("replicas whose clocks disagree by hours share one window: the Redis server's", async (t) => {
    const [ra, rb] = [client('skew:'), client('skew:')]
    await Promise.all([ra.connect(), rb.connect()])
    const now = await serverMs(ra)
    // Two gateways built as a deployment builds them, one clock two hours ahead, one two behind.
    const dir = await tempDir(t)
    const windows = { m: HOUR }
    const ahead = await gatewayAccountant({ dir, clock: fakeClock(now + 2 * HOUR), windows, served: ['m'], redis: ra })
    const behind = await gatewayAccountant({ dir, clock: fakeClock(now - 2 * HOUR), windows, served: ['m'], redis: rb })
    t.ok((await behind.charge('k', eps(0.6), budget(1))).ok)
    t.match(await ahead.charge('k', eps(0.6), budget(1)), { ok: false, epsilonSpent: 0.6 }, "the replica ahead sees the other's charge: no overspend")
    const [a, b] = [await ahead.balance('k', budget(1)), await behind.balance('k', budget(1))]
    t.match([a, b], [{ epsilonSpent: 0.6 }, { epsilonSpent: 0.6 }])
    const retry = (r: typeof a) => r.retryAfterMs
    t.ok(Math.abs(retry(await ahead.charge('k', eps(0.6), budget(1))) - retry(await behind.charge('k', eps(0.6), budget(1)))) < 1000, 'and both say it frees at the same time')
    t.ok(retry(await ahead.charge('k', eps(0.6), budget(1))) > HOUR - 60_000, 'an hour after it was made')
  })

  t.test('a replica with a shorter window (or without the model) keeps the charges made under a longer one', async (t) => {
    const clock = fakeClock()
    const [r1, r2] = [client('windows:'), client('windows:')]
    await Promise.all([r1.connect(), r2.connect()])
    const long = new RedisAccountant({ redis: r1, random: cryptoRandom, retentionMs: 2 * HOUR, clockForTests: clock })
    const short = new RedisAccountant({ redis: r2, random: cryptoRandom, retentionMs: MINUTE, clockForTests: clock })
    t.ok((await long.charge('k', eps(1), budget(1, 2 * HOUR))).ok, 'the budget spent under a 2-hour window')
    clock.advance(10 * MINUTE)
    t.match(await short.charge('k', eps(0.5), budget(1, MINUTE)), { ok: false, epsilonSpent: 1, retryAfterMs: 2 * HOUR - 10 * MINUTE }, 'under a 1-minute window it still counts, until its 2 hours are over')
    t.same((await r2.zrange('privacy:k', '0', '-1')).map((m) => m.split(':')[2]), [String(2 * HOUR)], 'and the replica whose retention is a minute did not remove it')
    t.ok((await r2.pttl('privacy:k')) > HOUR, 'nor does the key expire before it frees')
    clock.advance(2 * HOUR - 10 * MINUTE - 1)
    t.equal((await short.charge('k', eps(0.5), budget(1, MINUTE))).ok, false)
    clock.advance(1)
    t.ok((await short.charge('k', eps(0.5), budget(1, MINUTE))).ok, 'then the 1-minute budget applies')
    t.ok((await r2.pttl('privacy:k')) <= 2 * HOUR, 'and a charge never shortens the expiry another replica set')
  })

  t.test('charges recorded before windows were (no window in the member) count by the budget window, as they did', async (t) => {
    const clock = fakeClock()
    const redis = client('legacy:')
    await redis.connect()
    await redis.zadd('privacy:k', clock.nowMs(), `500000:0:${randomUUID()}`)
    const acct = new RedisAccountant({ redis, random: cryptoRandom, retentionMs: HOUR, clockForTests: clock })
    t.equal((await acct.balance('k', budget(1, MINUTE))).epsilonSpent, 0.5)
    clock.advance(MINUTE - 1)
    t.equal((await acct.balance('k', budget(1, MINUTE))).epsilonSpent, 0.5)
    clock.advance(1)
    t.equal((await acct.balance('k', budget(1, MINUTE))).epsilonSpent, 0, 'it frees by the 1-minute window')
    t.equal((await acct.balance('k', budget(1, HOUR))).epsilonSpent, 0.5, 'and is kept for the retention, for a longer window')
  })

  t.test('Redis gone: charges fail closed with 503 state_unavailable', async (t) => {
    const redis = new Redis('redis://127.0.0.1:1/0', { enableOfflineQueue: false, maxRetriesPerRequest: 0, lazyConnect: true, retryStrategy: () => null })
    redis.on('error', () => {})
    const acct = new RedisAccountant({ redis, random: cryptoRandom })
    await t.rejects(acct.charge('k', eps(0.1), budget(1)), { code: 'state_unavailable', status: 503, headers: { 'retry-after': '1' } })
    await t.rejects(acct.balance('k', budget(1)), { code: 'state_unavailable' })
    redis.disconnect()
  })
}
