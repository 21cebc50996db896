// Per-model output protection settings (the `output:` section of policies/<model>.yaml).
// Owned by the output-privacy stage (src/stages/output-privacy.ts); docs/privacy.md
// explains the guarantee. Every field has its default, unit and range next to it.
//
// The defaults are the least revealing answer that still does a classifier's job:
// label only, no noise. Confidence scores are what published extraction (Tramèr et al.,
// USENIX Security 2016) and inversion (Fredrikson et al., CCS 2015) attacks feed on;
// a label carries at most log2(classes) bits. Noise is off by default because any useful
// epsilon changes answers, and choosing that trade is the operator's call; once it is on,
// the budget defaults bound what one caller can learn per hour. Outputs the policy does
// not name are withheld (fail closed).
//
// Example:
//   output:
//     mode: top-k
//     topK: 3
//     roundDecimals: 2
//     noise: { mechanism: laplace, epsilon: 2 }
//     budget: { epsilon: 50, windowMs: 3600000 }
// or, for labels, k-ary randomized response on the arg-max:
//   output:
//     mode: label
//     noise: { mechanism: randomized-response, epsilon: 4 }

import { Type, type Static } from '@sinclair/typebox'
import { MAX_WINDOW_MS } from '../privacy/accountant.ts'

export const OutputNoise = Type.Object(
  {
    /**
     * none | laplace | gaussian | randomized-response. laplace: discrete Laplace, pure ε-DP
     * per answer, charged by basic composition. gaussian: discrete Gaussian, (ε, δ)-DP per
     * answer, charged by zCDP composition (cheaper over many answers). randomized-response
     * (mode label only): k-ary randomized response on the model's arg-max, pure ε-DP per
     * answer like laplace and far more accurate for a label (at ε = 4, 10 classes: the
     * arg-max 85.8% of the time, against about 50% for Laplace report-noisy-max); not the
     * default for label mode until the privacy evaluation has measured it. Default none (see
     * the file header).
     */
    mechanism: Type.Union([Type.Literal('none'), Type.Literal('laplace'), Type.Literal('gaussian'), Type.Literal('randomized-response')], {
      default: 'none',
      description: 'noise on released answers: none | laplace | gaussian | randomized-response (label mode only)',
    }),
    /**
     * ε spent by one answer (one row of one protected output), at 10^-6 resolution.
     * Laplace noise scale in score units is 2/ε. Default 1: strong per answer, but costly
     * in accuracy: for a confident 10-class prediction the noisy label is right about 16%
     * of the time at ε = 1, 50% at ε = 4, 85% at ε = 8, 99% at ε = 16 (Laplace;
     * Gaussian needs more). Raise it for accuracy, and size the budget to match.
     */
    epsilon: Type.Number({ minimum: 0.01, maximum: 100, default: 1, description: 'privacy loss per answer (per batch item)' }),
    /** δ of one Gaussian answer's (ε, δ) guarantee; ignored by laplace. Default 10^-6. */
    delta: Type.Number({ minimum: 1e-15, maximum: 0.01, default: 1e-6, description: 'gaussian only: δ per answer' }),
    /**
     * k: scores are snapped to multiples of 2^-k before the noise, and noise is integer in
     * those units. Costs no ε (docs/privacy.md); only sets the resolution; ignored by
     * randomized-response, which noises no score. Default 16.
     */
    granularityBits: Type.Integer({ minimum: 4, maximum: 30, default: 16, description: 'grid 2^-k for noisy scores' }),
  },
  { additionalProperties: false, default: {} },
)

export const OutputBudget = Type.Object(
  {
    /**
     * ε one principal may spend on this model per window (all answers composed).
     * Default 10: ten answers at the default per-answer ε per window.
     */
    epsilon: Type.Number({ minimum: 0.01, maximum: 100_000, default: 10, description: 'privacy budget per principal per window' }),
    /**
     * δ at which Gaussian (zCDP) spending is stated as (ε, δ); unused with laplace.
     * Default 10^-6: far below 1/(number of training examples) for the bundled models.
     */
    delta: Type.Number({ minimum: 1e-15, maximum: 0.01, default: 1e-6, description: 'gaussian only: δ of the window guarantee' }),
    /** Sliding window in milliseconds; a charge frees exactly windowMs after it. Default 1 hour, at most 7 days. */
    windowMs: Type.Integer({ minimum: 1000, maximum: MAX_WINDOW_MS, default: 3_600_000, description: 'sliding window of the budget, ms' }),
  },
  { additionalProperties: false, default: {} },
)

