// The pieces of the adaptive screening evaluation that could be wrong without the figures
// showing it: HopSkipJump's boundary search on a toy linear classifier, NES's gradient
// estimate of a known function, the identity schedule and its oracle, the extraction query
// sources and run (stopping at the 403, measuring at checkpoints), and BPDA's result really
// passing feature squeezing; NES trusting a success claim only when the evaluator's check agrees.
import t from 'tap'
import { argmax, forward } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { hopSkipJump, nes, nesGradient, tiledNoise } from '../../bench/attacks/black-box.ts'
import { bpda, distortion, judge, softBitDepthBackward } from '../../bench/attacks/bpda.ts'
import { interleavedSource, jbdaSource, runExtraction, type QuerySource } from '../../bench/attacks/extraction-adaptive.ts'
import { seededRng } from '../../bench/privacy/rng.ts'
import { IdentitySchedule, rotatingOracle, type Reply } from '../../bench/attacks/identities.ts'
import { parseSqueezers } from '../../src/screening/squeezers.ts'
import { weights } from './cnn-runner.ts'
import { gaussian, MNIST_LAYOUT, seeded } from './helpers.ts'

const cosine = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let ab = 0
  let aa = 0
  let bb = 0
  for (let i = 0; i < a.length; i++) {
    ab += a[i]! * b[i]!
    aa += a[i]! ** 2
    bb += b[i]! ** 2
  }
  return ab / Math.sqrt(aa * bb)
}

t.test('HopSkipJump finds the boundary of a linear classifier, as close as the true distance', async (t) => {
  // An 8x8 'image': small enough for the search to converge in a short test.
  const d = 64
  const normal = gaussian(seeded(3))
  const w = Float32Array.from({ length: d }, () => normal())
  const wn = Math.hypot(...w)
  const x = new Float32Array(d).fill(0.5)
  const trueDistance = 0.6
  // Class 1 where w.(z - x) > trueDistance * |w|, class 0 (x's class) elsewhere.
  const side = (z: Float32Array) => {
    let s = 0
    for (let i = 0; i < d; i++) s += w[i]! * (z[i]! - x[i]!)
    return s / wn - trueDistance
  }
  const oracle = async (z: Float32Array) => {
    const probs = new Float32Array(10)
    probs[side(z) > 0 ? 1 : 0] = 1
    return { probs }
  }
  // A start off the normal (its first boundary point is far from the nearest one), inside
  // [0, 1] as every query must be.
  const v = Float32Array.from({ length: d }, () => normal())
  const vn = Math.hypot(...v)
  const start = x.map((val, i) => val + (0.75 * w[i]!) / wn + (0.75 * v[i]!) / vn)
  t.ok(start.every((p) => p >= 0 && p <= 1) && side(start) > 0, 'the start is a valid adversarial input')
  const o = await hopSkipJump(oracle, x, 0, { successL2: 0, maxQueries: 1500, starts: [start], initialSamples: 100, maxSamples: 300, random: seeded(4), normal: gaussian(seeded(5)) })
  t.equal(o.queries, 1500, 'it runs to its budget (success L2 0 is never met)')
  t.ok(o.bestDistortion! >= trueDistance - 1e-3, `no adversarial point is nearer than the boundary (${o.bestDistortion})`)
  t.ok(o.trace[0]![1] > 1.4 * trueDistance, `the first boundary point is far (${o.trace[0]![1].toFixed(2)})`)
  t.ok(o.bestDistortion! <= 1.1 * trueDistance, `it gets within 10% of the true distance (${o.bestDistortion})`)
})

