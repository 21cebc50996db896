// The chain every request passes, in order, from arrival to the audit record. This list is
// the one place the order lives; test/pipeline.test.ts pins it. The transport (REST
// today) creates the request context, runs each phase at its moment (arrival and headers on
// arrival, body in the route, response just before the answer leaves) and calls each link's
// onDestroy when the exchange ends, whatever ended it.

import { BulwarkError, isBulwarkError } from './errors.ts'
import type { Clock } from './deps.ts'
import { startStageTrace } from './telemetry/tracing.ts'
import type { Phase, RequestContext, Stage } from './types.ts'

export interface ChainLinks {
  trace: Stage
  loadShedding?: Stage | undefined
  clientLimit?: Stage | undefined
  mtlsIdentity?: Stage | undefined
  jwtAuth?: Stage | undefined
  callerKey: Stage
  modelPolicy?: Stage | undefined
  rateLimit?: Stage | undefined
  bodyRead: Stage
  inputValidation: Stage
  privacyPrecheck?: Stage | undefined
  screenInput?: Stage | undefined
  screenVariants?: Stage | undefined
  modelInference: Stage
  privacyCharge?: Stage | undefined
  screenOutput?: Stage | undefined
  outputPrivacy?: Stage | undefined
  auditRecord?: Stage | undefined
  modelStats?: Stage | undefined
  metrics: Stage
}

export function assembleChain(s: ChainLinks): readonly Stage[] {
  const chain = [
    // arrival: admission, before any credential or byte of body is looked at
    s.trace, //           the request's span, continuing the caller's trace when allowed
    s.loadShedding, //    refuse at once past the in-flight bound or a full model queue
    s.clientLimit, //     one client's requests per second, before any credential is checked
    // headers: who is calling, and may they
    s.mtlsIdentity, //    which workload opened the connection (client certificate)
    s.jwtAuth, //         which caller sent the request (bearer token)
    s.callerKey, //       the one key per-caller state is kept under
    s.modelPolicy, //     may this pair call this model and verb
    s.rateLimit, //       not too often, not too many at once
    // body: the request, the model, the answer
    s.bodyRead, //        read the body, within its limit
    s.inputValidation, // well-formed tensors the model accepts
    s.privacyPrecheck, // a caller whose budget is spent is refused before the model runs
    s.screenInput, //     input-side detectors: not probing the model, not out of bounds
    s.screenVariants, //  add the squeezed variants to the batch the model runs
    s.modelInference, //  run the model, once, on the whole batch
    s.privacyCharge, //   pay for the answer (and screening's verdicts) before anything reads it
    s.screenOutput, //    judge the model's answers (variants, extraction), strip the variants
    s.outputPrivacy, //   reveal no more than the policy allows, and only what was paid for
    // response: what is recorded about the exchange
    s.auditRecord, //     one durable record per request, before the answer leaves
    s.modelStats, //      the model's statistics (Triton's extension), when the exchange ends
    s.metrics, //         counts and latencies, when the exchange ends
  ]
  return Object.freeze(chain.filter((link): link is Stage => link !== undefined))
}

/** Any thrown value as a BulwarkError (unexpected ones become `internal`, keeping the cause). */
export function asBulwarkError(err: unknown): BulwarkError {
  if (isBulwarkError(err)) return err
  return new BulwarkError('internal', 'internal error; the operator can find details in the server log', {
    reason: err instanceof Error ? err.message : String(err),
    cause: err,
  })
}

/** Records a refusal on the context, unless one is there already (the first refusal is the one that counts). */
export function refuse(ctx: RequestContext, err: BulwarkError, stage: string): BulwarkError {
  if (!ctx.error) {
    ctx.error = err
    ctx.failedStage = stage
  }
  return ctx.error
}

/**
 * Runs the links of one phase that apply to the request's verb, timing each, each in its
 * own trace span when the request is traced (src/telemetry/tracing.ts). The first refusal
 * ends the run: it is recorded on the context with the link that raised it, and rethrown
 * for the transport to answer.
 */
export async function runPhase(chain: readonly Stage[], phase: Phase, ctx: RequestContext, clock: Clock): Promise<void> {
  for (const link of chain) {
    if (link.phase !== phase || !link.verbs.includes(ctx.target.verb)) continue
    const t0 = clock.monotonicMs()
    const traced = startStageTrace(ctx, link.name)
    try {
      await (traced ? traced.run(() => link.run(ctx)) : link.run(ctx))
      traced?.end(ctx, null)
    } catch (err) {
      const e = asBulwarkError(err)
      ctx.error = e
      ctx.failedStage = link.name
      traced?.end(ctx, e)
      throw e
    } finally {
      ctx.stageMs[link.name] = clock.monotonicMs() - t0
    }
  }
}

/**
 * The end of the exchange: every link of the request's verb that has an onDestroy gets it,
 * reached or not (each releases only what it took), in chain order. One link's failure does
 * not keep the others from cleaning up; it is reported to `onError`.
 */
export function destroyChain(chain: readonly Stage[], ctx: RequestContext, onError: (link: string, err: unknown) => void): void {
  for (const link of chain) {
    if (!link.onDestroy || !link.verbs.includes(ctx.target.verb)) continue
    try {
      link.onDestroy(ctx)
    } catch (err) {
      onError(link.name, err)
    }
  }
}
