// The one small interface every screening detector implements, and what the
// screening links hand it. A detector is built once per model from its policy
// (with its thresholds and bounded per-principal state) and then asked, per request, how
// suspicious the request is. Adding a detector means implementing `Detector` and listing it
// in src/screening/build.ts; the stage does not change.
//
// Two kinds: a `Detector` keeps its per-principal state in this process and judges
// synchronously (the default, and the only kind without `state.redis`); a `SharedDetector`
// keeps it in Redis, shared by the replicas (src/screening/shared-store.ts), and its
// inspection is a promise that fails with 503 state_unavailable when Redis cannot be reached.

import type { ScreeningMode } from '../config/screening-policy.ts'

export type { ScreeningMode }

/** The refusal an enforcing detector's alarm turns into (src/errors.ts). */
export type Refusal = 'suspicious_input' | 'attack_suspected'

/** What a detector sees of one request. */
export interface ScreenBatch {
  /** Who sent it (token issuer and subject, and workload): the key of per-principal state. */
  readonly principal: string
  /** The screened input, one flattened row per batch item, in the model's own layout. */
  readonly items: readonly Float32Array[]
  /** A keyed 53-bit digest of each row, for telling exact repeats from near-duplicates. */
  readonly digests: readonly number[]
  /** The model's class probabilities per item; present for detectors with `needs: 'output'`. */
  readonly probabilities?: readonly Float32Array[]
}

export interface DetectorResult {
  /** The request's score: the most suspicious item's. Its direction is the detector's (see `alarmWhen`). */
  score: number
  threshold: number
  alarm: boolean
  /** A per-item detector's alarm for each item, in the request's order (`alarm` is true when any is). */
  items?: readonly boolean[]
}

/** What the stage and the metrics read of any detector. */
interface DetectorInfo {
  /** Stable name: the `detector` of audit flags and of the metric label. */
  readonly name: string
  /** 'input': judged before the model runs. 'output': needs the model's answer for each item. */
  readonly needs: 'input' | 'output'
  /** Whether a high or a low score is suspicious (for readers of the audit record). */
  readonly alarmWhen: 'above' | 'below'
  readonly refusal: Refusal
  readonly mode: ScreeningMode
  /**
   * Whether the detector judges each item on its own (its result has `items`): in a batch, the
   * items it refuses are withheld and the others answered. A detector without it judges the
   * caller's stream, and its alarm refuses the whole request.
   */
  readonly perItem?: boolean
  /** Transformed copies of an item that the model must also run, in the same batch as the original. */
  variants?(item: Float32Array): Float32Array[]
  /** Memory held by per-principal state in this process, for metrics and tests. */
  memory?(): { principals: number; stored: number; evictions: number }
}

export interface Detector extends DetectorInfo {
  readonly shared?: undefined
  /**
   * Scores the request, and records it in the principal's state if the detector keeps any.
   * `variantProbabilities[i][j]` is the model's answer for variant j of item i. Returns null
   * when there is nothing to score yet (too little history), which is not an alarm.
   */
  inspect(batch: ScreenBatch, variantProbabilities?: readonly (readonly Float32Array[])[]): DetectorResult | null
}

/** A detector whose per-principal state lives in Redis: the same judgement, awaited. */
export interface SharedDetector extends DetectorInfo {
  readonly shared: true
  /** As Detector.inspect; rejects with BulwarkError state_unavailable when the store cannot be used. */
  inspect(batch: ScreenBatch, variantProbabilities?: readonly (readonly Float32Array[])[]): Promise<DetectorResult | null>
}

export type AnyDetector = Detector | SharedDetector
