// The adversarial-screen stage with its per-principal state in Redis, two replicas (two stages,
// each with its own Redis client) on one Redis, the bundled mnist policy and calibration over
// the CNN in TypeScript: a probing run alternated between them is refused at the same request
// as against one in-process stage, the cool-down one replica starts is honoured by the other,
// a query that feature squeezing refuses enters the shared extraction state, and with Redis
// gone the stage fails closed (503 state_unavailable) unless told to judge without shared state.

import { readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { argmax, forward, lossInputGradient } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { parsePolicy } from '../../src/config/policy.ts'
import type { RedisConfig } from '../../src/config/scaleout.ts'
import type { ScreeningPolicy } from '../../src/config/screening-policy.ts'
import { silentLogger } from '../../src/deps.ts'
import type { Manifest } from '../../src/inference/manifest.ts'
import { compileScreening } from '../../src/screening/build.ts'
import type { CalibrationFile } from '../../src/screening/calibration.ts'
import { redisCooldowns } from '../../src/screening/cooldowns.ts'
import { createScreeningLinks } from '../../src/stages/screening.ts'
import { createModelInferenceStage } from '../../src/stages/model-inference.ts'
import { SharedState } from '../../src/state/redis.ts'
import type { RequestContext, Stage } from '../../src/types.ts'
import { fakeContext } from '../helpers/context.ts'
import { FakeClock } from '../helpers/fake-clock.ts'
import { cnnRunner, weights } from '../screening/cnn-runner.ts'
import { gaussian, jitter, seeded, seededRandom } from '../screening/helpers.ts'
import { REDIS_SERVER, sharedState, startRedis } from '../helpers/scaleout.ts'
import { redisConfig, sharedScreeningRedis } from '../screening/replicas.ts'
import { repoRoot } from '../../kit/paths.ts'

const bundled = parsePolicy(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8'), 'mnist.yaml').policy!.screening
const manifest = JSON.parse(readFileSync(path.join(repoRoot, 'models/mnist/manifest.json'), 'utf8')) as Manifest
const calibration = JSON.parse(readFileSync(path.join(repoRoot, 'policies/mnist.screening.json'), 'utf8')) as CalibrationFile
const test = loadMnist().test

/**
 * The screening links around model-inference over the CNN, as one stage; with `state`, the
 * per-caller state and cool-downs are in that Redis.
 */
function stage(state: SharedState | null, o: { policy?: ScreeningPolicy; allow?: boolean; skipped?: string[] } = {}): Stage {
  const shared = state ? { redis: state.client, ttlMs: 3_600_000 } : undefined
  const screening = compileScreening('mnist', o.policy ?? bundled, manifest, calibration, seededRandom(5), shared)
  const links = createScreeningLinks({
    models: new Map([['mnist', screening]]),
    clock: new FakeClock(),
    observer: { scored() {}, skipped: (_model: string, detector: string) => o.skipped?.push(detector) },
    ...(state ? { cooldowns: redisCooldowns(state.client), whenStateUnavailable: o.allow ? 'allow' : 'refuse' } : {}),
  })
  const chain = [links.screenInput, links.screenVariants, createModelInferenceStage({ service: cnnRunner() }), links.screenOutput]
  return { name: 'screening', phase: 'body', verbs: ['infer'], run: async (ctx) => { for (const link of chain) await link.run(ctx) } }
}

function request(image: Float32Array, sub: string): RequestContext {
  return fakeContext({
    principal: { subject: sub, issuer: 'https://issuer', scopes: [], claims: {}, expiresAtMs: 0 },
    identity: { id: 'spiffe://bulwark.local/ns/default/sa/dev', kind: 'spiffe' },
    request: { parameters: {}, inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: image }], outputs: [], binaryOutputs: false, batchSize: 1 },
  })
}

/** The 1-based request of the first refusal in a run of near-duplicates spread over `stages` in turn. */
async function probe(stages: Stage[], sub: string): Promise<number> {
  const normal = gaussian(seeded(9))
  const x = test.images[42]!
  for (let q = 1; q <= 40; q++) {
    try {
      await stages[q % stages.length]!.run(request(jitter(x, 0.01, normal), sub))
    } catch (err) {
      if ((err as { code?: string }).code !== 'attack_suspected') throw err
      return q
    }
  }
  return 0
}

