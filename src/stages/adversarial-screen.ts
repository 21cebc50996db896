// Stage: adversarial-screen ('body' phase, verb 'infer', between input-validation and
// model-inference). Design and figures: docs/screening.md.
// Reads:  ctx.request (validated tensors), ctx.target, ctx.principal and ctx.identity (whose
//         history), the model's `screening:` policy as compiled by src/screening/build.ts.
// Writes: ctx.flags (one flag per detector that scored the request: detector, score,
//         threshold, alarm; audited with the request), ctx.result when a detector needs the
//         model's answer (the originals' outputs, only those the client asked for, so
//         model-inference does not run the model again).
// Throws: attack_suspected (403) for an enforced stateful or extraction alarm, and while
//         the principal sits out a cool-down after one; suspicious_input (422) for an
//         enforced feature-squeezing or feature-bounds alarm; whatever inference throws
//         (503/504) when the stage runs the model; state_unavailable (503) when the
//         per-principal state is shared in Redis (`state.redis`) and Redis cannot be used,
//         unless `screeningWhenUnavailable: allow` (then those detectors and the cool-down
//         check are skipped, and counted).
//
// Detectors judge in the order build.ts gives, input detectors before the model and output
// detectors after; the first enforcing alarm ends the screening (later detectors never see
// the request). Observe mode serves and flags. Scores and alarms are counted per detector,
// action and model. In-process detectors and cool-downs answer synchronously; only shared ones
// (src/screening/*-shared.ts, cooldowns.ts) are awaited.

import { BulwarkError } from '../errors.ts'
import type { Clock } from '../deps.ts'
import type { ModelScreening } from '../screening/build.ts'
import { memoryCooldowns, type Cooldowns } from '../screening/cooldowns.ts'
import type { AnyDetector, DetectorResult, ScreenBatch } from '../screening/detector.ts'
import { rowsOf, runWithVariants, type InferenceRunner } from '../screening/model-run.ts'
import type { RequestContext, Stage } from '../types.ts'
import { principalKey } from './rate-limit.ts'

/** What the stage reports per scored detector (metrics). */
export interface ScreeningObserver {
  /** action: 'refused' (enforce, alarm), 'flagged' (observe, alarm) or 'passed' (no alarm). */
  scored(model: string, detector: string, result: DetectorResult, action: 'refused' | 'flagged' | 'passed'): void
  /** A shared detector (or the cool-down check) skipped: Redis unavailable, and whenStateUnavailable 'allow'. */
  skipped?(model: string, detector: string): void
}

export interface AdversarialScreenDeps {
  /** Compiled screening per model; models without an entry are not screened. */
  models: ReadonlyMap<string, ModelScreening>
  /** Runs the model (the InferenceService). */
  inference: InferenceRunner
  clock: Clock
  observer?: ScreeningObserver
  /** Principals remembered in cool-down, per model (LRU), when cool-downs are kept in process. Default 100,000. */
  maxCooldowns?: number
  /** Where cool-downs live: in process by default; in Redis (redisCooldowns) when replicas share them. */
  cooldowns?: Cooldowns
  /**
   * Shared state unreachable (a shared detector or cool-down rejects with state_unavailable):
   * 'refuse' (default) fails the request closed with that 503; 'allow' judges it without them.
   */
  whenStateUnavailable?: 'refuse' | 'allow'
}

export const COOLDOWN_DETECTOR = 'cooldown'

const REFUSALS = {
  suspicious_input: 'the input was refused by adversarial-input screening',
  attack_suspected: 'requests from this caller look like an attack on the model and are refused',
} as const

