// Seeded training of the MNIST CNN (cnn.ts) on the `train` split only. Same seed -> same
// weights on every run: the only randomness is mulberry32 (init, shuffling, augmentation),
// and every sum runs in a fixed order.
//
// Run on its own: `npx node models/mnist/train.ts` (prints accuracies, writes nothing);
// `npm run models:build` trains through this module and writes weights.json.

import { loadMnist, IMAGE_SIZE, PIXELS, type Split } from './data.ts'
import { accuracy, backward, crossEntropy, crossEntropyLogitGrad, forward, initParams, zeroParams, PARAM_NAMES, type Params } from './cnn.ts'
import { bitDepth1, median2x2 } from './squeeze.ts'

/** mulberry32: a tiny 32-bit PRNG, uniform in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** Standard normal draws (Box-Muller) from a uniform source. */
export function normalFrom(uniform: () => number): () => number {
  return () => {
    const u = 1 - uniform() // (0, 1], keeps log finite
    return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * uniform())
  }
}

export interface TrainOptions {
  seed: number
  epochs: number
  batchSize: number
  learningRate: number
  /** Probability that a training image is shown 1-bit squeezed / 2x2-median filtered. */
  pBinarize: number
  pMedian: number
  /** Probability of a random shift by up to one pixel (helps with only 6,000 digits). */
  pShift: number
  log?: (line: string) => void
}

export const DEFAULT_OPTIONS: TrainOptions = {
  seed: 20240611,
  epochs: 14,
  batchSize: 32,
  learningRate: 3e-3,
  pBinarize: 0.2,
  pMedian: 0.2,
  pShift: 0.7,
}

/** Shift an image by (dx, dy) pixels, filling with 0 (the background). */
export function shift(image: Float32Array, dx: number, dy: number): Float32Array {
  const out = new Float32Array(PIXELS)
  for (let y = 0; y < IMAGE_SIZE; y++) {
    const sy = y - dy
    if (sy < 0 || sy >= IMAGE_SIZE) continue
    for (let x = 0; x < IMAGE_SIZE; x++) {
      const sx = x - dx
      if (sx >= 0 && sx < IMAGE_SIZE) out[y * IMAGE_SIZE + x] = image[sy * IMAGE_SIZE + sx]!
    }
  }
  return out
}

function augment(image: Float32Array, rand: () => number, o: TrainOptions): Float32Array {
  let x = image
  if (rand() < o.pShift) x = shift(x, Math.floor(rand() * 3) - 1, Math.floor(rand() * 3) - 1)
  const r = rand()
  if (r < o.pBinarize) x = bitDepth1(x)
  else if (r < o.pBinarize + o.pMedian) x = median2x2(x)
  return x
}

/** Adam with bias correction; state is one first/second moment array per parameter. */
class Adam {
  m: Params = zeroParams()
  v: Params = zeroParams()
  t = 0
  step(p: Params, g: Params, lr: number, scale: number): void {
    const b1 = 0.9
    const b2 = 0.999
    this.t++
    const c1 = 1 - b1 ** this.t
    const c2 = 1 - b2 ** this.t
    for (const name of PARAM_NAMES) {
      const w = p[name], gr = g[name], m = this.m[name], v = this.v[name]
      for (let i = 0; i < w.length; i++) {
        const gi = gr[i]! * scale
        m[i] = b1 * m[i]! + (1 - b1) * gi
        v[i] = b2 * v[i]! + (1 - b2) * gi * gi
        w[i]! -= (lr * (m[i]! / c1)) / (Math.sqrt(v[i]! / c2) + 1e-8)
      }
    }
  }
}

export function train(data: Split, options: Partial<TrainOptions> = {}): Params {
  const o = { ...DEFAULT_OPTIONS, ...options }
  const rand = mulberry32(o.seed)
  const params = initParams(normalFrom(rand))
  const adam = new Adam()
  const n = data.images.length
  const order = Array.from({ length: n }, (_, i) => i)
  const totalSteps = o.epochs * Math.ceil(n / o.batchSize)
  let step = 0
  for (let epoch = 0; epoch < o.epochs; epoch++) {
    // Fisher-Yates shuffle with the seeded PRNG.
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(rand() * (i + 1))
      ;[order[i], order[j]] = [order[j]!, order[i]!]
    }
    let lossSum = 0
    let correct = 0
    const started = performance.now()
    for (let b = 0; b < n; b += o.batchSize) {
      const grads = zeroParams()
      const end = Math.min(b + o.batchSize, n)
      for (let k = b; k < end; k++) {
        const idx = order[k]!
        const label = data.labels[idx]!
        const act = forward(params, augment(data.images[idx]!, rand, o))
        lossSum += crossEntropy(act.probs, label)
        if (act.probs.indexOf(Math.max(...act.probs)) === label) correct++
        backward(params, act, crossEntropyLogitGrad(act.probs, label), grads, false)
      }
      // Cosine decay to 5% of the initial rate: large steps early, settle at the end.
      const lr = o.learningRate * (0.05 + 0.95 * 0.5 * (1 + Math.cos((Math.PI * step) / totalSteps)))
      adam.step(params, grads, lr, 1 / (end - b))
      step++
    }
    o.log?.(
      `epoch ${epoch + 1}/${o.epochs}: loss ${(lossSum / n).toFixed(4)}, train acc ${((100 * correct) / n).toFixed(2)}% ` +
        `(${((performance.now() - started) / 1000).toFixed(1)} s)`,
    )
  }
  return params
}

export interface Evaluation {
  plain: number
  bitDepth1: number
  median2x2: number
}

/** Accuracy on a split as is, after 1-bit squeezing and after the 2x2 median filter. */
export function evaluate(params: Params, split: Split): Evaluation {
  return {
    plain: accuracy(params, split.images, split.labels),
    bitDepth1: accuracy(params, split.images.map(bitDepth1), split.labels),
    median2x2: accuracy(params, split.images.map((x) => median2x2(x)), split.labels),
  }
}

export const pct = (x: number): string => `${(100 * x).toFixed(2)}%`

if (import.meta.main) {
  const { train: trainSplit, test } = loadMnist()
  const started = performance.now()
  const params = train(trainSplit, { log: console.log })
  console.log(`training took ${((performance.now() - started) / 1000).toFixed(1)} s`)
  const e = evaluate(params, test)
  console.log(`test accuracy (${test.images.length} held-out digits): plain ${pct(e.plain)}, 1-bit ${pct(e.bitDepth1)}, median 2x2 ${pct(e.median2x2)}`)
}
