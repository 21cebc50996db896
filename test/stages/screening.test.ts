// The screening links around model-inference, with the bundled mnist policy and calibration,
// over the CNN in TypeScript: what reaches the model (one batch of originals and variants,
// run by model-inference only), what is refused (enforce) or served and flagged (observe),
// the cool-down, that variants never reach the result, and that feature bounds, enforcing,
// withhold only the out-of-bounds items of a batch.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { argmax, forward, lossInputGradient } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { parsePolicy } from '../../src/config/policy.ts'
import type { ScreeningPolicy } from '../../src/config/screening-policy.ts'
import type { Manifest } from '../../src/inference/manifest.ts'
import { compileScreening } from '../../src/screening/build.ts'
import type { CalibrationFile } from '../../src/screening/calibration.ts'
import { createScreeningLinks, type ScreeningObserver } from '../../src/stages/screening.ts'
import { createModelInferenceStage } from '../../src/stages/model-inference.ts'
import type { RequestContext } from '../../src/types.ts'
import { fakeContext } from '../helpers/context.ts'
import { FakeClock } from '../helpers/fake-clock.ts'
import { cnnRunner, weights } from '../screening/cnn-runner.ts'
import { gaussian, jitter, seeded, seededRandom } from '../screening/helpers.ts'
import { repoRoot } from '../../kit/paths.ts'

