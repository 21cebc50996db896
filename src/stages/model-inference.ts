// Stage: model-inference.
// Reads: ctx.request (validated tensors), ctx.target, ctx.deadlineMs.
// Writes: ctx.result.
// Throws: model_not_ready, queue_full, worker_failed (503), deadline_exceeded (504).

import type { InferenceService } from '../inference/service.ts'
import type { RequestContext, Stage } from '../types.ts'

export function createModelInferenceStage(deps: { service: InferenceService }): Stage {
  return {
    name: 'model-inference',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      ctx.result = await deps.service.infer(ctx.target.model, ctx.target.version, ctx.request!, ctx.deadlineMs)
    },
  }
}
