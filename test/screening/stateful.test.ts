// The stateful query detector on fixed, seeded inputs: a run of near-duplicates raises the
// alarm once k earlier queries are close; distinct digits never do; exact repeats are not
// evidence; memory stays within its bounds however many principals call; pooled cells are
// kept at 8 bits and survive the one-byte form the shared stores carry unchanged.
import t from 'tap'
import { loadMnist } from '../../models/mnist/data.ts'
import { poolingEncoder } from '../../src/screening/encoder.ts'
import { cellBytes, cellsFrom } from '../../src/screening/shared-store.ts'
import { createStatefulDetector } from '../../src/screening/stateful.ts'
import { freshDigest, gaussian, jitter, MNIST_LAYOUT, seeded } from './helpers.ts'

const test = loadMnist().test
const detector = (over: Partial<Parameters<typeof createStatefulDetector>[0]> = {}) =>
  createStatefulDetector({ k: 20, historyPerPrincipal: 1000, maxPrincipals: 10_000, maxStoredQueries: 200_000, threshold: 0.015, mode: 'enforce', encoder: poolingEncoder(MNIST_LAYOUT, 4), ...over })

t.test('NES-like queries around one digit raise the alarm at the first scored query', async (t) => {
  const d = detector()
  const normal = gaussian(seeded(1))
  const x = test.images[123]!
  let alarmAt = -1
  for (let q = 1; q <= 40 && alarmAt < 0; q++) {
    const r = d.inspect({ principal: 'attacker', items: [jitter(x, 0.02, normal)], digests: [freshDigest()] })
    if (q <= 20) t.equal(r, null, 'no score before k earlier queries')
    else if (r?.alarm) alarmAt = q
  }
  t.equal(alarmAt, 21)
})

t.test('distinct held-out digits from one principal raise no alarm', async (t) => {
  const d = detector()
  let min = Infinity
  for (let i = 0; i < test.images.length; i += 3) {
    const r = d.inspect({ principal: 'benign', items: [test.images[i]!], digests: [freshDigest()] })
    if (r) {
      t.notOk(r.alarm, `digit ${i}`)
      min = Math.min(min, r.score)
    }
    if (r?.alarm) break
  }
  t.ok(min > 0.015, `smallest score ${min}`)
})

t.test('principals do not share history', async (t) => {
  const d = detector({ k: 2 })
  const normal = gaussian(seeded(2))
  const x = test.images[7]!
  for (let i = 0; i < 3; i++) d.inspect({ principal: `p${i}`, items: [jitter(x, 0.01, normal)], digests: [freshDigest()] })
  const r = d.inspect({ principal: 'p0', items: [jitter(x, 0.01, normal)], digests: [freshDigest()] })
  t.equal(r, null, 'p0 has one earlier query, fewer than k')
})

t.test('exact repeats are neither scored against their copy nor stored', async (t) => {
  const d = detector({ k: 1 })
  const x = test.images[9]!
  const digest = freshDigest()
  t.equal(d.inspect({ principal: 'retry', items: [x], digests: [digest] }), null)
  for (let i = 0; i < 5; i++) t.equal(d.inspect({ principal: 'retry', items: [x], digests: [digest] }), null, 'a retry is not a new query')
  t.equal(d.memory!().stored, 1)
})

t.test('a batch is judged item by item, earlier items of the batch included', async (t) => {
  const d = detector({ k: 3 })
  const normal = gaussian(seeded(3))
  const x = test.images[500]!
  const items = Array.from({ length: 5 }, () => jitter(x, 0.01, normal))
  const r = d.inspect({ principal: 'batcher', items, digests: items.map(freshDigest) })
  t.ok(r?.alarm, 'five near-duplicates in one request')
})

t.test('memory is bounded per principal and over principals, least recently seen evicted first', async (t) => {
  const d = detector({ k: 1, historyPerPrincipal: 10, maxPrincipals: 100, maxStoredQueries: 250 })
  const rnd = seeded(4)
  const random = () => Float32Array.from({ length: 784 }, () => rnd())
  for (let i = 0; i < 50; i++) d.inspect({ principal: 'heavy', items: [random()], digests: [freshDigest()] })
  t.equal(d.memory!().stored, 10, 'one principal keeps its last historyPerPrincipal queries')
  for (let p = 0; p < 5000; p++) {
    for (let q = 0; q < 3; q++) d.inspect({ principal: `p${p}`, items: [random()], digests: [freshDigest()] })
    const m = d.memory!()
    if (m.principals > 100 || m.stored > 250) t.fail(`over the bounds: ${JSON.stringify(m)}`)
  }
  const m = d.memory!()
  t.ok(m.principals <= 100 && m.stored <= 250, JSON.stringify(m))
  t.ok(m.evictions >= 4900, 'old principals were evicted')
  // The most recent principal kept its history: its next query is scored.
  t.not(d.inspect({ principal: 'p4999', items: [random()], digests: [freshDigest()] }), null)
  t.equal(d.inspect({ principal: 'heavy', items: [random()], digests: [freshDigest()] }), null, 'the first principal was forgotten')
})

t.test('pooled cells are multiples of 1/255 in [0, 1], and one byte a value carries them exactly', async (t) => {
  const encoder = poolingEncoder(MNIST_LAYOUT, 4)
  const normal = gaussian(seeded(3))
  let moved = 0
  for (const x of [...test.images.slice(0, 50), ...test.images.slice(0, 50).map((x) => jitter(x, 0.05, normal))]) {
    const v = encoder.encode(x)
    t.ok(v.every((c) => c >= 0 && c <= 1 && Math.abs(c * 255 - Math.round(c * 255)) < 1e-4), 'every cell on the 8-bit grid')
    t.same(cellsFrom(cellBytes(v), 0, v.length), v, 'the same values back from the bytes')
    // The rounding against the exact mean: at most half a level.
    const exact = new Float64Array(v.length)
    for (let r = 0; r < 28; r++) for (let c = 0; c < 28; c++) exact[Math.floor(r / 4) * 7 + Math.floor(c / 4)]! += Math.min(1, Math.max(0, x[r * 28 + c]!)) / 16
    moved = Math.max(moved, Math.abs([...v].reduce((s, c) => s + c, 0) - exact.reduce((s, c) => s + c, 0)))
  }
  t.ok(moved <= 49 * 0.5 / 255 + 1e-4, `the cells' sum moved by at most ${moved.toFixed(4)} (49 half-levels at most)`)
})
