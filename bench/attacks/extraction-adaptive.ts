// Extraction attacks that know PRADA (Atli, Szyller, Juuti, Marchal, Asokan, "Extraction of
// complex DNN models: real threat or boogeyman?", 2019; Orekondy, Schiele, Fritz, "Knockoff
// Nets", CVPR 2019). PRADA alarms when a caller's distances to its earlier queries stop
// looking normally distributed, which is what Jacobian-based augmentation's tiny synthetic
// steps do. Its adaptive counters:
//
//   jbda+noise    each synthetic point gets Gaussian noise, so distances spread out again
//   interleaved   synthetic points mixed with natural digits (1 synthetic : r natural)
//   knockoff      natural digits only (the attacker's own data: the training split here)
//
// A query source hands out the next query and learns each answer; `runExtraction` sends
// them as one identity until the budget or the first final refusal, and measures the
// attacker's surrogate (a small CNN, bench/privacy/cnn.ts) at checkpoints: its agreement with
// the model's labels on the held-out split is what the attacker stole.

import { cnnOptimizer, cnnPredict, createCnn, trainCnn } from '../privacy/cnn.ts'
import { pool2 } from '../privacy/extraction.ts'
import { seededRng, type Rng } from '../privacy/rng.ts'
import { SoftmaxRegression, type LabelOracle } from './extraction.ts'

export interface QuerySource {
  next(): Float32Array
  learn(x: Float32Array, label: number): void
}

/** Natural digits in a seeded order (cycled once used up). */
export function naturalSource(pool: readonly Float32Array[], rng: Rng): QuerySource {
  const order = Array.from(pool.keys())
  for (let i = order.length - 1; i > 0; i--) {
    const j = rng.int(i + 1)
    ;[order[i], order[j]] = [order[j]!, order[i]!]
  }
  let k = 0
  return {
    next() {
      const x = pool[order[k % order.length]!]!
      k++
      return x
    },
    learn() {},
  }
}

/**
 * Jacobian-based augmentation from `seeds`: each round trains the quick surrogate on every
 * answer so far and queries one synthetic neighbour per known point, x + lambda * sign(J),
 * plus N(0, noise^2) per pixel when `noise` > 0.
 */
export function jbdaSource(seeds: readonly Float32Array[], o: { lambda: number; noise: number; rng: Rng }): QuerySource {
  const xs: Float32Array[] = []
  const ys: number[] = []
  const surrogate = new SoftmaxRegression(seeds[0]!.length)
  let pending = seeds.slice()
  return {
    next() {
      if (pending.length === 0) {
        surrogate.train(xs, ys, 3, 0.05)
        pending = xs.map((x, n) => {
          const s = surrogate.jacobianSign(x, ys[n]!)
          return x.map((v, i) => Math.min(1, Math.max(0, v + o.lambda * s[i]! + o.noise * o.rng.normal())))
        })
      }
      return pending.shift()!
    },
    learn(x, label) {
      xs.push(x)
      ys.push(label)
    },
  }
}

/** One synthetic query, then `ratio` natural ones, in turn. The synthetic side learns every answer. */
export function interleavedSource(synthetic: QuerySource, natural: QuerySource, ratio: number): QuerySource {
  let k = 0
  return {
    next() {
      return k++ % (ratio + 1) === 0 ? synthetic.next() : natural.next()
    },
    learn(x, label) {
      synthetic.learn(x, label)
    },
  }
}

export interface ExtractionRun {
  /** Queries answered. */
  answered: number
  /** The 1-based query of the first final refusal (403), or null. */
  refusedAt: number | null
  /** Surrogate agreement with the model on the held-out digits, after `at` queries sent (or at the refusal). */
  agreement: { at: number; answered: number; value: number }[]
}

export interface Surrogate {
  /** The held-out digits and the model's labels for them. */
  heldOut: readonly Float32Array[]
  reference: readonly number[]
  seed: number
}

/** Trains the attacker's CNN on what it was answered; returns its agreement with the model on the held-out digits. */
export function surrogateAgreement(xs: readonly Float32Array[], labels: readonly number[], s: Surrogate): number {
  if (xs.length === 0) return 0
  const rng = seededRng(s.seed)
  const m = createCnn(14, 8, 10, rng)
  const targets = labels.map((l) => Float64Array.from({ length: 10 }, (_, c) => (c === l ? 1 : 0)))
  trainCnn(m, xs.map(pool2), targets, { steps: Math.min(40_000, Math.max(4000, 12 * xs.length)), batchSize: 32, learningRate: 3e-3 }, rng, cnnOptimizer(m))
  const predicted = cnnPredict(m, s.heldOut.map(pool2))
  return predicted.filter((l, i) => l === s.reference[i]).length / s.heldOut.length
}

export async function runExtraction(oracle: LabelOracle, source: QuerySource, o: { maxQueries: number; checkpoints: readonly number[]; surrogate: Surrogate }): Promise<ExtractionRun> {
  const xs: Float32Array[] = []
  const ys: number[] = []
  const agreement: ExtractionRun['agreement'] = []
  const measure = (at: number) => {
    const last = agreement.at(-1)
    // After a refusal nothing new was learnt: the same surrogate.
    const value = last && last.answered === xs.length ? last.value : surrogateAgreement(xs, ys, o.surrogate)
    agreement.push({ at, answered: xs.length, value })
  }
  for (let q = 1; q <= o.maxQueries; q++) {
    const x = source.next()
    const r = await oracle(x)
    if ('refused' in r) {
      if (r.final) {
        for (const at of o.checkpoints) if (at >= q) measure(at)
        return { answered: xs.length, refusedAt: q, agreement }
      }
    } else {
      xs.push(x)
      ys.push(r.label)
      source.learn(x, r.label)
    }
    if (o.checkpoints.includes(q)) measure(q)
  }
  return { answered: xs.length, refusedAt: null, agreement }
}
