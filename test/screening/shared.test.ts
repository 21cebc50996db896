// Screening state shared by replicas through Redis (`state.redis`), detector by detector: two
// replicas, each with its own Redis client on one Redis, judge a caller whose queries alternate
// between them exactly as one replica judges all of them (the same score for every query, so
// the alarm comes at the same query); requests racing on both replicas lose no update; and
// what Redis holds is compact and bounded (pooled vectors, capped rings); and a claim left by a
// replica that died delays the others by its lease at most.

import t from 'tap'
import { jacobianAugmentation } from '../../bench/attacks/extraction.ts'
import { argmax, forward } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { cryptoRandom, type Timer } from '../../src/deps.ts'
import { keyedDigester } from '../../src/screening/digest.ts'
import type { DetectorResult } from '../../src/screening/detector.ts'
import { poolingEncoder } from '../../src/screening/encoder.ts'
import { createPradaDetector, type PradaOptions } from '../../src/screening/prada.ts'
import { createSharedPradaDetector } from '../../src/screening/prada-shared.ts'
import { createStatefulDetector, type StatefulOptions } from '../../src/screening/stateful.ts'
import { createSharedStatefulDetector } from '../../src/screening/stateful-shared.ts'
import { weights } from './cnn-runner.ts'
import { gaussian, jitter, MNIST_LAYOUT, seeded, seededRandom } from './helpers.ts'
import { FakeClock } from '../helpers/fake-clock.ts'
import { sharedScreeningRedis } from './replicas.ts'

const test = loadMnist().test
const HOUR = 3_600_000
// The seeds of test/screening/prada.test.ts: 100 held-out digits in a seeded order.
const order = test.images.map((_, i) => i)
const shuffle = seeded(11)
for (let i = order.length - 1; i > 0; i--) {
  const j = Math.floor(shuffle() * (i + 1))
  ;[order[i], order[j]] = [order[j]!, order[i]!]
}

const statefulOptions = (over: Partial<StatefulOptions> = {}): StatefulOptions => ({
  k: 20, historyPerPrincipal: 1000, maxPrincipals: 10_000, maxStoredQueries: 200_000, threshold: 0.015, mode: 'enforce', encoder: poolingEncoder(MNIST_LAYOUT, 4), ...over,
})
const pradaOptions = (over: Partial<PradaOptions> = {}): PradaOptions => ({
  wThreshold: 0.9, minQueries: 100, windowSize: 1000, warmupPerClass: 10, growingSetPerClass: 100, maxPrincipals: 100, maxStoredQueries: 100_000, mode: 'enforce', encoder: poolingEncoder(MNIST_LAYOUT, 2), ...over,
})

// The single replica's digests are keyed by bytes too, so an exact repeat is a repeat for both.
const digestOf = keyedDigester(seededRandom(5))
const same = (a: DetectorResult | null, b: DetectorResult | null) => JSON.stringify(a) === JSON.stringify(b)

/** A fake clock that says when the next timer is set: a request waiting for a claim sleeps on it between its polls. */
class PollClock extends FakeClock {
  private waiting: (() => void)[] = []
  override setTimeout(fn: () => void, ms: number): Timer {
    const timer = super.setTimeout(fn, ms)
    for (const resolve of this.waiting.splice(0)) resolve()
    return timer
  }
  nextTimer(): Promise<void> {
    return new Promise((resolve) => this.waiting.push(resolve))
  }
}

