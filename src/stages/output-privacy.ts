// Stage: output-privacy ('body' phase, verb 'infer', right after model-inference).
// Reads:  ctx.result (model outputs), ctx.request (which outputs the client asked for),
//         ctx.target.model, ctx.callerKey (whose budget), the model's `output:` policy,
//         compiled at start.
// Writes: ctx.result.outputs (protected outputs replaced, unlisted outputs withheld),
//         ctx.result.parameters (output_mode when an output is protected; with noise: privacy_mechanism,
//         privacy_epsilon_cost, privacy_epsilon_spent, privacy_epsilon_left,
//         privacy_delta, privacy_window_ms), ctx.privacy.
// Throws: privacy_budget_exhausted (429, Retry-After in seconds: when enough budget frees),
//         batch_too_large (400: one request would cost more than the whole budget),
//         forbidden (403: the client explicitly asked for an output the policy withholds),
//         internal (500: the policy names an output that is not a float score tensor, or
//         the privacy journal cannot be written; the answer is never released then),
//         state_unavailable (503: the shared accountant, Redis, cannot be reached; likewise).
//
// Per protected output row (one answer): snap to the 2^-k grid, add discrete noise,
// clamp and renormalise, apply the mode, round (src/privacy/*, docs/privacy.md). The
// answer's cost is charged before anything is released: the charge (a durable journal
// write) runs while the noise is computed, and the new outputs replace the model's only
// once the charge has been accepted and synced.
//
// Whose budget: one per model and caller key (ctx.callerKey: token issuer and subject with
// the workload identity; the workload alone without a token; one shared key, conservative,
// for callers with neither). A caller holding many identities holds many budgets; issuing
// identities is the front door's job, and the guarantee is per identity (docs/privacy.md).

import { createHash } from 'node:crypto'
import { Value } from '@sinclair/typebox/value'
import { ConfigError } from '../config/load.ts'
import { OutputPolicy, outputPolicyProblems } from '../config/output-policy.ts'
import type { RandomSource } from '../deps.ts'
import { BulwarkError, isBulwarkError } from '../errors.ts'
import type { Tensor } from '../inference/tensor.ts'
import { costFits, type ChargeResult, type PrivacyAccountant, type PrivacyBudget } from '../privacy/accountant.ts'
import {
  addNoise,
  calibrateGaussian,
  calibrateLaplace,
  epsilonForRho,
  EPSILON_UNITS,
  RHO_UNITS,
  scaleCost,
  snapToGrid,
  toEpsilonMicros,
  type NoiseSpec,
  type PrivacyCost,
} from '../privacy/mechanisms.ts'
import { argmax, releaseRow, type RowSpec } from '../privacy/postprocess.ts'
import { RandomReader } from '../privacy/random.ts'
import type { RequestContext, Stage } from '../types.ts'

export interface OutputPrivacyDeps {
  /** Where budgets are kept (FileAccountant in production); it owns the wall clock. */
  accountant: PrivacyAccountant
  /** Noise randomness: cryptoRandom (the OS CSPRNG) in production, seeded in tests. */
  random: RandomSource
}

/** A policy checked and turned into what run() needs. */
export interface CompiledOutputPolicy {
  readonly protect: ReadonlySet<string>
  readonly passThrough: ReadonlySet<string>
  readonly row: RowSpec
  readonly noise: NoiseSpec | null
  readonly budget: PrivacyBudget
}

/** The slice's defaults, as a policy file without `output:` gets them. */
export const defaultOutputPolicy: OutputPolicy = Object.freeze(Value.Default(OutputPolicy, {}) as OutputPolicy)

/** Validates a policy (schema and cross-field) and precomputes the noise calibration. */
export function compileOutputPolicy(policy: OutputPolicy, source = 'output policy'): CompiledOutputPolicy {
  const problems = [...Value.Errors(OutputPolicy, policy)].map((e) => `/output${e.path}: ${e.message}`)
  if (problems.length === 0) problems.push(...outputPolicyProblems(policy))
  if (problems.length > 0) throw new ConfigError(source, problems)
  const { noise, budget } = policy
  let spec: NoiseSpec | null = null
  if (noise.mechanism === 'laplace') spec = calibrateLaplace(noise.epsilon, noise.granularityBits)
  if (noise.mechanism === 'gaussian') spec = calibrateGaussian(noise.epsilon, noise.delta, noise.granularityBits)
  return Object.freeze({
    protect: new Set(policy.outputs),
    passThrough: new Set(policy.passThrough),
    row: { mode: policy.mode, topK: policy.topK, roundDecimals: policy.roundDecimals },
    noise: spec,
    budget: { epsilonMicros: toEpsilonMicros(budget.epsilon), delta: budget.delta, windowMs: budget.windowMs },
  })
}

