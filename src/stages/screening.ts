// Links: screen-input, screen-variants and screen-output (body phase, verb 'infer'), around
// model-inference. Design and figures: docs/screening.md.
// screen-input (after input-validation): the cool-down check, then the detectors that need
//   only the input (stateful query-attack detection, feature bounds).
// screen-variants (just before model-inference): appends each item's squeezed variants to
//   the batch the model runs (ctx.modelRequest), asking for the screened output as well.
// screen-output (after privacy-charge, before output-privacy): every detector that needs the
//   model's answer (feature squeezing, extraction) judges the request, a refused one too, and
//   the variants and any output the caller did not ask for are stripped from ctx.result.
//
// What the output-side detectors may read, when the model's answers carry noise (privacy-charge
// ran and paid: ctx.charged; docs/privacy.md, "The guarantee, precisely"): a detector that
// judges the variants' scores (feature squeezing) reads the raw scores, and its verdict reaches
// the caller only through randomized response, the flip privacy-charge drew and paid for; any
// other (extraction) reads only the released rows, the noised answer privacy-charge paid for,
// so its verdict, its state and the cool-down it starts are post-processing of what was paid.
// Without noise there is no guarantee to keep, and every detector reads the raw scores.
// Reads:  ctx.request (validated tensors), ctx.target, ctx.callerKey (whose history), ctx.result
//         and ctx.charged (screen-output), the model's `screening:` policy as compiled by
//         src/screening/build.ts.
// Writes: ctx.flags (one flag per detector that scored the request: detector, score,
//         threshold, alarm, and the items it withheld; audited with the request),
//         ctx.withheldItems, ctx.modelRequest and ctx.variants (screen-variants: the layout,
//         the screened output and the verdicts to pay for), ctx.result (screen-output: the
//         originals' rows only, withheld items' rows zeroed, and the response parameters
//         screening_withheld_items and screening_withheld_code) and the paid copies in
//         ctx.charged (the same rows zeroed).
//
// Per item: a detector that judges each item on its own (feature squeezing, feature bounds)
// refuses a single item as before, and in a batch withholds only the items it refuses (each
// item's verdict, with noise, released by its own paid randomized-response flip); the request
// is refused only when every item is withheld. A detector of the caller's stream (stateful,
// extraction) and the cool-down refuse the whole request (docs/screening.md, "Batches").
// Throws: attack_suspected (403) for an enforced stateful or extraction alarm, and while
//         the caller sits out a cool-down after one; suspicious_input (422) for an
//         enforced feature-squeezing verdict (with noise, as randomized response released it)
//         or feature-bounds alarm; internal (500) when the answer carries noise but what a
//         detector must read was not paid for (fail closed); state_unavailable (503) when the
//         per-caller state is shared in Redis (`state.redis`) and Redis cannot be used,
//         unless `screeningWhenUnavailable: allow` (then those detectors and the cool-down
//         check are skipped, and counted).
//
// onAlarm (the policy): an enforced attack_suspected alarm is refused (403, the default);
// or, degrade: the cool-down starts and the request, and every request of the caller during
// the cool-down, is answered from the degraded mechanism (src/screening/alarm-modes.ts:
// screen-output permutes each released row at random, after the charge) with the flag saying
// `degraded` (the same input gets the same degraded answer); or, delay: answered as usual for delayQueries more of the caller's queries, then
// refused (flag `delayed-alarm`) and the cool-down starts. Per-item refusals are not affected.
//
// Detectors judge in the order build.ts gives. Before inference the first enforcing alarm ends
// the screening (the model never runs, so no detector after inference sees the request). After
// inference every output-side detector judges, so a query refused by one still enters the
// extraction detector's state; the first enforcing alarm is the answer, and any enforcing
// attack_suspected alarm among them starts the cool-down. Observe mode serves and flags.
// Scores and alarms are counted per detector, action and model. In-process detectors and
// cool-downs answer synchronously; only shared ones (src/screening/*-shared.ts, cooldowns.ts)
// are awaited.
// No link here runs the model: model-inference does, once, on the batch screen-variants made.

