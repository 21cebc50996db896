// The attack pieces of `npm run eval:privacy`'s shipped-policy part (bench/privacy/cnn.ts,
// active.ts, membership.ts, session.ts): the CNN surrogate learns a separable toy set and its
// input gradient matches finite differences; margin sampling picks the most uncertain rows;
// a Jacobian step moves each pixel by λ in its gradient's sign; the membership scores, TPR at
// a fixed FPR and AUC on known score sets; and one identity's window against a real gateway
// (mTLS, a development JWT, the bundled mnist policy without screening, its budget lowered to
// 10 charges) gets as many answers as its budget pays for, is charged that, and gets more
// only once the clock has moved a window on; with the bundled screening on, the ε the session
// reports (answers and charged refusals) is what the gateway's audit records say was spent.
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { parse } from 'yaml'
import { startGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { cryptoRandom } from '../../src/deps.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { jacobianStep, margins, mostUncertain } from '../../bench/privacy/active.ts'
import { SkewedClock } from '../../bench/privacy/clock.ts'
import { cnnLogits, cnnPredict, createCnn, inputGradient, trainCnn } from '../../bench/privacy/cnn.ts'
import { pool2 } from '../../bench/privacy/extraction.ts'
import { auc, labelScore, membershipQueries, SHIFTS, tprAtFpr } from '../../bench/privacy/membership.ts'
import { seededRng } from '../../bench/privacy/rng.ts'
import { spendWindow, type Item } from '../../bench/privacy/session.ts'

/** An 8x8 image with a bar: vertical (class 0) or horizontal (class 1), at a random place, with noise. */
function bar(rng: ReturnType<typeof seededRng>): { x: Float32Array; y: number } {
  const y = rng.int(2)
  const at = 1 + rng.int(6)
  const x = Float32Array.from({ length: 64 }, () => 0.2 * rng.uniform())
  for (let k = 1; k < 7; k++) x[y === 0 ? k * 8 + at : at * 8 + k] = 1
  return { x, y }
}

t.test('the CNN learns a separable toy set well above chance, and a fresh one does not', async (t) => {
  const rng = seededRng(1)
  const train = Array.from({ length: 300 }, () => bar(rng))
  const test = Array.from({ length: 200 }, () => bar(rng))
  const m = createCnn(8, 4, 2, seededRng(2))
  const accuracy = () => cnnPredict(m, test.map((s) => s.x)).filter((l, i) => l === test[i]!.y).length / test.length
  const before = accuracy()
  trainCnn(m, train.map((s) => s.x), train.map((s) => [1 - s.y, s.y]), { steps: 6000, batchSize: 16, learningRate: 0.01 }, seededRng(3))
  t.ok(accuracy() > 0.95, `trained: ${accuracy()}`)
  t.ok(before < 0.8, `untrained: ${before}`)
})

t.test('the input gradient of a logit matches finite differences', async (t) => {
  const m = createCnn(8, 3, 3, seededRng(4))
  const x = Float32Array.from({ length: 64 }, (_, i) => ((i * 37) % 11) / 11)
  const g = inputGradient(m, x, 2)
  let checked = 0
  for (const i of [0, 9, 18, 27, 36, 45, 63]) {
    const h = 1e-2
    const up = Float32Array.from(x)
    const down = Float32Array.from(x)
    up[i]! += h
    down[i]! -= h
    const numeric = (cnnLogits(m, up)[2]! - cnnLogits(m, down)[2]!) / (2 * h)
    // ReLU and max-pool kinks can sit inside the step; skip those points rather than loosen the bound.
    if (Math.abs(numeric - (cnnLogits(m, up)[2]! - cnnLogits(m, x)[2]!) / h) > 1e-3) continue
    t.ok(Math.abs(numeric - g[i]!) < 1e-3, `pixel ${i}: ${g[i]} vs ${numeric}`)
    checked++
  }
  t.ok(checked >= 4, `${checked} pixels checked`)
})

t.test('margin sampling picks the rows whose two best classes are closest', async (t) => {
  const probs = [
    [0.9, 0.05, 0.05],
    [0.4, 0.35, 0.25],
    [0.5, 0.1, 0.4],
    [0.34, 0.33, 0.33],
  ]
  const m = margins(probs)
  t.ok(Math.abs(m[0]! - 0.85) < 1e-12 && Math.abs(m[2]! - 0.1) < 1e-12)
  t.same(mostUncertain(probs, 2), [3, 1])
  t.same(mostUncertain(probs, 10), [3, 1, 2, 0])
})

t.test('a Jacobian step moves each pixel by λ in its pooled cell gradient sign, clamped to [0, 1]', async (t) => {
  const m = createCnn(14, 4, 10, seededRng(5))
  const image = Float32Array.from({ length: 784 }, (_, i) => (i % 3) / 2)
  const g = inputGradient(m, pool2(image), 7)
  const out = jacobianStep(m, image, 7, 0.1)
  let moved = 0
  for (let i = 0; i < 784; i++) {
    const gi = g[(Math.floor(i / 28) >> 1) * 14 + ((i % 28) >> 1)]!
    const want = Math.min(1, Math.max(0, image[i]! + (gi > 0 ? 0.1 : gi < 0 ? -0.1 : 0)))
    if (Math.abs(out[i]! - want) > 1e-6) t.fail(`pixel ${i}: ${out[i]} instead of ${want}`)
    if (out[i] !== image[i]) moved++
  }
  t.ok(moved > 100, `${moved} pixels moved`)
})

t.test('membership queries and scores', async (t) => {
  const image = Float32Array.from({ length: 784 }, (_, i) => (i === 14 * 28 + 14 ? 1 : 0))
  const q = membershipQueries(image, seededRng(6))
  t.equal(q.length, 1 + SHIFTS.length + 3)
  t.equal(q[0], image, 'the candidate itself first')
  t.equal(q[1]![14 * 28 + 15], 1, 'then shifted copies')
  t.equal(membershipQueries(image, seededRng(6), 0).length, 1 + SHIFTS.length, 'no noisy copies when asked')
  t.equal(labelScore([3, 3, 1, 3], 3), 0.75)
})

t.test('TPR at a fixed FPR and AUC on known score sets', async (t) => {
  // 1,000 non-members scoring 0..999; members 500..1499: at FPR <= 0.1% the threshold must
  // exceed 998, so exactly one non-member (999) is let in, and members >= 999 are 501 of 1,000.
  const non = Array.from({ length: 1000 }, (_, i) => i)
  const mem = Array.from({ length: 1000 }, (_, i) => 500 + i)
  const r = tprAtFpr(mem, non, 0.001)
  t.equal(r.threshold, 999)
  t.equal(r.fpr, 0.001)
  t.equal(r.tpr, 0.501)
  t.equal(tprAtFpr([1, 1, 1], [1, 0, 0], 0.001).tpr, 0, 'a tie with a non-member cannot be separated')
  t.equal(auc([2, 3], [0, 1]), 1)
  t.equal(auc([0, 1], [2, 3]), 0)
  t.equal(auc([1, 1], [1, 1]), 0.5, 'ties count half')
  t.ok(Math.abs(auc(mem, non) - 0.875) < 1e-12)
})

t.test('one window of a budget through the gateway: answers and charge as paid, none more until the window moves', async (t) => {
  const bundled = parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8'))
  const { screening: _screening, ...policy } = bundled
  const epsilon = Number(bundled.output.noise.epsilon)
  policy.output = { ...bundled.output, budget: { epsilon: 10 * epsilon, windowMs: 3_600_000 } }
  // The real clock plus an offset the test moves (the model's batching timers stay real).
  const clock = new SkewedClock()
  const gw = await startGateway({ models: ['mnist'], policies: { mnist: policy }, deps: { clock, random: cryptoRandom } })
  t.teardown(() => gw.close())
  const digits = loadMnist().test.images.slice(0, 30)
  let next = 0
  const take = (n: number): Item[] => digits.slice(next, (next += n)).map((image, k) => ({ id: next - n + k, image }))
  const target = { gw, clock, cost: { epsilon, budget: 10 * epsilon, windowMs: 3_600_000, verdicts: 0, cooldownMs: 0 } }

  const first = await spendWindow(target, 'attacker', take, { maxBatch: 4 })
  t.equal(first.answers.length, 10, 'ten answers for ten charges')
  t.same(first.answers.map((a) => a.id), [...Array(10).keys()])
  t.equal(first.epsilon, 10 * epsilon, 'charged what the responses say was spent')
  t.same(first.refusals, {})

  const spent = await spendWindow({ ...target, cost: { ...target.cost } }, 'attacker', take)
  t.equal(spent.answers.length, 0, 'the same window again: nothing')
  t.same(spent.refusals, { privacy_budget_exhausted: 1 })

  clock.advance(3_600_000 + 1000)
  const later = await spendWindow(target, 'attacker', take)
  t.equal(later.answers.length, 10, 'a window later: ten more')
})

t.test('with screening on, the session counts charged refusals as the gateway does', async (t) => {
  const bundled = parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8'))
  const epsilon = Number(bundled.output.noise.epsilon)
  const policy = { ...bundled, output: { ...bundled.output, budget: { epsilon: 20 * epsilon, windowMs: 3_600_000 } } }
  const clock = new SkewedClock()
  const gw = await startGateway({ models: ['mnist'], policies: { mnist: policy }, deps: { clock, random: cryptoRandom } })
  t.teardown(() => gw.close())
  // Four clean digits, then uniform-noise images, which feature squeezing refuses (and
  // charges): the window ends on refusals, whose charge no answer reports.
  const rng = seededRng(8)
  const digits = loadMnist().test.images.slice(0, 20)
  const items: Item[] = digits.map((image, i) => ({ id: i, image: i >= 4 ? Float32Array.from({ length: 784 }, () => rng.uniform()) : image }))
  let next = 0
  const take = (n: number): Item[] => items.slice(next, (next += n))
  const r = await spendWindow({ gw, clock, cost: { epsilon, budget: 20 * epsilon, windowMs: 3_600_000, verdicts: 1, cooldownMs: 60_000 } }, 'screened', take, { maxBatch: 2 })
  t.ok((r.refusals.suspicious_input ?? 0) >= 1, `refused: ${JSON.stringify(r.refusals)}`)
  t.ok(r.answers.length >= 1)

  const dir = path.join(gw.dir, '.bulwark/audit')
  const records = readdirSync(dir).flatMap((f) => readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)))
  const spent = records.filter((x) => x.type === 'request' && x.model === 'mnist' && x.privacy).map((x) => Number(x.privacy.epsilonSpent))
  t.equal(r.epsilon, Math.max(...spent), 'the session reports what the accountant charged')
  t.ok(r.epsilon >= 19 * epsilon, `the budget was spent: ${r.epsilon}`)
})
