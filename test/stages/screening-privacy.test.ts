// Screening and output privacy together, as the chain runs them: screen-input, screen-variants,
// model-inference, privacy-charge, screen-output, output-privacy, with the bundled mnist policy
// (screening, calibration and output section) over the CNN in TypeScript. What is asserted:
// privacy-charge pays before any output-side detector judges (a caller who cannot pay gets 429
// and no verdict); a refused request is paid for, its answer and its verdict; every query the
// model answered enters the extraction detector's state, refused ones too; with noise the
// extraction detector sees only the released label, and the squeezing verdict leaves only
// through its paid randomized-response flip; what is not paid for is never judged (fail closed);
// and the check the start runs (screeningPrivacyProblems) names an output policy that could not
// pay for what screening reads.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { argmax, forward, lossInputGradient } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { parsePolicy, type Policy } from '../../src/config/policy.ts'
import type { ScreeningPolicy } from '../../src/config/screening-policy.ts'
import type { BulwarkError } from '../../src/errors.ts'
import type { Manifest } from '../../src/inference/manifest.ts'
import { MemoryAccountant } from '../../src/privacy/accountant.ts'
import { compileScreening, type ModelScreening } from '../../src/screening/build.ts'
import type { CalibrationFile } from '../../src/screening/calibration.ts'
import type { Detector } from '../../src/screening/detector.ts'
import { createModelInferenceStage } from '../../src/stages/model-inference.ts'
import { screeningPrivacyProblems } from '../../src/gateway/screening.ts'
import { compileOutputPolicy, createOutputPrivacyLinks } from '../../src/stages/output-privacy.ts'
import { createScreeningLinks } from '../../src/stages/screening.ts'
import type { RequestContext, Stage } from '../../src/types.ts'
import { repoRoot } from '../../kit/paths.ts'
import { fakeContext } from '../helpers/context.ts'
import { fakeClock, seededRandom } from '../privacy/helpers.ts'
import { cnnRunner, weights } from '../screening/cnn-runner.ts'

const bundled = parsePolicy(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8'), 'mnist.yaml').policy as Policy
const manifest = JSON.parse(readFileSync(path.join(repoRoot, 'models/mnist/manifest.json'), 'utf8')) as Manifest
const calibration = JSON.parse(readFileSync(path.join(repoRoot, 'policies/mnist.screening.json'), 'utf8')) as CalibrationFile
const test = loadMnist().test
const EPSILON = bundled.output.noise.epsilon

/** The first held-out digit whose FGSM (eps 0.2) example fools the CNN. */
function fgsmExample(): Float32Array {
  for (let i = 0; ; i++) {
    const g = lossInputGradient(weights, test.images[i]!, test.labels[i]!).grad
    const adv = test.images[i]!.map((v, k) => Math.min(1, Math.max(0, v + 0.2 * Math.sign(g[k]!))))
    if (argmax(forward(weights, adv).logits) !== test.labels[i]) return adv
  }
}

/** The body links from screen-input to output-privacy, in the chain's order; `budget` in answers' ε. */
function setup(o: { budget?: number; screening?: (s: ModelScreening) => ModelScreening; noise?: boolean } = {}) {
  const clock = fakeClock()
  let screening = compileScreening('mnist', bundled.screening as ScreeningPolicy, manifest, calibration, seededRandom(5))
  if (o.screening) screening = o.screening(screening)
  const output = {
    ...bundled.output,
    ...(o.noise === false ? { noise: { ...bundled.output.noise, mechanism: 'none' as const } } : {}),
    budget: { ...bundled.output.budget, epsilon: o.budget ?? bundled.output.budget.epsilon },
  }
  const accountant = new MemoryAccountant({ clock })
  const privacy = createOutputPrivacyLinks(() => compileOutputPolicy(output), { accountant, random: seededRandom('screening-privacy') })
  const links = createScreeningLinks({ models: new Map([['mnist', screening]]), clock })
  const chain: Stage[] = [links.screenInput, links.screenVariants, createModelInferenceStage({ service: cnnRunner() }), privacy.privacyCharge, links.screenOutput, privacy.outputPrivacy]
  /** Runs the chain's links from `from` up to (not including) `to`; the error thrown, or null. */
  const run = async (ctx: RequestContext, from = 0, to = chain.length): Promise<BulwarkError | null> => {
    try {
      for (const link of chain.slice(from, to)) await link.run(ctx)
      return null
    } catch (err) {
      return err as BulwarkError
    }
  }
  const extraction = screening.detectors.find((d) => d.name === 'extraction')!
  return { run, screening, extraction, chainNames: chain.map((l) => l.name) }
}

function request(x: Float32Array, sub = 'alice'): RequestContext {
  return fakeContext({
    principal: { subject: sub, issuer: 'https://issuer', scopes: [], claims: {}, expiresAtMs: 0 },
    identity: { id: 'spiffe://bulwark.local/ns/default/sa/dev', kind: 'spiffe' },
    request: {
      parameters: {},
      inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: Float32Array.from(x) }],
      outputs: [],
      binaryOutputs: false,
      batchSize: 1,
    },
  })
}

