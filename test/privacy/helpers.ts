// Test doubles for the privacy tests: the kit's seeded RandomSource (so statistical tests are
// repeatable), a fake clock, and a chi-square goodness-of-fit check.

import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { FakeClock } from '../../kit/clock.ts'
import type { PrivacyBudget } from '../../src/privacy/accountant.ts'

export const HOUR = 3_600_000
/** A pure-ε cost of `e`. */
export const eps = (e: number) => ({ epsilonMicros: Math.round(e * 1e6), rhoNanos: 0 })
/** A budget of `epsilon` per window (δ 1e-6). */
export const budget = (epsilon: number, windowMs = HOUR): PrivacyBudget => ({ epsilonMicros: Math.round(epsilon * 1e6), delta: 1e-6, windowMs })

/** A temp folder for a journal, removed at the test's teardown. */
export async function tempDir(t: { teardown(fn: () => unknown): void }): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'bulwark-privacy-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

export { seededRandom } from '../../kit/random.ts'

/** A fake clock starting at wall time `startMs` and monotonic 0; `set` steps the wall clock alone. */
export class PrivacyClock extends FakeClock {
  constructor(startMs = 1_700_000_000_000) {
    super(startMs, 0)
  }

  set(ms: number): void {
    this.setWall(ms)
  }
}

export const fakeClock = (startMs?: number) => new PrivacyClock(startMs)

/**
 * Chi-square statistic of integer samples against a pmf, binning every value with
 * expected count >= 5 separately and pooling the two tails. Returns the statistic, the
 * degrees of freedom, and the critical value at significance `alpha` (Wilson-Hilferty).
 */
export function chiSquare(samples: number[], pmf: (z: number) => number, alpha = 0.001): { stat: number; df: number; critical: number } {
  const n = samples.length
  const counts = new Map<number, number>()
  for (const z of samples) counts.set(z, (counts.get(z) ?? 0) + 1)
  // Central bins: the contiguous range around 0 where the expected count is at least 5.
  let lo = 0
  while (n * pmf(lo - 1) >= 5) lo--
  let hi = 0
  while (n * pmf(hi + 1) >= 5) hi++
  let stat = 0
  let centralP = 0
  let centralObs = 0
  for (let z = lo; z <= hi; z++) {
    const e = n * pmf(z)
    const o = counts.get(z) ?? 0
    stat += (o - e) ** 2 / e
    centralP += pmf(z)
    centralObs += o
  }
  let bins = hi - lo + 1
  const tailP = 1 - centralP
  if (n * tailP >= 1) {
    const e = n * tailP
    const o = n - centralObs
    stat += (o - e) ** 2 / e
    bins++
  }
  const df = bins - 1
  // Wilson-Hilferty: chi2_{1-alpha}(df) ≈ df (1 - 2/(9df) + z sqrt(2/(9df)))^3.
  const z = normalQuantile(1 - alpha)
  const critical = df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3
  return { stat, df, critical }
}

/** Standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9). */
function normalQuantile(p: number): number {
  const a = [-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716, 2.506628277459239]
  const b = [-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155211918]
  const c = [-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783]
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416]
  const q = Math.sqrt(-2 * Math.log(1 - p))
  return -(((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1)
}
