// Calibration of the screening thresholds on benign data, and the file that carries them:
// policies/<model>.screening.json (the policy names it in `screening.calibrationFile`),
// written by `bulwark calibrate MODEL`. The file pins the SHA-256 of the model it was made
// for and the settings it was made with; the gateway refuses to start when either no longer
// matches the policy and manifest, since a threshold for another model or other squeezers
// means nothing.
//
//   feature squeezing: the threshold is the (1 - targetFalsePositiveRate) quantile of the
//     scores of the calibration items, so at most that share of them would be refused.
//   feature bounds: per-feature min and max over the calibration items; the threshold is
//     the same quantile of leave-one-out scores (each item against the bounds of the others),
//     which estimates the rate on unseen data instead of the zero of an item against itself.
//   stateful: the calibration items are sent as one principal's stream; the threshold is
//     half the smallest score seen (benign streams never came closer than that).
//   extraction: the smallest W of the same stream is recorded, to compare with wThreshold.

import { readFile } from 'node:fs/promises'
import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { boundsExcess } from './feature-bounds.ts'

export const CALIBRATION_FORMAT = 'bulwark-screening-calibration-v1'
/** Stateful threshold = this share of the smallest benign score of the calibration stream. */
export const STATEFUL_SAFETY_FACTOR = 0.5

const Rate = Type.Number({ minimum: 0, maximum: 1 })

export const CalibrationFileSchema = Type.Object(
  {
    format: Type.Literal(CALIBRATION_FORMAT),
    model: Type.String({ minLength: 1 }),
    /** The manifest's sha256 of the ONNX file the thresholds were computed with. */
    modelSha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
    createdAt: Type.String(),
    /** Where the benign items came from, and how many there were. */
    source: Type.String(),
    items: Type.Integer({ minimum: 1 }),
    featureSqueezing: Type.Optional(
      Type.Object(
        {
          squeezers: Type.Array(Type.String()),
          targetFalsePositiveRate: Rate,
          threshold: Type.Number({ minimum: 0 }),
          /** Share of calibration items above the threshold. */
          falsePositiveRate: Rate,
        },
        { additionalProperties: false },
      ),
    ),
    featureBounds: Type.Optional(
      Type.Object(
        {
          targetFalsePositiveRate: Rate,
          threshold: Type.Number({ minimum: 0 }),
          /** Share of calibration items above the threshold, leave-one-out. */
          falsePositiveRate: Rate,
          lower: Type.Array(Type.Number()),
          upper: Type.Array(Type.Number()),
        },
        { additionalProperties: false },
      ),
    ),
    stateful: Type.Optional(
      Type.Object(
        {
          k: Type.Integer({ minimum: 1 }),
          poolSize: Type.Integer({ minimum: 1 }),
          historyPerPrincipal: Type.Integer({ minimum: 1 }),
          benignMinimum: Type.Number({ minimum: 0 }),
          safetyFactor: Type.Number({ minimum: 0, maximum: 1 }),
          threshold: Type.Number({ minimum: 0 }),
        },
        { additionalProperties: false },
      ),
    ),
    extraction: Type.Optional(
      Type.Object(
        {
          poolSize: Type.Integer({ minimum: 1 }),
          warmupPerClass: Type.Integer({ minimum: 1 }),
          /** Smallest W over the calibration stream (null: too few queries for the test). */
          benignMinimumW: Type.Union([Type.Number(), Type.Null()]),
          wThreshold: Type.Number(),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
)

export type CalibrationFile = Static<typeof CalibrationFileSchema>

export async function readCalibrationFile(file: string): Promise<CalibrationFile> {
  let raw: unknown
  try {
    raw = JSON.parse(await readFile(file, 'utf8'))
  } catch (err) {
    throw new Error(`cannot read ${file}: ${(err as Error).message}; run \`bulwark calibrate MODEL\` to write it`)
  }
  const problems = [...Value.Errors(CalibrationFileSchema, raw)].map((e) => `${e.path || '/'}: ${e.message}`)
  if (problems.length > 0) throw new Error(`${file} is not a calibration file (${problems.slice(0, 3).join('; ')}); run \`bulwark calibrate MODEL\` to rewrite it`)
  return raw as CalibrationFile
}

/**
 * The smallest threshold t with at most `rate` of `scores` strictly above it, and the share
 * above it actually achieved (ties can make it lower than asked).
 */
export function thresholdForRate(scores: readonly number[], rate: number): { threshold: number; rate: number } {
  if (scores.length === 0) throw new RangeError('no scores to calibrate on')
  const sorted = Float64Array.from(scores).sort()
  const allowed = Math.floor(rate * sorted.length)
  const threshold = sorted[sorted.length - 1 - allowed]!
  let above = 0
  for (const s of sorted) if (s > threshold) above++
  return { threshold, rate: above / sorted.length }
}

/** Per-feature min and max of the items. */
export function featureBounds(items: readonly Float32Array[]): { lower: Float32Array; upper: Float32Array } {
  const d = items[0]!.length
  const lower = new Float32Array(d).fill(Infinity)
  const upper = new Float32Array(d).fill(-Infinity)
  for (const x of items) {
    for (let i = 0; i < d; i++) {
      if (x[i]! < lower[i]!) lower[i] = x[i]!
      if (x[i]! > upper[i]!) upper[i] = x[i]!
    }
  }
  return { lower, upper }
}

/**
 * Each item's bounds score against the bounds of all the other items: per feature the two
 * largest and two smallest values are kept, so leaving one item out costs nothing.
 */
export function leaveOneOutBoundsScores(items: readonly Float32Array[], span: number): number[] {
  if (items.length < 2) throw new RangeError('leave-one-out needs at least two items')
  const d = items[0]!.length
  const max1 = new Float32Array(d).fill(-Infinity)
  const max2 = new Float32Array(d).fill(-Infinity)
  const min1 = new Float32Array(d).fill(Infinity)
  const min2 = new Float32Array(d).fill(Infinity)
  for (const x of items) {
    for (let i = 0; i < d; i++) {
      const v = x[i]!
      if (v > max1[i]!) {
        max2[i] = max1[i]!
        max1[i] = v
      } else if (v > max2[i]!) max2[i] = v
      if (v < min1[i]!) {
        min2[i] = min1[i]!
        min1[i] = v
      } else if (v < min2[i]!) min2[i] = v
    }
  }
  const lower = new Float32Array(d)
  const upper = new Float32Array(d)
  return items.map((x) => {
    for (let i = 0; i < d; i++) {
      // Without x, the max is max2 if x holds the max (ties leave max1 = max2 anyway).
      upper[i] = x[i]! === max1[i]! ? max2[i]! : max1[i]!
      lower[i] = x[i]! === min1[i]! ? min2[i]! : min1[i]!
    }
    return boundsExcess(x, lower, upper, span)
  })
}