t.test('a refused adversarial example is paid for: its answer and its squeezing verdict', async (t) => {
  const { run } = setup()
  const ctx = request(fgsmExample())
  const err = await run(ctx)
  t.equal(err?.code, 'suspicious_input')
  t.equal(ctx.privacy?.epsilonSpent, 2 * EPSILON, 'one answer and one verdict, each at the answer\'s ε')
  const clean = request(test.images[0]!)
  t.equal(await run(clean), null)
  t.equal(clean.result!.parameters.privacy_epsilon_cost, 2 * EPSILON)
  t.equal(clean.result!.parameters.privacy_epsilon_spent, 4 * EPSILON, 'the refusal stays charged')
})

t.test('once the budget cannot pay, every input gets 429 and no output-side detector judges it', async (t) => {
  const { run, extraction } = setup({ budget: 2 * EPSILON })
  t.equal(await run(request(test.images[0]!)), null)
  const stored = extraction.memory!().stored
  const noise = Float32Array.from({ length: 784 }, (_, i) => ((i * 7919) % 1000) / 1000)
  for (const [name, x] of [['noise', noise], ['adversarial', fgsmExample()], ['clean', test.images[1]!]] as const) {
    const ctx = request(x)
    const err = await run(ctx)
    t.equal(err?.code, 'privacy_budget_exhausted', name)
    t.notOk(ctx.flags.some((f) => f.detector === 'feature-squeezing' || f.detector === 'extraction'), `${name}: no verdict on the model's output`)
  }
  t.equal(extraction.memory!().stored, stored, 'an unpaid answer never enters the extraction state')
})

t.test('a query that feature squeezing refuses still enters the extraction detector\'s state', async (t) => {
  for (const noise of [true, false]) {
    const { run, extraction } = setup({ noise })
    const ctx = request(fgsmExample())
    t.equal((await run(ctx))?.code, 'suspicious_input')
    t.equal(extraction.memory!().stored, 1, `noise ${noise}: the refused query seeds its class's growing set`)
  }
})

/** An output-side detector that records what it is shown and never alarms. */
function spy(seen: Float32Array[][]): Detector {
  return {
    name: 'spy',
    needs: 'output',
    alarmWhen: 'above',
    refusal: 'attack_suspected',
    mode: 'enforce',
    inspect(batch) {
      seen.push(batch.probabilities!.map((p) => Float32Array.from(p)))
      return null
    },
  }
}

t.test('with noise, a detector that reads no variants sees the released label, never the raw scores', async (t) => {
  const seen: Float32Array[][] = []
  const { run } = setup({ screening: (s) => ({ ...s, detectors: [...s.detectors, spy(seen)] }) })
  const ctx = request(test.images[3]!)
  t.equal(await run(ctx), null)
  const released = Array.from(ctx.result!.outputs[0]!.data as Float32Array)
  t.same(released.filter((v) => v === 1).length, 1, 'the bundled policy releases a one-hot label')
  t.same(Array.from(seen[0]![0]!), released, 'the detector saw what the caller got')
  t.not(Array.from(seen[0]![0]!).join(), Array.from(forward(weights, test.images[3]!).probs).join(), 'not the model\'s scores')

  const plain: Float32Array[][] = []
  const off = setup({ noise: false, screening: (s) => ({ ...s, detectors: [...s.detectors, spy(plain)] }) })
  t.equal(await off.run(request(test.images[3]!)), null)
  t.same(Array.from(plain[0]![0]!), Array.from(forward(weights, test.images[3]!).probs), 'without noise there is nothing to keep: the raw scores')
})

