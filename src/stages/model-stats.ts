// Link: model-stats (response, verb 'infer'). When an inference request's exchange ends,
// counts it in the model's statistics (src/oip/stats.ts, Triton's statistics extension):
// a success when it was answered without an error, else a failure, each with its whole time
// in the gateway, under the version that answered (else the one asked for, else the highest
// served). Requests for a model or version that is not served count nowhere.
// Reads: ctx.target, ctx.error, ctx.response, ctx.startedMs. Writes: nothing. Throws: nothing.

import type { Clock } from '../deps.ts'
import type { ModelStatistics } from '../oip/stats.ts'
import type { RequestContext, Stage } from '../types.ts'

export function createModelStatsLink(statistics: ModelStatistics, clock: Clock): Stage {
  return {
    name: 'model-stats',
    phase: 'response',
    verbs: ['infer'],
    // Counted at the end: the answer is final only once the audit record is written.
    run() {},
    onDestroy(ctx: RequestContext) {
      const ok = ctx.error === null && ctx.response !== null && ctx.response.status < 400
      statistics.finished(ctx.target.model, ok, clock.monotonicMs() - ctx.startedMs, ctx.result?.modelVersion ?? ctx.target.version)
    },
  }
}
