// Links: privacy-precheck (before screening and the model), privacy-charge and
// output-privacy ('body' phase, verb 'infer'), either side of screen-output. docs/privacy.md
// states what they guarantee.
// privacy-precheck: a caller whose last charge did not fit is refused before the model runs
//   when the least its request can cost does not fit either (the accountant's dry run);
//   other callers pass at the cost of a set lookup.
// privacy-charge (right after model-inference, before any link reads the model's output):
//   refuses an output the caller asked for that the policy withholds; with noise, charges the
//   request's cost to the caller's budget (its answers: one per row of each protected output a
//   later link reads, the caller's items only; and its screening verdicts: one per item per
//   enforcing detector that judges the raw scores, ctx.variants.verdicts), noises those rows, draws each
//   verdict's randomized-response flip, and sets ctx.charged once the charge is durable.
// output-privacy (after screen-output): what leaves. Protected outputs are replaced by their
//   charged copies (without noise: by their mode and rounding), pass-through outputs are
//   released untouched, any other output is withheld.
// Reads:  ctx.result (model outputs), ctx.request (which outputs the client asked for),
//         ctx.variants (screening's layout and verdicts), ctx.target.model, ctx.callerKey
//         (whose budget), the model's `output:` policy, compiled at start.
// Writes: ctx.privacy and ctx.charged (privacy-charge); ctx.result.outputs and
//         ctx.result.parameters (output-privacy: output_mode when an output is protected; with
//         noise: privacy_mechanism, privacy_epsilon_cost, privacy_epsilon_spent,
//         privacy_epsilon_left, privacy_delta, privacy_window_ms).
// Throws: privacy_budget_exhausted (429, Retry-After in seconds: when enough budget frees),
//         batch_too_large (400: one request would cost more than the whole budget),
//         forbidden (403: the client explicitly asked for an output the policy withholds),
//         internal (500: the policy names an output that is not a float score tensor, the
//         privacy journal cannot be written, or output-privacy finds no paid copy; the answer
//         is never released then), state_unavailable (503: the shared accountant, Redis,
//         cannot be reached; likewise).
//
// Per protected output row (one answer): snap to the 2^-k grid, add discrete noise,
// clamp and renormalise, apply the mode, round (src/privacy/*, docs/privacy.md); with
// randomized response (label mode only), the one-hot of a label drawn by k-ary randomized
// response on the model's arg-max instead. The charge
// (a durable journal write) runs while the noise is computed; nothing computed from the
// model's output is handed on until the charge has been accepted and synced.
//
// Whose budget: one per model and caller key (ctx.callerKey: token issuer and subject with
// the workload identity; the workload alone without a token; one shared key, conservative,
// for callers with neither). A caller holding many identities holds many budgets; issuing
// identities is the front door's job, and the guarantee is per identity (docs/privacy.md).

import { createHash } from 'node:crypto'
import { Value } from '@sinclair/typebox/value'
import { ConfigError } from '../config/load.ts'
import { modelOutputPolicyProblems, OutputPolicy, outputPolicyProblems } from '../config/output-policy.ts'
import type { RandomSource } from '../deps.ts'
import { BulwarkError, isBulwarkError } from '../errors.ts'
import { sliceBatch, type Tensor } from '../inference/tensor.ts'
import { costFits, type ChargeResult, type PrivacyAccountant, type PrivacyBudget } from '../privacy/accountant.ts'
import {
  addNoise,
  calibrateGaussian,
  calibrateLaplace,
  calibrateRandomizedResponse,
  epsilonForRho,
  EPSILON_UNITS,
  randomizedResponseFlip,
  randomizedResponseLabel,
  RHO_UNITS,
  snapToGrid,
  toEpsilonMicros,
  type PrivacyCost,
  type ReleaseSpec,
} from '../privacy/mechanisms.ts'
import { argmax, releaseRow, type RowSpec } from '../privacy/postprocess.ts'
import { RandomReader } from '../privacy/random.ts'
import type { ChargedRelease, RequestContext, ScreeningVariants, Stage } from '../types.ts'

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
  /** Additive noise on the snapped scores, or randomized response on the label; null: no noise, nothing charged. */
  readonly noise: ReleaseSpec | null
  /** What one screening verdict on raw scores costs: pure ε at the answer's ε (randomized response); null without noise. */
  readonly verdict: PrivacyCost | null
  readonly budget: PrivacyBudget
}

/** The slice's defaults, as a policy file without `output:` gets them. */
export const defaultOutputPolicy: OutputPolicy = Object.freeze(Value.Default(OutputPolicy, {}) as OutputPolicy)

