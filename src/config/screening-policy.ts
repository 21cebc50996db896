// Per-model screening settings: the `screening:` section of policies/<model>.yaml, read by
// the screening links (src/stages/screening.ts; docs/screening.md).
//
// Each detector is switched on by giving its section; a policy without `screening:` (or with
// `enabled: false`) screens nothing. Detection thresholds depend on the model and its
// traffic, so nothing is screened by guesswork: an uncalibrated detector would either miss
// attacks or refuse legitimate callers. The gateway logs every served model that has no
// screening at start. Once a detector is on, the default action is `enforce`.
//
// Example (the bundled mnist policy):
//   screening:
//     calibrationFile: mnist.screening.json     # written by `bulwark calibrate mnist`
//     featureSqueezing:
//       squeezers: [bit-depth-1, bit-depth-1+median-2x2]
//     stateful: { k: 20, poolSize: 4 }
//     extraction: { wThreshold: 0.9 }
//     cooldownMs: 60000

import { Type, type Static } from '@sinclair/typebox'

/** enforce: refuse (422 suspicious_input / 403 attack_suspected). observe: serve, and flag in the audit record and metrics. */
export const ScreeningMode = Type.Union([Type.Literal('enforce'), Type.Literal('observe')], {
  description: 'enforce (refuse) | observe (serve and flag)',
})

/** One squeezer: steps joined by "+", applied left to right. */
export const SQUEEZER_PATTERN = '^(bit-depth-[1-8]|median-[2-5]x[2-5])(\\+(bit-depth-[1-8]|median-[2-5]x[2-5]))*$'

const Threshold = (description: string) => Type.Optional(Type.Number({ minimum: 0, description }))

export const FeatureSqueezingPolicy = Type.Object(
  {
    /** Overrides screening.mode for this detector. */
    mode: Type.Optional(ScreeningMode),
    /**
     * The squeezers (Xu, Evans, Qi, NDSS 2018), each run on every item in the same batch as the
     * original. bit-depth-B: B bits per value over the input's range; median-HxW: median filter
     * over the last two dimensions (scipy's median_filter, reflect mode); "a+b": a then b.
     * Default: 1-bit depth, and 1-bit depth followed by a 2x2 median (docs/screening.md says why).
     */
    squeezers: Type.Array(Type.String({ pattern: SQUEEZER_PATTERN, examples: ['bit-depth-1', 'median-2x2', 'bit-depth-1+median-2x2'] }), {
      minItems: 1,
      maxItems: 4,
      uniqueItems: true,
      default: ['bit-depth-1', 'bit-depth-1+median-2x2'],
    }),
    /** Refuse when the largest L1 distance between softmax outputs exceeds this. Default: from the calibration file. */
    threshold: Threshold('L1 distance in [0, 2] above which an item is refused; default from calibrationFile'),
    /** What `bulwark calibrate` aims for: the share of benign calibration items above the threshold. Default 4%. */
    targetFalsePositiveRate: Type.Number({ minimum: 0.001, maximum: 0.5, default: 0.04 }),
  },
  { additionalProperties: false },
)

export const FeatureBoundsPolicy = Type.Object(
  {
    mode: Type.Optional(ScreeningMode),
    /**
     * Per-feature bounds learned from the calibration set: the score is the total amount (in
     * units of the input's range) by which an item's values fall outside them. Default
     * threshold: from the calibration file (leave-one-out at targetFalsePositiveRate).
     */
    threshold: Threshold('total out-of-bounds excess above which an item is refused; default from calibrationFile'),
    targetFalsePositiveRate: Type.Number({ minimum: 0.001, maximum: 0.5, default: 0.01 }),
  },
  { additionalProperties: false },
)

const Memory = {
  /** Principals whose history is kept; beyond it the least recently seen is forgotten. */
  maxPrincipals: Type.Integer({ minimum: 1, maximum: 10_000_000, default: 10_000 }),
}

export const StatefulPolicy = Type.Object(
  {
    mode: Type.Optional(ScreeningMode),
    /** Neighbours averaged: the alarm needs k earlier queries close to this one (Chen, Carlini, Wagner 2019). */
    k: Type.Integer({ minimum: 1, maximum: 200, default: 20 }),
    /** Average-pooling factor over the last two dimensions before distances are taken (1 = raw values). */
    poolSize: Type.Integer({ minimum: 1, maximum: 64, default: 4 }),
    /** Alarm when the mean RMS distance (input range scaled to [0, 1]) to the k nearest earlier queries is below this. Default: from the calibration file. */
    threshold: Threshold('mean RMS distance to the k nearest earlier queries below which a principal is refused; default from calibrationFile'),
    /** Earlier queries kept per principal (a ring: the oldest is overwritten). */
    historyPerPrincipal: Type.Integer({ minimum: 1, maximum: 100_000, default: 1000 }),
    ...Memory,
    /** Queries kept over all principals of this model; past it whole principals are evicted, least recently seen first. */
    maxStoredQueries: Type.Integer({ minimum: 1, maximum: 100_000_000, default: 200_000 }),
    /**
     * Recent queries of ALL callers of the model kept in one more history, judged like a
     * caller's own (same k and threshold), so probing split over many identities alarms too
     * (detector `stateful-callers`). 0: off. With state.redis, one ring per model in Redis.
     */
    acrossCallers: Type.Integer({ minimum: 0, maximum: 100_000, default: 0 }),
  },
  { additionalProperties: false },
)

