// Link: metrics (response, every verb). When the exchange ends, counts the request by
// model, verb, status and code, and observes its duration and each link's time.
// Reads: ctx.target, ctx.response, ctx.error, ctx.startedMs, ctx.stageMs. Throws: nothing.
//
// Every label value comes from the configuration or the code, never from the caller: the
// model name in the URL becomes a label only when it is served (else `_unknown`, even for a
// caller refused at the front door), the status only when it is an HTTP status, the code
// only when it is in the catalogue. Each new value would be a series kept for the life of
// the process and walked at every scrape.

import type { Clock } from '../deps.ts'
import { errorCodes, errorStatus } from '../errors.ts'
import { modelLabeler, type GatewayMetrics } from '../telemetry/metrics.ts'
import type { RequestContext, Stage } from '../types.ts'

/** The status label: an HTTP status (100-599) as sent, anything else 'other'. */
function statusLabel(status: number): string {
  return Number.isInteger(status) && status >= 100 && status <= 599 ? String(status) : 'other'
}

const CODES: ReadonlySet<string> = new Set(errorCodes)

/**
 * `servedModels`: the names in the configuration's models.serve, the only `model` label
 * values besides `_unknown`.
 */
export function createMetricsLink(metrics: GatewayMetrics, clock: Clock, servedModels: Iterable<string> | ((name: string) => boolean)): Stage {
  const modelLabel = modelLabeler(servedModels)
  return {
    name: 'metrics',
    phase: 'response',
    verbs: ['infer', 'metadata', 'server'],
    // Nothing before the answer leaves: the status is final only once the audit record is
    // written (a failed write turns the answer into a 503), so counting waits for the end.
    run() {},
    onDestroy(ctx: RequestContext) {
      const verb = ctx.target.verb
      // Server-level requests (health, GET /v2, unknown routes) name no model.
      const model = verb === 'server' ? '' : modelLabel(ctx.target.model)
      // No answer when the exchange ended: the client closed the connection first (and the
      // link that was reading its body may not have noticed yet).
      const status = ctx.response?.status ?? errorStatus.client_closed_request
      const errorCode = ctx.error?.code ?? (ctx.response ? undefined : 'client_closed_request')
      const code = errorCode === undefined ? (status < 400 ? 'ok' : 'error') : CODES.has(errorCode) ? errorCode : 'internal'
      metrics.requests.inc({ model, verb, status: statusLabel(status), code })
      if (verb === 'server') return
      metrics.requestSeconds.observe({ model }, (clock.monotonicMs() - ctx.startedMs) / 1000)
      // for-in, not Object.entries: no array per link, per request.
      const stageMs = ctx.stageMs
      // eslint-disable-next-line bulwark/object-injection -- read-only: stage comes from the for-in over stageMs itself
      for (const stage in stageMs) metrics.stageSeconds.observe({ stage }, stageMs[stage]! / 1000)
    },
  }
}
