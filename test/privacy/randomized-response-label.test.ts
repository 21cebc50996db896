// k-ary randomized response on the label (src/privacy/mechanisms.ts randomizedResponseLabel,
// the stage's `noise.mechanism: randomized-response`): the true label comes out with
// probability e^ε/(e^ε + k - 1) and every other label with 1/(e^ε + k - 1), so the odds of any
// released label differ by at most e^ε between two score vectors with different arg-maxes.
// Checked by frequency at fixed seeds, through the sampler and through the stage.
import t from 'tap'
import { Value } from '@sinclair/typebox/value'
import { OutputPolicy, outputPolicyProblems } from '../../src/config/output-policy.ts'
import type { Tensor } from '../../src/inference/tensor.ts'
import { MemoryAccountant } from '../../src/privacy/accountant.ts'
import { randomizedResponseKeepProbability, randomizedResponseLabel } from '../../src/privacy/mechanisms.ts'
import { RandomReader } from '../../src/privacy/random.ts'
import { compileOutputPolicy, createOutputPrivacyLinks } from '../../src/stages/output-privacy.ts'
import { fakeContext } from '../helpers/context.ts'
import { chiSquare, fakeClock, seededRandom } from './helpers.ts'

const micros = (epsilon: number) => Math.round(epsilon * 1e6)

/** The pmf the mechanism must have, written from the definition (not from the code under test). */
const rrPmf = (epsilon: number, k: number, label: number) => (z: number) => {
  if (!Number.isInteger(z) || z < 0 || z >= k) return 0
  const e = Math.exp(epsilon)
  return z === label ? e / (e + k - 1) : 1 / (e + k - 1)
}

t.test('the released label is the true one with probability e^ε/(e^ε + k - 1), the others uniform (chi-square)', async (t) => {
  const n = 20_000
  for (const [epsilon, k, label] of [
    [0.5, 10, 0],
    [1, 10, 3],
    [2, 10, 9],
    [4, 10, 5],
    [Math.log(2), 3, 1],
    [1, 2, 1],
  ] as const) {
    const rng = new RandomReader(seededRandom(`rr-label-${epsilon}-${k}-${label}`))
    const samples = Array.from({ length: n }, () => randomizedResponseLabel(rng, label, k, micros(epsilon)))
    const fit = chiSquare(samples, rrPmf(epsilon, k, label))
    t.equal(fit.df, k - 1, `ε ${epsilon.toFixed(3)}, k ${k}: every label has its own bin`)
    t.ok(fit.stat < fit.critical, `ε ${epsilon.toFixed(3)}, k ${k}, label ${label}: chi2 ${fit.stat.toFixed(1)} < ${fit.critical.toFixed(1)}`)
  }
})

t.test('the chi-square has the power to tell: the same draws judged against ε 3 fail it', async (t) => {
  // The same draws judged against a keep-probability one ε too high must be rejected, or the
  // chi-square above proves nothing at this sample size.
  const rng = new RandomReader(seededRandom('rr-label-power'))
  const samples = Array.from({ length: 20_000 }, () => randomizedResponseLabel(rng, 4, 10, micros(2)))
  const wrong = chiSquare(samples, rrPmf(3, 10, 4))
  t.ok(wrong.stat > wrong.critical, `against ε 3: chi2 ${wrong.stat.toFixed(1)} > ${wrong.critical.toFixed(1)}`)
})

t.test('randomizedResponseKeepProbability is the formula (the docs table reads it)', async (t) => {
  // Computed independently to 40 digits (Python decimal): 23.1969..., 45.0853..., 85.8486..., 99.6989..., 99.99989...
  const table = [1, 2, 4, 8, 16].map((e) => (100 * randomizedResponseKeepProbability(e, 10)).toFixed(2))
  t.same(table, ['23.20', '45.09', '85.85', '99.70', '100.00'])
})

t.test('one class: always that class; bad arguments are refused', async (t) => {
  const rng = new RandomReader(seededRandom('rr-label-edge'))
  t.ok(Array.from({ length: 100 }, () => randomizedResponseLabel(rng, 0, 1, micros(1))).every((v) => v === 0))
  t.throws(() => randomizedResponseLabel(rng, 0, 10, 0), RangeError)
  t.throws(() => randomizedResponseLabel(rng, 0, 10, 1.5), RangeError)
  t.throws(() => randomizedResponseLabel(rng, 10, 10, micros(1)), RangeError)
  t.throws(() => randomizedResponseLabel(rng, -1, 10, micros(1)), RangeError)
  t.throws(() => randomizedResponseLabel(rng, 0, 0, micros(1)), RangeError)
})

// --- Through the stage ---

const policy = (partial: unknown) => Object.freeze(Value.Default(OutputPolicy, structuredClone(partial)) as OutputPolicy)

function rows(row: number[], n: number): Tensor {
  const data = new Float32Array(row.length * n)
  for (let i = 0; i < n; i++) data.set(row, i * row.length)
  return { name: 'probabilities', datatype: 'FP32', shape: [n, row.length], data }
}

