// The shared extraction detector's copies (src/screening/prada-shared.ts, prada-copy.ts), on a
// real redis-server: replicas taking turns with single digits and 64-digit batches give the
// in-process detector's result for every request, and a steady request moves at most a bound
// computed from the slots it writes and reads; a copy behind by more than the log catches up
// from the whole state (and one behind by exactly the log, from the log); a commit that loses
// a race (another replica's request is let in between its read and its commit), three in a row
// (then the claim), or whose reply is lost, leaves the copies giving the in-process results in
// Redis's commit order; copies beyond maxPrincipals are forgotten and read whole again.

import t from 'tap'
import { socketBytes } from '../../bench/screening-redis.ts'
import { forward } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { cryptoRandom } from '../../src/deps.ts'
import type { DetectorResult, SharedDetector } from '../../src/screening/detector.ts'
import { keyedDigester } from '../../src/screening/digest.ts'
import { poolingEncoder } from '../../src/screening/encoder.ts'
import { createPradaDetector, type PradaOptions } from '../../src/screening/prada.ts'
import { createSharedPradaDetector, LOG_COMMITS, OPTIMISTIC_ATTEMPTS } from '../../src/screening/prada-shared.ts'
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
  /** Bytes of the distances' and digests' rings as Redis holds them now: what a whole read brings back at least. */
  const rings = async (name: string, principal: string) => {
    const x = (await raw.getBuffer(key(name, principal, 'x')))!
    const count = (at: number) => new Float64Array(Uint8Array.from(x.subarray(at, at + 8)).buffer)[0]!
    return 32 + 8 * count(0) + 16 * count(16 + 8000)
  }

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
    const ringBytes = await rings('behind', 'caller')
    t.ok(ok.every(Boolean), `${ok.length} requests: the in-process result for each`)
    t.ok(whole >= ringBytes, `${LOG_COMMITS + 1} behind: ${whole} bytes, the whole rings (${ringBytes}) among them`)
    t.ok(fromLog < ringBytes, `${LOG_COMMITS} behind: ${fromLog} bytes, less than the rings`)
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
}
