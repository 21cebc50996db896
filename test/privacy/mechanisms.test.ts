import t from 'tap'
import {
  addNoise,
  calibrateGaussian,
  calibrateLaplace,
  epsilonForRho,
  rhoFor,
  snapToGrid,
  toEpsilonMicros,
  RHO_UNITS,
} from '../../src/privacy/mechanisms.ts'
import { RandomReader } from '../../src/privacy/random.ts'
import { chiSquare, seededRandom } from './helpers.ts'

t.test('snap_k puts a score row on the 2^-k grid, summing to exactly 2^k', async (t) => {
  t.same(snapToGrid([0.25, 0.75], 4), [4, 12])
  // 1/3 each of 16: floors 5,5,5 and the one missing unit goes to the lowest index.
  t.same(snapToGrid([1, 1, 1], 4), [6, 5, 5])
  // Largest remainder: 0.1*16 = 1.6, 0.2*16 = 3.2, 0.7*16 = 11.2 -> 1,3,11 + 1 to the 0.6 remainder.
  t.same(snapToGrid([0.1, 0.2, 0.7], 4), [2, 3, 11])
  t.same(snapToGrid([-1, Number.NaN, 2, Infinity], 3), [0, 0, 8, 0], 'negative and non-finite entries count as 0')
  t.same(snapToGrid([0, 0, 0, 0], 2), [1, 1, 1, 1], 'no mass at all becomes uniform')
  const rng = new RandomReader(seededRandom('snap'))
  for (let i = 0; i < 200; i++) {
    const row = Array.from({ length: 10 }, () => rng.uniformSmall(1000) / 997)
    const g = snapToGrid(row, 16)
    t.equal(g.reduce((a, b) => a + b, 0), 65536)
    if (!g.every((v) => Number.isInteger(v) && v >= 0)) t.fail('grid values are non-negative integers')
  }
})

t.test('snap_k is the largest-remainder rounding, ties to the lower index (checked against a sort)', async (t) => {
  // The reference: the textbook method, written out plainly.
  const reference = (row: number[], k: number) => {
    const S = 2 ** k
    const total = row.reduce((a, b) => a + b, 0)
    const q = row.map((v) => Math.min(S, (v / total) * S))
    const out = q.map(Math.floor)
    const order = [...q.keys()].sort((a, b) => q[b]! - out[b]! - (q[a]! - out[a]!) || a - b)
    for (let j = 0, deficit = S - out.reduce((a, b) => a + b, 0); deficit > 0; j++, deficit--) out[order[j]!]!++
    return out
  }
  const rng = new RandomReader(seededRandom('largest-remainder'))
  let differ = 0
  for (let i = 0; i < 2000; i++) {
    // Small integer scores make equal remainders (ties) common.
    const row = Array.from({ length: 2 + rng.uniformSmall(12) }, () => 1 + rng.uniformSmall(i % 2 ? 7 : 1000))
    const k = 1 + rng.uniformSmall(12)
    if (JSON.stringify(snapToGrid(row, k)) !== JSON.stringify(reference(row, k))) differ++
  }
  t.equal(differ, 0, '2,000 rows of 2 to 13 classes at k = 1..12: identical')
})

t.test('the documented sensitivities hold on the grid: L1 <= 2·2^k, L2² <= 2·4^k, attained', async (t) => {
  const k = 10
  const S = 2 ** k
  const rng = new RandomReader(seededRandom('sensitivity'))
  let maxL1 = 0
  let maxL2sq = 0
  const rows = [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]]
  for (let i = 0; i < 300; i++) rows.push(Array.from({ length: 5 }, () => (rng.uniformSmall(4) === 0 ? 0 : rng.uniformSmall(1000))))
  const grids = rows.map((r) => snapToGrid(r, k))
  for (const a of grids) {
    for (const b of grids) {
      let l1 = 0
      let l2 = 0
      for (let i = 0; i < a.length; i++) {
        l1 += Math.abs(a[i]! - b[i]!)
        l2 += (a[i]! - b[i]!) ** 2
      }
      maxL1 = Math.max(maxL1, l1)
      maxL2sq = Math.max(maxL2sq, l2)
    }
  }
  t.equal(maxL1, 2 * S, 'L1 diameter is exactly 2·2^k (one-hot vs one-hot)')
  t.equal(maxL2sq, 2 * S * S, 'squared L2 diameter is exactly 2·4^k')
})

