// Randomized response on a screening verdict (src/privacy/mechanisms.ts randomizedResponseFlip):
// the flip comes up with probability q/(1 + q), q = e^-ε, so the released bit's odds differ by
// exactly e^ε between the two true bits; checked by frequency at fixed seeds.
import t from 'tap'
import { randomizedResponseFlip } from '../../src/privacy/mechanisms.ts'
import { RandomReader } from '../../src/privacy/random.ts'
import { seededRandom } from './helpers.ts'

const flips = (epsilon: number, n: number, seed: string) => {
  const rng = new RandomReader(seededRandom(seed))
  let k = 0
  for (let i = 0; i < n; i++) if (randomizedResponseFlip(rng, Math.round(epsilon * 1e6))) k++
  return k
}

t.test('the flip rate is 1/(1 + e^ε): the odds of a released verdict differ by e^ε', async (t) => {
  const n = 40_000
  for (const epsilon of [0.5, 1, Math.log(3), 3]) {
    const p = 1 / (1 + Math.exp(epsilon))
    const k = flips(epsilon, n, `rr-${epsilon}`)
    const sd = Math.sqrt(n * p * (1 - p))
    t.ok(Math.abs(k - n * p) < 5 * sd, `ε ${epsilon.toFixed(3)}: ${k} flips in ${n}, expected ${(n * p).toFixed(0)} ± ${(5 * sd).toFixed(0)}`)
  }
})

t.test('at the bundled ε of 16 a verdict is flipped about once in 9 million', async (t) => {
  t.equal(flips(16, 20_000, 'rr-16'), 0)
})

t.test('ε must be a positive whole number of micro-epsilon', async (t) => {
  const rng = new RandomReader(seededRandom('rr-bad'))
  t.throws(() => randomizedResponseFlip(rng, 0), RangeError)
  t.throws(() => randomizedResponseFlip(rng, 1.5), RangeError)
})