import { BulwarkError } from '../errors.ts'
import type { Clock, RandomSource } from '../deps.ts'
import { createDegrader, DelayedRefusals } from '../screening/alarm-modes.ts'
import type { ModelScreening } from '../screening/build.ts'
import { memoryCooldowns, type Cooldowns } from '../screening/cooldowns.ts'
import type { AnyDetector, DetectorResult, ScreenBatch } from '../screening/detector.ts'
import { originalsOnly, rowsOf, scoresOf, withholdRows, withVariants } from '../screening/model-run.ts'
import type { ChargedRelease, RequestContext, ScreeningFlag, ScreeningVariants, Stage } from '../types.ts'

/** What the stage reports per scored detector (metrics). */
export interface ScreeningObserver {
  /**
   * action: 'refused' (enforce, alarm), 'flagged' (observe, alarm), 'passed' (no alarm), or,
   * for an enforced attack_suspected alarm or cool-down under onAlarm degrade / delay,
   * 'degraded' (answered from the degraded mechanism) / 'delayed' (answered, refused later).
   */
  scored(model: string, detector: string, result: DetectorResult, action: ScreeningAction): void
  /** A shared detector (or the cool-down check) skipped: Redis unavailable, and whenStateUnavailable 'allow'. */
  skipped?(model: string, detector: string): void
}

export type ScreeningAction = 'refused' | 'flagged' | 'passed' | 'degraded' | 'delayed'

