// Tracing of the pipeline with OpenTelemetry: one server span per request on the API
// listener, one child span per pipeline stage (in pipeline order), and a client span per call
// to an upstream model pod, whose W3C traceparent (and the caller's tracestate) goes out with
// the call.
//
// What a span carries: the route, model, verb, status, the stable error code and the stage
// that refused, and each stage's decision (workload kind, whether a token was verified, batch
// size, screening alarms by detector, privacy spent). Never tensor data, tokens, claims,
// subjects or the operator-facing refusal reasons (those go to the log and the audit record).
//
// No global state of OpenTelemetry is needed: the tracer provider is passed in (the NodeSDK's
// when src/cli.ts started one from the OTEL_* variables; the no-op one otherwise; an
// in-memory one in tests). The span of the running stage travels to the inference service
// (and from there through the batcher to an upstream call) in an AsyncLocalStorage of this
// module, so stages need not know about tracing. With the no-op provider a request costs
// one no-op span, unless the client sent a traceparent, which is then still forwarded to
// upstreams.

import { AsyncLocalStorage } from 'node:async_hooks'
import { createTraceState, isSpanContextValid, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Span, type SpanContext, type Tracer, type TracerProvider } from '@opentelemetry/api'
import type { BulwarkError } from '../errors.ts'
import type { RequestContext } from '../types.ts'

export const TRACER_NAME = 'bulwark'

/** Longest tracestate taken from a caller: W3C asks vendors to keep it within 512 characters. */
const MAX_TRACESTATE = 512

interface RequestTrace {
  tracer: Tracer
  span: Span
  /** The request span's context: the parent of stage spans. */
  context: Context
}

const requests = new WeakMap<RequestContext, RequestTrace>()
const current = new AsyncLocalStorage<Context>()

// eslint-disable-next-line security/detect-unsafe-regex -- linear: fixed-length hex groups, then one optional `-.*` tail; no nested or adjacent overlapping quantifiers
const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/

/** The span context a W3C traceparent header names, or null when it is malformed or invalid. */
export function parseTraceparent(header: string | undefined): SpanContext | null {
  if (header === undefined || header.length > 512) return null
  const m = TRACEPARENT.exec(header.trim())
  if (!m || m[1] === 'ff' || (m[1] === '00' && m[5] !== undefined)) return null
  const sc: SpanContext = { traceId: m[2]!, spanId: m[3]!, traceFlags: parseInt(m[4]!, 16) & 1, isRemote: true }
  return isSpanContextValid(sc) ? sc : null
}

/** The W3C traceparent header for a span context; null when the context is invalid (nothing to propagate). */
export function formatTraceparent(sc: SpanContext): string | null {
  if (!isSpanContextValid(sc)) return null
  return `00-${sc.traceId}-${sc.spanId}-${sc.traceFlags & 1 ? '01' : '00'}`
}

/** The trace context of the stage running now (for the inference service and upstream calls); undefined outside one. */
export function currentTraceContext(): Context | undefined {
  return current.getStore()
}

export interface PipelineTracing {
  /** Starts the request's span; continues the client's trace when the config accepts its traceparent. */
  startRequest(ctx: RequestContext, info: { method: string; route: string; traceparent: string | undefined; tracestate?: string | undefined }): void
  /** Ends the request's span with what was decided. Idempotent. */
  endRequest(ctx: RequestContext, statusCode: number): void
}

