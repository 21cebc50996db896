// Query-based black-box attacks, run as one principal through the gateway's API. Each gets
// an oracle (one query = one request) and stops at the first final refusal (a 403: the
// gateway has recognised the attack), reporting how many queries it had sent and whether it
// had already succeeded. A non-final refusal (a 422 for one suspicious input) only costs the
// attacker that query: NES drops the sample, HopSkipJump counts the point as not adversarial.
//
//   NES (Ilyas, Engstrom, Athalye, Lin, ICML 2018), score-based: the gradient of a margin
//     loss on the returned probabilities is estimated from antithetic Gaussian samples
//     (x + sigma u, x - sigma u), then projected sign steps in the L-infinity ball of eps.
//     Success: misclassified within L-infinity eps (0.3, as the white-box attacks).
//     Adaptive options: `tile` draws the noise per tile x tile block (aligned with the stateful
//     detector's pooled cells, so every probe moves the detector's view by sigma, not
//     sigma / tile), and `sigma` may be a function, read at every probe, so an attack can
//     widen its probes when the gateway refuses it (OARS-style, adaptive-black-box.ts).
//   HopSkipJump (Chen, Jordan, Wainwright, IEEE S&P 2020), decision-based, L2: from a
//     misclassified start (a natural digit of another class, as attackers with data do; random
//     noise if none is given), binary search to the boundary, then rounds of a
//     Monte-Carlo estimate of the boundary's normal (B queries at tiny offsets), a
//     geometric step along it and a new binary search. Success: misclassified within L2
//     `successL2` of the original. Adaptive options: `probeRadius` is the smallest L2 radius
//     of the normal-estimation probes, `jitter` adds tiled Gaussian noise of that standard
//     deviation to every query (so the binary search's points are not near-duplicates), and
//     `tolerance` ends a binary search earlier (a finer search is lost in the jitter).

export type ScoreOracle = (x: Float32Array) => Promise<{ probs: Float32Array } | { refused: string; final: boolean }>

export interface AttackOutcome {
  /** Queries sent, the refused one included. */
  queries: number
  /** 1-based index of the first final refusal, or null if none. */
  refusedAt: number | null
  refusal: string | null
  /** Queries refused without ending the attack (422 for one input). */
  skipped: number
  /** 1-based index of the query that first met the success criterion, or null. */
  succeededAt: number | null
  /** Distortion of the best adversarial point found by the end (L-inf for NES, L2 for HSJA); null if none. */
  bestDistortion: number | null
  /** The same, at the moment of the final refusal (what the attacker had when stopped). */
  distortionAtRefusal: number | null
  /** [query, best distortion so far] at each improvement, to judge other success criteria. */
  trace: [number, number][]
}

/** The first query at which the best distortion was at most `bound`, or null. */
export function firstWithin(o: AttackOutcome, bound: number): number | null {
  return o.trace.find(([, d]) => d <= bound)?.[0] ?? null
}

const clip01 = (v: number) => (v < 0 ? 0 : v > 1 ? 1 : v)

function argmax(p: ArrayLike<number>): number {
  let b = 0
  for (let i = 1; i < p.length; i++) if (p[i]! > p[b]!) b = i
  return b
}

function l2(a: Float32Array, b: Float32Array): number {
  let s = 0
  for (let i = 0; i < a.length; i++) s += (a[i]! - b[i]!) ** 2
  return Math.sqrt(s)
}

function linf(a: Float32Array, b: Float32Array): number {
  let m = 0
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!))
  return m
}

class Refused extends Error {}
class Skipped extends Error {}

/** Counts queries, remembers the first refusal and the first success. */
class Session {
  queries = 0
  refusedAt: number | null = null
  refusal: string | null = null
  skipped = 0
  atRefusal: number | null = null
  readonly trace: [number, number][] = []
  succeededAt: number | null = null
  best: number | null = null
  private readonly oracle: ScoreOracle
  private readonly budget: number
  constructor(oracle: ScoreOracle, budget: number) {
    this.oracle = oracle
    this.budget = budget
  }
  get exhausted(): boolean {
    return this.queries >= this.budget
  }
  async probs(x: Float32Array): Promise<Float32Array> {
    if (this.exhausted) throw new Refused('budget')
    this.queries++
    const r = await this.oracle(x)
    if ('refused' in r) {
      if (!r.final) {
        this.skipped++
        throw new Skipped(r.refused)
      }
      this.refusedAt = this.queries
      this.refusal = r.refused
      this.atRefusal = this.best
      throw new Refused(r.refused)
    }
    return r.probs
  }
  /** Records an adversarial point found (its distortion) and whether it meets the criterion. */
  adversarial(distortion: number, ok: boolean): void {
    if (this.best === null || distortion < this.best) {
      this.best = distortion
      this.trace.push([this.queries, distortion])
    }
    if (ok && this.succeededAt === null) this.succeededAt = this.queries
  }
  outcome(): AttackOutcome {
    return { queries: this.queries, refusedAt: this.refusedAt, refusal: this.refusal, skipped: this.skipped, succeededAt: this.succeededAt, bestDistortion: this.best, distortionAtRefusal: this.atRefusal, trace: this.trace }
  }
}

