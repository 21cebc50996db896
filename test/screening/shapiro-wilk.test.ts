// Shapiro-Wilk W and p against scipy.stats.shapiro on fixed samples (scipy computes in
// float32, hence the 1e-8 tolerance on W).
import t from 'tap'
import { erfc, normalQuantile, shapiroWilk } from '../../src/screening/shapiro-wilk.ts'

const cases: [string, number[], number, number][] = [
  ['n = 3', [1, 2, 4], 0.9642857142857142, 0.6368868450289689],
  ['n = 5 with an outlier', [1, 2, 3, 4, 100], 0.5773067579532578, 0.0003053888504386124],
  ['n = 8', [2.1, 3.4, 1.9, 5.6, 4.4, 3.3, 2.8, 3.9], 0.9633478972581907, 0.8413204658052752],
  ['n = 50', Array.from({ length: 50 }, (_, i) => Math.sin(i * 1.7) * 3 + i * 0.01), 0.9079815587468875, 0.0008910890342661326],
  ['n = 300', Array.from({ length: 300 }, (_, i) => (i % 17) ** 1.5), 0.9173533027304013, 8.311608334460864e-12],
  ['n = 4000 heavy tails', Array.from({ length: 4000 }, (_, i) => Math.tan(((i + 0.5) / 4000) * 3 - 1.5)), 0.8670942215640373, 5.729484533127017e-50],
]

for (const [name, sample, w, p] of cases) {
  t.test(`${name}: W and p as scipy`, async (t) => {
    const r = shapiroWilk(sample)
    t.ok(Math.abs(r.w - w) < 1e-8, `W ${r.w} vs ${w}`)
    t.ok(Math.abs(r.p - p) <= 1e-6 * p + 1e-12, `p ${r.p} vs ${p}`)
  })
}

t.test('order and scale do not matter', async (t) => {
  const a = shapiroWilk([5, 1, 4, 2, 3, 9, 7]).w
  const b = shapiroWilk([10, 2, 8, 4, 6, 18, 14].reverse()).w
  t.ok(Math.abs(a - b) < 1e-12)
})

t.test('out-of-range sizes and constant samples are refused', async (t) => {
  t.throws(() => shapiroWilk([1, 2]), RangeError)
  t.throws(() => shapiroWilk(new Array(5001).fill(0).map((_, i) => i)), RangeError)
  t.throws(() => shapiroWilk([3, 3, 3, 3]), /all equal/)
})

t.test('the normal helpers match scipy.special.erfc and scipy.stats.norm.ppf', async (t) => {
  t.ok(Math.abs(erfc(0.3) - 0.6713732405408726) < 1e-15)
  t.ok(Math.abs(erfc(-1.2) - 1.9103139782296354) < 1e-15)
  t.ok(Math.abs(erfc(5) / 1.5374597944280347e-12 - 1) < 1e-14)
  t.ok(Math.abs(normalQuantile(0.001) - -3.090232306167813) < 1e-9)
  t.ok(Math.abs(normalQuantile(0.77) - 0.7388468491852137) < 1e-9)
})
