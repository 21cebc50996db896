// Calibration arithmetic, and the start-time checks that keep a policy, its calibration
// file and the model together.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { parsePolicy } from '../../src/config/policy.ts'
import type { Manifest } from '../../src/inference/manifest.ts'
import { compileScreening, screens } from '../../src/screening/build.ts'
import { featureBounds, leaveOneOutBoundsScores, thresholdForRate, type CalibrationFile } from '../../src/screening/calibration.ts'
import { seededRandom } from './helpers.ts'
import { repoRoot } from '../../kit/paths.ts'

const manifest = JSON.parse(readFileSync(path.join(repoRoot, 'models/mnist/manifest.json'), 'utf8')) as Manifest
const calibration = JSON.parse(readFileSync(path.join(repoRoot, 'policies/mnist.screening.json'), 'utf8')) as CalibrationFile
const policy = (screening: unknown) => {
  const r = parsePolicy(JSON.stringify({ model: 'mnist', screening }), 'mnist.yaml')
  if (!r.policy) throw new Error(r.problems.join('\n'))
  return r.policy.screening
}

t.test('thresholdForRate keeps at most the asked share above the threshold', async (t) => {
  const scores = Array.from({ length: 100 }, (_, i) => i / 100)
  t.same(thresholdForRate(scores, 0.04), { threshold: 0.95, rate: 0.04 })
  t.same(thresholdForRate(scores, 0), { threshold: 0.99, rate: 0 })
  t.same(thresholdForRate([1, 1, 1, 1], 0.5), { threshold: 1, rate: 0 }, 'ties count as not above')
})

t.test('bounds are per feature; leave-one-out scores each item against the others', async (t) => {
  const items = [Float32Array.from([0, 0.5]), Float32Array.from([0.2, 0.1]), Float32Array.from([0.1, 0.3])]
  const { lower, upper } = featureBounds(items)
  t.same(Array.from(lower), Array.from(Float32Array.from([0, 0.1])))
  t.same(Array.from(upper), Array.from(Float32Array.from([0.2, 0.5])))
  const loo = leaveOneOutBoundsScores(items, 1)
  // item 0 without itself: bounds [0.1, 0.2] x [0.1, 0.3] -> excess 0.1 + 0.2
  t.ok(Math.abs(loo[0]! - 0.3) < 1e-6, String(loo[0]))
  t.ok(Math.abs(loo[2]! - 0) < 1e-6, 'the middle item is inside the others')
})

t.test('the bundled policy compiles with its calibration file', async (t) => {
  const s = compileScreening('mnist', policy({ calibrationFile: 'x', featureSqueezing: {}, stateful: {}, extraction: {}, featureBounds: { mode: 'observe' } }), manifest, calibration, seededRandom(1))
  t.same(s.detectors.map((d) => [d.name, d.mode]), [['feature-bounds', 'observe'], ['stateful', 'enforce'], ['feature-squeezing', 'enforce'], ['extraction', 'enforce']])
  t.ok(s.needsModel)
})

t.test('acrossCallers adds the model-wide index after the stateful detector, must hold k queries, and carries over reloads', async (t) => {
  const s = compileScreening('mnist', policy({ calibrationFile: 'x', stateful: { acrossCallers: 1000 } }), manifest, calibration, seededRandom(1))
  t.same(s.detectors.map((d) => [d.name, d.mode, d.refusal]), [['stateful', 'enforce', 'attack_suspected'], ['stateful-callers', 'enforce', 'attack_suspected']])
  t.throws(() => compileScreening('mnist', policy({ calibrationFile: 'x', stateful: { acrossCallers: 10 } }), manifest, calibration, seededRandom(1)), /acrossCallers: 10 is smaller than k 20/)
  // A reload that resizes the index keeps the callers' own histories (the same detector), and
  // one that keeps its size keeps the index too.
  const again = compileScreening('mnist', policy({ calibrationFile: 'x', stateful: { acrossCallers: 1000 } }), manifest, calibration, seededRandom(1), undefined, undefined, s)
  t.equal(again.detectors[0], s.detectors[0])
  t.equal(again.detectors[1], s.detectors[1])
  const resized = compileScreening('mnist', policy({ calibrationFile: 'x', stateful: { acrossCallers: 500 } }), manifest, calibration, seededRandom(1), undefined, undefined, s)
  t.equal(resized.detectors[0], s.detectors[0], 'the per-caller detector carries over')
  t.not(resized.detectors[1], s.detectors[1], 'a resized index starts empty')
})

t.test('a stale or mismatched calibration stops the start with the fix', async (t) => {
  const stale = { ...calibration, modelSha256: '0'.repeat(64) }
  t.throws(() => compileScreening('mnist', policy({ featureSqueezing: {} }), manifest, stale, seededRandom(1)), /calibrated on model file 000000000000\.\.\..*bulwark calibrate mnist/)
  t.throws(
    () => compileScreening('mnist', policy({ featureSqueezing: { squeezers: ['median-3x3'] } }), manifest, calibration, seededRandom(1)),
    /calibrated for \[bit-depth-1, bit-depth-1\+median-2x2\], the policy says \[median-3x3\]/,
  )
  t.throws(() => compileScreening('mnist', policy({ stateful: { k: 5 } }), manifest, calibration, seededRandom(1)), /calibrated with k 20 and poolSize 4, the policy says k 5/)
  t.throws(() => compileScreening('mnist', policy({ featureSqueezing: {} }), manifest, null, seededRandom(1)), /featureSqueezing\/threshold: not set and not in a calibration file/)
  t.throws(() => compileScreening('mnist', policy({ extraction: { warmupPerClass: 200 } }), manifest, null, seededRandom(1)), /warmupPerClass: 200 exceeds growingSetPerClass 100/)
})

t.test('explicit thresholds need no calibration file', async (t) => {
  const s = compileScreening('mnist', policy({ featureSqueezing: { threshold: 0.5, squeezers: ['median-3x3'] }, stateful: { threshold: 0.01 } }), manifest, null, seededRandom(1))
  t.same(s.detectors.map((d) => d.name), ['stateful', 'feature-squeezing'])
})

t.test('the policy schema refuses unknown squeezers and keys, naming the path', async (t) => {
  const r = parsePolicy(JSON.stringify({ model: 'mnist', screening: { featureSqueezing: { squeezers: ['blur'] }, statefull: {} } }), 'mnist.yaml')
  t.equal(r.policy, null)
  t.match(r.problems.join('\n'), /screening\/featureSqueezing\/squeezers\/0/)
  t.match(r.problems.join('\n'), /screening\/statefull: unknown key/)
  t.notOk(screens(parsePolicy('model: mnist\n', 'mnist.yaml').policy!.screening), 'no screening section: nothing screened')
})
