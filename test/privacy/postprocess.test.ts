import t from 'tap'
import { argmax, rankOrder, releaseRow, renormalise, roundDecimals } from '../../src/privacy/postprocess.ts'

t.test('rounding keeps d decimals of the exact value, ties up', async (t) => {
  t.equal(roundDecimals(0.123456, 2), 0.12)
  t.equal(roundDecimals(0.875, 2), 0.88, 'exact binary tie rounds up')
  t.equal(roundDecimals(0.5, 0), 1)
  t.equal(roundDecimals(0.123456, 4), 0.1235)
  t.equal(roundDecimals(1.005, 2), 1, '1.005 is 1.00499999... in binary, so it rounds down (no double rounding)')
})

t.test('clamp and renormalise: negatives and non-finite to 0, then sum 1; no mass is uniform', async (t) => {
  t.same(renormalise([-0.2, 0.6, 0.6]), [0, 0.5, 0.5])
  t.same(renormalise([Number.NaN, 3, 1]), [0, 0.75, 0.25])
  t.same(renormalise([0, 0, 0, 0]), [0.25, 0.25, 0.25, 0.25])
  t.same(renormalise([-1, -2]), [0.5, 0.5])
})

t.test('ranking breaks ties by the lower class index', async (t) => {
  t.same(rankOrder([0.2, 0.5, 0.5, 0.1]), [1, 2, 0, 3])
  t.equal(argmax([0.3, 0.3, 0.1]), 0)
})

const table = [
  { name: 'scores: renormalised and rounded', rank: [0.1234, 0.8766], mass: [0.1234, 0.8766], spec: { mode: 'scores', topK: 1, roundDecimals: 2 }, want: [0.12, 0.88] },
  { name: 'scores: unnormalised input sums to 1 first', rank: [1, 3], mass: [1, 3], spec: { mode: 'scores', topK: 1, roundDecimals: 3 }, want: [0.25, 0.75] },
  { name: 'top-k: the k best keep their scores, the rest read 0', rank: [0.1, 0.5, 0.3, 0.1], mass: [0.1, 0.5, 0.3, 0.1], spec: { mode: 'top-k', topK: 2, roundDecimals: 2 }, want: [0, 0.5, 0.3, 0] },
  { name: 'top-k: ties go to the lower index', rank: [1, 1, 1, 1], mass: [1, 1, 1, 1], spec: { mode: 'top-k', topK: 2, roundDecimals: 2 }, want: [0.25, 0.25, 0, 0] },
  { name: 'top-k with k >= classes is all scores', rank: [0.2, 0.8], mass: [0.2, 0.8], spec: { mode: 'top-k', topK: 5, roundDecimals: 1 }, want: [0.2, 0.8] },
  { name: 'top-k: rank picks the classes, the clamped mass gives the scores', rank: [5, -3, 10], mass: [5, 0, 10], spec: { mode: 'top-k', topK: 1, roundDecimals: 2 }, want: [0, 0, 0.67] },
  { name: 'label: one-hot at the best class', rank: [0.1, 0.7, 0.2], mass: [0.1, 0.7, 0.2], spec: { mode: 'label', topK: 1, roundDecimals: 2 }, want: [0, 1, 0] },
  { name: 'label: ties go to the lower index', rank: [0.4, 0.4, 0.2], mass: [0.4, 0.4, 0.2], spec: { mode: 'label', topK: 1, roundDecimals: 2 }, want: [1, 0, 0] },
  { name: 'label follows the rank even where the mass is clamped', rank: [20, 17, -4], mass: [16, 16, 0], spec: { mode: 'label', topK: 1, roundDecimals: 2 }, want: [1, 0, 0] },
  { name: 'rounding to 0 decimals', rank: [0.4, 0.6], mass: [0.4, 0.6], spec: { mode: 'scores', topK: 1, roundDecimals: 0 }, want: [0, 1] },
] as const

for (const row of table) {
  t.test(row.name, async (t) => {
    t.same(releaseRow(row.rank, row.mass, { ...row.spec }), row.want)
  })
}