const redis = await sharedScreeningRedis(t)
if (redis) {
  const { run, raw, replicas } = redis

  t.test('a probing run alternated between two replicas is refused where one replica refuses it, and the cool-down follows the caller', async (t) => {
    const [a, b] = await replicas.open('stage', 2)
    const [one, two] = [[stage(null)], [stage(a!), stage(b!)]]
    const alone = await probe(one, 'mallory')
    t.equal(alone, 21, 'one in-process stage: refused at the first scored request (k = 20)')
    t.equal(await probe(two, 'mallory'), alone, 'two replicas sharing Redis: the same request')

    // The 21st went to replica b (odd requests go to b); a refuses the caller now too.
    const during = request(test.images[7]!, 'mallory')
    await t.rejects(async () => two[0]!.run(during), { code: 'attack_suspected', status: 403 })
    t.equal(during.flags[0]?.detector, 'cooldown', 'refused by the cool-down the other replica started')
    await two[0]!.run(request(test.images[7]!, 'bob'))
    t.pass('other callers are served')

    const prefix = `bulwark-test:${run}:stage:screening:`
    const cooldown = await raw.keys(`${prefix}cooldown:mnist:*`)
    t.equal(cooldown.length, 1, 'one cool-down key')
    const pttl = await raw.pttl(cooldown[0]!)
    t.ok(pttl > 0 && pttl <= 60_000, `it expires with the policy's cooldownMs (PTTL ${pttl})`)
    for (const key of await raw.keys(`${prefix}*`)) {
      const ms = await raw.pttl(key)
      if (!(ms > 0)) t.fail(`${key} has no TTL (${ms})`)
    }
    const ring = (await raw.keys(`${prefix}stateful:mnist:*mallory*:v`))[0]!
    t.equal(await raw.strlen(ring), 21 * 49, "mallory's ring: 21 pooled queries (the refused one included), no raw input")
  })

  t.test('a query that feature squeezing refuses enters the shared extraction state', async (t) => {
    const [a] = await replicas.open('refused', 1)
    let adversarial: Float32Array | null = null
    for (let i = 0; !adversarial; i++) {
      const g = lossInputGradient(weights, test.images[i]!, test.labels[i]!).grad
      const x = test.images[i]!.map((v, k) => Math.min(1, Math.max(0, v + 0.2 * Math.sign(g[k]!))))
      if (argmax(forward(weights, x).logits) !== test.labels[i]) adversarial = x
    }
    await t.rejects(async () => stage(a!).run(request(adversarial, 'mallory')), { code: 'suspicious_input' })
    // The state's hash names a region of its string for each class with a growing set.
    const meta = await raw.keys(`bulwark-test:${run}:refused:screening:extraction:mnist:*mallory*:m`)
    const sets = Object.keys(await raw.hgetall(meta[0]!)).filter((field) => /^r\d+$/.test(field))
    t.equal(sets.length, 1, "the refused query seeded its class's growing set in Redis")
  })

  t.test('Redis down: fail closed with 503 state_unavailable, or judge without shared state when allowed', { skip: !REDIS_SERVER && 'needs a redis-server of its own to stop' }, async (t) => {
    const redis = await startRedis(t)
    const open = async (over: Partial<RedisConfig> = {}) => {
      const s = await SharedState.open(redisConfig(redis.url, `bulwark-test:${run}:down:`, { commandTimeoutMs: 200, ...over }), '.', silentLogger)
      t.teardown(() => s.close())
      return s
    }
    const [closed, noCooldown, allowed] = [await open(), await open(), await open({ screeningWhenUnavailable: 'allow' })]
    const skipped: string[] = []
    const refusing = stage(closed)
    const refusingDetector = stage(noCooldown, { policy: { ...bundled, cooldownMs: 0 } })
    const allowing = stage(allowed, { allow: true, skipped })
    await refusing.run(request(test.images[0]!, 'alice'))
    t.pass('served while Redis is up')

    await redis.stop()
    // ioredis notices the killed redis-server on its socket: wait for its status events.
    await Promise.all([closed, noCooldown, allowed].map((s) => sharedState(s, 'down')))
    t.ok(!closed.up && !noCooldown.up && !allowed.up, 'the clients notice')
    await t.rejects(async () => refusing.run(request(test.images[1]!, 'alice')), { code: 'state_unavailable', status: 503, headers: { 'retry-after': '1' }, reason: /cool-down on model mnist: Redis/ }, 'the cool-down check fails closed')
    await t.rejects(async () => refusingDetector.run(request(test.images[1]!, 'alice')), { code: 'state_unavailable', status: 503, reason: /stateful detector on model mnist: Redis/ }, 'so does the stateful detector')
    const ctx = request(test.images[1]!, 'alice')
    await allowing.run(ctx)
    t.ok(ctx.result, "screeningWhenUnavailable 'allow': served")
    t.same(ctx.flags.map((f) => f.detector), ['feature-bounds', 'feature-squeezing'], 'judged by the detectors that keep no state')
    t.same(skipped, ['cooldown', 'stateful', 'stateful-callers', 'extraction'], 'each skip counted (the model-wide index is in Redis too)')

    await redis.start()
    // ioredis reconnects on its own backoff timers: wait for its 'ready'.
    await sharedState(closed, 'up')
    t.ok(closed.up, 'reconnects by itself')
    await refusing.run(request(test.images[2]!, 'alice'))
    t.pass('and screens again')
  })
}