export const OutputPolicy = Type.Object(
  {
    /** scores | top-k | label. Default label (see the file header). */
    mode: Type.Union([Type.Literal('scores'), Type.Literal('top-k'), Type.Literal('label')], {
      default: 'label',
      description: 'what a caller sees: scores | top-k | label',
    }),
    /** Classes kept in top-k mode (the rest read 0). Default 1. */
    topK: Type.Integer({ minimum: 1, maximum: 1000, default: 1, description: 'classes kept in top-k mode' }),
    /** Decimals kept in released scores, applied last. Default 2; 9 keeps all an FP32 holds. */
    roundDecimals: Type.Integer({ minimum: 0, maximum: 9, default: 2, description: 'decimals kept in released scores' }),
    /**
     * Outputs to protect. Each must be a float tensor holding a probability vector over
     * its last axis (a softmax); one row of it is one answer. Default [probabilities].
     */
    outputs: Type.Array(Type.String({ minLength: 1 }), { uniqueItems: true, default: ['probabilities'], description: 'model outputs the policy protects' }),
    /**
     * Outputs released untouched. Any output in neither list is withheld. Default none. Beside
     * an output this policy protects (one the model has), the start is refused unless
     * passThroughReason says why: another output of the same model carries what the protection
     * hides, so neither noise nor the budget bounds what a caller learns of the model.
     */
    passThrough: Type.Array(Type.String({ minLength: 1 }), { uniqueItems: true, default: [], description: 'model outputs released without protection' }),
    /**
     * Why passing outputs through beside a protected one is acceptable for this model (logged at
     * start). Required for that combination, meaningless otherwise. No default: the combination
     * voids the privacy guarantee (docs/privacy.md), so it is never the silent outcome.
     */
    passThroughReason: Type.Optional(Type.String({ minLength: 1, maxLength: 500, description: 'why outputs pass through beside a protected one' })),
    noise: OutputNoise,
    budget: OutputBudget,
  },
  { additionalProperties: false, default: {} },
)

export type OutputPolicy = Static<typeof OutputPolicy>

/**
 * Checks that span fields (the schema checks each field alone). The policy loader adds
 * these to its problem list, prefixed with the file name; paths are relative to the
 * policy file's root.
 */
export function outputPolicyProblems(policy: OutputPolicy): string[] {
  const problems: string[] = []
  const both = policy.outputs.filter((name) => policy.passThrough.includes(name))
  if (both.length > 0) {
    problems.push(`/output/passThrough: ${both.map((n) => JSON.stringify(n)).join(', ')} also listed in /output/outputs; an output is either protected or passed through`)
  }
  if (policy.noise.mechanism !== 'none') {
    if (policy.noise.epsilon > policy.budget.epsilon) {
      problems.push(
        `/output/budget/epsilon: ${policy.budget.epsilon} is less than one answer's /output/noise/epsilon ${policy.noise.epsilon}; no answer could ever be released. Raise the budget or lower the per-answer epsilon`,
      )
    }
    // Randomized response releases a label and nothing else; in scores or top-k mode there
    // would be scores to release that it does not protect.
    if (policy.noise.mechanism === 'randomized-response' && policy.mode !== 'label') {
      problems.push(
        `/output/noise/mechanism: randomized-response releases a label only, so it needs /output/mode: label (got ${policy.mode}); use laplace or gaussian to noise scores or top-k`,
      )
    }
    if (policy.noise.mechanism === 'gaussian' && policy.noise.delta > policy.budget.delta) {
      problems.push(`/output/noise/delta: ${policy.noise.delta} exceeds /output/budget/delta ${policy.budget.delta}; set noise.delta <= budget.delta`)
    }
  }
  return problems
}

/**
 * The passThrough outputs released beside an output the policy protects, of a model whose
 * outputs are `modelOutputs` (its manifest's), or none. Only outputs the model has count: a
 * policy that protects `probabilities` for a model without one protects nothing.
 */
export function passedBesideProtected(policy: OutputPolicy, modelOutputs: readonly string[]): { passed: string[]; protected: string[] } | null {
  const has = new Set(modelOutputs)
  const protectedHere = policy.outputs.filter((name) => has.has(name))
  const passed = policy.passThrough.filter((name) => has.has(name) && !policy.outputs.includes(name))
  return protectedHere.length > 0 && passed.length > 0 ? { passed, protected: protectedHere } : null
}

/** Checks of a policy against its model's outputs (the start checks them; the policy loader cannot). */
export function modelOutputPolicyProblems(policy: OutputPolicy, modelOutputs: readonly string[]): string[] {
  const beside = passedBesideProtected(policy, modelOutputs)
  if (!beside || policy.passThroughReason) return []
  const list = (names: string[]) => names.map((n) => JSON.stringify(n)).join(', ')
  return [
    `/output/passThrough: ${list(beside.passed)} would be released untouched beside the protected ${list(beside.protected)}; an output of the same model carries what the protection hides, so neither noise nor the budget would bound what a caller learns of the model. Withhold it (remove it from passThrough), protect it (add it to outputs), or say why it may pass in /output/passThroughReason`,
  ]
}
