// Model extraction by Jacobian-based dataset augmentation (Papernot et al., "Practical
// Black-Box Attacks against Machine Learning", AsiaCCS 2017), the synthetic-query attack
// PRADA was built against. The attacker holds a few natural seeds, asks the model for their
// labels, trains a surrogate (here softmax regression, 784 -> 10), and doubles its set each
// round with x + lambda * sign(d p_label / d x) of the surrogate, querying only the new points.
// Deterministic given its seeds and seed images.

/** final: the gateway refuses this caller (403), the run ends; otherwise only this query was refused (422) and the point is dropped. */
export type LabelOracle = (x: Float32Array) => Promise<{ label: number } | { refused: string; final: boolean }>

export interface ExtractionOutcome {
  /** Queries answered before the first refusal (or all, if none). */
  answered: number
  /** The 1-based query that got the first final refusal, or null. */
  refusedAt: number | null
  refusal: string | null
  /** Agreement of the surrogate with the labels it was trained on, at the end (sanity check). */
  surrogateFit: number
}

function softmaxInPlace(z: Float64Array): void {
  let m = -Infinity
  for (const v of z) m = Math.max(m, v)
  let s = 0
  for (let i = 0; i < z.length; i++) s += z[i] = Math.exp(z[i]! - m)
  for (let i = 0; i < z.length; i++) z[i]! /= s
}

/** The attacker's quick surrogate, whose Jacobian picks the synthetic queries. */
export class SoftmaxRegression {
  readonly w: Float64Array
  readonly b = new Float64Array(10)
  readonly d: number
  constructor(d: number) {
    this.d = d
    this.w = new Float64Array(10 * d)
  }
  probs(x: Float32Array): Float64Array {
    const z = new Float64Array(10)
    for (let c = 0; c < 10; c++) {
      let s = this.b[c]!
      const row = c * this.d
      for (let i = 0; i < this.d; i++) s += this.w[row + i]! * x[i]!
      z[c] = s
    }
    softmaxInPlace(z)
    return z
  }
  train(xs: Float32Array[], ys: number[], epochs: number, lr: number): void {
    for (let e = 0; e < epochs; e++) {
      for (let n = 0; n < xs.length; n++) {
        const x = xs[n]!
        const p = this.probs(x)
        p[ys[n]!]! -= 1
        for (let c = 0; c < 10; c++) {
          const g = p[c]! * lr
          if (g === 0) continue
          this.b[c]! -= g
          const row = c * this.d
          for (let i = 0; i < this.d; i++) this.w[row + i]! -= g * x[i]!
        }
      }
    }
  }
  /** sign of d p_c / d x = p_c (W_c - sum_k p_k W_k). */
  jacobianSign(x: Float32Array, c: number): Float32Array {
    const p = this.probs(x)
    const out = new Float32Array(this.d)
    for (let i = 0; i < this.d; i++) {
      let avg = 0
      for (let k = 0; k < 10; k++) avg += p[k]! * this.w[k * this.d + i]!
      out[i] = Math.sign(this.w[c * this.d + i]! - avg)
    }
    return out
  }
}

export async function jacobianAugmentation(
  oracle: LabelOracle,
  seeds: Float32Array[],
  o: { lambda: number; maxQueries: number; epochs?: number },
): Promise<ExtractionOutcome> {
  const xs: Float32Array[] = []
  const ys: number[] = []
  const surrogate = new SoftmaxRegression(seeds[0]!.length)
  let pending = seeds.slice()
  let answered = 0
  let sent = 0
  while (sent < o.maxQueries && pending.length > 0) {
    for (const x of pending) {
      if (sent >= o.maxQueries) break
      const r = await oracle(x)
      sent++
      if ('refused' in r) {
        if (r.final) return { answered, refusedAt: sent, refusal: r.refused, surrogateFit: fit(surrogate, xs, ys) }
        continue
      }
      answered++
      xs.push(x)
      ys.push(r.label)
    }
    surrogate.train(xs, ys, o.epochs ?? 5, 0.05)
    // Each round doubles the set: one synthetic neighbour per known point.
    pending = xs.map((x, n) => {
      const s = surrogate.jacobianSign(x, ys[n]!)
      return x.map((v, i) => Math.min(1, Math.max(0, v + o.lambda * s[i]!)))
    })
  }
  return { answered, refusedAt: null, refusal: null, surrogateFit: fit(surrogate, xs, ys) }
}

function fit(s: SoftmaxRegression, xs: Float32Array[], ys: number[]): number {
  if (xs.length === 0) return 0
  let ok = 0
  xs.forEach((x, i) => {
    const p = s.probs(x)
    let best = 0
    for (let c = 1; c < 10; c++) if (p[c]! > p[best]!) best = c
    if (best === ys[i]) ok++
  })
  return ok / xs.length
}
