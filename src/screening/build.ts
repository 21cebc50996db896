// Turns each model's `screening:` policy into its detectors, at start and at each policy
// reload (the detectors' history carries over: carry-over.ts): reads the
// model's manifest (the screened input's layout and range), the calibration file, checks
// that they fit together, and reports every problem at once. The order of `detectors` is
// the order they judge a request in: the cheap stateless check first, then the stateful
// query detector and its model-wide index over all callers (all before the model runs), then
// feature squeezing, then extraction (after it). Before inference the first enforcing alarm ends the screening; after it every
// detector judges, so the extraction detector counts refused queries too. With a shared
// store (`state.redis`), the stateful and extraction detectors keep their per-principal state,
// and the model-wide index its one ring, in Redis (stateful-shared.ts, prada-shared.ts,
// stateful-callers.ts); the others keep none.

import path from 'node:path'
import type { ScreeningMode, ScreeningPolicy } from '../config/screening-policy.ts'
import { keyedDigester, type Digester } from './digest.ts'
import { systemClock, type Clock, type RandomSource } from '../deps.ts'
import { readManifest, type Manifest } from '../inference/manifest.ts'
import { modelManifestPath } from '../inference/model-versions.ts'
import { readCalibrationFile, type CalibrationFile } from './calibration.ts'
import type { AnyDetector } from './detector.ts'
import { keepHistory } from './carry-over.ts'
import { poolingEncoder } from './encoder.ts'
import { createFeatureBoundsDetector } from './feature-bounds.ts'
import { createFeatureSqueezingDetector } from './feature-squeezing.ts'
import { createPradaDetector } from './prada.ts'
import { createSharedPradaDetector } from './prada-shared.ts'
import type { ScreeningStore } from './shared-store.ts'
import { parseSqueezer, parseSqueezers, type ItemLayout } from './squeezers.ts'
import { createStatefulDetector } from './stateful.ts'
import { createCallersIndexDetector, createSharedCallersIndexDetector } from './stateful-callers.ts'
import { createSharedStatefulDetector } from './stateful-shared.ts'

export interface ModelScreening {
  readonly model: string
  readonly inputName: string
  readonly outputName: string
  readonly outputKind: 'probabilities' | 'logits'
  readonly layout: ItemLayout
  /** Values per item of the screened input. */
  readonly itemSize: number
  readonly detectors: readonly AnyDetector[]
  /** Whether a detector needs the model's answer (the stage then runs the model itself). */
  readonly needsModel: boolean
  readonly cooldownMs: number
  /** What an enforced attack_suspected alarm answers (refuse, degrade or delay) and, for delay, after how many more queries. */
  readonly onAlarm: 'refuse' | 'degrade' | 'delay'
  readonly delayQueries: number
  readonly digest: Digester
}

export interface ScreeningSources {
  /** Folder of the policy files; calibration files are relative to it. */
  policyDir: string
  /** Folder with one sub-folder per model (models.directory). */
  modelsDir: string
  /** Secret keys of the digests (deps.random). */
  random: RandomSource
  /** Redis, when replicas share per-principal state (`state.redis`); absent: in process. */
  shared?: ScreeningStore
  /** Times the shared detectors' waits (default: the system clock). */
  clock?: Clock
}

/** Layout of one item of a model input [batch, ..., H, W], or a problem. */
export function layoutOf(manifest: Manifest, inputName: string): ItemLayout | string {
  const spec = manifest.inputs.find((s) => s.name === inputName)
  if (!spec) return `model ${manifest.name} has no input "${inputName}" (it has ${manifest.inputs.map((s) => `"${s.name}"`).join(', ')})`
  if (spec.datatype !== 'FP32') return `input "${inputName}" is ${spec.datatype}; screening reads FP32 inputs only`
  const rest = spec.shape.slice(1)
  if (rest.length === 0 || rest.some((d) => d < 1)) return `input "${inputName}" has shape ${JSON.stringify(spec.shape)}; screening needs fixed non-batch dimensions`
  const [lo, hi] = spec.range ?? [NaN, NaN]
  if (!Number.isFinite(lo) || !Number.isFinite(hi) || !(hi > lo)) return `input "${inputName}" declares no finite value range in the manifest; screening scales by it`
  const height = rest.length >= 2 ? rest[rest.length - 2]! : 1
  const width = rest[rest.length - 1]!
  const channels = rest.slice(0, -2).reduce((a, b) => a * b, 1)
  return { channels, height, width, lo, hi }
}

