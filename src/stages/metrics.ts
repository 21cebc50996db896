// Link: metrics (response, every verb). When the exchange ends, counts the request by
// model, verb, status and code, and observes its duration and each link's time.
// Reads: ctx.target, ctx.response, ctx.error, ctx.startedMs, ctx.stageMs. Throws: nothing.

import type { Clock } from '../deps.ts'
import type { GatewayMetrics } from '../telemetry/metrics.ts'
import type { RequestContext, Stage } from '../types.ts'

export function createMetricsLink(metrics: GatewayMetrics, clock: Clock): Stage {
  return {
    name: 'metrics',
    phase: 'response',
    verbs: ['infer', 'metadata', 'server'],
    // Nothing before the answer leaves: the status is final only once the audit record is
    // written (a failed write turns the answer into a 503), so counting waits for the end.
    run() {},
    onDestroy(ctx: RequestContext) {
      const model = ctx.target.model
      const status = ctx.response?.status ?? 499
      const code = ctx.error?.code ?? (status < 400 ? 'ok' : 'error')
      metrics.requests.inc({ model, verb: ctx.target.verb, status: String(status), code })
      if (ctx.target.verb === 'server') return
      metrics.requestSeconds.observe({ model }, (clock.monotonicMs() - ctx.startedMs) / 1000)
      for (const [stage, ms] of Object.entries(ctx.stageMs)) metrics.stageSeconds.observe({ stage }, ms / 1000)
    },
  }
}