t.test('with noise, the squeezing verdict leaves only through the flip privacy-charge paid for', async (t) => {
  const { run, chainNames } = setup()
  const screenOutput = chainNames.indexOf('screen-output')
  /** Runs the chain with the paid flip forced to `flip`. */
  const withFlip = async (x: Float32Array, flip: boolean) => {
    const ctx = request(x)
    t.equal(await run(ctx, 0, screenOutput), null)
    t.same(ctx.charged!.verdictFlips.length, 1, 'one verdict paid for: the bundled feature squeezing enforces')
    ctx.charged = { ...ctx.charged!, verdictFlips: [flip] }
    return { ctx, err: await run(ctx, screenOutput) }
  }
  const benign = await withFlip(test.images[0]!, false)
  t.equal(benign.err, null, 'no alarm, no flip: served')
  const benignFlipped = await withFlip(test.images[0]!, true)
  t.equal(benignFlipped.err?.code, 'suspicious_input', 'no alarm, flipped: refused')
  t.match(benignFlipped.err?.reason, /randomized response/)
  t.notOk(benignFlipped.ctx.flags.find((f) => f.detector === 'feature-squeezing')?.alarm, 'the flag keeps the detector\'s own judgement')
  const adversarial = await withFlip(fgsmExample(), false)
  t.equal(adversarial.err?.code, 'suspicious_input', 'alarm, no flip: refused')
  const adversarialFlipped = await withFlip(fgsmExample(), true)
  t.equal(adversarialFlipped.err, null, 'alarm, flipped: served')
  t.ok(adversarialFlipped.ctx.flags.find((f) => f.detector === 'feature-squeezing')?.alarm)
})

t.test('fail closed: an answer with noise whose verdict or label was not paid for is never judged', async (t) => {
  const { run, chainNames } = setup()
  const screenOutput = chainNames.indexOf('screen-output')
  const noFlip = request(test.images[0]!)
  await run(noFlip, 0, screenOutput)
  noFlip.charged = { ...noFlip.charged!, verdictFlips: [] }
  t.match(await run(noFlip, screenOutput), { code: 'internal', reason: /feature-squeezing verdict/ })
  const noLabel = request(test.images[0]!)
  await run(noLabel, 0, screenOutput)
  noLabel.charged = { ...noLabel.charged!, outputs: new Map() }
  t.match(await run(noLabel, screenOutput), { code: 'internal', reason: /output "probabilities"/ })
})

t.test('at start: with noise, screening must read a protected output and a screened item must fit in the budget', async (t) => {
  const screening = compileScreening('mnist', bundled.screening as ScreeningPolicy, manifest, calibration, seededRandom(5))
  const compiled = (o: object) => compileOutputPolicy({ ...bundled.output, ...o } as Policy['output'])
  t.same(screeningPrivacyProblems(screening, compiled({})), [], 'the bundled policy')
  t.match(screeningPrivacyProblems(screening, compiled({ outputs: ['scores'] })), [/\/screening\/output: screening reads output "probabilities".*does not protect it/])
  t.match(screeningPrivacyProblems(screening, compiled({ budget: { ...bundled.output.budget, epsilon: 1.5 * EPSILON } })), [/\/output\/budget\/epsilon: a one-item request costs one answer and 1 screening verdicts/])
  t.same(screeningPrivacyProblems(screening, compiled({ outputs: ['scores'], noise: { ...bundled.output.noise, mechanism: 'none' } })), [], 'without noise there is nothing to pay for')
})

t.test('in a batch, each item\'s squeezing verdict is paid for and released by its own flip', async (t) => {
  const { run, chainNames } = setup()
  const screenOutput = chainNames.indexOf('screen-output')
  const digits = [test.images[0]!, test.images[1]!, test.images[2]!]
  const ctx = request(digits[0]!)
  ctx.request = { ...ctx.request!, inputs: [{ name: 'input', datatype: 'FP32', shape: [3, 1, 28, 28], data: Float32Array.from(digits.flatMap((d) => Array.from(d))) }], batchSize: 3 }
  t.equal(await run(ctx, 0, screenOutput), null)
  t.equal(ctx.charged!.verdictFlips.length, 3, 'one verdict per item')
  t.equal(ctx.privacy?.epsilonSpent, 6 * EPSILON, 'three answers and three verdicts')
  ctx.charged = { ...ctx.charged!, verdictFlips: [false, true, false] }
  t.equal(await run(ctx, screenOutput), null, 'the batch is answered')
  const label = ctx.result!.outputs[0]!.data as Float32Array
  t.same(Array.from(label.subarray(10, 20)), new Array(10).fill(0), 'the flipped item is withheld')
  t.equal(label.subarray(0, 10).reduce((a, b) => a + b, 0) + label.subarray(20, 30).reduce((a, b) => a + b, 0), 2, 'the others keep their labels')
  t.equal(ctx.result!.parameters.screening_withheld_items, '1')
  t.same(ctx.flags.find((f) => f.detector === 'feature-squeezing')?.withheld, [1])
})
