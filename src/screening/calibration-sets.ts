// Benign data for `bulwark calibrate`: a JSON file the operator gives (--data), or the
// calibration split shipped with a bundled model. Never read while serving.
//
// A data file is JSON: {"inputs": [[...], [...], ...]}, one flattened item per entry, in the
// screened input's layout and range (e.g. 784 values in [0, 1] for mnist).

import { readFile } from 'node:fs/promises'

export interface CalibrationSet {
  source: string
  items: Float32Array[]
}

/** Models whose repository ships a calibration split, and how to load it. */
const BUNDLED: Record<string, () => Promise<CalibrationSet>> = {
  async mnist() {
    // The fixed split of models/mnist/data.ts: 1,001 digits used by nothing else (not
    // training, not the held-out test split the evaluations use).
    const { loadMnist } = (await import(new URL('../../models/mnist/data.ts', import.meta.url).href)) as typeof import('../../models/mnist/data.ts')
    return { source: 'mnist calibration split (models/mnist/data.ts)', items: loadMnist().calibration.images }
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
