// The stateful detector's ring and the model-wide index kept in Redis (src/screening/
// shared-ring.ts), each replica judging on its own copy brought up to date per request, with
// a real Redis: the index judges 20 benign identities and then near-duplicate probing split
// over 20 identities, alternated between two replicas, exactly as one process does, query for
// query, and alarms before the 400th probe; a small index wraps, batches with repeats are
// judged the same, and a third replica whose first request comes late fetches the whole ring
// and agrees; a ring that expired and was created again is not taken for the old one; once
// the rings are full a request sends and receives at most 8 KiB, of one digit or 64, while the replica's copy
// holds no more than its caps; a copy that missed a reply fails closed once and then catches
// up whole; and with 64 requests in flight per replica none fails, the mean
// stays under 8 KiB and split probing still alarms by its 21st query.

import t from 'tap'
import type { Redis } from 'ioredis'
import { loadMnist } from '../../models/mnist/data.ts'
import { socketBytes } from '../../bench/screening-redis.ts'
import type { DetectorResult, ScreenBatch } from '../../src/screening/detector.ts'
import { keyedDigester } from '../../src/screening/digest.ts'
import { poolingEncoder } from '../../src/screening/encoder.ts'
import { createCallersIndexDetector, createSharedCallersIndexDetector, type CallersIndexOptions } from '../../src/screening/stateful-callers.ts'
import { createSharedStatefulDetector } from '../../src/screening/stateful-shared.ts'
import { gaussian, jitter, MNIST_LAYOUT, seeded, seededRandom } from './helpers.ts'
import { sharedScreeningRedis } from './replicas.ts'

const test = loadMnist().test
const HOUR = 3_600_000
const digestOf = keyedDigester(seededRandom(5))
const encoder = poolingEncoder(MNIST_LAYOUT, 4)
const indexOptions = (over: Partial<CallersIndexOptions> = {}): CallersIndexOptions => ({ k: 20, size: 1000, threshold: 0.015, mode: 'enforce', encoder, ...over })
const batch = (principal: string, items: Float32Array[]): ScreenBatch => ({ principal, items, digests: items.map(digestOf) })