export function createPipelineTracing(provider: TracerProvider, options: { acceptTraceContext: boolean }): PipelineTracing {
  const tracer = provider.getTracer(TRACER_NAME)
  return {
    startRequest(ctx, info) {
      const remote = options.acceptTraceContext ? parseTraceparent(info.traceparent) : null
      // The vendors' entries go along with the trace they belong to (never without a traceparent).
      if (remote && info.tracestate !== undefined && info.tracestate.length <= MAX_TRACESTATE) remote.traceState = createTraceState(info.tracestate)
      const parent = remote ? trace.setSpanContext(ROOT_CONTEXT, remote) : ROOT_CONTEXT
      const span = tracer.startSpan(
        `${info.method} ${info.route}`,
        {
          kind: SpanKind.SERVER,
          attributes: {
            'http.request.method': info.method,
            'http.route': info.route,
            'bulwark.request.id': ctx.id,
            'bulwark.model': ctx.target.model.slice(0, 64),
            'bulwark.verb': ctx.target.verb,
          },
        },
        parent,
      )
      // Nothing to record and nothing to forward: keep no state for this request.
      if (!span.isRecording() && !isSpanContextValid(span.spanContext())) return
      requests.set(ctx, { tracer, span, context: trace.setSpan(parent, span) })
    },
    endRequest(ctx, statusCode) {
      const t = requests.get(ctx)
      if (!t) return
      requests.delete(ctx)
      if (!t.span.isRecording()) return
      const attributes: Attributes = {
        'http.response.status_code': statusCode,
        'bulwark.decision': ctx.error ? 'refused' : 'served',
      }
      if (ctx.error) {
        attributes['bulwark.error.code'] = ctx.error.code
        attributes['bulwark.failed_stage'] = ctx.failedStage ?? 'transport'
      }
      t.span.setAttributes(attributes)
      // OpenTelemetry's HTTP conventions: on a server span only 5xx is an error.
      if (statusCode >= 500) t.span.setStatus({ code: SpanStatusCode.ERROR, message: ctx.error?.code ?? String(statusCode) })
      t.span.end()
    },
  }
}

/** A running stage's span (or, for an untraced but propagated request, just its context). */
export interface StageTrace {
  /** Runs the stage with its trace context current. */
  run<T>(fn: () => T): T
  /** Ends the span with the stage's outcome and decision attributes. */
  end(ctx: RequestContext, error: BulwarkError | null): void
}

/** Starts a stage's span under the request's span; null when the request is not traced at all. */
export function startStageTrace(ctx: RequestContext, stage: string): StageTrace | null {
  const t = requests.get(ctx)
  if (!t) return null
  const span = t.span.isRecording() ? t.tracer.startSpan(`stage ${stage}`, { attributes: { 'bulwark.stage': stage } }, t.context) : null
  const context = span ? trace.setSpan(t.context, span) : t.context
  return {
    run: (fn) => current.run(context, fn),
    end(ctx, error) {
      if (!span) return
      span.setAttributes({ 'bulwark.stage.outcome': error ? 'refused' : 'passed', ...decisionAttributes(stage, ctx) })
      if (error) {
        span.setAttribute('bulwark.error.code', error.code)
        if (error.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR, message: error.code })
      }
      span.end()
    },
  }
}

/** What a stage decided, as span attributes; only what the stage has set on the context. */
function decisionAttributes(stage: string, ctx: RequestContext): Attributes {
  switch (stage) {
    case 'mtls-identity':
      return ctx.identity ? { 'bulwark.workload': ctx.identity.id.slice(0, 256), 'bulwark.workload.kind': ctx.identity.kind } : {}
    case 'jwt-auth':
      return { 'bulwark.token.verified': ctx.principal !== null }
    case 'input-validation':
      return ctx.request ? { 'bulwark.batch_size': ctx.request.batchSize, 'bulwark.encoding': ctx.body?.contentType ?? 'json' } : {}
    case 'screen-input':
    case 'screen-output':
      return {
        'bulwark.screening.scored': ctx.flags.map((f) => f.detector),
        'bulwark.screening.alarms': ctx.flags.filter((f) => f.alarm).map((f) => f.detector),
      }
    case 'model-inference':
      return ctx.result ? { 'bulwark.model.version': ctx.result.modelVersion } : {}
    case 'privacy-charge': // the budget's figures, also on the span that refuses for them
    case 'output-privacy': {
      const a: Attributes = {}
      const mode = ctx.result?.parameters.output_mode
      if (typeof mode === 'string') a['bulwark.output.mode'] = mode
      if (ctx.privacy) {
        a['bulwark.privacy.epsilon_spent'] = ctx.privacy.epsilonSpent
        a['bulwark.privacy.epsilon_left'] = ctx.privacy.epsilonLeft
      }
      return a
    }
    default:
      return {}
  }
}