/** The detectors of one model; throws an Error listing every problem. */
export function compileScreening(
  model: string,
  policy: ScreeningPolicy,
  manifest: Manifest,
  calibration: CalibrationFile | null,
  random: RandomSource,
  shared?: ScreeningStore,
  clock: Clock = systemClock,
  previous?: ModelScreening,
): ModelScreening {
  const problems: string[] = []
  const inputName = policy.input ?? (manifest.inputs.length === 1 ? manifest.inputs[0]!.name : '')
  if (!inputName) problems.push(`/screening/input: model ${model} has ${manifest.inputs.length} inputs; name the one to screen`)
  const outputName = policy.output ?? manifest.outputs[0]!.name
  if (!manifest.outputs.some((o) => o.name === outputName)) problems.push(`/screening/output: model ${model} has no output "${outputName}"`)
  const layoutOrProblem = inputName ? layoutOf(manifest, inputName) : 'no input'
  if (typeof layoutOrProblem === 'string') {
    if (inputName) problems.push(`/screening/input: ${layoutOrProblem}`)
    throw new Error(problems.join('\n'))
  }
  const layout = layoutOrProblem
  const itemSize = layout.channels * layout.height * layout.width
  const modeOf = (own: ScreeningMode | undefined): ScreeningMode => own ?? policy.mode ?? 'enforce'
  const recalibrate = `run \`bulwark calibrate ${model}\``
  if (calibration) {
    if (calibration.model !== model) problems.push(`/screening/calibrationFile: the file was made for model "${calibration.model}", not "${model}"`)
    if (calibration.modelSha256 !== manifest.sha256) {
      problems.push(`/screening/calibrationFile: the file was calibrated on model file ${calibration.modelSha256.slice(0, 12)}..., the manifest now pins ${manifest.sha256.slice(0, 12)}...; ${recalibrate}`)
    }
  }
  const detectors: AnyDetector[] = []

  const fb = policy.featureBounds
  if (fb) {
    const cal = calibration?.featureBounds
    const threshold = fb.threshold ?? cal?.threshold
    if (!cal) problems.push(`/screening/featureBounds: the bounds come from the calibration file, which has none; set calibrationFile and ${recalibrate}`)
    else if (cal.lower.length !== itemSize || cal.upper.length !== itemSize) problems.push(`/screening/featureBounds: the calibration file has bounds for ${cal.lower.length} features, the input has ${itemSize}; ${recalibrate}`)
    else if (threshold !== undefined) {
      detectors.push(createFeatureBoundsDetector({ lower: Float32Array.from(cal.lower), upper: Float32Array.from(cal.upper), lo: layout.lo, hi: layout.hi, threshold, mode: modeOf(fb.mode) }))
    }
  }

  const st = policy.stateful
  if (st) {
    const cal = calibration?.stateful
    let threshold = st.threshold
    if (threshold === undefined) {
      if (!cal) problems.push(`/screening/stateful/threshold: not set and not in a calibration file; set it or set calibrationFile and ${recalibrate}`)
      else if (cal.k !== st.k || cal.poolSize !== st.poolSize) problems.push(`/screening/stateful: calibrated with k ${cal.k} and poolSize ${cal.poolSize}, the policy says k ${st.k} and poolSize ${st.poolSize}; ${recalibrate} or set threshold`)
      else threshold = cal.threshold
    }
    if (st.k > st.historyPerPrincipal) problems.push(`/screening/stateful/k: ${st.k} exceeds historyPerPrincipal ${st.historyPerPrincipal}; the k nearest must fit in the history`)
    if (st.poolSize > Math.max(layout.height, layout.width)) problems.push(`/screening/stateful/poolSize: ${st.poolSize} is larger than the input's ${layout.height}x${layout.width}`)
    if (threshold !== undefined && problems.length === 0) {
      const options = { ...st, threshold, mode: modeOf(st.mode), encoder: poolingEncoder(layout, st.poolSize) }
      // The model-wide index has its own history: resizing it keeps the callers' histories.
      const { threshold: _t, mode: _m, acrossCallers: _a, ...shape } = st
      const key = JSON.stringify(['stateful', shape, layout, !!shared])
      detectors.push(keepHistory(previous?.detectors, key, options, () => (shared ? createSharedStatefulDetector(options, model, shared) : createStatefulDetector(options))))
      if (st.acrossCallers > 0) {
        if (st.k > st.acrossCallers) problems.push(`/screening/stateful/acrossCallers: ${st.acrossCallers} is smaller than k ${st.k}; the k nearest must fit in it (or 0: off)`)
        else {
          const across = { k: st.k, size: st.acrossCallers, threshold, mode: options.mode, encoder: options.encoder }
          const acrossKey = JSON.stringify(['stateful-callers', st.k, st.poolSize, st.acrossCallers, layout, !!shared])
          const makeAcross = () => (shared ? createSharedCallersIndexDetector(across, model, shared) : createCallersIndexDetector(across))
          detectors.push(keepHistory(previous?.detectors, acrossKey, across, makeAcross))
        }
      }
    }
  }

  const fs = policy.featureSqueezing
  if (fs) {
    const cal = calibration?.featureSqueezing
    let threshold = fs.threshold
    if (threshold === undefined) {
      if (!cal) problems.push(`/screening/featureSqueezing/threshold: not set and not in a calibration file; set it or set calibrationFile and ${recalibrate}`)
      else if (cal.squeezers.join(',') !== fs.squeezers.join(',')) {
        problems.push(`/screening/featureSqueezing/squeezers: calibrated for [${cal.squeezers.join(', ')}], the policy says [${fs.squeezers.join(', ')}]; ${recalibrate} or set threshold`)
      } else threshold = cal.threshold
    }
    let ok = true
    fs.squeezers.forEach((name, i) => {
      try {
        parseSqueezer(name, layout)
      } catch (err) {
        problems.push(`/screening/featureSqueezing/squeezers/${i}: ${(err as Error).message}`)
        ok = false
      }
    })
    if (threshold !== undefined && ok) detectors.push(createFeatureSqueezingDetector({ squeeze: parseSqueezers(fs.squeezers, layout), threshold, mode: modeOf(fs.mode) }))
  }

  const ex = policy.extraction
  if (ex) {
    if (ex.warmupPerClass > ex.growingSetPerClass) problems.push(`/screening/extraction/warmupPerClass: ${ex.warmupPerClass} exceeds growingSetPerClass ${ex.growingSetPerClass}; no distance would ever be recorded`)
    if (ex.minQueries > ex.windowSize) problems.push(`/screening/extraction/minQueries: ${ex.minQueries} exceeds windowSize ${ex.windowSize}; the test would never run`)
    else {
      const options = { ...ex, mode: modeOf(ex.mode), encoder: poolingEncoder(layout, ex.poolSize) }
      const { wThreshold, mode: _m, ...shape } = ex
      const key = JSON.stringify(['extraction', shape, layout, !!shared])
      const make = () => (shared ? createSharedPradaDetector(options, model, shared, random, clock) : createPradaDetector(options))
      detectors.push(keepHistory(previous?.detectors, key, { threshold: wThreshold, mode: options.mode }, make))
    }
  }

  if (problems.length > 0) throw new Error(problems.join('\n'))
  return Object.freeze({
    model,
    inputName,
    outputName,
    outputKind: policy.outputKind,
    layout,
    itemSize,
    detectors: Object.freeze(detectors),
    needsModel: detectors.some((d) => d.needs === 'output'),
    cooldownMs: policy.cooldownMs,
    onAlarm: policy.onAlarm,
    delayQueries: policy.delayQueries,
    // Digests of the history kept from the previous generation stay comparable.
    digest: previous?.digest ?? keyedDigester(random),
  })
}