export interface AdversarialScreenDeps {
  /**
   * Compiled screening per model; models without an entry are not screened. With live
   * policies, a function of the request: every link reads the generation pinned to it.
   */
  models: ReadonlyMap<string, ModelScreening> | ((request: object) => ReadonlyMap<string, ModelScreening>)
  clock: Clock
  /** The degraded mechanism's randomness (onAlarm: degrade); a policy that degrades without it fails closed. */
  random?: RandomSource
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
/** The flag of the 403 that an alarm under onAlarm: delay earned, delayQueries queries later. */
export const DELAYED_DETECTOR = 'delayed-alarm'

const REFUSALS = {
  suspicious_input: 'the input was refused by adversarial-input screening',
  attack_suspected: 'requests from this caller look like an attack on the model and are refused',
} as const

export interface ScreeningLinks {
  screenInput: Stage
  screenVariants: Stage
  screenOutput: Stage
}

/**
 * Whether a detector judges the model's raw scores: one that judges the squeezed variants'
 * answers, which nobody is released, reads the raw scores of the item and its variants. Any
 * other output-side detector reads only what the caller is answered (the file header).
 */
export function judgesRawScores(d: AnyDetector): boolean {
  return d.needs === 'output' && d.variants !== undefined
}

/**
 * How many verdicts on raw scores a request of `items` items to this model may get, each paid
 * for by privacy-charge: per enforcing detector that reads them, one per item when it judges
 * items one by one (each item's verdict is released on its own), else one.
 */
export function paidVerdicts(s: ModelScreening, items = 1): number {
  return s.detectors.filter((d) => judgesRawScores(d) && d.mode === 'enforce').reduce((n, d) => n + (d.perItem ? items : 1), 0)
}

const unpaid = (model: string, what: string) =>
  new BulwarkError('internal', 'internal error; the operator can find details in the server log', {
    reason: `screening on model ${model} needs ${what} paid for, and privacy-charge did not pay for it; the answer is not released`,
  })

/** The screened output's rows as privacy-charge noised and paid for them (the caller's items). */
function releasedRows(paid: ChargedRelease, s: ModelScreening): Float32Array[] {
  const t = paid.outputs.get(s.outputName)
  if (!t) throw unpaid(s.model, `output "${s.outputName}"`)
  const classes = t.shape[t.shape.length - 1]!
  const rows = t.data.length / classes
  return Array.from({ length: rows }, (_, i) => Float32Array.from(t.data.subarray(i * classes, (i + 1) * classes) as Float32Array))
}

/** Whether an enforced alarm of this kind is answered by the policy's onAlarm rather than refused at once. */
const softens = (s: ModelScreening, code: string) => code === 'attack_suspected' && s.onAlarm !== 'refuse'

/** How the links judge: each detector's result flagged and counted, refusals, cool-downs. */
function createJudges(deps: AdversarialScreenDeps, cooldowns: Cooldowns) {
  const allowUnavailable = deps.whenStateUnavailable === 'allow'
  /** Requests answered from the degraded mechanism (screen-output degrades their answer). */
  const degraded = new WeakSet<RequestContext>()
  const delays = new DelayedRefusals(deps.maxCooldowns ?? 100_000)

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

  /**
   * Flags and counts one detector's result; returns the refusal to throw, if any. `flips`:
   * randomized response turns the verdicts, one flip per verdict (the flag keeps the detector's
   * own alarm). A per-item detector judging a batch withholds the items it refuses
   * (ctx.withheldItems) and refuses the request only once every item is withheld; a single item
   * is refused as before.
   */
  const decide = (ctx: RequestContext, s: ModelScreening, d: AnyDetector, result: DetectorResult | null, flips?: readonly boolean[]): BulwarkError | null => {
    if (!result) return null
    const flag: ScreeningFlag = { detector: d.name, score: result.score, threshold: result.threshold, alarm: result.alarm }
    ctx.flags.push(flag)
    const alarms = d.perItem && result.items ? result.items : [result.alarm]
    const verdicts = alarms.map((alarm, i) => alarm !== (flips?.[i] ?? false))
    const verdict = verdicts.some(Boolean)
    const enforced = verdict && d.mode === 'enforce'
    const action: ScreeningAction = enforced ? (softens(s, d.refusal) ? (s.onAlarm === 'degrade' ? 'degraded' : 'delayed') : 'refused') : result.alarm || verdict ? 'flagged' : 'passed'
    deps.observer?.scored(s.model, d.name, result, action)
    if (!enforced) return null
    if (verdicts.length > 1) {
      flag.withheld = verdicts.flatMap((v, i) => (v ? [i] : []))
      const withheld = (ctx.withheldItems ??= new Map())
      for (const i of flag.withheld) if (!withheld.has(i)) withheld.set(i, d.name)
      if (withheld.size < verdicts.length) return null
      return new BulwarkError(d.refusal, REFUSALS[d.refusal], { reason: `every item of the batch refused by screening on model ${s.model}, the last by ${d.name} (threshold ${result.threshold})` })
    }
    return new BulwarkError(d.refusal, REFUSALS[d.refusal], {
      reason: !result.alarm
        ? `${d.name} on model ${s.model}: score ${result.score} ${d.alarmWhen === 'above' ? '<=' : '>='} threshold ${result.threshold}, no alarm, refused by the verdict's randomized response (docs/privacy.md)`
        : `${d.name} alarm on model ${s.model}: score ${result.score} ${d.alarmWhen === 'above' ? '>' : '<'} threshold ${result.threshold}`,
    })
  }

  /** The refusal, after starting the principal's cool-down when the alarm calls for one. */
  const refuse = async (s: ModelScreening, principal: string, refusal: BulwarkError): Promise<BulwarkError> => {
    if (refusal.code !== 'attack_suspected' || s.cooldownMs <= 0) return refusal
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

  /**
   * An enforced alarm's answer: the refusal to throw (its cool-down started), or null when the
   * policy's onAlarm answers it instead: degrade (the cool-down started, this request's answer
   * degraded) or delay (the refusal scheduled delayQueries queries later). The flag says which.
   */
  const answerAlarm = async (ctx: RequestContext, s: ModelScreening, d: AnyDetector, principal: string, refusal: BulwarkError): Promise<BulwarkError | null> => {
    if (!softens(s, refusal.code)) return refuse(s, principal, refusal)
    const flag = ctx.flags.findLast((f) => f.detector === d.name)
    if (s.onAlarm === 'degrade') {
      await refuse(s, principal, refusal) // for its cool-down: the caller is answered, degraded
      degraded.add(ctx)
      if (flag) flag.degraded = true
    } else if (flag) {
      flag.delayed = delays.alarm(s.model, principal, s.delayQueries, d.name)
    }
    return null
  }

  /** One detector's result: a promise only from a shared detector (in-process ones judge synchronously). */
  const inspect = (s: ModelScreening, d: AnyDetector, batch: ScreenBatch, variants?: Float32Array[][]): DetectorResult | null | Promise<DetectorResult | null> =>
    d.shared ? shared(s, d.name, d.inspect(batch, variants), null) : d.inspect(batch, variants)

  /** Runs the input-side detectors, in order; throws the first enforced refusal (the model then never runs). */
  const judgeInput = async (ctx: RequestContext, s: ModelScreening, batch: ScreenBatch) => {
    for (const d of s.detectors) {
      if (d.needs !== 'input') continue
      const judged = inspect(s, d, batch)
      const refusal = decide(ctx, s, d, judged instanceof Promise ? await judged : judged)
      const thrown = refusal && (await answerAlarm(ctx, s, d, batch.principal, refusal))
      if (thrown) throw thrown
    }
  }

  /**
   * Runs every output-side detector, in order, each on what it may read (the file header): all
   * of them judge, and record, a request that one of them refuses. Throws the first enforced
   * refusal, after starting the cool-down of every enforced attack_suspected alarm.
   */
  const judgeOutput = async (ctx: RequestContext, s: ModelScreening, raw: ScreenBatch, released: ScreenBatch, paid: ChargedRelease | null, own: (d: AnyDetector) => Float32Array[][] | undefined) => {
    const refusals: { d: AnyDetector; refusal: BulwarkError }[] = []
    let verdicts = 0
    for (const d of s.detectors) {
      if (d.needs !== 'output') continue
      const readsRaw = judgesRawScores(d)
      const judged = inspect(s, d, readsRaw ? raw : released, own(d))
      const result = judged instanceof Promise ? await judged : judged
      let flips: readonly boolean[] | undefined
      if (paid && readsRaw && d.mode === 'enforce') {
        // A verdict on raw scores leaves only through randomized response, paid for ahead (one
        // per item for a per-item detector); one that had nothing to say would say something
        // too, so it must always judge.
        const n = d.perItem ? raw.items.length : 1
        flips = paid.verdictFlips.slice(verdicts, (verdicts += n))
        if (flips.length !== n || !result || (d.perItem && result.items?.length !== n)) throw unpaid(s.model, `the ${d.name} verdict`)
      }
      const refusal = decide(ctx, s, d, result, flips)
      if (refusal) refusals.push({ d, refusal })
    }
    if (refusals.length === 0) return
    const answered = await Promise.all(refusals.map(({ d, refusal }) => answerAlarm(ctx, s, d, raw.principal, refusal)))
    const thrown = answered.find((e) => e !== null)
    if (thrown) throw thrown
  }

  return { shared, refuse, judgeInput, judgeOutput, degraded, delays }
}

/**
 * The answer to a batch some of whose items were refused one by one: their rows are zeroed in
 * every output, raw and paid copy alike (so whichever output-privacy releases, or the raw one
 * without it), and the response says which (a parameter: OIP v2 parameters are scalars).
 */
function withhold(ctx: RequestContext, items: number): void {
  const withheld = [...ctx.withheldItems!.keys()].sort((a, b) => a - b)
  const result = ctx.result!
  withholdRows(result.outputs, withheld, items)
  if (ctx.charged) withholdRows([...ctx.charged.outputs.values()], withheld, items)
  result.parameters = { ...result.parameters, screening_withheld_items: withheld.join(','), screening_withheld_code: 'suspicious_input' }
}

export function createScreeningLinks(deps: AdversarialScreenDeps): ScreeningLinks {
  const cooldowns = deps.cooldowns ?? memoryCooldowns(deps.clock, deps.maxCooldowns ?? 100_000)
  const { shared, refuse, judgeInput, judgeOutput, degraded, delays } = createJudges(deps, cooldowns)
  const degrade = deps.random ? createDegrader(deps.random) : null
  const { models } = deps
  const screeningOf = typeof models === 'function' ? (ctx: RequestContext) => models(ctx).get(ctx.target.model) : (ctx: RequestContext) => models.get(ctx.target.model)

  /** The screened tensor's rows, or null when the request has nothing this model screens. */
  const screened = (ctx: RequestContext): { s: ModelScreening; batch: ScreenBatch & { probabilities?: Float32Array[] } } | null => {
    const s = screeningOf(ctx)
    const tensor = s && ctx.request?.inputs.find((t) => t.name === s.inputName)
    if (!s || !tensor || !(tensor.data instanceof Float32Array)) return null // validation guarantees it; nothing to screen otherwise
    const items = rowsOf(tensor)
    return { s, batch: { principal: ctx.callerKey, items, digests: items.map(s.digest) } }
  }

  const screenInput: Stage = {
    name: 'screen-input',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      const s = screeningOf(ctx)
      if (!s || !ctx.request) return
      // A model without cool-downs never starts one: nothing to look up.
      if (s.cooldownMs > 0) {
        const pending = cooldowns.left(s.model, ctx.callerKey)
        const left = typeof pending === 'number' ? pending : await shared(s, COOLDOWN_DETECTOR, pending, 0)
        if (left > 0) {
          const result = { score: left, threshold: s.cooldownMs, alarm: true }
          const degrading = s.onAlarm === 'degrade'
          ctx.flags.push({ detector: COOLDOWN_DETECTOR, ...result, ...(degrading ? { degraded: true as const } : {}) })
          deps.observer?.scored(s.model, COOLDOWN_DETECTOR, result, degrading ? 'degraded' : 'refused')
          if (!degrading) throw new BulwarkError('attack_suspected', REFUSALS.attack_suspected, { reason: `caller in cool-down on model ${s.model} for ${Math.ceil(left)} ms more` })
          // Answered, degraded; the detectors still judge (an alarm restarts the cool-down).
          degraded.add(ctx)
        }
      }
      const due = s.onAlarm === 'delay' ? delays.next(s.model, ctx.callerKey) : null
      if (due?.refuse) {
        const result = { score: s.delayQueries, threshold: s.delayQueries, alarm: true }
        ctx.flags.push({ detector: DELAYED_DETECTOR, ...result })
        deps.observer?.scored(s.model, DELAYED_DETECTOR, result, 'refused')
        throw await refuse(s, ctx.callerKey, new BulwarkError('attack_suspected', REFUSALS.attack_suspected, { reason: `${due.detector} alarm on model ${s.model}, refused ${s.delayQueries} queries later (onAlarm: delay)` }))
      }
      const found = screened(ctx)
      if (found) await judgeInput(ctx, found.s, found.batch)
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
      ctx.variants = { originals: batch.items.length, perDetector: made.map((m) => m[0]?.length ?? 0), output: s.outputName, verdicts: paidVerdicts(s, batch.items.length) }
    },
  }

  /** The output-side detectors on the model's answers; the variants stripped first. */
  const judgeAnswers = async (ctx: RequestContext, s: ModelScreening, batch: ScreenBatch, layout: ScreeningVariants) => {
    const perItem = layout.perDetector.reduce((a, b) => a + b, 0)
    const scores = scoresOf(ctx.result!, s, layout.originals, perItem)
    const paid = ctx.charged
    const raw = { ...batch, probabilities: scores.probabilities }
    const released = paid ? { ...batch, probabilities: releasedRows(paid, s) } : raw
    // The model's answer is stripped to the caller's items and outputs before anything can
    // be released, whatever the detectors decide.
    ctx.result = originalsOnly(ctx.result!, layout.originals, ctx.request!.outputs)
    const makers = s.detectors.filter((d) => d.variants)
    const own = (d: AnyDetector) => {
      const k = makers.indexOf(d)
      if (k < 0) return undefined
      const offset = layout.perDetector.slice(0, k).reduce((a, b) => a + b, 0)
      return scores.variantProbabilities.map((v) => v.slice(offset, offset + layout.perDetector[k]!))
    }
    await judgeOutput(ctx, s, raw, released, paid, own)
  }

  const screenOutput: Stage = {
    name: 'screen-output',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      const found = screened(ctx)
      if (!found || !ctx.result) return
      if (ctx.variants) await judgeAnswers(ctx, found.s, found.batch, ctx.variants)
      if (ctx.withheldItems?.size) withhold(ctx, found.batch.items.length)
      if (degraded.has(ctx)) {
        if (!degrade) throw new BulwarkError('internal', 'internal error; the operator can find details in the server log', { reason: `screening on model ${found.s.model} degrades answers (onAlarm: degrade) and has no random source; the answer is not released` })
        degrade([ctx.result.outputs, [...(ctx.charged?.outputs.values() ?? [])]], found.batch.digests)
      }
    },
  }

  return { screenInput, screenVariants, screenOutput }
}
