// Model inversion (Fredrikson, Jha, Ristenpart, CCS 2015), black-box: for a target class,
// gradient ascent on the score the API returns for that class, from a blank start, with the
// gradient estimated from the answers alone (NES with antithetic Gaussian directions, as in
// Ilyas et al. 2018), every estimate sent as one batch of queries.
//
// The attacker searches a 10x10 image, bilinearly upsampled to 28x28 (a smoothness prior that
// makes the search 8x smaller), and ascends the log-odds of the returned score: the log keeps
// a gradient while the target's score is still tiny and again once it is close to 1, which is
// where confidence scores help most. Each step moves a fixed distance along the estimated
// gradient (so the estimate's scale does not matter) and pulls every pixel slightly toward
// black (digits are thin strokes on black, a prior in the spirit of Fredrikson's denoising
// step). With label-only answers the score is 0 or 1, so the estimate is zero except where a
// direction happens to flip the label.

import { IMAGE_SIZE, PIXELS } from '../../models/mnist/data.ts'
import type { Rng } from './rng.ts'

/** Answers a batch of images with one released score row each (null: refused). */
export type Oracle = (images: Float32Array[]) => Promise<{ rows: (ArrayLike<number> | null)[]; refused: boolean }>

export interface InversionOptions {
  /** Queries per class (the attack's budget), a multiple of 2 * pairs. */
  queriesPerClass: number
  /** Antithetic pairs per gradient estimate (2 * pairs queries per step). */
  pairs: number
  /** Exploration radius of the directions, in pixel units. */
  sigma: number
  /** Distance moved per step (L2 norm in the 14x14 search space). */
  stepSize: number
  /** Pull toward black per step. */
  decay: number
  /** Start value of every pixel (blank gray). */
  start: number
  /** Side of the search grid (side x side values, bilinearly upsampled to 28x28). */
  side: number
}

export const DEFAULT_INVERSION: InversionOptions = {
  queriesPerClass: 2048,
  pairs: 32,
  sigma: 0.1,
  stepSize: 0.8,
  decay: 0.005,
  start: 0.1,
  side: 10,
}

/** The 28x28 image of a side x side search point (bilinear upsampling, clamped to [0, 1]). */
export function render(theta: Float64Array, side: number): Float32Array {
  const out = new Float32Array(PIXELS)
  const f = side / IMAGE_SIZE
  for (let y = 0; y < IMAGE_SIZE; y++) {
    const sy = Math.min(side - 1, Math.max(0, (y + 0.5) * f - 0.5))
    const y0 = Math.floor(sy)
    const y1 = Math.min(side - 1, y0 + 1)
    const wy = sy - y0
    for (let x = 0; x < IMAGE_SIZE; x++) {
      const sx = Math.min(side - 1, Math.max(0, (x + 0.5) * f - 0.5))
      const x0 = Math.floor(sx)
      const x1 = Math.min(side - 1, x0 + 1)
      const wx = sx - x0
      const v =
        (1 - wy) * ((1 - wx) * theta[y0 * side + x0]! + wx * theta[y0 * side + x1]!) +
        wy * ((1 - wx) * theta[y1 * side + x0]! + wx * theta[y1 * side + x1]!)
      out[y * IMAGE_SIZE + x] = v < 0 ? 0 : v > 1 ? 1 : v
    }
  }
  return out
}

export interface InversionResult {
  target: number
  image: Float32Array
  /** Queries answered. */
  queries: number
  /** The target's returned score at the final image (null if refused). */
  finalScore: number | null
  /** Whether the oracle refused before the budget was used (the accountant stopped it). */
  stopped: boolean
}

/** Log-odds of the returned target score: keeps rising once the score is close to 1. */
const objective = (row: ArrayLike<number>, target: number) => {
  const s = Math.min(1, Math.max(0, row[target]!))
  return Math.log(s + 1e-9) - Math.log(1 - s + 1e-9)
}

/** Reconstructs one class. */
export async function invertClass(oracle: Oracle, target: number, o: InversionOptions, rng: Rng): Promise<InversionResult> {
  const DIM = o.side * o.side
  const theta = new Float64Array(DIM).fill(o.start)
  const steps = Math.floor(o.queriesPerClass / (2 * o.pairs))
  let queries = 0
  const dirs = Array.from({ length: o.pairs }, () => new Float64Array(DIM))
  for (let s = 0; s < steps; s++) {
    const batch: Float32Array[] = []
    for (const u of dirs) {
      for (let i = 0; i < DIM; i++) u[i] = rng.normal()
      const plus = new Float64Array(DIM)
      const minus = new Float64Array(DIM)
      for (let i = 0; i < DIM; i++) {
        plus[i] = theta[i]! + o.sigma * u[i]!
        minus[i] = theta[i]! - o.sigma * u[i]!
      }
      batch.push(render(plus, o.side), render(minus, o.side))
    }
    const { rows, refused } = await oracle(batch)
    const answered = rows.filter((r) => r !== null).length
    queries += answered
    if (refused) return { target, image: render(theta, o.side), queries, finalScore: null, stopped: true }
    const g = new Float64Array(DIM)
    for (let j = 0; j < o.pairs; j++) {
      const diff = objective(rows[2 * j]!, target) - objective(rows[2 * j + 1]!, target)
      if (diff === 0) continue
      const u = dirs[j]!
      for (let i = 0; i < DIM; i++) g[i]! += diff * u[i]!
    }
    let norm = 0
    for (let i = 0; i < DIM; i++) norm += g[i]! * g[i]!
    norm = Math.sqrt(norm)
    for (let i = 0; i < DIM; i++) {
      const step = norm > 0 ? (o.stepSize * g[i]!) / norm : 0
      theta[i] = Math.min(1, Math.max(0, theta[i]! + step - o.decay))
    }
  }
  const image = render(theta, o.side)
  const last = await oracle([image])
  return { target, image, queries: queries + (last.rows[0] ? 1 : 0), finalScore: last.rows[0]?.[target] ?? null, stopped: last.refused }
}

/** Pearson correlation of two images (0 when either is constant). */
export function correlation(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = a.length
  let ma = 0
  let mb = 0
  for (let i = 0; i < n; i++) {
    ma += a[i]!
    mb += b[i]!
  }
  ma /= n
  mb /= n
  let sab = 0
  let saa = 0
  let sbb = 0
  for (let i = 0; i < n; i++) {
    const da = a[i]! - ma
    const db = b[i]! - mb
    sab += da * db
    saa += da * da
    sbb += db * db
  }
  return saa > 0 && sbb > 0 ? sab / Math.sqrt(saa * sbb) : 0
}

/** Mean image of each class. */
export function classMeans(images: Float32Array[], labels: number[], classes: number): Float32Array[] {
  const sums = Array.from({ length: classes }, () => new Float64Array(PIXELS))
  const counts = new Array<number>(classes).fill(0)
  images.forEach((img, k) => {
    const s = sums[labels[k]!]!
    for (let i = 0; i < PIXELS; i++) s[i]! += img[i]!
    counts[labels[k]!]!++
  })
  return sums.map((s, c) => Float32Array.from(s, (v) => v / Math.max(1, counts[c]!)))
}