t.test('Laplace calibration: scale 2/ε in score units, exact rationals, ε charged at micro resolution', async (t) => {
  const spec = calibrateLaplace(0.5, 12)
  if (spec.mechanism !== 'laplace') throw new Error('unreachable')
  // scale (grid units) = 2·2^12 / 0.5 = 16384 = scaleNum/scaleDen.
  t.equal(spec.scaleNum * 1n, 16384n * spec.scaleDen)
  t.same(spec.cost, { epsilonMicros: 500_000, rhoNanos: 0 })
  t.equal(toEpsilonMicros(0.1), 100_000)
  t.throws(() => toEpsilonMicros(0))
})

t.test('Gaussian calibration: ρ charged equals Δ₂²/(2σ²) exactly, and ρ-zCDP gives the per-answer (ε, δ)', async (t) => {
  for (const [eps, delta, k] of [
    [1, 1e-6, 16],
    [0.3, 1e-9, 8],
    [5, 1e-5, 20],
  ] as const) {
    const spec = calibrateGaussian(eps, delta, k)
    if (spec.mechanism !== 'gaussian') throw new Error('unreachable')
    const l2sq = 2n * 4n ** BigInt(k)
    // Δ₂²/(2σ²) = l2sq·varDen / (2·varNum) must equal rhoNanos / 10^9.
    t.equal(l2sq * spec.varDen * BigInt(RHO_UNITS), 2n * spec.varNum * BigInt(spec.cost.rhoNanos), `ε=${eps} δ=${delta}: ρ exact`)
    const rho = spec.cost.rhoNanos / RHO_UNITS
    t.ok(epsilonForRho(rho, delta) <= eps, `ε=${eps}: converts back to at most ε`)
    t.ok(epsilonForRho(rho, delta) > eps * 0.999, `ε=${eps}: and not much less`)
  }
  t.ok(Math.abs(epsilonForRho(rhoFor(2, 1e-6), 1e-6) - 2) < 1e-12, 'rhoFor inverts epsilonForRho')
})

t.test('noise lands on the grid and follows the calibrated distribution', async (t) => {
  const rng = new RandomReader(seededRandom('grid-noise'))
  const k = 4
  const grid = snapToGrid([0.5, 0.25, 0.25, 0], k) // [8, 4, 4, 0]
  const lap = calibrateLaplace(2, k) // scale 2·16/2 = 16 grid units
  const lapNoise: number[] = []
  for (let i = 0; i < 5000; i++) {
    const noisy = addNoise(rng, grid, lap)
    if (!noisy.every((v) => Number.isSafeInteger(v))) t.fail('noisy values are integers in 2^-k units')
    noisy.forEach((v, j) => lapNoise.push(Number(v) - grid[j]!))
  }
  const q = Math.exp(-1 / 16)
  const fit = chiSquare(lapNoise, (z) => ((1 - q) / (1 + q)) * q ** Math.abs(z))
  t.ok(fit.stat < fit.critical, `Laplace noise at ε=2, k=4 is DLap(16): chi2 ${fit.stat.toFixed(1)} < ${fit.critical.toFixed(1)}`)

  const gauss = calibrateGaussian(2, 1e-3, 3)
  if (gauss.mechanism !== 'gaussian') throw new Error('unreachable')
  const sigma2 = Number(gauss.varNum) / Number(gauss.varDen)
  const gNoise: number[] = []
  const g3 = snapToGrid([1, 0], 3)
  for (let i = 0; i < 10000; i++) addNoise(rng, g3, gauss).forEach((v, j) => gNoise.push(Number(v) - g3[j]!))
  let norm = 0
  for (let z = -2000; z <= 2000; z++) norm += Math.exp(-(z * z) / (2 * sigma2))
  const gfit = chiSquare(gNoise, (z) => Math.exp(-(z * z) / (2 * sigma2)) / norm)
  t.ok(gfit.stat < gfit.critical, `Gaussian noise is N_Z(0, ${sigma2.toFixed(1)}): chi2 ${gfit.stat.toFixed(1)} < ${gfit.critical.toFixed(1)}`)
})

t.test('snap_k of a row inside a longer array reads that row only', async (t) => {
  const rows = Float32Array.from([0.25, 0.75, 1, 1, 1, 0.1, 0.2, 0.7])
  t.same(snapToGrid(rows, 4, 0, 2), [4, 12])
  t.same(snapToGrid(rows, 4, 2, 5), [6, 5, 5])
  t.same(snapToGrid(rows, 4, 5, 8), snapToGrid([0.1, 0.2, 0.7], 4))
})
