// The shared extraction detector's copies (src/screening/prada-shared.ts, prada-copy.ts), on a
// real redis-server: replicas taking turns with single digits and 64-digit batches give the
// in-process detector's result for every request, and a steady request moves at most a bound
// computed from the slots it writes and reads; a copy behind by more than the log catches up
// from the whole state (and one behind by exactly the log, from the log); a commit that loses
// a race (another replica's request is let in between its read and its commit), three in a row
// (then the claim), or whose reply is lost, leaves the copies giving the in-process results in
// Redis's commit order; copies beyond maxPrincipals are forgotten and read whole again. With a
// window of 20 (the digests' ring full) and requests that wrap it, repeating queries whose
// slots the same request overwrites, queries of the same request, and queries another
// replica's request took between a read and its commit: after every request the result, the
// distances and the digests' ring in Redis (each slot's digest, count and next) are those of
// the in-process state judging the same requests in Redis's commit order. Pooled queries of 784
// cells with runs of zeros and of other values longer than 255 (the coding's counts) reach
// Redis and other replicas as they were: a third replica reading whole gives the in-process
// results, and the coding round-trips. Two replicas with one seeded random source (the same
// stash field): one's read between the other's read and commit leaves the results and the
// digests' ring as in process.

import t from 'tap'
import { socketBytes } from '../../bench/screening-redis.ts'
import { forward } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { cryptoRandom } from '../../src/deps.ts'
import type { DetectorResult, SharedDetector } from '../../src/screening/detector.ts'
import { keyedDigester } from '../../src/screening/digest.ts'
import { poolingEncoder } from '../../src/screening/encoder.ts'
import { createPradaDetector, judgeBatch, PradaState, type PradaOptions } from '../../src/screening/prada.ts'
import { createSharedPradaDetector, LOG_COMMITS, OPTIMISTIC_ATTEMPTS } from '../../src/screening/prada-shared.ts'
import { cellBytes, sharedDigest } from '../../src/screening/shared-store.ts'
import { decodeWrites, encodeWrites } from '../../src/screening/prada-copy.ts'
import { weights } from './cnn-runner.ts'
import { MNIST_LAYOUT, seededRandom } from './helpers.ts'
import { sharedScreeningRedis } from './replicas.ts'

const { images } = loadMnist().test
const HOUR = 3_600_000
const DIMS = 196
const options = (over: Partial<PradaOptions> = {}): PradaOptions => ({
  wThreshold: 0.9, minQueries: 100, windowSize: 1000, warmupPerClass: 10, growingSetPerClass: 100, maxPrincipals: 100, maxStoredQueries: 100_000, mode: 'enforce', encoder: poolingEncoder(MNIST_LAYOUT, 2), ...over,
})
const digestOf = keyedDigester(seededRandom(5))
const probs = images.map((x) => forward(weights, x).probs)

/** Held-out digits in a stride through the set (every class comes up), `n` at a time. */
function digits(start: number) {
  let next = start
  return (n: number) => Array.from({ length: n }, () => (7_919 * next++) % images.length)
}

/** One in-process detector and the shared replicas, fed the same requests; each call returns both results. */
function pair(one: ReturnType<typeof createPradaDetector>, principal: string) {
  return {
    alone: (at: number[]) => one.inspect({ principal, items: at.map((i) => images[i]!), digests: at.map((i) => digestOf(images[i]!)), probabilities: at.map((i) => probs[i]!) }),
    shared: (d: SharedDetector, at: number[]) => d.inspect({ principal, items: at.map((i) => images[i]!), digests: [], probabilities: at.map((i) => probs[i]!) }),
  }
}