export interface NesOptions {
  eps: number
  sigma: number | (() => number)
  /** Side of the square blocks the noise is drawn per (1: per pixel, the default). */
  tile?: number
  /** Samples per gradient estimate (antithetic pairs: half as many draws). */
  samples: number
  stepSize: number
  maxQueries: number
  normal: () => number
  /**
   * The evaluator's check that a point the oracle calls adversarial really is (an oracle that
   * answers from a degraded mechanism can claim it falsely); a false claim does not end the
   * attack, as if it had checked with a second query.
   */
  verify?: (z: Float32Array) => boolean
}

/** Margin loss in log space: log p_y - max_{j != y} log p_j (the attack drives it below 0). */
function margin(p: Float32Array, y: number): number {
  let other = 0
  for (let j = 0; j < p.length; j++) if (j !== y) other = Math.max(other, p[j]!)
  return Math.log(p[y]! + 1e-12) - Math.log(other + 1e-12)
}

/** Noise of `d` values (a square image) drawn per tile x tile block. */
export function tiledNoise(d: number, tile: number, normal: () => number): Float32Array {
  if (tile <= 1) return Float32Array.from({ length: d }, () => normal())
  const side = Math.round(Math.sqrt(d))
  const cells = Math.ceil(side / tile)
  const draws = Float32Array.from({ length: cells * cells }, () => normal())
  const u = new Float32Array(d)
  for (let r = 0; r < side; r++) for (let c = 0; c < side; c++) u[r * side + c] = draws[Math.floor(r / tile) * cells + Math.floor(c / tile)]!
  return u
}

/**
 * NES's gradient estimate of `f` at `at`: the sum over antithetic pairs of
 * (f(at + sigma u) - f(at - sigma u)) u, u standard normal (per tile), points clipped to
 * [0, 1]. `f` returns null for a probe it could not evaluate (a refused query): that pair is
 * dropped. Proportional to the gradient in expectation (2 sigma (samples / 2) grad f).
 */
export async function nesGradient(f: (z: Float32Array) => Promise<number | null>, at: Float32Array, o: { sigma: number; samples: number; tile?: number; normal: () => number }): Promise<Float32Array> {
  const d = at.length
  const g = new Float32Array(d)
  for (let k = 0; k < o.samples / 2; k++) {
    const u = tiledNoise(d, o.tile ?? 1, o.normal)
    const plus = await f(at.map((v, i) => clip01(v + o.sigma * u[i]!)))
    if (plus === null) continue
    const minus = await f(at.map((v, i) => clip01(v - o.sigma * u[i]!)))
    if (minus === null) continue
    for (let i = 0; i < d; i++) g[i]! += (plus - minus) * u[i]!
  }
  return g
}

export async function nes(oracle: ScoreOracle, x: Float32Array, y: number, o: NesOptions): Promise<AttackOutcome> {
  const s = new Session(oracle, o.maxQueries)
  const sigmaNow = typeof o.sigma === 'function' ? o.sigma : () => o.sigma as number
  const lo = x.map((v) => Math.max(0, v - o.eps))
  const hi = x.map((v) => Math.min(1, v + o.eps))
  const loss = async (z: Float32Array) => {
    try {
      return margin(await s.probs(z), y)
    } catch (err) {
      if (err instanceof Skipped) return null
      throw err
    }
  }
  let adv = Float32Array.from(x)
  try {
    while (!s.exhausted) {
      const g = await nesGradient(loss, adv, { sigma: sigmaNow(), samples: o.samples, tile: o.tile, normal: o.normal })
      adv = adv.map((v, i) => Math.min(hi[i]!, Math.max(lo[i]!, v - o.stepSize * Math.sign(g[i]!))))
      const m = await loss(adv)
      if (m === null) continue
      if (m < 0 && (!o.verify || o.verify(adv))) s.adversarial(linf(adv, x), linf(adv, x) <= o.eps + 1e-6)
      if (s.succeededAt !== null) break
    }
  } catch (err) {
    if (!(err instanceof Refused)) throw err
  }
  return s.outcome()
}

