// Link: trace (arrival, model verbs). Starts the request's span, continuing the caller's
// trace when telemetry.acceptTraceContext allows, and ends it when the exchange ends.
// Reads: ctx.exchange (method, route, traceparent), ctx.response and ctx.error at the end.
// Writes: the span, keyed by the context (src/telemetry/tracing.ts). Throws: nothing.

import type { PipelineTracing } from '../telemetry/tracing.ts'
import type { RequestContext, Stage } from '../types.ts'

export function createTraceLink(tracing: PipelineTracing): Stage {
  return {
    name: 'trace',
    phase: 'arrival',
    verbs: ['infer', 'metadata'],
    run(ctx: RequestContext) {
      tracing.startRequest(ctx, { method: ctx.exchange.method, route: ctx.exchange.route, traceparent: ctx.exchange.traceparent, tracestate: ctx.exchange.tracestate })
    },
    onDestroy(ctx: RequestContext) {
      // A connection lost before any answer: 499, as proxies log a client that went away.
      tracing.endRequest(ctx, ctx.response?.status ?? 499)
    },
  }
}
