// Links: screen-input, screen-variants and screen-output (body phase, verb 'infer'), around
// model-inference. Design and figures: docs/screening.md.
// screen-input (after input-validation): the cool-down check, then the detectors that need
//   only the input (stateful query-attack detection, feature bounds).
// screen-variants (just before model-inference): appends each item's squeezed variants to
//   the batch the model runs (ctx.modelRequest), asking for the screened output as well.
// screen-output (just after model-inference, before output-privacy): the detectors that need
//   the model's answer (feature squeezing, extraction), then the variants and any output the
//   caller did not ask for are stripped from ctx.result.
// Reads:  ctx.request (validated tensors), ctx.target, ctx.callerKey (whose history), ctx.result
//         (screen-output), the model's `screening:` policy as compiled by src/screening/build.ts.
// Writes: ctx.flags (one flag per detector that scored the request: detector, score,
//         threshold, alarm; audited with the request), ctx.modelRequest and ctx.variants
//         (screen-variants), ctx.result (screen-output: the originals' rows only).
// Throws: attack_suspected (403) for an enforced stateful or extraction alarm, and while
//         the caller sits out a cool-down after one; suspicious_input (422) for an
//         enforced feature-squeezing or feature-bounds alarm; state_unavailable (503) when the
//         per-caller state is shared in Redis (`state.redis`) and Redis cannot be used,
//         unless `screeningWhenUnavailable: allow` (then those detectors and the cool-down
//         check are skipped, and counted).
//
// Detectors judge in the order build.ts gives; the first enforcing alarm ends the screening
// (later detectors never see the request). Observe mode serves and flags. Scores and alarms
// are counted per detector, action and model. In-process detectors and cool-downs answer
// synchronously; only shared ones (src/screening/*-shared.ts, cooldowns.ts) are awaited.
// No link here runs the model: model-inference does, once, on the batch screen-variants made.

import { BulwarkError } from '../errors.ts'
import type { Clock } from '../deps.ts'
import type { ModelScreening } from '../screening/build.ts'
import { memoryCooldowns, type Cooldowns } from '../screening/cooldowns.ts'
import type { AnyDetector, DetectorResult, ScreenBatch } from '../screening/detector.ts'
import { originalsOnly, rowsOf, scoresOf, withVariants } from '../screening/model-run.ts'
import type { RequestContext, Stage } from '../types.ts'

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

export interface ScreeningLinks {
  screenInput: Stage
  screenVariants: Stage
  screenOutput: Stage
}

export function createScreeningLinks(deps: AdversarialScreenDeps): ScreeningLinks {
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

  /** The screened tensor's rows, or null when the request has nothing this model screens. */
  const screened = (ctx: RequestContext): { s: ModelScreening; batch: ScreenBatch & { probabilities?: Float32Array[] } } | null => {
    const s = deps.models.get(ctx.target.model)
    const tensor = s && ctx.request?.inputs.find((t) => t.name === s.inputName)
    if (!s || !tensor || !(tensor.data instanceof Float32Array)) return null // validation guarantees it; nothing to screen otherwise
    const items = rowsOf(tensor)
    return { s, batch: { principal: ctx.callerKey, items, digests: items.map(s.digest) } }
  }

  /** Runs the detectors that need `needs`, in order; throws the first enforced refusal. */
  const judge = async (ctx: RequestContext, s: ModelScreening, batch: ScreenBatch, needs: 'input' | 'output', own?: (d: AnyDetector) => Float32Array[][] | undefined) => {
    for (const d of s.detectors) {
      if (d.needs !== needs) continue
      const variants = own?.(d)
      // In-process detectors judge synchronously; only shared ones are awaited.
      const refusal = decide(ctx, s, d, d.shared ? await shared(s, d.name, d.inspect(batch, variants), null) : d.inspect(batch, variants))
      if (refusal) throw await refuse(s, d, batch.principal, refusal)
    }
  }

  const screenInput: Stage = {
    name: 'screen-input',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      const s = deps.models.get(ctx.target.model)
      if (!s || !ctx.request) return
      // A model without cool-downs never starts one: nothing to look up.
      if (s.cooldownMs > 0) {
        const pending = cooldowns.left(s.model, ctx.callerKey)
        const left = typeof pending === 'number' ? pending : await shared(s, COOLDOWN_DETECTOR, pending, 0)
        if (left > 0) {
          const result = { score: left, threshold: s.cooldownMs, alarm: true }
          ctx.flags.push({ detector: COOLDOWN_DETECTOR, ...result })
          deps.observer?.scored(s.model, COOLDOWN_DETECTOR, result, 'refused')
          throw new BulwarkError('attack_suspected', REFUSALS.attack_suspected, { reason: `caller in cool-down on model ${s.model} for ${Math.ceil(left)} ms more` })
        }
      }
      const found = screened(ctx)
      if (found) await judge(ctx, found.s, found.batch, 'input')
    },
  }

  const screenVariants: Stage = {
    name: 'screen-variants',
    phase: 'body',
    verbs: ['infer'],
    run(ctx: RequestContext) {
      const found = screened(ctx)
      if (!found?.s.needsModel) return
      const { s, batch } = found
      // Each variant-making detector's copies of each item, then all of an item's copies in
      // detector order: the layout withVariants appends after the originals.
      const makers = s.detectors.filter((d) => d.variants)
      const made = makers.map((d) => batch.items.map((item) => d.variants!(item)))
      ctx.modelRequest = withVariants(ctx.request!, s, batch.items.map((_, i) => made.flatMap((perItem) => perItem[i]!)))
      ctx.variants = { originals: batch.items.length, perDetector: made.map((m) => m[0]?.length ?? 0) }
    },
  }

  const screenOutput: Stage = {
    name: 'screen-output',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      const found = screened(ctx)
      const layout = ctx.variants
      if (!found || !layout || !ctx.result) return
      const { s, batch } = found
      const perItem = layout.perDetector.reduce((a, b) => a + b, 0)
      const scores = scoresOf(ctx.result, s, layout.originals, perItem)
      batch.probabilities = scores.probabilities
      // The model's answer is stripped to the caller's items and outputs before anything can
      // be released, whatever the detectors decide.
      ctx.result = originalsOnly(ctx.result, layout.originals, ctx.request!.outputs)
      const makers = s.detectors.filter((d) => d.variants)
      const own = (d: AnyDetector) => {
        const k = makers.indexOf(d)
        if (k < 0) return undefined
        const offset = layout.perDetector.slice(0, k).reduce((a, b) => a + b, 0)
        return scores.variantProbabilities.map((v) => v.slice(offset, offset + layout.perDetector[k]!))
      }
      await judge(ctx, s, batch, 'output', own)
    },
  }

  return { screenInput, screenVariants, screenOutput }
}