const redis = await sharedScreeningRedis(t)
if (redis) {
  const { run, raw, replicas } = redis

  t.test('stateful: near-duplicates alternated between two replicas are judged as by one, query for query', async (t) => {
    const [a, b] = await replicas.open('stateful', 2)
    const one = createStatefulDetector(statefulOptions())
    const two = [a!, b!].map((s) => createSharedStatefulDetector(statefulOptions(), 'mnist', { redis: s.client, ttlMs: HOUR }))
    const normal = gaussian(seeded(1))
    const x = test.images[123]!
    const alone: (DetectorResult | null)[] = []
    const alternating: (DetectorResult | null)[] = []
    let retry: Float32Array | null = null
    for (let q = 1; q <= 30; q++) {
      // Query 10 is a retry of query 9 sent to the other replica: a repeat, not evidence.
      const items: Float32Array[] = q === 10 ? [retry!] : q === 25 ? [jitter(x, 0.02, normal), jitter(x, 0.02, normal), jitter(x, 0.02, normal)] : [jitter(x, 0.02, normal)]
      retry = items[0]!
      alone.push(one.inspect({ principal: 'attacker', items, digests: items.map(digestOf) }))
      alternating.push(await two[q % 2]!.inspect({ principal: 'attacker', items, digests: items.map(() => 0) }))
    }
    t.same(alternating, alone, 'the same result for every query')
    t.equal(alone.findIndex((r) => r?.alarm) + 1, 22, 'the alarm at the first scored query: k = 20 earlier queries, the retry not among them')
  })

  t.test('stateful: a full ring wraps the same way on both (oldest query overwritten)', async (t) => {
    const [a, b] = await replicas.open('wrap', 2)
    const opts = statefulOptions({ k: 3, historyPerPrincipal: 12 })
    const one = createStatefulDetector(opts)
    const two = [a!, b!].map((s) => createSharedStatefulDetector(opts, 'mnist', { redis: s.client, ttlMs: HOUR }))
    const normal = gaussian(seeded(2))
    let differs = -1
    for (let q = 0; q < 80 && differs < 0; q++) {
      // Distinct digits, runs of near-duplicates, and repeats of queries that have left the ring.
      const x = q % 10 < 6 ? test.images[q]! : q % 10 < 9 ? jitter(test.images[q - (q % 10)]!, 0.01, normal) : test.images[Math.max(0, q - 29)]!
      const r1 = one.inspect({ principal: 'p', items: [x], digests: [digestOf(x)] })
      const r2 = await two[q % 2]!.inspect({ principal: 'p', items: [x], digests: [0] })
      if (!same(r1, r2)) differs = q
    }
    t.equal(differs, -1, 'every result the same')
    const keys = (await raw.keys(`bulwark-test:${run}:wrap:screening:stateful:*`)).sort()
    t.same(keys.map((k) => k.slice(-2)), [':d', ':v', ':w'], 'three keys: digests, vectors, the copies\' pointers')
    t.equal(await raw.strlen(keys[0]!), 52 + 12 * 16, 'Redis holds a header and 12 digests')
    t.equal(await raw.strlen(keys[1]!), 12 * 49, 'and 12 pooled vectors (49 bytes, not the 784 inputs)')
  })

  t.test('extraction: Jacobian augmentation alternated between two replicas raises the alarm at the same query as against one', async (t) => {
    const [a, b] = await replicas.open('prada', 2)
    const one = createPradaDetector(pradaOptions())
    const two = [a!, b!].map((s) => createSharedPradaDetector(pradaOptions(), 'mnist', { redis: s.client, ttlMs: HOUR }, cryptoRandom))
    let n = 0
    let alarmAlone: number | null = null
    let differs: number | null = null
    const out = await jacobianAugmentation(
      async (x) => {
        n++
        const probs = forward(weights, x).probs
        const r1 = one.inspect({ principal: 'thief', items: [x], digests: [digestOf(x)], probabilities: [probs] })
        const r2 = await two[n % 2]!.inspect({ principal: 'thief', items: [x], digests: [0], probabilities: [probs] })
        if (r1?.alarm && alarmAlone === null) alarmAlone = n
        if (!same(r1, r2) && differs === null) differs = n
        return r2?.alarm ? { refused: 'attack_suspected', final: true } : { label: argmax(probs) }
      },
      order.slice(0, 100).map((i) => test.images[i]!),
      { lambda: 0.1, maxQueries: 2000 },
    )
    t.equal(differs, null, 'the same W after every query')
    t.ok(out.refusedAt !== null && out.refusedAt <= 400, `alarm at query ${out.refusedAt}`)
    t.equal(out.refusedAt, alarmAlone, 'at the same query as one replica')
  })

  t.test('extraction: small rings wrap the same way on both, repeats included', async (t) => {
    const [a, b] = await replicas.open('prada-wrap', 2)
    const opts = pradaOptions({ windowSize: 30, minQueries: 20, warmupPerClass: 2, growingSetPerClass: 4 })
    const one = createPradaDetector(opts)
    const two = [a!, b!].map((s) => createSharedPradaDetector(opts, 'mnist', { redis: s.client, ttlMs: HOUR }, cryptoRandom))
    const normal = gaussian(seeded(3))
    let differs = -1
    let scored = 0
    for (let q = 0; q < 240 && differs < 0; q++) {
      const x = q % 7 === 6 ? test.images[Math.max(0, q - 20)]! : q % 3 === 2 ? jitter(test.images[q - 1]!, 0.02, normal) : test.images[q]!
      const probabilities = [forward(weights, x).probs]
      const r1 = one.inspect({ principal: 'p', items: [x], digests: [digestOf(x)], probabilities })
      const r2 = await two[q % 2]!.inspect({ principal: 'p', items: [x], digests: [0], probabilities })
      if (r1) scored++
      if (!same(r1, r2)) differs = q
    }
    t.equal(differs, -1, 'every result the same')
    t.ok(scored > 150, `${scored} tests run`)
  })

  t.test('requests of one principal racing on two replicas lose no update', async (t) => {
    const [a, b] = await replicas.open('race', 2)
    const digits = test.images.slice(200, 260)
    const probabilities = digits.map((x) => forward(weights, x).probs)
    const opts = pradaOptions({ warmupPerClass: 2 })
    const prada = [a!, b!].map((s) => createSharedPradaDetector(opts, 'mnist', { redis: s.client, ttlMs: HOUR }, cryptoRandom))
    const stateful = [a!, b!].map((s) => createSharedStatefulDetector(statefulOptions(), 'mnist', { redis: s.client, ttlMs: HOUR }))
    await Promise.all(digits.map((x, i) => prada[i % 2]!.inspect({ principal: 'racer', items: [x], digests: [0], probabilities: [probabilities[i]!] })))
    await Promise.all(digits.map((x, i) => stateful[i % 2]!.inspect({ principal: 'racer', items: [x], digests: [0] })))

    // Whatever the order Redis put them in, one replica would have recorded every digit, and
    // a distance for each past the first two of its predicted class.
    const perClass = new Map<number, number>()
    for (const p of probabilities) perClass.set(argmax(p), (perClass.get(argmax(p)) ?? 0) + 1)
    const distances = [...perClass.values()].reduce((s, n) => s + Math.max(0, n - 2), 0)
    const prefix = `bulwark-test:${run}:race:screening:`
    const part = (p: string) => `${prefix}extraction:mnist:w1000g100d196u8:racer:${p}`
    // The state's string: the distances' ring (a header, 1,000 Float64), then the digests' ring.
    const x = (await raw.getBuffer(part('x')))!
    const count = (at: number) => new Float64Array(Uint8Array.from(x.subarray(at, at + 8)).buffer)[0]
    t.equal(count(16 + 8 * 1000), 60, 'extraction: 60 distinct queries remembered')
    t.equal(count(0), distances, `extraction: ${distances} distances recorded`)
    t.equal(await raw.hget(part('m'), 'v'), '60', 'extraction: one write per request')
    const ring = (await raw.getBuffer(`${prefix}stateful:mnist:h1000d49u8:racer:d`))!
    t.equal(Number(ring.toString('latin1', 16, 32)), 60, 'stateful: 60 queries in the ring')
  })

  t.test('every key expires: TTLs on what each detector writes', async (t) => {
    const [a] = await replicas.open('ttl', 1)
    const ttlMs = 120_000
    const stateful = createSharedStatefulDetector(statefulOptions(), 'mnist', { redis: a!.client, ttlMs })
    const prada = createSharedPradaDetector(pradaOptions(), 'mnist', { redis: a!.client, ttlMs }, cryptoRandom)
    for (const x of test.images.slice(0, 15)) {
      await stateful.inspect({ principal: 'p', items: [x], digests: [0] })
      await prada.inspect({ principal: 'p', items: [x], digests: [0], probabilities: [forward(weights, x).probs] })
    }
    const keys = await raw.keys(`bulwark-test:${run}:ttl:*`)
    t.ok(keys.length >= 5, `${keys.length} keys`)
    for (const key of keys) {
      const pttl = await raw.pttl(key)
      t.ok(pttl > 0 && pttl <= ttlMs, `${key.slice(key.indexOf('screening:'))}: PTTL ${pttl}`)
    }
  })

  t.test('extraction: a claim left by a replica that died holds the principal until it lapses; one that outlasts the wait is refused and loses nothing', async (t) => {
    const [a] = await replicas.open('dead-claim', 1)
    const clock = new PollClock()
    const prada = createSharedPradaDetector(pradaOptions(), 'mnist', { redis: a!.client, ttlMs: HOUR }, cryptoRandom, clock)
    const part = (p: string, who: string) => `bulwark-test:${run}:dead-claim:screening:extraction:mnist:w1000g100d196u8:${who}:${p}`
    const version = (who: string) => raw.hget(part('m', who), 'v')
    const x = test.images[300]!
    const batch = (who: string) => ({ principal: who, items: [x], digests: [0], probabilities: [forward(weights, x).probs] })

    // A claim as a live replica sets it, whose holder never writes.
    await raw.set(part('claim', 'p'), 'dead-replica:1', 'PX', 60_000)
    let polled = clock.nextTimer()
    let outcome: unknown = 'pending'
    const pending = prada.inspect(batch('p')).then((r) => (outcome = r))
    for (let i = 0; i < 5; i++) {
      await polled
      polled = clock.nextTimer()
      clock.advance(2)
    }
    await polled
    t.equal(outcome, 'pending', 'the request waits, asking again and again')
    t.equal(await version('p'), null, 'nothing is written while the dead claim stands')
    // Its lease runs out: Redis drops the key (as PX would, without waiting a real lease here).
    await raw.del(part('claim', 'p'))
    clock.advance(2)
    await pending
    t.equal(await version('p'), '1', 'the write goes through once the claim has lapsed')
    t.equal(await raw.get(part('claim', 'p')), null, 'and ends the claim it took')

    // A claim that stands longer than a request waits (3 s of the clock): a clear 503, and the state untouched.
    await raw.set(part('claim', 'q'), 'dead-replica:2', 'PX', 60_000)
    const firstPoll = clock.nextTimer()
    const refused = t.rejects(prada.inspect(batch('q')), { code: 'state_unavailable', status: 503, reason: /another replica held the principal's state for 3000 ms/ })
    await firstPoll
    clock.advance(3000)
    await refused
    t.equal(await version('q'), null, 'nothing written')
    t.equal(await raw.get(part('claim', 'q')), 'dead-replica:2', 'the standing claim is left alone')
  })
}
