import t from 'tap'
import { RandomReader, isqrt } from '../../src/privacy/random.ts'
import { bernoulliExpNeg, bernoulliInvE, invEFloor, sampleDiscreteGaussian, sampleDiscreteLaplace, sampleDiscreteLaplaceBig } from '../../src/privacy/samplers.ts'
import { chiSquare, seededRandom } from './helpers.ts'

const N = 20_000

function laplacePmf(scale: number): (z: number) => number {
  const q = Math.exp(-1 / scale)
  return (z) => ((1 - q) / (1 + q)) * q ** Math.abs(z)
}

function gaussianPmf(sigma2: number): (z: number) => number {
  const bound = Math.ceil(50 * Math.sqrt(sigma2)) + 10
  let norm = 0
  for (let z = -bound; z <= bound; z++) norm += Math.exp(-(z * z) / (2 * sigma2))
  return (z) => Math.exp(-(z * z) / (2 * sigma2)) / norm
}

t.test('uniform integers are unbiased, for small and BigInt bounds', async (t) => {
  const rng = new RandomReader(seededRandom('uniform'))
  const small = Array.from({ length: N }, () => rng.uniformSmall(7))
  t.ok(small.every((v) => v >= 0 && v < 7))
  const fit = chiSquare(small, (z) => (z >= 0 && z < 7 ? 1 / 7 : 0))
  t.ok(fit.stat < fit.critical, `uniform below 7: chi2 ${fit.stat.toFixed(1)} < ${fit.critical.toFixed(1)} (df ${fit.df})`)

  const big = 3n * 2n ** 70n + 5n
  const draws = Array.from({ length: N }, () => rng.uniform(big))
  t.ok(draws.every((v) => v >= 0n && v < big), 'BigInt draws lie below the bound')
  const sixths = draws.map((v) => Number((v * 6n) / big))
  const fit6 = chiSquare(sixths, (z) => (z >= 0 && z < 6 ? 1 / 6 : 0))
  t.ok(fit6.stat < fit6.critical, `uniform below 3·2^70+5, in sixths: chi2 ${fit6.stat.toFixed(1)} < ${fit6.critical.toFixed(1)}`)
})

t.test('isqrt is floor(sqrt(n)) exactly', async (t) => {
  for (const n of [0n, 1n, 2n, 3n, 4n, 15n, 16n, 17n, 10n ** 30n, 10n ** 30n - 1n, 2n ** 127n]) {
    const r = isqrt(n)
    t.ok(r * r <= n && (r + 1n) * (r + 1n) > n, `isqrt(${n}) = ${r}`)
  }
})

t.test('Bernoulli(exp(-γ)) has probability exp(-γ) for rational γ', async (t) => {
  const rng = new RandomReader(seededRandom('bernoulli-exp'))
  t.ok(Array.from({ length: 1000 }, () => bernoulliExpNeg(rng, 0n, 1n)).every(Boolean), 'γ = 0 is always true')
  for (const [num, den] of [
    [1n, 3n],
    [1n, 1n],
    [7n, 3n],
  ] as const) {
    const p = Math.exp(-Number(num) / Number(den))
    let hits = 0
    for (let i = 0; i < N; i++) if (bernoulliExpNeg(rng, num, den)) hits++
    const z = (hits / N - p) / Math.sqrt((p * (1 - p)) / N)
    t.ok(Math.abs(z) < 4, `γ = ${num}/${den}: frequency ${(hits / N).toFixed(4)} vs ${p.toFixed(4)} (z = ${z.toFixed(2)})`)
  }
})

t.test('discrete Laplace matches its pmf (chi-square, fixed seeds)', async (t) => {
  for (const [num, den, seed] of [
    [1n, 2n, 'dlap-0.5'],
    [3n, 2n, 'dlap-1.5'],
    [10n, 1n, 'dlap-10'],
  ] as const) {
    const rng = new RandomReader(seededRandom(seed))
    const scale = Number(num) / Number(den)
    const samples = Array.from({ length: N }, () => Number(sampleDiscreteLaplace(rng, num, den)))
    const fit = chiSquare(samples, laplacePmf(scale))
    t.ok(fit.stat < fit.critical, `scale ${scale}: chi2 ${fit.stat.toFixed(1)} < ${fit.critical.toFixed(1)} (df ${fit.df})`)
    const mean = samples.reduce((a, b) => a + b, 0) / N
    const q = Math.exp(-1 / scale)
    const sd = Math.sqrt((2 * q) / (1 - q) ** 2)
    t.ok(Math.abs(mean) < (4 * sd) / Math.sqrt(N), `scale ${scale}: mean ${mean.toFixed(3)} is centred`)
  }
})