const bundled = parsePolicy(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8'), 'mnist.yaml').policy!.screening
const manifest = JSON.parse(readFileSync(path.join(repoRoot, 'models/mnist/manifest.json'), 'utf8')) as Manifest
const calibration = JSON.parse(readFileSync(path.join(repoRoot, 'policies/mnist.screening.json'), 'utf8')) as CalibrationFile
const test = loadMnist().test

/** The first held-out digit whose FGSM (eps 0.2) example fools the CNN and is squeezed away. */
function fgsmExample(): Float32Array {
  for (let i = 0; ; i++) {
    const x = test.images[i]!
    const y = test.labels[i]!
    const g = lossInputGradient(weights, x, y).grad
    const adv = x.map((v, k) => Math.min(1, Math.max(0, v + 0.2 * Math.sign(g[k]!))))
    if (argmax(forward(weights, adv).logits) !== y) return adv
  }
}

function setup(policy: ScreeningPolicy = bundled, clock = new FakeClock()) {
  const runner = cnnRunner()
  const screening = compileScreening('mnist', policy, manifest, calibration, seededRandom(5))
  const scored: { detector: string; action: string }[] = []
  const observer: ScreeningObserver = { scored: (_m, detector, _r, action) => scored.push({ detector, action }) }
  const links = createScreeningLinks({ models: new Map([['mnist', screening]]), clock, observer })
  const chain = [links.screenInput, links.screenVariants, createModelInferenceStage({ service: runner }), links.screenOutput]
  // The body phase's links from screen-input to screen-output, in the chain's order.
  const stage = { run: async (ctx: RequestContext) => { for (const link of chain) await link.run(ctx) } }
  return { runner, stage, links, scored, clock }
}

function request(images: Float32Array[], sub = 'alice', outputs: string[] = []): RequestContext {
  const data = new Float32Array(images.length * 784)
  images.forEach((x, i) => data.set(x, i * 784))
  return fakeContext({
    principal: { subject: sub, issuer: 'https://issuer', scopes: [], claims: {}, expiresAtMs: 0 },
    identity: { id: 'spiffe://bulwark.local/ns/default/sa/dev', kind: 'spiffe' },
    request: {
      parameters: {},
      inputs: [{ name: 'input', datatype: 'FP32', shape: [images.length, 1, 28, 28], data }],
      outputs: outputs.map((name) => ({ name, binary: false })),
      binaryOutputs: false,
      batchSize: images.length,
    },
  })
}

t.test('a benign digit is served from one batch of the original and its two squeezed variants', async (t) => {
  const { runner, stage } = setup()
  const ctx = request([test.images[0]!], 'alice', ['probabilities'])
  await stage.run(ctx)
  t.same(runner.batches, [3])
  t.equal(ctx.result?.outputs.length, 1)
  t.same(ctx.result!.outputs[0]!.shape, [1, 10])
  t.same(Array.from(ctx.result!.outputs[0]!.data as Float32Array), Array.from(forward(weights, test.images[0]!).probs), "the original's answer")
  t.same(ctx.flags.map((f) => f.detector), ['feature-bounds', 'feature-squeezing'], 'stateful and extraction have too little history to score')
  t.notOk(ctx.flags.some((f) => f.alarm))

  t.same(Object.keys(ctx.stageMs), [], 'run outside the pipeline runner: nothing else involved')

})

t.test('a batch runs as originals then each item\'s variants; the result keeps the originals only', async (t) => {
  const { runner, stage } = setup()
  const ctx = request([test.images[1]!, test.images[2]!, test.images[3]!])
  await stage.run(ctx)
  t.same(runner.batches, [9])
  t.same(ctx.result!.outputs[0]!.shape, [3, 10])
  t.same(Array.from((ctx.result!.outputs[0]!.data as Float32Array).subarray(10, 20)), Array.from(forward(weights, test.images[2]!).probs))
})

t.test('enforce: an adversarial example is refused with 422 suspicious_input, flagged and counted', async (t) => {
  const { stage, scored } = setup()
  const ctx = request([fgsmExample()])
  await t.rejects(async () => stage.run(ctx), { code: 'suspicious_input', status: 422 })
  const flag = ctx.flags.find((f) => f.detector === 'feature-squeezing')!
  t.ok(flag.alarm && flag.score > flag.threshold, JSON.stringify(flag))
  t.equal(flag.threshold, calibration.featureSqueezing!.threshold)
  t.same(ctx.result!.outputs.map((o) => o.shape), [[1, 10]], 'the variants are stripped before the refusal, whatever is answered')
  t.match(scored, [{ detector: 'feature-bounds' }, { detector: 'feature-squeezing', action: 'refused' }])
})

t.test('observe: the same example is served, and the alarm is flagged and counted', async (t) => {
  const { stage, scored } = setup({ ...bundled, mode: 'observe', featureSqueezing: { ...bundled.featureSqueezing!, mode: undefined } } as ScreeningPolicy)
  const ctx = request([fgsmExample()])
  await stage.run(ctx)
  t.ok(ctx.result)
  t.ok(ctx.flags.find((f) => f.detector === 'feature-squeezing')?.alarm)
  t.ok(scored.some((s) => s.detector === 'feature-squeezing' && s.action === 'flagged'))
})

t.test('a run of near-duplicates gets 403 attack_suspected, then the caller sits out the cool-down', async (t) => {
  const { stage, clock } = setup()
  const normal = gaussian(seeded(9))
  const x = test.images[42]!
  let refusedAt = 0
  for (let q = 1; q <= 40 && !refusedAt; q++) {
    const ctx = request([jitter(x, 0.01, normal)], 'mallory')
    try {
      await stage.run(ctx)
    } catch (err) {
      t.match(err, { code: 'attack_suspected', status: 403 })
      t.ok(ctx.flags.find((f) => f.detector === 'stateful')?.alarm)
      refusedAt = q
    }
  }
  t.equal(refusedAt, 21, 'refused at the first scored query (k = 20)')
  // Any request of that caller is refused during the cool-down; other callers are not.
  const during = request([test.images[7]!], 'mallory')
  await t.rejects(async () => stage.run(during), { code: 'attack_suspected' })
  t.equal(during.flags[0]!.detector, 'cooldown')
  await stage.run(request([test.images[7]!], 'bob'))
  clock.advance(60_001)
  await stage.run(request([test.images[8]!], 'mallory'))
})

t.test('no screening link runs the model: with stateful detection only, the one batch is the request itself', async (t) => {
  const { runner, stage, links } = setup({ ...bundled, featureBounds: undefined, featureSqueezing: undefined, extraction: undefined } as ScreeningPolicy)
  const ctx = request([test.images[0]!])
  for (const link of [links.screenInput, links.screenVariants, links.screenOutput]) await link.run(ctx)
  t.same(runner.batches, [], 'the screening links alone never call the model')
  t.equal(ctx.modelRequest, null, 'nothing added to the batch')
  await stage.run(request([test.images[0]!]))
  t.same(runner.batches, [1], 'model-inference runs the request as it came')
})

t.test('feature bounds enforcing, per item: a batch answers its in-bounds items, a lone out-of-bounds item gets 422', async (t) => {
  const { runner, stage } = setup({ ...bundled, featureBounds: { ...bundled.featureBounds!, mode: 'enforce' }, featureSqueezing: undefined, stateful: undefined, extraction: undefined } as ScreeningPolicy)
  // Ink on the blank border rows, where no calibration digit has any.
  const smudged = test.images[5]!.map((v, k) => (k < 56 ? 1 : v))
  const ctx = request([test.images[4]!, smudged, test.images[6]!], 'alice', ['probabilities'])
  await stage.run(ctx)
  t.same(runner.batches, [3], 'the model ran the batch as it came (no variants)')
  const data = ctx.result!.outputs[0]!.data as Float32Array
  t.same(Array.from(data.subarray(10, 20)), new Array(10).fill(0), 'the out-of-bounds item is withheld')
  t.same(Array.from(data.subarray(20, 30)), Array.from(forward(weights, test.images[6]!).probs), 'the others are answered')
  t.equal(ctx.result!.parameters.screening_withheld_items, '1')
  t.same(ctx.flags.find((f) => f.detector === 'feature-bounds')?.withheld, [1])
  await t.rejects(async () => stage.run(request([smudged])), { code: 'suspicious_input', status: 422 })
  await t.rejects(async () => stage.run(request([smudged, smudged])), { code: 'suspicious_input' }, 'a batch whose every item is out of bounds')
})