const redis = await sharedScreeningRedis(t)
if (redis) {
  const { run, raw, replicas } = redis
  const store = (c: Redis) => ({ redis: c, ttlMs: HOUR })

  t.test('index: benign identities, then probing split over 20 identities, alternated between two replicas, judged as by one process', async (t) => {
    const [a, b] = await replicas.open('split', 2)
    const one = createCallersIndexDetector(indexOptions())
    const two = [a!, b!].map((s) => createSharedCallersIndexDetector(indexOptions(), 'mnist', store(s.client)))
    const alone: (DetectorResult | null)[] = []
    const shared: (DetectorResult | null)[] = []
    const send = async (q: number, principal: string, x: Float32Array) => {
      alone.push(one.inspect(batch(principal, [x])))
      shared.push(await two[q % 2]!.inspect(batch(principal, [x])))
    }
    for (let q = 0; q < 100; q++) await send(q, `reader-${q % 20}`, test.images[q * 7]!)
    const normal = gaussian(seeded(31))
    // Each identity's queries go to both replicas in turn.
    for (let q = 0; q < 400; q++) await send(q, `sybil-${Math.floor(q / 2) % 20}`, jitter(test.images[99]!, 0.01, normal))
    t.same(shared, alone, 'the same result for every query')
    t.equal(alone.slice(0, 100).filter((r) => r?.alarm).length, 0, 'no benign digit alarms')
    const first = alone.slice(100).findIndex((r) => r?.alarm)
    t.ok(first >= 0 && first < 400, `the first probe alarming is number ${first + 1} of 400`)
    t.ok(first < 40, 'before either replica alone holds k = 20 probes')
  })

  t.test('index: a small index wraps, batches with repeats, and a late third replica fetching the whole ring judge as one process', async (t) => {
    const [a, b, c] = await replicas.open('wrap', 3)
    const opts = indexOptions({ k: 3, size: 30 })
    const one = createCallersIndexDetector(opts)
    const three = [a!, b!, c!].map((s) => createSharedCallersIndexDetector(opts, 'mnist', store(s.client)))
    const normal = gaussian(seeded(4))
    const sent: Float32Array[] = []
    let differs = -1
    for (let q = 0; q < 120 && differs < 0; q++) {
      // Distinct digits, runs of near-duplicates, repeats of queries in and out of the ring, and repeats within a batch.
      const x = q % 10 < 5 ? test.images[q]! : q % 10 < 8 ? jitter(test.images[q - (q % 10)]!, 0.01, normal) : sent[Math.max(0, sent.length - (q % 10 === 8 ? 3 : 45))]!
      const items = q % 7 === 3 ? [x, jitter(x, 0.01, normal), x] : [x]
      sent.push(...items)
      const replica = q < 60 ? q % 2 : q % 3
      const r1 = one.inspect(batch(`p${q % 5}`, items))
      const r2 = await three[replica]!.inspect(batch(`p${q % 5}`, items))
      if (JSON.stringify(r1) !== JSON.stringify(r2)) differs = q
    }
    t.equal(differs, -1, 'every result the same')
    t.ok(three[2]!.memory!().stored <= 30, 'a copy holds at most the index size')
    const keys = (await raw.keys(`bulwark-test:${run}:wrap:screening:stateful-callers:*`)).sort()
    t.same(keys.map((k) => k.slice(k.indexOf('stateful-callers:'))), ['stateful-callers:mnist:n30d49u8:all:d', 'stateful-callers:mnist:n30d49u8:all:v', 'stateful-callers:mnist:n30d49u8:all:w'], 'one ring per model')
    t.equal(await raw.strlen(keys[0]!), 52 + 30 * 16, 'capped: a header and 30 digests')
    t.ok((await raw.hlen(keys[2]!)) <= 4, 'a pointer per copy (and the last id handed out)')
    t.equal(await raw.strlen(keys[1]!), 30 * 49, 'capped: 30 pooled vectors of one byte a value')
    for (const key of keys) t.ok((await raw.pttl(key)) > 0, 'and expiring')
  })

  t.test('index: a ring that expired and was created again is not taken for the continuation of the old copy', async (t) => {
    const [a, b] = await replicas.open('epoch', 2)
    const opts = indexOptions({ k: 3, size: 30 })
    const two = [a!, b!].map((s) => createSharedCallersIndexDetector(opts, 'mnist', store(s.client)))
    const normal = gaussian(seeded(5))
    for (let q = 0; q < 10; q++) await two[q % 2]!.inspect(batch('p', [jitter(test.images[7]!, 0.01, normal)]))
    t.ok((await two[0]!.inspect(batch('p', [jitter(test.images[7]!, 0.01, normal)])))?.alarm, 'near-duplicates alarm')
    await raw.del(...(await raw.keys(`bulwark-test:${run}:epoch:screening:stateful-callers:*`)))
    // The new ring holds fewer queries than the copies do: only a fresh copy scores like a fresh process.
    const fresh = createCallersIndexDetector(opts)
    for (let q = 0; q < 4; q++) {
      const x = test.images[200 + q]!
      t.same(await two[q % 2]!.inspect(batch('p', [x])), fresh.inspect(batch('p', [x])), `query ${q + 1} after expiry: as a fresh index`)
    }
  })

  t.test('once the rings are full, a request of one digit or 64 sends and receives at most 8 KiB', async (t) => {
    const [a, b] = await replicas.open('traffic', 2)
    const clients = [a!.client, b!.client]
    const index = clients.map((c) => createSharedCallersIndexDetector(indexOptions(), 'mnist', store(c)))
    const ring = clients.map((c) => createSharedStatefulDetector({ k: 20, historyPerPrincipal: 1000, maxPrincipals: 100, maxStoredQueries: 100_000, threshold: 0.015, mode: 'enforce', encoder }, 'mnist', store(c)))
    for (const [name, detectors] of [['index', index], ['stateful ring', ring]] as const) {
      for (let q = 0; q < 1000; q++) await detectors[q % 2]!.inspect(batch('caller', [test.images[q]!]))
      let most = 0
      for (let q = 1000; q < 1100; q++) {
        const before = socketBytes(clients[q % 2]!)
        await detectors[q % 2]!.inspect(batch('caller', [test.images[q]!]))
        most = Math.max(most, socketBytes(clients[q % 2]!) - before)
      }
      t.ok(most <= 8192, `${name}: at most ${most} bytes a request`)
      // 64 digits a request, the replicas taking turns: each brings back the other's 64.
      most = 0
      for (let q = 0; q < 10; q++) {
        const before = socketBytes(clients[q % 2]!)
        await detectors[q % 2]!.inspect(batch('caller', test.images.slice(2000 + q * 64, 2064 + q * 64)))
        if (q > 0) most = Math.max(most, socketBytes(clients[q % 2]!) - before)
      }
      t.ok(most <= 8192, `${name}: at most ${most} bytes a 64-digit request`)
      t.ok(detectors[0]!.memory!().stored <= 1000, `${name}: the copy holds at most its cap`)
    }
  })

  t.test('64 requests in flight on each of two replicas: none fails, a request carries at most 8 KiB on average, and probing still alarms at once', async (t) => {
    const [a, b] = await replicas.open('load', 2)
    const clients = [a!.client, b!.client]
    const index = clients.map((c) => createSharedCallersIndexDetector(indexOptions(), 'mnist', store(c)))
    for (let q = 0; q < 1000; q++) await index[q % 2]!.inspect(batch(`reader-${q % 20}`, [test.images[q]!]))
    const start = clients.map(socketBytes)
    let sent = 0
    for (let round = 0; round < 4; round++) {
      const wave = Array.from({ length: 128 }, (_, i) => index[i % 2]!.inspect(batch(`reader-${i % 20}`, [test.images[1000 + round * 128 + i]!])))
      sent += wave.length
      const results = await Promise.allSettled(wave)
      t.equal(results.filter((r) => r.status === 'rejected').length, 0, `wave ${round + 1}: every request judged`)
    }
    const perRequest = (socketBytes(clients[0]!) + socketBytes(clients[1]!) - start[0]! - start[1]!) / sent
    t.ok(perRequest <= 8192, `${perRequest.toFixed(0)} bytes a request, sent and received`)
    const normal = gaussian(seeded(6))
    let first = -1
    for (let q = 0; q < 40 && first < 0; q++) if ((await index[q % 2]!.inspect(batch(`sybil-${q}`, [jitter(test.images[99]!, 0.01, normal)])))?.alarm) first = q
    t.ok(first >= 0 && first <= 20, `after the load, split probing alarms at probe ${first + 1}`)
  })

  t.test('a copy that missed the reply to one of its requests fails closed once, then is fetched whole and judges as one process', async (t) => {
    const [a, b] = await replicas.open('lost', 2)
    const opts = indexOptions({ k: 3, size: 30 })
    const [one, other] = [a!, b!].map((s) => createSharedCallersIndexDetector(opts, 'mnist', store(s.client)))
    const alone = createCallersIndexDetector(opts)
    const normal = gaussian(seeded(7))
    const queries = Array.from({ length: 8 }, () => jitter(test.images[11]!, 0.01, normal))
    const both = (x: Float32Array) => alone.inspect(batch('p', [x]))
    both(queries[0]!)
    await one!.inspect(batch('p', [queries[0]!]))
    for (const x of queries.slice(1, 6)) {
      both(x)
      await other!.inspect(batch('p', [x]))
    }
    // As if replies to `one` had carried queries 2 to 6 and been lost: Redis counts them as sent to it (its id is 1, the first handed out).
    const [pointers] = await raw.keys(`bulwark-test:${run}:lost:screening:stateful-callers:*:w`)
    t.equal(await raw.hget(pointers!, '1'), '1', "one's pointer: the one query it wrote")
    await raw.hset(pointers!, '1', '6')
    both(queries[6]!)
    await t.rejects(one!.inspect(batch('p', [queries[6]!])), { code: 'state_unavailable' }, 'the copy lacks queries Redis counted as sent to it: refused, 503')
    t.same(await one!.inspect(batch('p', [queries[7]!])), both(queries[7]!), 'the next request fetches the ring whole and is judged as by one process')
  })
}