/**
 * The accountant key of a caller (its ctx.callerKey, a JSON array) for a model: a hash, so
 * no identity is written to the journal. The hashed text is the JSON array
 * ["bulwark-privacy-key/1", model, ...caller], as journals written before keys were computed
 * on the context hold it.
 */
export function privacyKey(callerKey: string, model: string): string {
  return createHash('sha256').update(`["bulwark-privacy-key/1",${JSON.stringify(model)},${callerKey.slice(1)}`).digest('hex')
}

/** ε figures to 6 decimals (micro-epsilon, the accountant's unit); cheaper than toFixed on the hot path. */
const show = (x: number) => Math.round(x * 1e6) / 1e6

type ScoreTensor = Tensor & { data: Float32Array | Float64Array }

function isScoreTensor(t: Tensor): t is ScoreTensor {
  return (t.datatype === 'FP32' || t.datatype === 'FP64') && t.shape.length >= 1 && (t.shape[t.shape.length - 1] ?? 0) >= 1
}

/** The protected copy of one score tensor (rows along the last axis). */
function protectTensor(t: ScoreTensor, c: CompiledOutputPolicy, rng: RandomReader | null): Tensor {
  const classes = t.shape[t.shape.length - 1]!
  const out = t.datatype === 'FP32' ? new Float32Array(t.data.length) : new Float64Array(t.data.length)
  const S = c.noise ? 2 ** c.noise.bits : 0
  for (let off = 0; off < t.data.length; off += classes) {
    if (c.noise && rng) {
      const noisy = addNoise(rng, snapToGrid(t.data, c.noise.bits, off, off + classes), c.noise)
      if (c.row.mode === 'label') {
        // Report-noisy-max: the one-hot of the noisy arg-max (ties to the lower index).
        out[off + argmax(noisy)] = 1
        continue
      }
      const mass = noisy.map((v) => (v < 0 ? 0 : v > S ? S : v))
      out.set(releaseRow(noisy, mass, c.row), off)
    } else {
      const row = t.data.subarray(off, off + classes)
      const rank = Array.from(row, (v) => (Number.isNaN(v) ? -Infinity : v))
      out.set(releaseRow(rank, row, c.row), off)
    }
  }
  return { name: t.name, datatype: t.datatype, shape: t.shape, data: out }
}

/**
 * privacyKey with a bounded memo: the SHA-256 is per caller, not per request, and a busy
 * gateway sees the same few callers thousands of times a second. Cleared when full, so a
 * flood of distinct identities costs a hash each, never unbounded memory.
 */
function memoisedPrivacyKey(limit = 10_000): (callerKey: string, model: string) => string {
  const memo = new Map<string, string>()
  return (callerKey, model) => {
    const id = `${model.length}:${model}${callerKey}`
    let key = memo.get(id)
    if (key === undefined) {
      if (memo.size >= limit) memo.clear()
      memo.set(id, (key = privacyKey(callerKey, model)))
    }
    return key
  }
}

/** Each model's compiled output policy (compileOutputPolicy, at start); the defaults' for a model without one. */
export type CompiledPolicySource = (model: string) => CompiledOutputPolicy

