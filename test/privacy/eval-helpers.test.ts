// The helpers of `npm run eval:privacy` (bench/privacy/*): what the attacks learn from, and
// how reconstructions are scored. The evaluation itself runs the gateway; these pin the
// pieces whose mistakes would silently flatter or hurt a defence.

import t from 'tap'
import { attackerQueries, pool2 } from '../../bench/privacy/extraction.ts'
import { shift } from '../../models/mnist/train.ts'
import { classMeans, correlation, render } from '../../bench/privacy/inversion.ts'
import { agreement, createMlp, softTarget, train } from '../../bench/privacy/mlp.ts'
import { seededRng } from '../../bench/privacy/rng.ts'

const image = (f: (x: number, y: number) => number) => Float32Array.from({ length: 784 }, (_, i) => f(i % 28, Math.floor(i / 28)))

t.test('a label-only answer stays one-hot at every temperature; scores flatten as T grows', async (t) => {
  t.same(Array.from(softTarget([0, 0, 1, 0], 5)), [0, 0, 1, 0])
  const s1 = softTarget([0.9, 0.09, 0.01], 1)
  const s5 = softTarget([0.9, 0.09, 0.01], 5)
  t.ok(Math.abs(s1[0]! - 0.9) < 1e-12, 'T = 1 keeps the scores')
  t.ok(s5[2]! > s1[2]! * 10, 'T = 5 lifts the small scores (what distillation learns from)')
  t.ok(Math.abs(s5.reduce((a, b) => a + b, 0) - 1) < 1e-12)
  t.same(Array.from(softTarget([0, 0, 0], 2)), [1 / 3, 1 / 3, 1 / 3], 'an all-zero row is uniform')
})

t.test('the attacker queries the train pool first, then shifted noisy copies, deterministically', async (t) => {
  const pool: Float32Array[] = Array.from({ length: 5 }, (_, k) => image((x, y) => (x === k && y === k ? 1 : 0)))
  const a = attackerQueries(pool, 12, seededRng(3))
  const b = attackerQueries(pool, 12, seededRng(3))
  t.equal(a.length, 12)
  t.same(a.map((x) => Array.from(x)), b.map((x) => Array.from(x)), 'same seed, same queries')
  t.equal(new Set(a.slice(0, 5)).size, 5)
  t.ok(a.slice(0, 5).every((x) => pool.includes(x)), 'the first queries are the pool itself, each once')
  t.ok(a.slice(5).every((x) => !pool.includes(x) && x.every((v) => v >= 0 && v <= 1)), 'then new images, in range')
})

t.test('shift moves pixels and fills with black; pool2 averages 2x2 blocks', async (t) => {
  const dot = image((x, y) => (x === 3 && y === 4 ? 1 : 0))
  const moved = shift(dot, 2, -1)
  t.equal(moved[3 * 28 + 5], 1)
  t.equal(moved.reduce((a, b) => a + b, 0), 1)
  const pooled = pool2(image(() => 0.5))
  t.equal(pooled.length, 196)
  t.ok(pooled.every((v) => v === 0.5))
})

t.test('reconstruction similarity is a correlation: 1 for the same image, 0 against a blank one', async (t) => {
  const a = image((x, y) => (x + y) / 54)
  t.ok(Math.abs(correlation(a, a) - 1) < 1e-9)
  t.equal(correlation(a, image(() => 0.1)), 0)
  t.ok(Math.abs(correlation(a, a.map((v) => 1 - v)) + 1) < 1e-9)
  const means = classMeans([image(() => 1), image(() => 0), image(() => 0.5)], [0, 0, 1], 2)
  t.equal(means[0]![0], 0.5)
  t.equal(means[1]![0], 0.5)
})

t.test('render upsamples the search grid into a clamped 28x28 image', async (t) => {
  const flat = render(new Float64Array(100).fill(0.3), 10)
  t.equal(flat.length, 784)
  t.ok(flat.every((v) => Math.abs(v - 0.3) < 1e-6))
  const out = render(new Float64Array(100).fill(2), 10)
  t.ok(out.every((v) => v === 1), 'values clamp to [0, 1]')
})

t.test('the MLP learns a separable toy problem', async (t) => {
  const rng = seededRng(5)
  const xs = Array.from({ length: 200 }, () => Float32Array.from({ length: 4 }, () => rng.uniform()))
  const labels = xs.map((x) => (x[0]! > x[1]! ? 1 : 0))
  const m = createMlp(4, 8, 2, seededRng(6))
  train(m, xs, labels.map((l) => [1 - l, l]), { hidden: 8, epochs: 60, batchSize: 16, learningRate: 0.01, temperature: 1, weightDecay: 0 }, seededRng(7))
  t.ok(agreement(m, xs, labels) > 0.9)
})