export const ExtractionPolicy = Type.Object(
  {
    mode: Type.Optional(ScreeningMode),
    /** Alarm when the Shapiro-Wilk W of the principal's minimum distances falls below this (PRADA, Juuti et al. 2019). */
    wThreshold: Type.Number({ minimum: 0.5, maximum: 1, default: 0.9 }),
    /** Distances needed before the test runs (the statistic is meaningless on a handful). */
    minQueries: Type.Integer({ minimum: 20, maximum: 5000, default: 100 }),
    /** The most recent distances tested, per principal (Shapiro-Wilk takes at most 5000). */
    windowSize: Type.Integer({ minimum: 20, maximum: 5000, default: 1000 }),
    /**
     * Queries of a predicted class that only seed its growing set before distances are
     * recorded: the nearest of a handful of earlier inputs is not the nearest-neighbour
     * distance PRADA models, and those first distances alone made benign mnist streams look
     * non-normal (W 0.92) in our measurements. Default 10.
     */
    warmupPerClass: Type.Integer({ minimum: 1, maximum: 1000, default: 10 }),
    /** Queries kept per predicted class in a principal's growing set (a ring). */
    growingSetPerClass: Type.Integer({ minimum: 1, maximum: 10_000, default: 100 }),
    /** Average-pooling factor before distances are taken (1 = raw values). */
    poolSize: Type.Integer({ minimum: 1, maximum: 64, default: 2 }),
    ...Memory,
    /** Growing-set entries kept over all principals of this model; past it whole principals are evicted, least recently seen first. */
    maxStoredQueries: Type.Integer({ minimum: 1, maximum: 100_000_000, default: 200_000 }),
  },
  { additionalProperties: false },
)

export const ScreeningPolicy = Type.Object(
  {
    /** Master switch: false screens nothing, whatever the detector sections say (for benchmarks and incidents). */
    enabled: Type.Boolean({ default: true }),
    /** The action of every detector that does not set its own. Default enforce. */
    mode: Type.Optional(ScreeningMode),
    /** Thresholds and bounds written by `bulwark calibrate MODEL`; relative to the policy file's folder. */
    calibrationFile: Type.Optional(Type.String({ minLength: 1, examples: ['mnist.screening.json'] })),
    /** The model input screened. Default: the model's only input. */
    input: Type.Optional(Type.String({ minLength: 1 })),
    /** The output holding class scores (feature squeezing, extraction). Default: the model's first output. */
    output: Type.Optional(Type.String({ minLength: 1 })),
    /** probabilities (a softmax output) or logits (softmax is applied before distances). */
    outputKind: Type.Union([Type.Literal('probabilities'), Type.Literal('logits')], { default: 'probabilities' }),
    /** After an enforced stateful or extraction alarm, refuse the principal on this model for this long (403). 0: no cool-down. */
    cooldownMs: Type.Integer({ minimum: 0, maximum: 86_400_000, default: 0 }),
    /**
     * What an enforced 403 attack_suspected alarm (stateful, stateful-callers, extraction) and
     * the cool-down answer. refuse (default): 403 at once, and during the cool-down. degrade:
     * answered from a degraded mechanism instead (each released row's classes permuted at
     * random, so the label is random; charged like any answer) for this request and the rest
     * of the cool-down, so the caller cannot tell which query tripped; the audit record says
     * so. delay: answered as usual for delayQueries more of the caller's queries, then 403
     * and the cool-down. Per-item refusals (422) are not affected.
     */
    onAlarm: Type.Union([Type.Literal('refuse'), Type.Literal('degrade'), Type.Literal('delay')], { default: 'refuse', description: 'refuse | degrade | delay' }),
    /** With onAlarm: delay, the caller's queries answered after the alarm before the 403 (counted per replica). */
    delayQueries: Type.Integer({ minimum: 1, maximum: 100_000, default: 20 }),
    featureBounds: Type.Optional(FeatureBoundsPolicy),
    featureSqueezing: Type.Optional(FeatureSqueezingPolicy),
    stateful: Type.Optional(StatefulPolicy),
    extraction: Type.Optional(ExtractionPolicy),
  },
  { additionalProperties: false, default: {} },
)

export type ScreeningPolicy = Static<typeof ScreeningPolicy>
export type ScreeningMode = Static<typeof ScreeningMode>
export type FeatureSqueezingPolicy = Static<typeof FeatureSqueezingPolicy>
export type FeatureBoundsPolicy = Static<typeof FeatureBoundsPolicy>
export type StatefulPolicy = Static<typeof StatefulPolicy>
export type ExtractionPolicy = Static<typeof ExtractionPolicy>
