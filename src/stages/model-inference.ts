// Stage: model-inference.
// Reads: ctx.request (validated tensors), ctx.target, ctx.deadlineMs, ctx.result.
// Writes: ctx.result, unless it is already set.
// Throws: model_not_ready, queue_full, worker_failed (503), deadline_exceeded (504).

import type { InferenceService } from '../inference/service.ts'
import type { RequestContext, Stage } from '../types.ts'

export function createModelInferenceStage(deps: { service: InferenceService }): Stage {
  return {
    name: 'model-inference',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      // adversarial-screen may have run the model already (feature squeezing batches the
      // originals with their squeezed variants and keeps the originals' answer): not twice.
      if (ctx.result) return
      ctx.result = await deps.service.infer(ctx.target.model, ctx.target.version, ctx.request!, ctx.deadlineMs)
    },
  }
}
