// `bulwark calibrate MODEL [--config FILE] [--data FILE] [--out FILE]`: computes the
// screening thresholds of MODEL's policy from benign data by running the model itself
// (onnxruntime, through the same registry, batcher and squeeze-in-one-batch path the
// gateway uses), and writes them to the policy's calibrationFile (docs/screening.md).
// src/cli.ts dispatches here; this module never touches the process.

import { mkdir, rename, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { defaultConfig, loadConfigFile } from '../config/load.ts'
import { loadPolicies } from '../config/policy.ts'
import type { Clock, Logger, RandomSource } from '../deps.ts'
import { readManifest } from '../inference/manifest.ts'
import { modelManifestPath } from '../inference/model-versions.ts'
import { ModelRegistry } from '../inference/registry.ts'
import { InferenceService } from '../inference/service.ts'
import { layoutOf } from './build.ts'
import { CALIBRATION_FORMAT, featureBounds, leaveOneOutBoundsScores, STATEFUL_SAFETY_FACTOR, thresholdForRate, type CalibrationFile } from './calibration.ts'
import { loadCalibrationSet } from './calibration-sets.ts'
import { poolingEncoder } from './encoder.ts'
import { squeezingScore } from './feature-squeezing.ts'
import { createPradaDetector } from './prada.ts'
import { runWithVariants } from './model-run.ts'
import { parseSqueezer } from './squeezers.ts'
import { createStatefulDetector } from './stateful.ts'

export const CALIBRATE_USAGE = `  calibrate MODEL [--config FILE] [--data FILE] [--out FILE]
        compute MODEL's screening thresholds from benign data (--data: JSON {"inputs": [...]};
        default: the calibration split a bundled model ships) by running the model, and write
        them to the policy's screening.calibrationFile (or --out)`

export interface CalibrateIo {
  cwd: string
  out(text: string): void
  err(text: string): void
  clock: Clock
  random: RandomSource
  log: Logger
}

const BATCH = 64
const pct = (x: number) => `${(x * 100).toFixed(2)}%`

export async function calibrateCommand(argv: string[], io: CalibrateIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { config: { type: 'string' }, data: { type: 'string' }, out: { type: 'string' } },
    allowPositionals: true,
    strict: true,
  })
  if (positionals.length !== 1) {
    io.err(`calibrate needs exactly one MODEL\n\nusage:\n${CALIBRATE_USAGE}\n`)
    return 2
  }
  const model = positionals[0]!
  const loaded = values.config ? await loadConfigFile(path.resolve(io.cwd, values.config)) : defaultConfig(io.cwd)
  const policyDir = path.resolve(loaded.baseDir, loaded.config.policies.directory)
  const policy = (await loadPolicies(policyDir, { required: true })).get(model)
  if (!policy) {
    io.err(`bulwark: no policy for model ${model} in ${policyDir}\n`)
    return 2
  }
  const sc = policy.screening
  if (!sc.featureSqueezing && !sc.featureBounds && !sc.stateful && !sc.extraction) {
    io.err(`bulwark: the screening section of ${model}'s policy configures no detector; nothing to calibrate\n`)
    return 2
  }
  const target = values.out ? path.resolve(io.cwd, values.out) : sc.calibrationFile ? path.resolve(policyDir, sc.calibrationFile) : null
  if (!target) {
    io.err(`bulwark: ${path.join(policyDir, `${model}.yaml`)} names no screening.calibrationFile; add one (e.g. ${model}.screening.json) or give --out\n`)
    return 2
  }
  const modelsDir = path.resolve(loaded.baseDir, loaded.config.models.directory)
  const manifest = await readManifest(await modelManifestPath(modelsDir, model))
  const inputName = sc.input ?? manifest.inputs[0]!.name
  const outputName = sc.output ?? manifest.outputs[0]!.name
  const layout = layoutOf(manifest, inputName)
  if (typeof layout === 'string') {
    io.err(`bulwark: ${layout}\n`)
    return 2
  }
  const itemSize = layout.channels * layout.height * layout.width
  const set = await loadCalibrationSet(model, values.data === undefined ? undefined : path.resolve(io.cwd, values.data), itemSize)
  io.out(`calibrating ${model} on ${set.items.length} items from ${set.source}\n`)

  const file: CalibrationFile = {
    format: CALIBRATION_FORMAT,
    model,
    modelSha256: manifest.sha256,
    createdAt: new Date(io.clock.nowMs()).toISOString(),
    source: set.source,
    items: set.items.length,
  }

  // The model, as the gateway runs it: only this model, with the configured settings.
  const entry = loaded.config.models.serve.find((m) => m.name === model) ?? { name: model }
  const registry = new ModelRegistry({ ...loaded.config.models, serve: [entry] }, loaded.baseDir, { clock: io.clock, log: io.log })
  await registry.load()
  const served = registry.get(model, null)
  if (served.state !== 'ready') {
    io.err(`bulwark: model ${model} did not load: ${served.reason}\n`)
    await registry.close()
    return 1
  }
  const service = new InferenceService(registry)
  const probabilities: Float32Array[] = []
  try {
    const squeezers = sc.featureSqueezing ? sc.featureSqueezing.squeezers.map((name) => parseSqueezer(name, layout)) : []
    const scores: number[] = []
    const shape = manifest.inputs.find((s) => s.name === inputName)!.shape.slice(1)
    for (let start = 0; start < set.items.length; start += BATCH) {
      const items = set.items.slice(start, start + BATCH)
      const data = new Float32Array(items.length * itemSize)
      items.forEach((x, i) => data.set(x, i * itemSize))
      const request = { parameters: {}, inputs: [{ name: inputName, datatype: 'FP32' as const, shape: [items.length, ...shape], data }], outputs: [], binaryOutputs: false, batchSize: items.length }
      const run = await runWithVariants(service, { model, version: null }, request, { inputName, outputName, outputKind: sc.outputKind }, items.map((x) => squeezers.map((s) => s(x))), io.clock.monotonicMs() + 600_000)
      probabilities.push(...run.probabilities)
      if (squeezers.length > 0) run.probabilities.forEach((p, i) => scores.push(squeezingScore(p, run.variantProbabilities[i]!)))
    }
    if (sc.featureSqueezing) {
      const rate = sc.featureSqueezing.targetFalsePositiveRate
      const t = thresholdForRate(scores, rate)
      file.featureSqueezing = { squeezers: [...sc.featureSqueezing.squeezers], targetFalsePositiveRate: rate, threshold: t.threshold, falsePositiveRate: t.rate }
      io.out(`  feature squeezing [${sc.featureSqueezing.squeezers.join(', ')}]: threshold ${t.threshold.toFixed(4)} (L1), ${pct(t.rate)} of calibration items above it (target ${pct(rate)})\n`)
    }
  } finally {
    await registry.close()
  }

  if (sc.featureBounds) {
    const { lower, upper } = featureBounds(set.items)
    const rate = sc.featureBounds.targetFalsePositiveRate
    const t = thresholdForRate(leaveOneOutBoundsScores(set.items, layout.hi - layout.lo), rate)
    file.featureBounds = { targetFalsePositiveRate: rate, threshold: t.threshold, falsePositiveRate: t.rate, lower: Array.from(lower), upper: Array.from(upper) }
    io.out(`  feature bounds: threshold ${t.threshold.toFixed(4)} (excess), ${pct(t.rate)} of calibration items above it leave-one-out (target ${pct(rate)})\n`)
  }
  // The stateful detectors see the calibration set as one principal sending it in order.
  const digestOf = (i: number) => i + 1
  if (sc.stateful) {
    const st = sc.stateful
    const d = createStatefulDetector({ ...st, threshold: 0, mode: 'observe', encoder: poolingEncoder(layout, st.poolSize) })
    let min = Infinity
    set.items.forEach((x, i) => {
      const r = d.inspect({ principal: 'calibration', items: [x], digests: [digestOf(i)] })
      if (r) min = Math.min(min, r.score)
    })
    if (!Number.isFinite(min)) {
      io.err(`bulwark: ${set.items.length} items are too few for stateful k ${st.k}\n`)
      return 1
    }
    const threshold = min * STATEFUL_SAFETY_FACTOR
    file.stateful = { k: st.k, poolSize: st.poolSize, historyPerPrincipal: st.historyPerPrincipal, benignMinimum: min, safetyFactor: STATEFUL_SAFETY_FACTOR, threshold }
    io.out(`  stateful: smallest benign mean distance to ${st.k} nearest ${min.toFixed(4)}; threshold ${threshold.toFixed(4)}\n`)
  }
  if (sc.extraction) {
    const ex = sc.extraction
    const d = createPradaDetector({ ...ex, wThreshold: 0, mode: 'observe', encoder: poolingEncoder(layout, ex.poolSize) })
    let min: number | null = null
    set.items.forEach((x, i) => {
      const r = d.inspect({ principal: 'calibration', items: [x], digests: [digestOf(i)], probabilities: [probabilities[i]!] })
      if (r) min = Math.min(min ?? 1, r.score)
    })
    file.extraction = { poolSize: ex.poolSize, warmupPerClass: ex.warmupPerClass, benignMinimumW: min, wThreshold: ex.wThreshold }
    const note = min === null ? 'too few queries for the test' : `smallest W ${(min as number).toFixed(4)}`
    io.out(`  extraction: ${note} (policy wThreshold ${ex.wThreshold})\n`)
    if (min !== null && (min as number) < ex.wThreshold) io.err(`bulwark: warning: the calibration stream itself falls below wThreshold ${ex.wThreshold}; benign callers would be refused\n`)
  }

  await mkdir(path.dirname(target), { recursive: true })
  const tmp = `${target}.tmp`
  await writeFile(tmp, JSON.stringify(file, null, 1) + '\n')
  await rename(tmp, target)
  io.out(`wrote ${path.relative(io.cwd, target) || target}\n`)
  return 0
}
