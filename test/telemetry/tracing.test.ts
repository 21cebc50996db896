// OpenTelemetry: a span per request and per pipeline stage, in pipeline order, with decision
// attributes and never tensor data or tokens; the W3C trace context continues from the client
// through the gateway to an upstream model pod; the admin listener's /metrics is the OTel
// Prometheus exposition. Spans go to an in-memory exporter (this test process's global tracer
// provider, which buildGateway uses when given none).

import t from 'tap'
import { trace } from '@opentelemetry/api'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base'
import { request } from 'undici'
import { mnistRequest, startGateway } from '../../kit/gateway.ts'
import { formatTraceparent, parseTraceparent } from '../../src/telemetry/tracing.ts'
import { Changes } from '../../kit/wait.ts'

/** The in-memory exporter, saying when spans end: a request's span ends when its exchange does, after the client has the answer. */
class WatchedExporter extends InMemorySpanExporter {
  readonly ended = new Changes()
  override export(spans: ReadableSpan[], done: Parameters<InMemorySpanExporter['export']>[1]): void {
    super.export(spans, done)
    this.ended.notify()
  }
  /** Resolves with the first finished span `match` accepts: now, or when it ends. */
  span(match: (s: ReadableSpan) => boolean): Promise<ReadableSpan> {
    return this.ended.until(() => this.getFinishedSpans().find(match))
  }
}

const exporter = new WatchedExporter()
trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }))

const startNs = (s: ReadableSpan) => s.startTime[0] * 1e9 + s.startTime[1]
const parentOf = (s: ReadableSpan) => s.parentSpanContext?.spanId