t.test('NES estimates the gradient of a known function, per pixel and per tile', async (t) => {
  const c = Float32Array.from({ length: 16 }, (_, i) => (i % 3) - 1)
  const f = async (z: Float32Array) => z.reduce((s, v, i) => s + c[i]! * v, 0)
  const at = new Float32Array(16).fill(0.5)
  const g = await nesGradient(f, at, { sigma: 0.05, samples: 400, normal: gaussian(seeded(7)) })
  t.ok(cosine(g, c) > 0.9, `cosine with the true gradient ${cosine(g, c).toFixed(3)}`)
  // Per 2x2 tile of the 4x4 image, the estimate is one value per tile: the tile sums of c.
  const tileSum = Float32Array.from({ length: 16 }, (_, i) => {
    const r = Math.floor(i / 4) & ~1
    const col = i % 4 & ~1
    return c[r * 4 + col]! + c[r * 4 + col + 1]! + c[(r + 1) * 4 + col]! + c[(r + 1) * 4 + col + 1]!
  })
  const gt = await nesGradient(f, at, { sigma: 0.05, samples: 200, tile: 2, normal: gaussian(seeded(8)) })
  t.equal(gt[0], gt[5], 'one value per tile')
  t.ok(cosine(gt, tileSum) > 0.95, `cosine with the per-tile gradient ${cosine(gt, tileSum).toFixed(3)}`)
  t.same(new Set(tiledNoise(784, 4, gaussian(seeded(9)))).size, 49, '784 pixels in 4x4 tiles: 49 draws')
  t.equal((await nesGradient(async () => null, at, { sigma: 0.05, samples: 10, normal: gaussian(seeded(7)) })).every((v) => v === 0), true, 'refused probes add nothing')
})

t.test('the identity schedule: round robin or one at a time, refused identities retired', async (t) => {
  const rr = new IdentitySchedule(3)
  t.same([rr.next(), rr.next(), rr.next(), rr.next()], [0, 1, 2, 0])
  rr.retire(1)
  t.same([rr.next(), rr.next(), rr.next()], [2, 0, 2], 'a retired identity is skipped')
  rr.retire(0)
  rr.retire(2)
  t.equal(rr.next(), null, 'none left')
  t.equal(rr.used, 3)

  const seq = new IdentitySchedule(3, 'sequential')
  t.same([seq.next(), seq.next(), seq.next()], [0, 0, 0])
  seq.retire(0)
  t.same([seq.next(), seq.next()], [1, 1])
  t.equal(seq.used, 2, 'the third was never used')
  t.throws(() => new IdentitySchedule(0), RangeError)
})

t.test('the rotating oracle: a 403 retires the identity, the last one ends the attack', async (t) => {
  const sent: number[] = []
  // Identity 0 is refused on its second query; identity 1 on its first.
  const replies: Record<number, Reply[]> = {
    0: [{ status: 200, code: null, probs: new Float32Array(10) }, { status: 403, code: 'attack_suspected', probs: null }],
    1: [{ status: 403, code: 'attack_suspected', probs: null }],
  }
  let retired = 0
  const oracle = rotatingOracle(async (id) => {
    sent.push(id)
    return replies[id]!.shift()!
  }, new IdentitySchedule(2), () => retired++)
  const x = new Float32Array(784)
  t.ok('probs' in (await oracle(x)))
  t.same(await oracle(x), { refused: '403 attack_suspected', final: false }, 'one identity left: not final')
  t.same(await oracle(x), { refused: '403 attack_suspected', final: true }, 'none left: final')
  t.same(await oracle(x), { refused: '403 attack_suspected (every identity refused)', final: true })
  t.same(sent, [0, 1, 0], 'nothing is sent once every identity is retired')
  t.equal(retired, 2)
})

t.test('interleaving: one synthetic query, then r natural ones; every answer reaches the synthetic side', async (t) => {
  const tag = (v: number): QuerySource => ({ next: () => new Float32Array([v]), learn: () => {} })
  const learnt: number[] = []
  const synthetic: QuerySource = { next: () => new Float32Array([1]), learn: (_x, l) => learnt.push(l) }
  const s = interleavedSource(synthetic, tag(0), 3)
  t.same(Array.from({ length: 8 }, () => s.next()[0]), [1, 0, 0, 0, 1, 0, 0, 0])
  s.learn(new Float32Array([0]), 7)
  t.same(learnt, [7])
})