/** Whether a policy screens anything. */
export function screens(policy: ScreeningPolicy | undefined): policy is ScreeningPolicy {
  return !!policy && policy.enabled && !!(policy.featureBounds || policy.featureSqueezing || policy.stateful || policy.extraction)
}

/**
 * Every model's screening, from the policies. Problems of every model are collected and
 * thrown together, each prefixed with its policy file, so one start reports them all.
 */
export async function buildScreening(
  policies: ReadonlyMap<string, { readonly screening: ScreeningPolicy }>,
  sources: ScreeningSources,
  previous?: ReadonlyMap<string, ModelScreening>,
): Promise<{ models: Map<string, ModelScreening>; problems: string[] }> {
  const models = new Map<string, ModelScreening>()
  const problems: string[] = []
  for (const [model, policy] of policies) {
    if (!screens(policy.screening)) continue
    const file = path.join(sources.policyDir, `${model}.yaml`)
    try {
      const manifest = await readManifest(await modelManifestPath(sources.modelsDir, model))
      const calFile = policy.screening.calibrationFile
      const calibration = calFile ? await readCalibrationFile(path.resolve(sources.policyDir, calFile)) : null
      models.set(model, compileScreening(model, policy.screening, manifest, calibration, sources.random, sources.shared, sources.clock, previous?.get(model)))
    } catch (err) {
      for (const line of (err as Error).message.split('\n')) problems.push(`${file} ${line}`)
    }
  }
  return { models, problems }
}