t.test('traceparent: parsed strictly, formatted back', async (t) => {
  const ok = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'
  t.same(parseTraceparent(ok), { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: 1, isRemote: true })
  t.equal(formatTraceparent(parseTraceparent(ok)!), ok)
  for (const bad of ['', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331', 'ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', '00-00000000000000000000000000000000-b7ad6b7169203331-01', '00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01', '00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra']) {
    t.equal(parseTraceparent(bad), null, `refused: ${JSON.stringify(bad)}`)
  }
})

t.test('one request: a server span, one child span per stage in pipeline order, continued upstream', async (t) => {
  const upstream = await startGateway({ models: ['mnist'], frontDoor: false, config: { outputPrivacy: { enabled: false }, audit: { enabled: false } } })
  t.teardown(() => upstream.close())
  const gw = await startGateway({ models: ['mnist'], config: { models: { serve: [{ name: 'mnist', upstream: { endpoints: [upstream.url] } }] } } })
  t.teardown(() => gw.close())
  exporter.reset()

  const token = await gw.token()
  const clientTrace = { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7' }
  const res = await gw.request('/v2/models/mnist/infer', { body: await mnistRequest(), token, headers: { traceparent: `00-${clientTrace.traceId}-${clientTrace.spanId}-01`, tracestate: 'vendor=abc,other=x1' } })
  t.equal(res.status, 200)
  // The two request spans (the gateway's, the upstream's) end when their exchanges do; every
  // stage span ends before its request's.
  const front = await exporter.span((s) => s.kind === 1 /* SERVER */ && parentOf(s) === clientTrace.spanId)
  const client = await exporter.span((s) => s.name === 'upstream infer')
  await exporter.span((s) => s.kind === 1 && parentOf(s) === client.spanContext().spanId)
  const spans = exporter.getFinishedSpans()

  const servers = spans.filter((s) => s.kind === 1 /* SERVER */)
  t.ok(front, 'the gateway continues the client\'s trace')
  t.equal(front.spanContext().traceId, clientTrace.traceId)
  t.equal(front.name, 'POST /v2/models/:model/infer')
  t.match(front.attributes, { 'http.response.status_code': 200, 'bulwark.decision': 'served', 'bulwark.model': 'mnist', 'bulwark.verb': 'infer' })

  const stages = spans.filter((s) => parentOf(s) === front.spanContext().spanId && s.name.startsWith('stage ')).sort((a, b) => startNs(a) - startNs(b))
  t.same(stages.map((s) => s.name), gw.gateway.stages.filter((s) => s.name !== 'trace').map((s) => `stage ${s.name}`), 'every link after the request span starts, in chain order')
  t.same(stages.map((s) => s.name.slice(6)), ['load-shedding', 'client-limit', 'mtls-identity', 'jwt-auth', 'caller-key', 'model-policy', 'rate-limit', 'body-read', 'input-validation', 'privacy-precheck', 'screen-input', 'screen-variants', 'model-inference', 'privacy-charge', 'screen-output', 'output-privacy', 'audit-log', 'model-stats', 'metrics'])
  t.ok(stages.every((s) => s.attributes['bulwark.stage.outcome'] === 'passed'), 'each says it passed')
  const attrs = (name: string) => stages.find((s) => s.name === `stage ${name}`)!.attributes
  t.match(attrs('mtls-identity'), { 'bulwark.workload': 'spiffe://bulwark.local/ns/default/sa/dev', 'bulwark.workload.kind': 'spiffe' })
  t.match(attrs('jwt-auth'), { 'bulwark.token.verified': true })
  t.match(attrs('input-validation'), { 'bulwark.batch_size': 1, 'bulwark.encoding': 'json' })
  t.ok(Array.isArray(attrs('screen-output')['bulwark.screening.scored']), 'screening decisions by detector')
  t.match(attrs('output-privacy'), { 'bulwark.output.mode': 'label' })

  // The upstream call: a client span under the stage that ran the model, whose traceparent the
  // upstream gateway continued.
  t.ok(client, 'a client span for the upstream call')
  t.ok(stages.some((s) => s.spanContext().spanId === parentOf(client)), `under the stage that ran the model (${stages.find((s) => s.spanContext().spanId === parentOf(client))?.name})`)
  const remote = servers.find((s) => parentOf(s) === client.spanContext().spanId)
  t.ok(remote, 'the upstream\'s server span is the client span\'s child')
  t.equal(remote!.spanContext().traceId, clientTrace.traceId, 'one trace from the client to the model pod')
  t.equal(client.spanContext().traceState?.serialize(), 'vendor=abc,other=x1', 'the caller\'s tracestate goes with the upstream call')
  t.equal(remote!.spanContext().traceState?.serialize(), 'vendor=abc,other=x1', 'and reaches the model pod')
  t.ok(spans.some((s) => parentOf(s) === remote!.spanContext().spanId && s.name === 'stage model-inference'), 'and the upstream\'s own stages are in it')

  // Never tensor data or credentials.
  const text = JSON.stringify(spans.map((s) => [s.name, s.attributes, s.events]))
  t.notOk(text.includes(token), 'no token')
  t.notOk(text.includes(token.split('.')[1]!), 'no part of a token')
  t.notOk(spans.some((s) => Object.values(s.attributes).some((v) => Array.isArray(v) && v.some((x) => typeof x === 'number'))), 'no numeric arrays (tensors)')
  t.notMatch(text, /"data"|0\.\d{5,}/, 'no tensor values')
})

t.test('a refused request: its stage says refused, with the code, and the request span too', async (t) => {
  const gw = await startGateway({ models: ['mnist'] })
  t.teardown(() => gw.close())
  exporter.reset()
  const res = await gw.request('/v2/models/mnist/infer', { body: await mnistRequest(), token: await gw.token({ scopes: ['ocr-cls:infer'] }) })
  t.equal(res.status, 403)
  const server = await exporter.span((s) => s.kind === 1)
  const spans = exporter.getFinishedSpans()
  t.match(server.attributes, { 'bulwark.decision': 'refused', 'bulwark.error.code': 'forbidden', 'bulwark.failed_stage': 'model-policy', 'http.response.status_code': 403 })
  const stages = spans.filter((s) => parentOf(s) === server.spanContext().spanId).sort((a, b) => startNs(a) - startNs(b))
  t.same(
    stages.map((s) => s.name),
    ['stage load-shedding', 'stage client-limit', 'stage mtls-identity', 'stage jwt-auth', 'stage caller-key', 'stage model-policy', 'stage audit-log', 'stage model-stats', 'stage metrics'],
    'the run stops at the refusing link; only the response links, which record the refusal, run after it',
  )
  t.match(stages.find((s) => s.name === 'stage model-policy')!.attributes, { 'bulwark.stage.outcome': 'refused', 'bulwark.error.code': 'forbidden' })
  t.notOk(JSON.stringify(spans.map((s) => s.attributes)).includes('not listed'), 'the operator-facing reason stays in the log')
})

t.test('the Prometheus endpoint serves the OpenTelemetry metrics', async (t) => {
  const gw = await startGateway({ models: ['mnist'] })
  t.teardown(() => gw.close())
  t.equal((await gw.request('/v2/models/mnist/infer', { body: await mnistRequest() })).status, 200)
  const res = await request(`${gw.adminUrl}/metrics`)
  t.equal(res.statusCode, 200)
  t.match(res.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  const text = await res.body.text()
  t.match(text, /# TYPE bulwark_requests_total counter/)
  t.match(text, /bulwark_requests_total\{code="ok",model="mnist",status="200",verb="infer"\} 1/)
  t.match(text, /# TYPE bulwark_request_duration_seconds histogram/)
  t.match(text, /bulwark_request_duration_seconds_bucket\{model="mnist",le="0\.005"\} \d+/)
  t.match(text, /bulwark_stage_duration_seconds_count\{stage="jwt-auth"\} 1/)
  t.match(text, /bulwark_inflight_requests 0/)
  t.match(text, /target_info\{service_name="bulwark"\} 1/, 'the OTel resource as target_info')
  t.notMatch(text, /otel_scope_name/, 'no per-scope labels: names and labels as before')
})