/** Released labels for n copies of `row`, one request through both links. */
async function releasedLabels(epsilon: number, row: number[], n: number, seed: string): Promise<number[]> {
  const compiled = compileOutputPolicy(policy({ mode: 'label', noise: { mechanism: 'randomized-response', epsilon }, budget: { epsilon: 100_000, windowMs: 1000 } }))
  const links = createOutputPrivacyLinks(() => compiled, { accountant: new MemoryAccountant({ clock: fakeClock() }), random: seededRandom(seed) })
  const ctx = fakeContext({
    deadlineMs: 1e9,
    request: { parameters: {}, inputs: [], outputs: [], binaryOutputs: false, batchSize: n },
    result: { modelName: 'mnist', modelVersion: '1', outputs: [rows(row, n)], parameters: {} },
  })
  await links.privacyCharge.run(ctx)
  await links.outputPrivacy.run(ctx)
  const data = ctx.result!.outputs[0]!.data as Float32Array
  const k = row.length
  const labels: number[] = []
  for (let off = 0; off < data.length; off += k) {
    const hot = [...data.subarray(off, off + k)]
    if (hot.filter((v) => v === 1).length !== 1 || hot.some((v) => v !== 0 && v !== 1)) throw new Error(`not one-hot: ${hot}`)
    labels.push(hot.indexOf(1))
  }
  return labels
}

t.test('DP: for two score vectors with different arg-max, every released label\'s frequency differs by at most e^ε (and the bound is reached)', async (t) => {
  const epsilon = 1
  const n = 40_000
  // Arg-max 1; and a tie between 0 and 5, which goes to the lower index: arg-max 0.
  const a = [0.05, 0.6, 0.05, 0.05, 0.05, 0.05, 0.05, 0.04, 0.03, 0.03]
  const b = [0.3, 0.05, 0.05, 0.05, 0.05, 0.3, 0.05, 0.05, 0.05, 0.05]
  const fa = count(await releasedLabels(epsilon, a, n, 'rr-dp-a'), 10)
  const fb = count(await releasedLabels(epsilon, b, n, 'rr-dp-b'), 10)
  let worst = 0
  for (let o = 0; o < 10; o++) {
    // Standard error of log(frequency) is about sqrt((1 - p)/(n p)); allow 4 of each.
    const slack = 4 * (Math.sqrt((1 - fa[o]! / n) / fa[o]!) + Math.sqrt((1 - fb[o]! / n) / fb[o]!))
    const logRatio = Math.abs(Math.log(fa[o]! / fb[o]!))
    worst = Math.max(worst, logRatio)
    t.ok(logRatio <= epsilon + slack, `label ${o}: |log(${fa[o]}/${fb[o]})| = ${logRatio.toFixed(3)} <= ε + ${slack.toFixed(3)}`)
    const expected = o === 1 || o === 0 ? epsilon : 0
    t.ok(Math.abs(logRatio - expected) <= slack, `label ${o}: log-ratio ${logRatio.toFixed(3)} is ${expected} within ${slack.toFixed(3)}`)
  }
  t.ok(worst > 0.8 * epsilon, `the bound is reached at the two arg-maxes (${worst.toFixed(3)})`)
  const keep = Math.exp(epsilon) / (Math.exp(epsilon) + 9)
  t.ok(Math.abs(fa[1]! / n - keep) < 5 * Math.sqrt((keep * (1 - keep)) / n), `arg-max 1 released ${(fa[1]! / n).toFixed(4)} of the time, expected ${keep.toFixed(4)}`)
  t.ok(Math.abs(fb[0]! / n - keep) < 5 * Math.sqrt((keep * (1 - keep)) / n), `tie to the lower index: label 0 released ${(fb[0]! / n).toFixed(4)} of the time`)
})

function count(labels: number[], k: number): number[] {
  const c = new Array<number>(k).fill(0)
  for (const l of labels) c[l]!++
  return c
}

t.test('policy: randomized-response is a label mechanism; scores and top-k are refused with the fields named', async (t) => {
  for (const mode of ['scores', 'top-k'] as const) {
    const p = policy({ mode, noise: { mechanism: 'randomized-response', epsilon: 4 } })
    t.match(outputPolicyProblems(p), [/^\/output\/noise\/mechanism: randomized-response releases a label only, so it needs \/output\/mode: label \(got [a-z-]+\)/])
    t.throws(() => compileOutputPolicy(p, 'policies/mnist.yaml'), /randomized-response releases a label only/)
  }
  const ok = compileOutputPolicy(policy({ mode: 'label', noise: { mechanism: 'randomized-response', epsilon: 4 }, budget: { epsilon: 40 } }))
  t.same(ok.noise, { mechanism: 'randomized-response', epsilonMicros: 4_000_000, cost: { epsilonMicros: 4_000_000, rhoNanos: 0 } }, 'charged ε per answer, pure')
  t.same(ok.verdict, { epsilonMicros: 4_000_000, rhoNanos: 0 }, 'a screening verdict costs one answer\'s ε, as with Laplace')
  t.same(outputPolicyProblems(policy({ mode: 'label', noise: { mechanism: 'randomized-response', epsilon: 8 }, budget: { epsilon: 4 } })).length, 1, 'the budget must still pay for one answer')
  t.same((Value.Default(OutputPolicy, {}) as OutputPolicy).noise.mechanism, 'none', 'not the default')
})