const redis = await sharedScreeningRedis(t)
if (redis) {
  const { run, raw, replicas } = redis
  const key = (name: string, principal: string, part: string, shape = 'w1000g100') => `bulwark-test:${run}:${name}:screening:extraction:mnist:${shape}d196u8:${principal}:${part}`
  /** The count in a ring's header at `at` in the state's string. */
  const count = async (name: string, principal: string, at: number) => {
    const x = (await raw.getBuffer(key(name, principal, 'x')))!
    return new Float64Array(Uint8Array.from(x.subarray(at, at + 8)).buffer)[0]!
  }
  /** Bytes of the distances' and digests' rings as Redis holds them now. */
  const rings = async (name: string, principal: string) => 32 + 8 * (await count(name, principal, 0)) + 16 * (await count(name, principal, 16 + 8000))
  /** Bytes of the distances' ring as Redis holds it now: what a whole read brings back at least (the digests stay in Redis). */
  const distanceRing = async (name: string, principal: string) => 16 + 8 * (await count(name, principal, 0))

  t.test('replicas taking turns, single digits and 64-digit batches: the in-process result for every request, and a steady request within its bound', async (t) => {
    const states = await replicas.open('turns', 2)
    const two = states.map((s) => createSharedPradaDetector(options(), 'mnist', { redis: s.client, ttlMs: HOUR }, cryptoRandom))
    const p = pair(createPradaDetector(options()), 'caller')
    const next = digits(1)
    const differs: number[] = []
    let alarms = 0
    for (let q = 0; q < 60; q++) {
      const at = next(q % 10 === 3 ? 64 : 1)
      const r1 = p.alone(at)
      const r2 = await p.shared(two[q % 2]!, at)
      if (JSON.stringify(r1) !== JSON.stringify(r2)) differs.push(q)
      if (r1?.alarm) alarms++
    }
    t.same(differs, [], 'every result the same')
    t.ok(alarms === 0, 'honest digits: no alarm')
    // A steady single-digit request: its own writes go in (a distance, a digest, a class header
    // and a pooled query), the other replica's last commit (the same) comes back; plus the two
    // scripts' key names and framing.
    const keyBytes = key('turns', 'caller', 'm').length
    const data = 16 + 8 + (16 + 16) + (48 + DIMS)
    const bound = 2 * data + 5 * keyBytes + 1024
    const used: number[] = []
    for (let q = 0; q < 20; q++) {
      const at = next(1)
      const r1 = p.alone(at)
      const before = socketBytes(states[q % 2]!.client)
      const r2 = await p.shared(two[q % 2]!, at)
      used.push(socketBytes(states[q % 2]!.client) - before)
      if (JSON.stringify(r1) !== JSON.stringify(r2)) differs.push(60 + q)
    }
    t.same(differs, [], 'the same results')
    t.ok(Math.max(...used) <= bound, `bytes per request ${Math.min(...used)} to ${Math.max(...used)}, bound ${bound}`)
    t.ok(bound < 8 * 1024, 'the bound is under 8 KiB')
    t.ok((await rings('turns', 'caller')) > 4 * bound, 'and far under the whole state (the rings alone)')
  })

  t.test('a copy behind by more than the log catches up from the whole state; one behind by exactly the log, from the log', async (t) => {
    const states = await replicas.open('behind', 2)
    const [a, b] = states.map((s) => createSharedPradaDetector(options(), 'mnist', { redis: s.client, ttlMs: HOUR }, cryptoRandom))
    const p = pair(createPradaDetector(options()), 'caller')
    const next = digits(2)
    const same = async (d: SharedDetector, at: number[]) => JSON.stringify(p.alone(at)) === JSON.stringify(await p.shared(d, at))
    const ok: boolean[] = []
    for (let q = 0; q < 10; q++) ok.push(await same(q % 2 ? a! : b!, next(64)))
    const caughtUp = async (behind: number) => {
      for (let q = 0; q < behind; q++) ok.push(await same(b!, next(1)))
      const before = socketBytes(states[0]!.client)
      ok.push(await same(a!, next(1)))
      return socketBytes(states[0]!.client) - before
    }
    const fromLog = await caughtUp(LOG_COMMITS)
    const whole = await caughtUp(LOG_COMMITS + 1)
    const ringBytes = await distanceRing('behind', 'caller')
    t.ok(ok.every(Boolean), `${ok.length} requests: the in-process result for each`)
    t.ok(whole >= ringBytes, `${LOG_COMMITS + 1} behind: ${whole} bytes, the whole distances' ring (${ringBytes}) among them`)
    t.ok(fromLog < ringBytes, `${LOG_COMMITS} behind: ${fromLog} bytes, less than the distances' ring`)
  })

  t.test('a lost race, a claim after three, and a lost reply: the in-process results in Redis commit order', async (t) => {
    const states = await replicas.open('races', 2)
    // A small window, full after the first requests, so a slot left as the lost judgement wrote it would show.
    const opts = options({ windowSize: 30, minQueries: 20, warmupPerClass: 2, growingSetPerClass: 4 })
    const [a, b] = states.map((s) => createSharedPradaDetector(opts, 'mnist', { redis: s.client, ttlMs: HOUR }, cryptoRandom))
    const p = pair(createPradaDetector(opts), 'caller')
    const next = digits(3)
    const results: [DetectorResult | null, DetectorResult | null][] = []
    for (let q = 0; q < 40; q++) {
      const at = next(q % 8 === 0 ? 5 : 1)
      results.push([p.alone(at), await p.shared(q % 2 ? a! : b!, at)])
    }
    // Before each of replica a's next commits, replica b judges and commits one request of
    // `interpose`, so a's read is stale and its commit loses the race.
    const client = states[0]!.client as unknown as Record<string, (...args: unknown[]) => Promise<Buffer[]>>
    const commit = client.bulwarkPradaCommitBuffer!.bind(client)
    const interpose: number[][] = []
    let loseReply = false
    const tokens: unknown[] = []
    client.bulwarkPradaCommitBuffer = async (...args: unknown[]) => {
      tokens.push(args[7])
      const at = interpose.shift()
      if (at) results.push([p.alone(at), await p.shared(b!, at)])
      const reply = await commit(...args)
      if (loseReply) throw new Error('reply lost (as a timeout)')
      return reply
    }
    // One lost race, to a request on b that took one of the same digits: a repeat for a's retry.
    const mine = next(3)
    interpose.push([mine[0]!])
    let shared = await p.shared(a!, mine)
    results.push([p.alone(mine), shared])
    t.same(tokens, ['', ''], 'one lost: two commits, neither holding a claim')
    // Three lost races: the fourth commit holds the claim.
    tokens.length = 0
    interpose.push(...Array.from({ length: OPTIMISTIC_ATTEMPTS }, () => next(1)))
    const last = next(2)
    shared = await p.shared(a!, last)
    results.push([p.alone(last), shared])
    t.equal(tokens.length, OPTIMISTIC_ATTEMPTS + 1, `${OPTIMISTIC_ATTEMPTS} lost: ${OPTIMISTIC_ATTEMPTS + 1} commits`)
    t.not(tokens.at(-1), '', 'the last one holding the claim')
    loseReply = true
    const lost = next(1)
    await t.rejects(p.shared(a!, lost), { code: 'state_unavailable' }, 'a lost reply fails the request closed')
    p.alone(lost) // Redis committed it all the same
    loseReply = false
    for (let q = 0; q < 20; q++) {
      const at = next(q % 5 === 0 ? 64 : 1)
      results.push([p.alone(at), await p.shared(q % 2 ? a! : b!, at)])
    }
    t.same(
      results.map(([one]) => one),
      results.map(([, shared]) => shared),
      `${results.length} requests: the same results`,
    )
    t.ok(results.filter(([one]) => one !== null).length > 30, 'tests were run')
    t.equal(await raw.get(key('races', 'caller', 'claim', 'w30g4')), null, 'no claim left')
  })

  t.test('copies beyond maxPrincipals are forgotten and read whole again: the same results', async (t) => {
    const states = await replicas.open('forget', 2)
    const opts = options({ maxPrincipals: 2 })
    const [a, b] = states.map((s) => createSharedPradaDetector(opts, 'mnist', { redis: s.client, ttlMs: HOUR }, cryptoRandom))
    const one = createPradaDetector(options())
    const callers = ['p0', 'p1', 'p2'].map((c) => pair(one, c))
    const next = digits(4)
    let differs = 0
    for (let q = 0; q < 90; q++) {
      const p = callers[q % 3]!
      const at = next(q < 9 ? 64 : 1)
      if (JSON.stringify(p.alone(at)) !== JSON.stringify(await p.shared(Math.floor(q / 3) % 2 ? a! : b!, at))) differs++
    }
    t.equal(differs, 0, 'every result the same')
    t.ok(a!.memory!().principals <= 2 && a!.memory!().evictions > 0, `replica a: ${a!.memory!().principals} copies held, ${a!.memory!().evictions} forgotten`)
  })

  t.test('a full digests ring wrapping within requests: results, distances and digests as in process, query for query', async (t) => {
    const W = 20
    const states = await replicas.open('wrap', 2)
    const opts = options({ windowSize: W, minQueries: 5, warmupPerClass: 1, growingSetPerClass: 4 })
    const [a, b] = states.map((s) => createSharedPradaDetector(opts, 'mnist', { redis: s.client, ttlMs: HOUR }, cryptoRandom))
    // The in-process code on one state, its digests (prada.ts keeps numbers) mapped back to the digit.
    const ref = new PradaState(W)
    const digitOf = new Map<number, number>()
    const alone = (at: number[]) => {
      const digests = at.map((i) => digestOf(images[i]!))
      digests.forEach((d, k) => digitOf.set(d, at[k]!))
      return judgeBatch(ref, { principal: 'caller', items: at.map((i) => images[i]!), digests }, at.map((i) => probs[i]!), opts)
    }
    const shared = (d: SharedDetector, at: number[]) => d.inspect({ principal: 'caller', items: at.map((i) => images[i]!), digests: [], probabilities: at.map((i) => probs[i]!) })
    /** The k-th oldest digit in the in-process ring (0: the next one overwritten). */
    const old = (k: number) => digitOf.get(ref.seenRing[(ref.seenNext + k) % W]!)!
    const mismatches: string[] = []
    let requests = 0
    let repeats = 0
    const check = async (what: string, one: unknown, two: unknown) => {
      requests++
      const x = (await raw.getBuffer(key('wrap', 'caller', 'x', 'w20g4')))!
      const f64 = (at: number, n: number) => [...new Float64Array(Uint8Array.from(x.subarray(at, at + 8 * n)).buffer)]
      const seenCount = ref.seenRing.filter((d) => !Number.isNaN(d)).length
      const slots = Array.from({ length: seenCount }, (_, i) => x.subarray(16 + 8 * W + 16 + 16 * i, 16 + 8 * W + 32 + 16 * i).toString('hex'))
      const expected = Array.from({ length: seenCount }, (_, i) => sharedDigest(images[digitOf.get(ref.seenRing[i]!)!]!).toString('hex'))
      if (JSON.stringify(one) !== JSON.stringify(two)) mismatches.push(`${what}: result ${JSON.stringify(two)}, in process ${JSON.stringify(one)}`)
      if (JSON.stringify(f64(0, 2 + ref.count)) !== JSON.stringify([ref.count, ref.next, ...ref.distances.subarray(0, ref.count)])) mismatches.push(`${what}: distances`)
      if (JSON.stringify(f64(16 + 8 * W, 2)) !== JSON.stringify([seenCount, ref.seenNext])) mismatches.push(`${what}: digests' count and next`)
      if (JSON.stringify(slots) !== JSON.stringify(expected)) mismatches.push(`${what}: digests' slots`)
    }
    const remember = ref.remember.bind(ref)
    ref.remember = (digest: number) => {
      const fresh = remember(digest)
      if (!fresh) repeats++
      return fresh
    }
    let judged = 0
    const send = async (what: string, d: SharedDetector, at: number[]) => {
      const one = alone(at)
      if (one) judged++
      await check(what, one, await shared(d, at))
    }
    const next = digits(5)
    await send('fill', a!, next(W))
    for (let r = 0; r < 6; r++) {
      const d = r % 2 ? a! : b!
      // Two new queries take the two oldest slots; the digits that were there come again (new
      // now), each taking the next slot; then one about to be overwritten, now a repeat.
      await send(`overwritten then again ${r}`, d, [...next(2), old(1), old(0), old(4), old(3)])
      // The oldest twice (repeats), a new query that overwrites it, then the oldest again (new).
      const oldest = old(0)
      await send(`repeat then overwritten ${r}`, d === a ? b! : a!, [oldest, oldest, ...next(1), oldest, old(1)])
      // More than the window in one request: its first query is overwritten by its 21st and comes again.
      const long = next(W + 3)
      await send(`wrapping the window ${r}`, d, [...long, long[0]!, long[3]!, long[W + 2]!, long[1]!, old(2)])
    }
    // A lost race on a full ring: before a's commit, b commits a request that overwrites the
    // slots of digits in a's request; a reads again, and its answers change.
    const client = states[0]!.client as unknown as Record<string, (...args: unknown[]) => Promise<Buffer[]>>
    const commit = client.bulwarkPradaCommitBuffer!.bind(client)
    const interpose: number[][] = []
    let commits = 0
    client.bulwarkPradaCommitBuffer = async (...args: unknown[]) => {
      commits++
      const at = interpose.shift()
      if (at) await send('interposed', b!, at)
      return commit(...args)
    }
    const mine = [old(0), old(1), ...next(2), old(5)]
    interpose.push([...next(3), old(5)])
    const one = () => alone(mine)
    const sharedResult = await shared(a!, mine)
    await check('after a lost race', one(), sharedResult)
    t.equal(commits, 2, 'the first commit lost the race, the second went through')
    t.same(mismatches, [], `${requests} requests: results, distances and digests as in process`)
    t.ok(repeats >= 20 && judged >= 15, `in process: ${repeats} queries were repeats, ${judged} results tested the window`)
  })

  t.test('pooled queries of 784 cells, runs past 255: Redis and a replica reading whole get them as written', async (t) => {
    const states = await replicas.open('long', 3)
    const encoder = poolingEncoder(MNIST_LAYOUT, 1)
    const opts = options({ encoder, windowSize: 50, minQueries: 5, warmupPerClass: 2, growingSetPerClass: 10 })
    const [a, b, cold] = states.map((s) => createSharedPradaDetector(opts, 'mnist', { redis: s.client, ttlMs: HOUR }, cryptoRandom))
    const one = createPradaDetector(opts)
    const made = [
      new Float32Array(784),
      new Float32Array(784).fill(1),
      Float32Array.from({ length: 784 }, (_, i) => (i % 2 ? 0 : 0.5)),
      Float32Array.from({ length: 784 }, (_, i) => (i < 300 ? 0 : i < 600 ? 0.25 : 0)),
      Float32Array.from({ length: 784 }, (_, i) => (i % 7 === 0 ? 0 : 0.75)),
    ]
    const inputs = [...made, ...Array.from({ length: 40 }, (_, i) => images[(7_919 * (i + 900)) % images.length]!)]
    const p = inputs.map((x) => forward(weights, x).probs)
    const batch = (at: number[]) => ({ principal: 'caller', items: at.map((i) => inputs[i]!), probabilities: at.map((i) => p[i]!) })
    let differs = 0
    const order = [[0, 1, 2, 3, 4], [5, 6, 7, 8], [9, 10], [0, 11, 12], [13, 14, 15, 16, 17, 18]]
    for (let q = 0; q < 30; q++) {
      const at = order[q] ?? [(q * 3) % inputs.length, (q * 5 + 1) % inputs.length]
      const d = q % 2 ? a! : b!
      if (JSON.stringify(one.inspect({ ...batch(at), digests: at.map((i) => digestOf(inputs[i]!)) })) !== JSON.stringify(await d.inspect({ ...batch(at), digests: [] }))) differs++
    }
    const last = [3, 1, 20, 21]
    const coldResult = await cold!.inspect({ ...batch(last), digests: [] })
    t.equal(differs, 0, 'replicas taking turns: every result the same')
    t.same(coldResult, one.inspect({ ...batch(last), digests: last.map((i) => digestOf(inputs[i]!)) }), 'a replica with no copy, reading every set whole: the in-process result')
    const cells = made.map((x) => cellBytes(encoder.encode(x)))
    const writes = [{ field: 'c7', reset: false, slotBytes: 784, pairs: [[0, Buffer.alloc(48, 1)], [48 + 3 * 784, Buffer.concat(cells)]] as [number, Buffer][] }]
    t.same(decodeWrites(encodeWrites(writes), 784), writes, 'the coding round-trips')
    t.ok(encodeWrites(writes).length < 48 + cells.length * 784, 'and is shorter')
  })

  t.test('replicas with the same id (one seeded source): a read between another read and its commit does not mix their digests', async (t) => {
    const W = 20
    const states = await replicas.open('same-id', 2)
    const opts = options({ windowSize: W, minQueries: 5, warmupPerClass: 1, growingSetPerClass: 4 })
    const [a, b] = states.map((s) => createSharedPradaDetector(opts, 'mnist', { redis: s.client, ttlMs: HOUR }, seededRandom(9)))
    const one = createPradaDetector(opts)
    const p = pair(one, 'caller')
    const next = digits(6)
    const results: [unknown, unknown][] = []
    const sent: number[] = []
    for (let q = 0; q < 6; q++) {
      const at = next(5)
      sent.push(...at)
      results.push([p.alone(at), await p.shared(q % 2 ? a! : b!, at)])
    }
    // b's request reads, then waits before its commit until a's commit has been tried.
    const hook = (i: number) => {
      const client = states[i]!.client as unknown as Record<string, (...args: unknown[]) => Promise<Buffer[]>>
      const commit = client.bulwarkPradaCommitBuffer!.bind(client)
      return { client, commit }
    }
    const ca = hook(0)
    const cb = hook(1)
    const order: string[] = []
    let bRead!: () => void
    const bAtCommit = new Promise<void>((resolve) => (bRead = resolve))
    let release!: () => void
    const gate = new Promise<void>((resolve) => (release = resolve))
    const mine = next(4)
    const theirs = next(4)
    let bDone: Promise<unknown> | null = null
    ca.client.bulwarkPradaCommitBuffer = async (...args: unknown[]) => {
      if (!bDone) {
        bDone = p.shared(b!, theirs)
        await bAtCommit
      }
      const reply = await ca.commit(...args)
      if (reply.length === 2) order.push('a')
      release()
      return reply
    }
    cb.client.bulwarkPradaCommitBuffer = async (...args: unknown[]) => {
      bRead()
      await gate
      const reply = await cb.commit(...args)
      if (reply.length === 2) order.push('b')
      return reply
    }
    const mineShared = await p.shared(a!, mine)
    const theirsShared = await bDone!
    // a's first commit found b's stash in the shared field and was refused. Then b's commit and
    // a's retry race (a's retry read may replace b's stash first): either order, each once.
    t.same([...order].sort(), ['a', 'b'], `both committed once each (${order.join(', ')})`)
    const byOrder = { a: [mine, mineShared], b: [theirs, theirsShared] } as const
    for (const who of order as ('a' | 'b')[]) results.push([p.alone(byOrder[who][0]), byOrder[who][1]])
    t.same(results.map(([x]) => x), results.map(([, y]) => y), `${results.length} requests: the in-process results`)
    // The digests' ring in Redis: the last 20 queries (all distinct), as the in-process ring.
    const x = (await raw.getBuffer(key('same-id', 'caller', 'x', 'w20g4')))!
    const expected = [...sent, ...theirs, ...mine].slice(-W)
    const slots = Array.from({ length: W }, (_, i) => x.subarray(16 + 8 * W + 16 + 16 * i, 16 + 8 * W + 32 + 16 * i).toString('hex'))
    t.same(new Set(slots), new Set(expected.map((i) => sharedDigest(images[i]!).toString('hex'))), "the ring holds the last 20 queries' digests")
  })
}