/**
 * Validates a policy (schema and cross-field; with `modelOutputs`, the model's output names
 * from its manifest, also against the model) and precomputes the noise calibration.
 */
export function compileOutputPolicy(policy: OutputPolicy, source = 'output policy', modelOutputs?: readonly string[]): CompiledOutputPolicy {
  const problems = [...Value.Errors(OutputPolicy, policy)].map((e) => `/output${e.path}: ${e.message}`)
  if (problems.length === 0) problems.push(...outputPolicyProblems(policy))
  if (problems.length === 0 && modelOutputs) problems.push(...modelOutputPolicyProblems(policy, modelOutputs))
  if (problems.length > 0) throw new ConfigError(source, problems)
  const { noise, budget } = policy
  let spec: ReleaseSpec | null = null
  if (noise.mechanism === 'laplace') spec = calibrateLaplace(noise.epsilon, noise.granularityBits)
  if (noise.mechanism === 'gaussian') spec = calibrateGaussian(noise.epsilon, noise.delta, noise.granularityBits)
  if (noise.mechanism === 'randomized-response') spec = calibrateRandomizedResponse(noise.epsilon)
  return Object.freeze({
    protect: new Set(policy.outputs),
    passThrough: new Set(policy.passThrough),
    row: { mode: policy.mode, topK: policy.topK, roundDecimals: policy.roundDecimals },
    noise: spec,
    verdict: spec ? Object.freeze({ epsilonMicros: toEpsilonMicros(noise.epsilon), rhoNanos: 0 }) : null,
    budget: { epsilonMicros: toEpsilonMicros(budget.epsilon), delta: budget.delta, windowMs: budget.windowMs },
  })
}

