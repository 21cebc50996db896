// The extraction detector (PRADA) on fixed inputs: a benign stream of held-out digits keeps
// W high; the Jacobian-augmentation extraction of bench/attacks/extraction.ts (seeded by
// the same 100 digits every run) raises the alarm within a few hundred queries.
import t from 'tap'
import { jacobianAugmentation } from '../../bench/attacks/extraction.ts'
import { argmax, forward, loadWeights } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { poolingEncoder } from '../../src/screening/encoder.ts'
import { createPradaDetector, PradaState } from '../../src/screening/prada.ts'
import { freshDigest, MNIST_LAYOUT, seeded } from './helpers.ts'

const weights = loadWeights()
const test = loadMnist().test
const order = test.images.map((_, i) => i)
const rnd = seeded(11)
for (let i = order.length - 1; i > 0; i--) {
  const j = Math.floor(rnd() * (i + 1))
  ;[order[i], order[j]] = [order[j]!, order[i]!]
}
const detector = (over: Partial<Parameters<typeof createPradaDetector>[0]> = {}) =>
  createPradaDetector({
    wThreshold: 0.9, minQueries: 100, windowSize: 1000, warmupPerClass: 10, growingSetPerClass: 100,
    maxPrincipals: 100, maxStoredQueries: 100_000, mode: 'enforce', encoder: poolingEncoder(MNIST_LAYOUT, 2), ...over,
  })

t.test('a benign principal sending 600 held-out digits keeps W above the threshold', async (t) => {
  const d = detector()
  let min = 1
  let scored = 0
  for (const i of order.slice(0, 600)) {
    const x = test.images[i]!
    const r = d.inspect({ principal: 'benign', items: [x], digests: [freshDigest()], probabilities: [forward(weights, x).probs] })
    if (r) {
      scored++
      min = Math.min(min, r.score)
    }
  }
  t.ok(scored > 300, `${scored} tests run`)
  t.ok(min > 0.9, `smallest W ${min}`)
})

t.test('Jacobian-based augmentation raises the alarm within 400 queries', async (t) => {
  const d = detector()
  let alarmAt: number | null = null
  let n = 0
  const out = await jacobianAugmentation(
    async (x) => {
      n++
      const probs = forward(weights, x).probs
      const r = d.inspect({ principal: 'thief', items: [x], digests: [freshDigest()], probabilities: [probs] })
      if (r?.alarm) {
        alarmAt = n
        return { refused: 'attack_suspected', final: true }
      }
      return { label: argmax(probs) }
    },
    order.slice(0, 100).map((i) => test.images[i]!),
    { lambda: 0.1, maxQueries: 2000 },
  )
  t.ok(alarmAt !== null && alarmAt <= 400, `alarm at query ${alarmAt}`)
  t.equal(out.refusedAt, alarmAt)
})

t.test('exact repeats are skipped; too few distances give no score', async (t) => {
  const d = detector({ minQueries: 20, warmupPerClass: 1 })
  const x = test.images[0]!
  const probs = forward(weights, x).probs
  for (let i = 0; i < 50; i++) t.equal(d.inspect({ principal: 'retry', items: [x], digests: [42], probabilities: [probs] }), null)
})

t.test('memory is bounded over principals', async (t) => {
  const d = detector({ maxPrincipals: 20, maxStoredQueries: 100, warmupPerClass: 1, growingSetPerClass: 5 })
  for (let p = 0; p < 200; p++) {
    for (const i of order.slice(p, p + 4)) {
      const x = test.images[i]!
      d.inspect({ principal: `p${p}`, items: [x], digests: [freshDigest()], probabilities: [forward(weights, x).probs] })
    }
    const m = d.memory!()
    if (m.principals > 20 || m.stored > 100) t.fail(JSON.stringify(m))
  }
  t.ok(d.memory!().evictions > 0)
})

t.test('the sorted window kept by record() always equals a sort of the window', async (t) => {
  const s = new PradaState(50)
  let seed = 11
  const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648
  let differ = 0
  for (let i = 0; i < 400; i++) {
    // Few distinct values, so that equal distances enter and leave the window.
    s.record(Math.floor(next() * 20) / 4)
    if (i === 30 || i > 60) {
      const kept = Array.from(s.sortedWindow())
      const fresh = Array.from(s.distances.subarray(0, s.count)).sort((a, b) => a - b)
      if (JSON.stringify(kept) !== JSON.stringify(fresh)) differ++
    }
  }
  t.equal(differ, 0, 'asked for first at 30 records, then checked after each of 339 more (the ring wraps 7 times)')
})
