// Link: model-inference (body, verb 'infer'). The only link that runs the model: once, on
// the batch screen-variants made (the validated request when nothing was added), split over
// the model's maxBatchSize by the inference service if it must.
// Reads: ctx.modelRequest (else ctx.request), ctx.target, ctx.deadlineMs.
// Writes: ctx.result (every row of the batch; screen-output keeps the caller's).
// Throws: model_not_ready, queue_full, worker_failed (503), deadline_exceeded (504).

import type { InferenceService } from '../inference/service.ts'
import type { RequestContext, Stage } from '../types.ts'

export function createModelInferenceStage(deps: { service: Pick<InferenceService, 'infer'> }): Stage {
  return {
    name: 'model-inference',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      ctx.result = await deps.service.infer(ctx.target.model, ctx.target.version, ctx.modelRequest ?? ctx.request!, ctx.deadlineMs, ctx)
    },
  }
}