export function createAdversarialScreenStage(deps: AdversarialScreenDeps): Stage {
  const cooldowns = deps.cooldowns ?? memoryCooldowns(deps.clock, deps.maxCooldowns ?? 100_000)
  const allowUnavailable = deps.whenStateUnavailable === 'allow'

  /** Awaits shared state; when it is unavailable and that is allowed, counts the skip and gives `fallback`. */
  const shared = async <T>(s: ModelScreening, detector: string, pending: Promise<T>, fallback: T): Promise<T> => {
    try {
      return await pending
    } catch (err) {
      if (!allowUnavailable || !(err instanceof BulwarkError) || err.code !== 'state_unavailable') throw err
      deps.observer?.skipped?.(s.model, detector)
      return fallback
    }
  }

  /** Flags and counts one detector's result; returns the refusal to throw, if any. */
  const decide = (ctx: RequestContext, s: ModelScreening, d: AnyDetector, result: DetectorResult | null): BulwarkError | null => {
    if (!result) return null
    ctx.flags.push({ detector: d.name, score: result.score, threshold: result.threshold, alarm: result.alarm })
    const action = !result.alarm ? 'passed' : d.mode === 'enforce' ? 'refused' : 'flagged'
    deps.observer?.scored(s.model, d.name, result, action)
    if (action !== 'refused') return null
    return new BulwarkError(d.refusal, REFUSALS[d.refusal], {
      reason: `${d.name} alarm on model ${s.model}: score ${result.score} ${d.alarmWhen === 'above' ? '>' : '<'} threshold ${result.threshold}`,
    })
  }

  /** The refusal, after starting the principal's cool-down when the alarm calls for one. */
  const refuse = async (s: ModelScreening, d: AnyDetector, principal: string, refusal: BulwarkError): Promise<BulwarkError> => {
    if (d.refusal !== 'attack_suspected' || s.cooldownMs <= 0) return refusal
    const started = cooldowns.start(s.model, principal, s.cooldownMs)
    if (!started) return refusal
    try {
      await started
      return refusal
    } catch (err) {
      // The caller is refused either way; only the cool-down is missing, and the log says so.
      return new BulwarkError(refusal.code, refusal.message, { reason: `${refusal.reason}; cool-down not recorded: ${(err as BulwarkError).reason ?? String(err)}` })
    }
  }

  return {
    name: 'adversarial-screen',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      const s = deps.models.get(ctx.target.model)
      const request = ctx.request
      if (!s || !request) return
      const principal = principalKey(ctx)

      // A model without cool-downs never starts one: nothing to look up.
      if (s.cooldownMs > 0) {
        const pending = cooldowns.left(s.model, principal)
        const left = typeof pending === 'number' ? pending : await shared(s, COOLDOWN_DETECTOR, pending, 0)
        if (left > 0) {
          const result = { score: left, threshold: s.cooldownMs, alarm: true }
          ctx.flags.push({ detector: COOLDOWN_DETECTOR, ...result })
          deps.observer?.scored(s.model, COOLDOWN_DETECTOR, result, 'refused')
          throw new BulwarkError('attack_suspected', REFUSALS.attack_suspected, { reason: `principal in cool-down on model ${s.model} for ${Math.ceil(left)} ms more` })
        }
      }

      const tensor = request.inputs.find((t) => t.name === s.inputName)
      if (!tensor || !(tensor.data instanceof Float32Array)) return // validation guarantees it; nothing to screen otherwise
      const items = rowsOf(tensor)
      const batch: ScreenBatch & { probabilities?: Float32Array[] } = { principal, items, digests: items.map(s.digest) }

      for (const d of s.detectors) {
        if (d.needs !== 'input') continue
        // In-process detectors judge synchronously; only shared ones are awaited.
        const refusal = decide(ctx, s, d, d.shared ? await shared(s, d.name, d.inspect(batch), null) : d.inspect(batch))
        if (refusal) throw await refuse(s, d, principal, refusal)
      }
      if (!s.needsModel) return

      // Each variant-making detector's copies of each item, then all of an item's copies in
      // detector order: the layout runWithVariants sends after the originals.
      const makers = s.detectors.filter((d) => d.variants)
      const made = makers.map((d) => items.map((item) => d.variants!(item)))
      const variants = items.map((_, i) => made.flatMap((perItem) => perItem[i]!))
      const run = await runWithVariants(deps.inference, ctx.target, request, s, variants, ctx.deadlineMs)
      batch.probabilities = run.probabilities
      for (const d of s.detectors) {
        if (d.needs !== 'output') continue
        let own: Float32Array[][] | undefined
        const k = makers.indexOf(d)
        if (k >= 0) {
          let offset = 0
          for (let j = 0; j < k; j++) offset += made[j]![0]!.length
          const count = made[k]![0]!.length
          own = run.variantProbabilities.map((v) => v.slice(offset, offset + count))
        }
        const refusal = decide(ctx, s, d, d.shared ? await shared(s, d.name, d.inspect(batch, own), null) : d.inspect(batch, own))
        if (refusal) throw await refuse(s, d, principal, refusal)
      }
      // Screened and served: the originals' answer is the request's result; model-inference
      // sees ctx.result set and does not run the model again. Only the requested outputs leave.
      const wanted = request.outputs.length > 0 ? new Set(request.outputs.map((o) => o.name)) : null
      ctx.result = {
        modelName: run.modelName,
        modelVersion: run.modelVersion,
        outputs: wanted ? run.outputs.filter((t) => wanted.has(t.name)) : run.outputs,
        parameters: {},
      }
    },
  }
}