t.test('an extraction run stops at the first 403, and measures its surrogate at every checkpoint', async (t) => {
  const { train, test } = loadMnist()
  const heldOut = test.images.filter((_, i) => i % 15 === 0)
  const surrogate = { heldOut, reference: heldOut.map((x) => argmax(forward(weights, x).logits)), seed: 1 }
  let sent = 0
  // Answers with the model's label; a 403 at query 150.
  const oracle = async (x: Float32Array) => (++sent === 150 ? { refused: '403 attack_suspected', final: true } : { label: argmax(forward(weights, x).logits) })
  const pool = train.images.filter((_, i) => i % 25 === 0)
  const r = await runExtraction(oracle, { next: (() => { let k = 0; return () => pool[k++ % pool.length]! })(), learn: () => {} }, { maxQueries: 300, checkpoints: [100, 300], surrogate })
  t.equal(r.refusedAt, 150)
  t.equal(r.answered, 149)
  t.same(r.agreement.map((a) => [a.at, a.answered]), [[100, 100], [300, 149]], 'the last checkpoint holds what was answered before the refusal')
  t.ok(r.agreement[1]!.value > 0.5, `a surrogate from 149 natural digits agrees ${(100 * r.agreement[1]!.value).toFixed(0)}% with the model`)
})

t.test('Jacobian augmentation: the seeds first, then one synthetic neighbour per answer, noised when asked', async (t) => {
  const seeds = [new Float32Array(784).fill(0.5), new Float32Array(784).fill(0.25)]
  const plain = jbdaSource(seeds, { lambda: 0.1, noise: 0, rng: seededRng(1) })
  const noisy = jbdaSource(seeds, { lambda: 0.1, noise: 0.1, rng: seededRng(1) })
  for (const src of [plain, noisy]) {
    t.same(src.next(), seeds[0])
    src.learn(seeds[0]!, 3)
    t.same(src.next(), seeds[1])
    src.learn(seeds[1]!, 5)
  }
  const step = plain.next()
  t.ok(step.every((v, i) => Math.abs(Math.abs(v - seeds[0]![i]!) - 0.1) < 1e-6 || Math.abs(v - seeds[0]![i]!) < 1e-6), 'a plain step moves each pixel by lambda (or not at all, where the surrogate has no slope)')
  const noised = noisy.next()
  const off = noised.filter((v, i) => Math.abs(Math.abs(v - seeds[0]![i]!) - 0.1) > 1e-3).length
  t.ok(off > 700, `noise moves almost every pixel off the lambda grid (${off} of 784)`)
})

t.test('BPDA returns an image that feature squeezing passes and the model gets wrong, within L2 3.0', async (t) => {
  const { test } = loadMnist()
  const squeeze = parseSqueezers(['bit-depth-1', 'bit-depth-1+median-2x2'], MNIST_LAYOUT)
  const threshold = 0.4946
  const i = 1843
  t.equal(argmax(forward(weights, test.images[i]!).logits), test.labels[i], 'a digit the model gets right')
  const r = bpda(weights, test.images[i]!, test.labels[i]!, { norm: 'l2', eps: 3, steps: 100, alpha: 0.1, squeeze, threshold, slack: 0.8, c: 1, kappa: 2, backward: softBitDepthBackward(0.2) })
  t.ok(r.image, 'found')
  const j = judge(weights, r.image!, test.labels[i]!, squeeze)
  t.ok(j.wrong && j.score < threshold, `misclassified (margin ${j.margin.toFixed(2)}) at score ${j.score.toFixed(3)}`)
  t.ok(distortion(r.image!, test.images[i]!).l2 <= 3 + 1e-4)
  t.ok(r.image!.every((v) => v >= 0 && v <= 1), 'pixels stay in [0, 1]')
})

t.test('NES counts a success only where the evaluator\'s check agrees: a lying oracle does not end the attack', async (t) => {
  // An oracle that always calls the point adversarial (a degraded answer with another label).
  const lying = async () => ({ probs: Float32Array.from([0.05, 0.95]) })
  const o = { eps: 0.3, sigma: 0.05, samples: 4, stepSize: 0.01, maxQueries: 50, normal: gaussian(seeded(4)) }
  const x = new Float32Array(16).fill(0.5)
  const trusted = await nes(lying, x, 0, o)
  t.equal(trusted.succeededAt, 5, 'without a check, the first claim is a success (4 probes and the step)')
  const checked = await nes(lying, x, 0, { ...o, verify: () => false })
  t.equal(checked.succeededAt, null, 'with a check that disagrees, no success')
  t.equal(checked.queries, 50, 'and the attack runs to its budget')
})
