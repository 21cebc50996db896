// The request pipeline, in order. This list is the one place the order lives;
// test/pipeline.test.ts pins it. Audit (the ninth link) wraps the whole run: it records
// every request, whichever stage ended it, before the response leaves.

import { BulwarkError, isBulwarkError } from './errors.ts'
import type { Clock } from './deps.ts'
import { startStageTrace } from './telemetry/tracing.ts'
import type { RequestContext, Stage } from './types.ts'

export interface PipelineStages {
  mtlsIdentity?: Stage | undefined
  jwtAuth?: Stage | undefined
  modelPolicy?: Stage | undefined
  rateLimit?: Stage | undefined
  inputValidation: Stage
  adversarialScreen?: Stage | undefined
  modelInference: Stage
  outputPrivacy?: Stage | undefined
}

export function assemblePipeline(s: PipelineStages): readonly Stage[] {
  const chain = [
    s.mtlsIdentity, //      1. which workload opened the connection (client certificate)
    s.jwtAuth, //           2. which caller sent the request (bearer token)
    s.modelPolicy, //       3. may this pair call this model and verb
    s.rateLimit, //         4. not too often, not too many at once
    s.inputValidation, //   5. well-formed tensors the model accepts
    s.adversarialScreen, // 6. not crafted to fool or probe the model
    s.modelInference, //    7. run the model
    s.outputPrivacy, //     8. reveal no more than the policy allows
  ]
  return Object.freeze(chain.filter((stage): stage is Stage => stage !== undefined))
}

/** Any thrown value as a BulwarkError (unexpected ones become `internal`, keeping the cause). */
export function asBulwarkError(err: unknown): BulwarkError {
  if (isBulwarkError(err)) return err
  return new BulwarkError('internal', 'internal error; the operator can find details in the server log', {
    reason: err instanceof Error ? err.message : String(err),
    cause: err,
  })
}

/**
 * Runs the stages of one phase that apply to the request's verb, timing each, each in its
 * own trace span when the request is traced (src/telemetry/tracing.ts). The first refusal
 * ends the run: it is recorded on the context with the stage that raised it, and rethrown
 * for the transport to answer.
 */
export async function runPhase(
  stages: readonly Stage[],
  phase: Stage['phase'],
  ctx: RequestContext,
  clock: Clock,
): Promise<void> {
  for (const stage of stages) {
    if (stage.phase !== phase || !stage.verbs.includes(ctx.target.verb)) continue
    const t0 = clock.monotonicMs()
    const traced = startStageTrace(ctx, stage.name)
    try {
      await (traced ? traced.run(() => stage.run(ctx)) : stage.run(ctx))
      traced?.end(ctx, null)
    } catch (err) {
      ctx.error = asBulwarkError(err)
      ctx.failedStage = stage.name
      traced?.end(ctx, ctx.error)
      throw ctx.error
    } finally {
      ctx.stageMs[stage.name] = clock.monotonicMs() - t0
    }
  }
}