export interface HsjaOptions {
  successL2: number
  maxQueries: number
  /** Natural inputs of other classes to start from, tried in order before random noise. */
  starts?: readonly Float32Array[]
  /** Gradient-estimation queries in the first round (grows with sqrt(round)). */
  initialSamples: number
  maxSamples: number
  random: () => number
  normal: () => number
  probeRadius?: number
  jitter?: number
  /** Noise tile for probes and jitter (1: per pixel). */
  tile?: number
  tolerance?: number
  /** The evaluator's check that a point the attack holds is really adversarial (with jitter, its queries only say so on average). */
  verify?: (z: Float32Array) => boolean
}

export async function hopSkipJump(oracle: ScoreOracle, x: Float32Array, y: number, o: HsjaOptions): Promise<AttackOutcome> {
  const s = new Session(oracle, o.maxQueries)
  const d = x.length
  const theta = 1 / (Math.sqrt(d) * d)
  const tolerance = o.tolerance ?? theta
  const tile = o.tile ?? 1
  const jitter = o.jitter ?? 0
  const isAdv = async (z: Float32Array) => {
    try {
      if (jitter > 0) {
        const n = tiledNoise(d, tile, o.normal)
        z = z.map((v, i) => clip01(v + jitter * n[i]!))
      }
      return argmax(await s.probs(z)) !== y
    } catch (err) {
      if (err instanceof Skipped) return false
      throw err
    }
  }
  const blend = (a: Float32Array, b: Float32Array, t: number) => a.map((v, i) => (1 - t) * v + t * b[i]!)
  /** Binary search on the line from x (t = 0) to an adversarial z (t = 1). */
  const toBoundary = async (z: Float32Array) => {
    let low = 0
    let high = 1
    while (high - low > tolerance) {
      const mid = (low + high) / 2
      if (await isAdv(blend(x, z, mid))) high = mid
      else low = mid
    }
    return blend(x, z, high)
  }
  try {
    let start: Float32Array | null = null
    for (const z of o.starts ?? []) {
      if (await isAdv(z)) {
        start = z
        break
      }
    }
    for (let tries = 0; tries < 100 && !start; tries++) {
      const z = Float32Array.from({ length: d }, () => o.random())
      if (await isAdv(z)) start = z
    }
    if (!start) return s.outcome()
    const found = (z: Float32Array) => {
      if (o.verify && !o.verify(z)) return
      s.adversarial(l2(z, x), l2(z, x) <= o.successL2)
    }
    let xb = await toBoundary(start)
    found(xb)
    for (let t = 1; !s.exhausted && s.succeededAt === null; t++) {
      const dist = l2(xb, x)
      const delta = Math.max(o.probeRadius ?? 0, t === 1 ? 0.1 : Math.sqrt(d) * theta * dist)
      const B = Math.min(o.maxSamples, Math.round(o.initialSamples * Math.sqrt(t)))
      const us: Float32Array[] = []
      const phis: number[] = []
      for (let b = 0; b < B; b++) {
        const u = tiledNoise(d, tile, o.normal)
        const n = Math.hypot(...u)
        for (let i = 0; i < d; i++) u[i]! /= n
        const probe = xb.map((v, i) => clip01(v + delta * u[i]!))
        phis.push((await isAdv(probe)) ? 1 : -1)
        us.push(u)
      }
      const mean = phis.reduce((a, b) => a + b, 0) / B
      const v = new Float32Array(d)
      us.forEach((u, b) => {
        const w = Math.abs(mean) === 1 ? phis[b]! : phis[b]! - mean
        for (let i = 0; i < d; i++) v[i]! += w * u[i]!
      })
      const vn = Math.hypot(...v) || 1
      for (let i = 0; i < d; i++) v[i]! /= vn
      let xi = dist / Math.sqrt(t)
      let next = xb.map((val, i) => clip01(val + xi * v[i]!))
      while (!(await isAdv(next)) && xi > 1e-6) {
        xi /= 2
        next = xb.map((val, i) => clip01(val + xi * v[i]!))
      }
      xb = await toBoundary(next)
      found(xb)
    }
  } catch (err) {
    if (!(err instanceof Refused)) throw err
  }
  return s.outcome()
}