export function createOutputPrivacyStage(policies: CompiledPolicySource, deps: OutputPrivacyDeps): Stage {
  const keyOf = memoisedPrivacyKey()
  // One reader for every answer: it reads the source in blocks of a few KiB, and the draws
  // of one answer are independent of every other answer's whichever block they come from.
  const rng = new RandomReader(deps.random)

  return {
    name: 'output-privacy',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      const result = ctx.result
      if (!result) return
      const model = ctx.target.model
      const c = policies(model)

      // Which outputs leave (in the model's order), and which of them must be protected first.
      const released: Tensor[] = []
      /** The protected outputs, with their place in `released`. */
      const protect: { at: number; t: ScoreTensor }[] = []
      let requested: Set<string> | null = null
      for (const t of result.outputs) {
        if (c.protect.has(t.name)) {
          if (!isScoreTensor(t)) {
            throw new BulwarkError('internal', 'internal error; the operator can find details in the server log', {
              reason: `output policy of model "${model}" protects output "${t.name}", which is ${t.datatype} ${JSON.stringify(t.shape)}, not a float score tensor; fix policies/${model}.yaml`,
            })
          }
          protect.push({ at: released.length, t })
          released.push(t) // replaced by its protected copy below
        } else if (c.passThrough.has(t.name)) {
          released.push(t)
        } else {
          requested ??= new Set((ctx.request?.outputs ?? []).map((o) => o.name))
          if (requested.has(t.name)) {
            throw new BulwarkError('forbidden', `output "${t.name}" is not released by this model's policy`, {
              reason: `output "${t.name}" of model "${model}" is neither protected nor passed through by the output policy`,
            })
          }
        }
      }

      let charging: Promise<ChargeResult> | null = null
      let cost: PrivacyCost | null = null
      if (c.noise) {
        let answers = 0
        for (const { t } of protect) answers += t.data.length / t.shape[t.shape.length - 1]!
        cost = scaleCost(c.noise.cost, answers)
        if (!costFits(cost, c.budget)) {
          throw new BulwarkError('batch_too_large', `this request's ${answers} answers would cost more than the whole privacy budget of this model; send fewer items per request`, {
            reason: `cost ${JSON.stringify(cost)} exceeds budget ${JSON.stringify(c.budget)} for model "${model}"`,
          })
        }
        if (answers > 0) {
          charging = deps.accountant.charge(keyOf(ctx.callerKey, model), cost, c.budget)
          charging.catch(() => {}) // awaited below; this only keeps an early failure from being "unhandled"
        }
      }

      // Computed while the charge is being made durable; released only after it is.
      for (const { at, t } of protect) released[at] = protectTensor(t, c, c.noise ? rng : null)

      const params: Record<string, unknown> = { ...result.parameters }
      // output_mode describes protected outputs; a pass-through-only answer has none.
      if (protect.length > 0) params.output_mode = c.row.mode
      if (c.noise && cost) {
        let charge: ChargeResult
        if (charging) {
          try {
            charge = await charging
          } catch (err) {
            // A shared accountant that cannot be reached says so (503 state_unavailable): fail closed.
            if (isBulwarkError(err)) throw err
            throw new BulwarkError('internal', 'internal error; the operator can find details in the server log', {
              reason: `privacy accountant failed: ${(err as Error).message}`,
              cause: err,
            })
          }
        } else {
          charge = await deps.accountant.balance(keyOf(ctx.callerKey, model), c.budget)
        }
        ctx.privacy = {
          epsilonSpent: charge.epsilonSpent,
          epsilonLeft: charge.epsilonLeft,
          ...(c.noise.mechanism === 'gaussian' ? { deltaSpent: charge.delta } : {}),
        }
        if (!charge.ok) {
          const seconds = Math.max(1, Math.ceil(charge.retryAfterMs / 1000))
          throw new BulwarkError('privacy_budget_exhausted', 'privacy budget for this model is spent; retry after the Retry-After delay', {
            reason: `privacy budget of model "${model}" spent: ${show(charge.epsilonSpent)} of ${c.budget.epsilonMicros / EPSILON_UNITS} epsilon in ${c.budget.windowMs} ms; this request needs ${JSON.stringify(cost)}`,
            headers: { 'Retry-After': String(seconds) },
          })
        }
        params.privacy_mechanism = c.noise.mechanism
        params.privacy_epsilon_cost = show(
          cost.epsilonMicros / EPSILON_UNITS + (cost.rhoNanos > 0 ? epsilonForRho(cost.rhoNanos / RHO_UNITS, c.budget.delta) : 0),
        )
        params.privacy_epsilon_spent = show(charge.epsilonSpent)
        params.privacy_epsilon_left = show(charge.epsilonLeft)
        if (c.noise.mechanism === 'gaussian') params.privacy_delta = c.budget.delta
        params.privacy_window_ms = c.budget.windowMs
      }

      result.outputs = released
      result.parameters = params
    },
  }
}
