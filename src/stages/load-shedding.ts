// Link: load-shedding (arrival, model verbs). A global bound on model requests in flight,
// and each model's queue bound checked on arrival: past either, 503 at once (overloaded,
// queue_full) rather than queueing into timeouts, before the body is read or any credential
// checked. A request holds its slot from arrival to the end of the exchange (its onDestroy).
// Health, server metadata and the admin listener are never counted or refused.
// Reads: ctx.target. Writes: nothing on the context. Throws: overloaded, queue_full (503,
// with Retry-After).

import type { LoadSheddingConfig } from '../config/scaleout.ts'
import { BulwarkError } from '../errors.ts'
import { Counter, Gauge, type Metric } from '../telemetry/metrics.ts'
import type { RequestContext, Stage } from '../types.ts'

export interface LoadSheddingLink extends Stage {
  /** Requests holding a slot right now. */
  inFlight(): number
  readonly metrics: readonly Metric[]
}

export function createLoadSheddingLink(config: LoadSheddingConfig, deps: { queueFull(model: string, version: string | null): boolean }): LoadSheddingLink {
  let inFlight = 0
  const holding = new WeakSet<RequestContext>()
  const shed = new Counter('bulwark_shed_requests_total', 'Requests refused on arrival, before their body is read, by reason: overloaded (loadShedding.maxInFlightRequests in flight) or queue_full (the model\'s queue is full).')
  const gauge = new Gauge('bulwark_inflight_requests', 'Model requests in flight (counted against loadShedding.maxInFlightRequests).', () => [[{}, inFlight]])
  const retryAfter = { 'retry-after': String(config.retryAfterSeconds) }
  return {
    name: 'load-shedding',
    phase: 'arrival',
    verbs: ['infer', 'metadata'],
    metrics: [shed, gauge],
    inFlight: () => inFlight,
    run(ctx: RequestContext) {
      if (inFlight >= config.maxInFlightRequests) {
        shed.inc({ reason: 'overloaded' })
        throw new BulwarkError('overloaded', 'the gateway is at capacity; retry after the Retry-After delay', {
          reason: `${inFlight} requests in flight (loadShedding.maxInFlightRequests ${config.maxInFlightRequests})`,
          headers: retryAfter,
        })
      }
      // The model's queue is full already: refuse now, before reading the body, rather than
      // after decoding and validating it (the batcher would refuse it then anyway).
      if (ctx.target.verb === 'infer' && deps.queueFull(ctx.target.model, ctx.target.version)) {
        shed.inc({ reason: 'queue_full' })
        throw new BulwarkError('queue_full', `model ${ctx.target.model.slice(0, 64)} is at capacity; retry after the Retry-After delay`, {
          reason: 'model queue full on arrival (batching.maxQueueSize)',
          headers: retryAfter,
        })
      }
      inFlight++
      holding.add(ctx)
    },
    onDestroy(ctx: RequestContext) {
      if (holding.delete(ctx)) inFlight--
    },
  }
}