/** What a request of `answers` noised rows and `verdicts` screening verdicts costs under a policy with noise. */
export function requestCost(c: CompiledOutputPolicy, answers: number, verdicts: number): PrivacyCost {
  if (!c.noise || !c.verdict) throw new Error('requestCost: the policy adds no noise, so nothing is charged')
  return {
    epsilonMicros: c.noise.cost.epsilonMicros * answers + c.verdict.epsilonMicros * verdicts,
    rhoNanos: c.noise.cost.rhoNanos * answers,
  }
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

const internal = (reason: string, cause?: unknown) =>
  new BulwarkError('internal', 'internal error; the operator can find details in the server log', { reason, ...(cause === undefined ? {} : { cause }) })

/** A protected output as a score tensor, or the policy error that it is not one. */
function scoreTensor(t: Tensor, model: string): ScoreTensor {
  if (isScoreTensor(t)) return t
  throw internal(`output policy of model "${model}" protects output "${t.name}", which is ${t.datatype} ${JSON.stringify(t.shape)}, not a float score tensor; fix policies/${model}.yaml`)
}

/** Index of the highest score of `data[off..off+classes)`; NaN ranks lowest, ties go to the lower index. */
function rowArgmax(data: ArrayLike<number>, off: number, classes: number): number {
  let best = 0
  let top = -Infinity
  for (let i = 0; i < classes; i++) {
    const v = data[off + i]!
    if (v > top) {
      top = v
      best = i
    }
  }
  return best
}

/** The protected copy of one score tensor (rows along the last axis). */
function protectTensor(t: ScoreTensor, c: CompiledOutputPolicy, rng: RandomReader | null): Tensor {
  const classes = t.shape[t.shape.length - 1]!
  const out = t.datatype === 'FP32' ? new Float32Array(t.data.length) : new Float64Array(t.data.length)
  // rng is null only without noise (nothing paid for): the row is then released by its mode alone.
  const rr = rng && c.noise?.mechanism === 'randomized-response' ? c.noise : null
  const additive = rng && c.noise && c.noise.mechanism !== 'randomized-response' ? c.noise : null
  const S = additive ? 2 ** additive.bits : 0
  for (let off = 0; off < t.data.length; off += classes) {
    if (rr && rng) {
      // The model's arg-max as the unprotected label mode ranks it (NaN lowest, ties to the
      // lower index), then k-ary randomized response on it; released as label mode's one-hot.
      out[off + randomizedResponseLabel(rng, rowArgmax(t.data, off, classes), classes, rr.epsilonMicros)] = 1
    } else if (additive && rng) {
      const noisy = addNoise(rng, snapToGrid(t.data, additive.bits, off, off + classes), additive)
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

/**
 * Each model's compiled output policy (compileOutputPolicy); the defaults' for a model without
 * one. With live policies, `request` is the request context: every read for one request
 * answers from the policies pinned to it (src/config/policy-store.ts).
 */
export type CompiledPolicySource = (model: string, request?: object) => CompiledOutputPolicy

export interface OutputPrivacyLinks {
  /** Before the model: refuses, without running it, a caller whose last charge did not fit and whose request cannot fit now either. */
  privacyPrecheck: Stage
  /** Before screen-output: refuses withheld outputs asked for; with noise, pays for and noises what later links read. */
  privacyCharge: Stage
  /** After screen-output: what leaves. */
  outputPrivacy: Stage
}

/** Refuses a request that names an output the policy neither protects nor passes through. */
function refuseWithheld(outputs: readonly Tensor[], c: CompiledOutputPolicy, requested: ReadonlySet<string>, model: string): void {
  for (const t of outputs) {
    if (c.protect.has(t.name) || c.passThrough.has(t.name) || !requested.has(t.name)) continue
    throw new BulwarkError('forbidden', `output "${t.name}" is not released by this model's policy`, {
      reason: `output "${t.name}" of model "${model}" is neither protected nor passed through by the output policy`,
    })
  }
}

/**
 * The protected rows any later link reads: the caller's items (not screening's variants) of
 * each protected output it gets, and of the output screening reads, which is judged even when
 * the caller did not ask for it.
 */
function rowsRead(outputs: readonly Tensor[], c: CompiledOutputPolicy, requested: ReadonlySet<string>, layout: ScreeningVariants | null, model: string): ScoreTensor[] {
  const read: ScoreTensor[] = []
  for (const t of outputs) {
    if (!c.protect.has(t.name) || (requested.size > 0 && !requested.has(t.name) && t.name !== layout?.output)) continue
    const scores = scoreTensor(t, model)
    read.push(layout ? (sliceBatch([scores], 0, layout.originals)[0] as ScoreTensor) : scores)
  }
  return read
}

/** The response parameters that describe an accepted charge. */
function chargeParameters(c: CompiledOutputPolicy & { noise: ReleaseSpec }, cost: PrivacyCost, charge: ChargeResult): Record<string, unknown> {
  const params: Record<string, unknown> = {
    privacy_mechanism: c.noise.mechanism,
    privacy_epsilon_cost: show(cost.epsilonMicros / EPSILON_UNITS + (cost.rhoNanos > 0 ? epsilonForRho(cost.rhoNanos / RHO_UNITS, c.budget.delta) : 0)),
    privacy_epsilon_spent: show(charge.epsilonSpent),
    privacy_epsilon_left: show(charge.epsilonLeft),
  }
  if (c.noise.mechanism === 'gaussian') params.privacy_delta = c.budget.delta
  params.privacy_window_ms = c.budget.windowMs
  return params
}

export function createOutputPrivacyLinks(policies: CompiledPolicySource, deps: OutputPrivacyDeps): OutputPrivacyLinks {
  const keyOf = memoisedPrivacyKey()
  // One reader for every answer: it reads the source in blocks of a few KiB, and the draws
  // of one answer are independent of every other answer's whichever block they come from.
  const rng = new RandomReader(deps.random)

  /** The accountant's answer, its failures translated (fail closed). */
  const settle = async (pending: Promise<ChargeResult>): Promise<ChargeResult> => {
    try {
      return await pending
    } catch (err) {
      // A shared accountant that cannot be reached says so (503 state_unavailable).
      if (isBulwarkError(err)) throw err
      throw internal(`privacy accountant failed: ${(err as Error).message}`, err)
    }
  }

  // Callers (accountant keys) whose last charge did not fit. Cleared when full, like the key
  // memo: a flood of identities only costs them the model run the precheck would have saved.
  const refused = new Set<string>()
  const refusedLimit = 10_000

  const exhausted = (model: string, c: CompiledOutputPolicy, cost: PrivacyCost, charge: ChargeResult) =>
    new BulwarkError('privacy_budget_exhausted', 'privacy budget for this model is spent; retry after the Retry-After delay', {
      reason: `privacy budget of model "${model}" spent: ${show(charge.epsilonSpent)} of ${c.budget.epsilonMicros / EPSILON_UNITS} epsilon in ${c.budget.windowMs} ms; this request needs ${JSON.stringify(cost)}`,
      headers: { 'Retry-After': String(Math.max(1, Math.ceil(charge.retryAfterMs / 1000))) },
    })

  // A caller whose budget is spent would otherwise still cost a model run (and screening)
  // per request before its 429: its requests take model capacity from the others. Only a
  // caller refused before is checked, so the others pay one set lookup; the check asks the
  // accountant about the least this request can cost (one answer per item of each protected
  // output it reads; screening's verdicts may add to it), which fits if the real cost does.
  const privacyPrecheck: Stage = {
    name: 'privacy-precheck',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      const model = ctx.target.model
      const c = policies(model, ctx)
      if (!c.noise || refused.size === 0) return
      const key = keyOf(ctx.callerKey, model)
      if (!refused.has(key)) return
      const items = ctx.request?.inputs[0]?.shape[0] ?? 0
      const requested = (ctx.request?.outputs ?? []).map((o) => o.name)
      const outputs = requested.length === 0 ? c.protect.size : requested.filter((name) => c.protect.has(name)).length
      if (items * outputs === 0) return
      const least = requestCost(c, items * outputs, 0)
      const balance = await settle(deps.accountant.balance(key, c.budget, least))
      if (balance.ok) refused.delete(key)
      else throw exhausted(model, c, least, balance)
    },
  }

  const privacyCharge: Stage = {
    name: 'privacy-charge',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      const result = ctx.result
      if (!result) return
      const model = ctx.target.model
      const c = policies(model, ctx)
      const requested = new Set((ctx.request?.outputs ?? []).map((o) => o.name))
      refuseWithheld(result.outputs, c, requested, model)
      if (!c.noise) return

      const read = rowsRead(result.outputs, c, requested, ctx.variants, model)
      let answers = 0
      for (const t of read) answers += t.data.length / t.shape[t.shape.length - 1]!
      const verdicts = ctx.variants?.verdicts ?? 0
      const cost = requestCost(c, answers, verdicts)
      if (!costFits(cost, c.budget)) {
        throw new BulwarkError('batch_too_large', `this request's ${answers} answers${verdicts > 0 ? ` and ${verdicts} screening verdicts` : ''} would cost more than the whole privacy budget of this model; send fewer items per request`, {
          reason: `cost ${JSON.stringify(cost)} exceeds budget ${JSON.stringify(c.budget)} for model "${model}"`,
        })
      }
      const key = keyOf(ctx.callerKey, model)
      const charging = answers + verdicts > 0 ? deps.accountant.charge(key, cost, c.budget) : deps.accountant.balance(key, c.budget)
      charging.catch(() => {}) // awaited below; this only keeps an early failure from being "unhandled"

      // Computed while the charge is being made durable; handed on only after it is. The flips
      // do not depend on the verdicts they will turn, so they may be drawn now.
      const outputs = new Map(read.map((t) => [t.name, protectTensor(t, c, rng)]))
      const verdictFlips = Array.from({ length: verdicts }, () => randomizedResponseFlip(rng, c.verdict!.epsilonMicros))

      const charge = await settle(charging)
      ctx.privacy = {
        epsilonSpent: charge.epsilonSpent,
        epsilonLeft: charge.epsilonLeft,
        ...(c.noise.mechanism === 'gaussian' ? { deltaSpent: charge.delta } : {}),
      }
      if (!charge.ok) {
        if (refused.size >= refusedLimit) refused.clear()
        refused.add(key)
        throw exhausted(model, c, cost, charge)
      }
      const charged: ChargedRelease = { outputs, verdictFlips, parameters: chargeParameters(c as CompiledOutputPolicy & { noise: ReleaseSpec }, cost, charge) }
      ctx.charged = charged
    },
  }

  const outputPrivacy: Stage = {
    name: 'output-privacy',
    phase: 'body',
    verbs: ['infer'],
    run(ctx: RequestContext) {
      const result = ctx.result
      if (!result) return
      const model = ctx.target.model
      const c = policies(model, ctx)
      const paid = ctx.charged
      // Fail closed: with noise, only what privacy-charge paid for may leave.
      if (c.noise && !paid) throw internal(`model "${model}" adds noise, but nothing was paid for: privacy-charge must run before output-privacy`)

      // Which outputs leave, in the model's order; any other is withheld (asking for one by
      // name was refused by privacy-charge, before the model's output was read).
      const released: Tensor[] = []
      let protectedOutputs = 0
      for (const t of result.outputs) {
        if (c.protect.has(t.name)) {
          protectedOutputs++
          if (!paid) {
            released.push(protectTensor(scoreTensor(t, model), c, null))
            continue
          }
          const copy = paid.outputs.get(t.name)
          if (!copy || copy.data.length !== t.data.length) throw internal(`output "${t.name}" of model "${model}" was not paid for as released`)
          released.push(copy)
        } else if (c.passThrough.has(t.name)) {
          released.push(t)
        }
      }

      const params: Record<string, unknown> = { ...result.parameters }
      // output_mode describes protected outputs; a pass-through-only answer has none.
      if (protectedOutputs > 0) params.output_mode = c.row.mode
      if (paid) Object.assign(params, paid.parameters)
      result.outputs = released
      result.parameters = params
    },
  }

  return { privacyPrecheck, privacyCharge, outputPrivacy }
}