t.test('discrete Gaussian matches its pmf (chi-square, fixed seeds)', async (t) => {
  for (const [num, den, seed] of [
    [1n, 1n, 'dgauss-1'],
    [5n, 2n, 'dgauss-2.5'],
    [16n, 1n, 'dgauss-16'],
  ] as const) {
    const rng = new RandomReader(seededRandom(seed))
    const sigma2 = Number(num) / Number(den)
    const samples = Array.from({ length: N }, () => Number(sampleDiscreteGaussian(rng, num, den)))
    const fit = chiSquare(samples, gaussianPmf(sigma2))
    t.ok(fit.stat < fit.critical, `σ² = ${sigma2}: chi2 ${fit.stat.toFixed(1)} < ${fit.critical.toFixed(1)} (df ${fit.df})`)
  }
})

t.test('the same seed gives the same noise; another seed does not', async (t) => {
  const draw = (seed: string) => {
    const rng = new RandomReader(seededRandom(seed))
    return Array.from({ length: 50 }, () => sampleDiscreteLaplace(rng, 7n, 3n))
  }
  t.same(draw('a'), draw('a'))
  t.notSame(draw('a'), draw('b'))
})

t.test('samplers refuse parameters outside their domain', async (t) => {
  const rng = new RandomReader(seededRandom('domain'))
  t.throws(() => sampleDiscreteLaplace(rng, 0n, 1n), RangeError)
  t.throws(() => sampleDiscreteGaussian(rng, 1n, 0n), RangeError)
  t.throws(() => bernoulliExpNeg(rng, -1n, 1n), RangeError)
  t.throws(() => rng.bernoulli(3n, 2n), RangeError)
})

t.test('the number path of the discrete Laplace draws exactly what the BigInt path draws from the same bytes', async (t) => {
  let differ = 0
  for (const [num, den] of [[8192n, 1n], [3n, 2n], [1n, 1n], [65537n, 3n], [1048575n, 7n]] as const) {
    const fast = new RandomReader(seededRandom(`equivalence-${num}`))
    const big = new RandomReader(seededRandom(`equivalence-${num}`))
    for (let i = 0; i < 2000; i++) if (sampleDiscreteLaplace(fast, num, den) !== sampleDiscreteLaplaceBig(big, num, den)) differ++
  }
  t.equal(differ, 0, '10,000 draws, identical')
})

t.test('rational coin flips read random bits lazily and keep their exact probability', async (t) => {
  const rng = new RandomReader(seededRandom('bernoulli'))
  for (const [num, den] of [[1n, 3n], [5n, 7n], [1n, 1024n], [2n ** 62n, 3n * 2n ** 61n + 1n]] as const) {
    const p = Number(num) / Number(den)
    let hits = 0
    for (let i = 0; i < N; i++) if (rng.bernoulli(num, den)) hits++
    const z = (hits / N - p) / Math.sqrt((p * (1 - p)) / N)
    t.ok(Math.abs(z) < 4, `${num}/${den}: frequency ${(hits / N).toFixed(4)} vs ${p.toFixed(4)} (z = ${z.toFixed(2)})`)
  }
  t.ok(Array.from({ length: 100 }, () => rng.bernoulli(0n, 5n)).every((b) => !b), 'probability 0 never')
  t.ok(Array.from({ length: 100 }, () => rng.bernoulliSmall(5, 5)).every(Boolean), 'probability 1 always')
  t.throws(() => rng.bernoulliSmall(1, 2 ** 53), RangeError)
})

t.test('e^-1 digits: exact, and the coin reads past the 64 precomputed ones when the random bits match them', async (t) => {
  for (let n = 1; n <= 48; n++) t.equal(Number(invEFloor(n)), Math.floor(Math.exp(-1) * 2 ** n), `floor(e^-1 · 2^${n})`)
  let prefix = true
  for (let n = 1; n < 300; n++) prefix &&= invEFloor(n + 1) >> 1n === invEFloor(n)
  t.ok(prefix, 'each floor extends the one before by one digit, up to 300 digits')
  // A source whose bits are e^-1's first 128 digits with digit d flipped: the coin must read
  // d bits and answer from e^-1's d-th digit (a 0 where e^-1 has a 1: below it, true).
  const digits = invEFloor(128)
  const answers = []
  for (let d = 60; d <= 80; d++) {
    const flipped = digits ^ (1n << BigInt(128 - d))
    const source = {
      bytes: (n: number) => Uint8Array.from({ length: n }, (_, i) => (i < 16 ? Number((flipped >> BigInt(8 * (15 - i))) & 0xffn) : 0)),
      uuid: () => '',
    }
    answers.push(bernoulliInvE(new RandomReader(source)) === (((digits >> BigInt(128 - d)) & 1n) === 1n))
  }
  t.same(answers, answers.map(() => true), 'digits 60 to 80: each flip decides the coin by e^-1\'s own digit')
})
