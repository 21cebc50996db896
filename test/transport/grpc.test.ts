// The gRPC listener (inference.GRPCInferenceService) through a real gateway with a real
// grpc-js client built from the repository's .proto files: real TLS with the dev client
// certificate, real JWTs in the `authorization` metadata, the bundled policies and models.
// It asserts: server and model metadata, configuration and statistics; typed and raw
// inference on both bundled models, a batch of 4, and that gRPC answers agree with REST's;
// each refusal of the negative matrix with its gRPC status and its `bulwark-code` trailer;
// ModelStreamInfer is UNIMPLEMENTED; an over-size message is RESOURCE_EXHAUSTED; the
// listener refuses TLS 1.2, announces its stream limit, closes a connection that pings too
// often with GOAWAY ENHANCE_YOUR_CALM, and holds the per-client connection cap; and the audit
// records of an answered and a refused call.
import t from 'tap'
import path from 'node:path'
import { readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { connect as http2Connect, constants as h2 } from 'node:http2'
import { connect as tlsConnect } from 'node:tls'
import { once } from 'node:events'
import * as grpc from '@grpc/grpc-js'
import { parse as parseYaml } from 'yaml'
import { mnistRequest, startGateway } from '../../kit/gateway.ts'
import { ocrImage } from '../../kit/payloads.ts'
import { repoRoot } from '../../kit/paths.ts'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { createCa, issueCertificate } from '../../src/dev/pki.ts'
import { realDeps } from '../../src/deps.ts'
import { inferenceServiceClient } from '../../src/transport/grpc.ts'
import { requestRecords, tempDir } from '../audit/helpers.ts'

const auditDir = tempDir('grpc-audit')
const repoPolicy = (model: string) => parseYaml(readFileSync(path.join(repoRoot, 'policies', `${model}.yaml`), 'utf8')) as Record<string, unknown>
const gw = await startGateway({
  models: ['mnist', 'ocr-cls'],
  policies: {
    mnist: repoPolicy('mnist'),
    'ocr-cls': repoPolicy('ocr-cls'),
    // Admitted by its policy, allowed one call a minute, served by nobody.
    limited: { ...repoPolicy('ocr-cls'), model: 'limited', rateLimit: { requestsPerWindow: 1, windowMs: 60_000 } },
  },
  config: {
    server: { maxConnectionsPerClient: 3 },
    grpc: { maxReceiveMessageBytes: 2 * 1024 * 1024, maxConcurrentStreams: 32, keepalive: { minPingIntervalMs: 60_000, maxPingStrikes: 1 } },
    audit: { directory: auditDir, aggregation: { enabled: false } },
  },
})
const port = await gw.gateway.grpc!.listen('127.0.0.1', 0)
t.teardown(() => gw.close())

// The client the gateway's own definition makes: the same .proto files.
const Service = inferenceServiceClient()
const [caPem, clientCert, clientKey] = await Promise.all([gw.pki.files.ca, gw.pki.files.clientCert, gw.pki.files.clientKey].map((f) => readFile(f)))
const clients: grpc.Client[] = []
const clientWith = (cert?: Buffer, key?: Buffer) => {
  const c = new Service(`127.0.0.1:${port}`, grpc.credentials.createSsl(caPem!, key ?? null, cert ?? null))
  clients.push(c)
  return c
}
t.teardown(() => clients.forEach((c) => c.close()))
const client = clientWith(clientCert, clientKey)

type GrpcError = grpc.ServiceError
/** One unary call; the bearer token is a fresh dev token unless `token` says otherwise (null: none). */
async function call(method: string, request: unknown, o: { token?: string | null; via?: grpc.Client; deadlineMs?: number } = {}): Promise<any> {
  const md = new grpc.Metadata()
  const token = o.token === undefined ? await gw.token() : o.token
  if (token !== null) md.set('authorization', `Bearer ${token}`)
  const c = (o.via ?? client) as any
  return new Promise((resolve, reject) => c[method](request, md, { deadline: Date.now() + (o.deadlineMs ?? 20_000) }, (err: GrpcError | null, res: unknown) => (err ? reject(err) : resolve(res))))
}
const refusal = (p: Promise<unknown>) => p.then((res) => { throw new Error(`expected a refusal, got ${JSON.stringify(res).slice(0, 200)}`) }, (e: GrpcError) => e)
const codeOf = (e: GrpcError) => e.metadata?.get('bulwark-code')[0]

const digit = (await mnistRequest()) as { inputs: { data: number[] }[] }
const pixels = Float32Array.from(digit.inputs[0]!.data)
const mnistTyped = (batch: number) => ({
  model_name: 'mnist',
  inputs: [{ name: 'input', datatype: 'FP32', shape: [batch, 1, 28, 28], contents: { fp32_contents: Array.from({ length: batch }, () => Array.from(pixels)).flat() } }],
})
const raw = (data: Float32Array) => Buffer.from(data.buffer, data.byteOffset, data.byteLength)
const ocrRaw = (batch: number, seed = 1) => ({ model_name: 'ocr-cls', inputs: [{ name: 'x', datatype: 'FP32', shape: [batch, 3, 48, 192] }], raw_input_contents: [raw(ocrImage(batch, seed))] })
const floats = (b: Buffer) => Array.from(new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)))

t.test('server health, readiness and metadata', async (t) => {
  t.same(await call('ServerLive', {}, { token: null }), { live: true })
  t.same(await call('ServerReady', {}, { token: null }), { ready: true })
  const meta = await call('ServerMetadata', {}, { token: null })
  t.equal(meta.name, 'bulwark')
  t.same(meta.extensions.slice().sort(), ['binary_tensor_data', 'model_configuration', 'statistics'])
})

t.test('model readiness, metadata and configuration of both bundled models', async (t) => {
  t.same(await call('ModelReady', { name: 'mnist', version: '' }), { ready: true })
  const meta = await call('ModelMetadata', { name: 'ocr-cls', version: '1' })
  t.same(meta, { name: 'ocr-cls', versions: ['1'], platform: 'onnxruntime_onnx', inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 3, 48, 192] }], outputs: [{ name: 'softmax_0.tmp_0', datatype: 'FP32', shape: [-1, 2] }] })
  for (const [model, max, dims] of [['mnist', 64, [1, 28, 28]], ['ocr-cls', 32, [3, 48, 192]]] as const) {
    const { config } = await call('ModelConfig', { name: model, version: '' })
    t.equal(config.name, model)
    t.equal(config.platform, 'onnxruntime_onnx')
    t.equal(config.backend, 'onnxruntime')
    t.equal(config.max_batch_size, max, `${model} max_batch_size`)
    t.equal(config.input[0].data_type, 'TYPE_FP32')
    t.same(config.input[0].dims, dims, `${model} dims without the batch dimension`)
    t.equal(config.output[0].data_type, 'TYPE_FP32')
    t.equal(config.scheduling_choice, 'dynamic_batching')
    t.equal(config.dynamic_batching.max_queue_delay_microseconds, 500)
  }
})

t.test('typed inference on mnist, one digit and a batch of 4', async (t) => {
  const one = await call('ModelInfer', { ...mnistTyped(1), id: 'digit' })
  t.equal(one.model_name, 'mnist')
  t.equal(one.model_version, '1')
  t.equal(one.id, 'digit')
  t.same(one.raw_output_contents, [], 'typed in, typed out')
  t.equal(one.outputs[0].name, 'probabilities')
  const rest = await gw.request('/v2/models/mnist/infer', { body: digit })
  t.same(one.outputs[0].shape, rest.body.outputs[0].shape, 'the shape REST answers')
  t.equal(one.outputs[0].contents.fp32_contents.length, rest.body.outputs[0].data.length)
  const four = await call('ModelInfer', mnistTyped(4))
  t.equal(four.outputs[0].shape[0], 4, 'a batch of 4 answers 4 rows')
})

t.test('raw inference on ocr-cls, one image and a batch of 4, agrees with typed and with REST', async (t) => {
  const res = await call('ModelInfer', ocrRaw(4))
  t.same(res.outputs.map((o: any) => [o.name, o.datatype, o.shape]), [['softmax_0.tmp_0', 'FP32', [4, 2]]])
  t.equal(res.raw_output_contents.length, 1, 'raw in, raw out')
  const scores = floats(res.raw_output_contents[0])
  t.equal(scores.length, 8)
  for (let i = 0; i < 4; i++) t.ok(Math.abs(scores[2 * i]! + scores[2 * i + 1]! - 1) < 1e-3, `row ${i} is a softmax`)
  const image = ocrImage(1, 3)
  const viaRaw = floats((await call('ModelInfer', ocrRaw(1, 3))).raw_output_contents[0])
  const viaTyped = (await call('ModelInfer', { model_name: 'ocr-cls', inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3, 48, 192], contents: { fp32_contents: Array.from(image) } }] })).outputs[0].contents.fp32_contents
  const viaRest = (await gw.request('/v2/models/ocr-cls/infer', { body: { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3, 48, 192], data: Array.from(image) }] } })).body.outputs[0].data
  for (let i = 0; i < 2; i++) {
    t.ok(Math.abs(viaRaw[i]! - viaTyped[i]) < 1e-6, 'raw and typed agree')
    t.ok(Math.abs(viaRaw[i]! - viaRest[i]) < 1e-3, 'gRPC and REST agree')
  }
})

t.test('statistics count the calls; the every-model form is refused under per-model policies', async (t) => {
  const before = (await call('ModelStatistics', { name: 'ocr-cls', version: '' })).model_stats[0]
  await call('ModelInfer', ocrRaw(2))
  const after = (await call('ModelStatistics', { name: 'ocr-cls', version: '1' })).model_stats[0]
  t.equal(after.name, 'ocr-cls')
  t.equal(after.inference_stats.success.count - before.inference_stats.success.count, 1)
  t.equal(after.inference_count - before.inference_count, 2)
  t.ok(after.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns)
  const all = await refusal(call('ModelStatistics', { name: '', version: '' }))
  t.equal(all.code, grpc.status.PERMISSION_DENIED)
})

const foreignCa = await createCa(realDeps, { commonName: 'Somebody else CA' })
const foreign = await issueCertificate(foreignCa, realDeps, { commonName: 'dev', usage: 'client', uris: [DEV_WORKLOAD] })

/** The sum of a metric's series in the gateway's Prometheus text. */
async function metric(name: string, labels = ''): Promise<number> {
  const text = await gw.gateway.metrics.render()
  let sum = 0
  for (const m of text.matchAll(new RegExp(`^${name}\\{([^}]*)\\} (\\d+)`, 'gm'))) if (m[1]!.includes(labels)) sum += Number(m[2])
  return sum
}

t.test('refused at the handshake: no client certificate, a foreign CA', async (t) => {
  for (const [name, via] of [['no certificate', clientWith()], ['foreign CA', clientWith(Buffer.from(foreign.certPem), Buffer.from(foreign.keyPem))]] as const) {
    const since = gw.logs.length
    const counted = await metric('bulwark_grpc_tls_handshake_failures_total')
    const e = await refusal(call('ModelMetadata', { name: 'mnist', version: '' }, { via, deadlineMs: 5000 }))
    t.equal(e.code, grpc.status.UNAVAILABLE, `${name}: the client cannot connect`)
    t.equal(codeOf(e), undefined, 'no call reached the chain')
    const logged = await gw.logged((l) => l.msg === 'TLS handshake refused' && l.transport === 'grpc', since)
    t.pass(`${name}: the server log says why (${String(logged.reason)})`)
    t.ok((await metric('bulwark_grpc_tls_handshake_failures_total')) > counted, 'and counts it')
  }
})

const matrix: { name: string; method?: string; request: () => unknown; token?: () => Promise<string | null>; status: grpc.status; code: string }[] = [
  { name: 'no token', request: () => mnistTyped(1), token: async () => null, status: grpc.status.UNAUTHENTICATED, code: 'unauthenticated' },
  { name: 'a malformed token', request: () => mnistTyped(1), token: async () => 'not.a-jwt', status: grpc.status.UNAUTHENTICATED, code: 'unauthenticated' },
  { name: 'an expired token', request: () => mnistTyped(1), token: () => gw.token({ claims: { exp: Math.floor(Date.now() / 1000) - 3600, iat: Math.floor(Date.now() / 1000) - 7200 } }), status: grpc.status.UNAUTHENTICATED, code: 'unauthenticated' },
  { name: 'a token for another model', request: () => mnistTyped(1), token: () => gw.token({ scopes: ['ocr-cls:infer', 'ocr-cls:metadata'] }), status: grpc.status.PERMISSION_DENIED, code: 'forbidden' },
  { name: 'a model no policy names', request: () => ({ ...mnistTyped(1), model_name: 'nope' }), status: grpc.status.PERMISSION_DENIED, code: 'forbidden' },
  { name: 'a version not served', request: () => ({ ...mnistTyped(1), model_version: '7' }), status: grpc.status.NOT_FOUND, code: 'version_not_found' },
  { name: 'metadata of a version not served', method: 'ModelConfig', request: () => ({ name: 'mnist', version: '7' }), status: grpc.status.NOT_FOUND, code: 'version_not_found' },
  { name: 'a bad shape', request: () => ({ model_name: 'mnist', inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 784], contents: { fp32_contents: Array.from(pixels) } }] }), status: grpc.status.INVALID_ARGUMENT, code: 'shape_mismatch' },
  { name: 'too few values', request: () => ({ model_name: 'mnist', inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], contents: { fp32_contents: [0, 0] } }] }), status: grpc.status.INVALID_ARGUMENT, code: 'data_length_mismatch' },
  { name: 'contents in the wrong field', request: () => ({ model_name: 'mnist', inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], contents: { int_contents: [1] } }] }), status: grpc.status.INVALID_ARGUMENT, code: 'bad_request' },
  { name: 'raw contents for fewer inputs than named', request: () => ({ ...ocrRaw(1), inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3, 48, 192] }, { name: 'y', datatype: 'FP32', shape: [1] }] }), status: grpc.status.INVALID_ARGUMENT, code: 'bad_request' },
  { name: 'a wrong datatype', request: () => ({ ...ocrRaw(1), inputs: [{ name: 'x', datatype: 'FP64', shape: [1, 3, 48, 192] }] }), status: grpc.status.INVALID_ARGUMENT, code: 'datatype_mismatch' },
  { name: 'values out of range', request: () => ({ model_name: 'ocr-cls', inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3, 48, 192] }], raw_input_contents: [raw(new Float32Array(3 * 48 * 192).fill(7))] }), status: grpc.status.INVALID_ARGUMENT, code: 'value_out_of_range' },
  { name: 'a batch over the maximum', request: () => ({ model_name: 'ocr-cls', inputs: [{ name: 'x', datatype: 'FP32', shape: [33, 3, 48, 192] }], raw_input_contents: [Buffer.alloc(4)] }), status: grpc.status.INVALID_ARGUMENT, code: 'batch_too_large' },
]

for (const c of matrix) {
  t.test(`refused: ${c.name}`, async (t) => {
    const e = await refusal(call(c.method ?? 'ModelInfer', c.request(), { token: c.token ? await c.token() : undefined }))
    t.equal(e.code, c.status, `gRPC status ${grpc.status[c.status]}`)
    t.equal(codeOf(e), c.code, `bulwark-code ${c.code}`)
    t.ok(e.metadata.get('x-request-id')[0], 'the request id for the operator')
    t.equal((await call('ModelInfer', mnistTyped(1))).model_name, 'mnist', 'the gateway still serves')
  })
}

t.test('the rate limit: RESOURCE_EXHAUSTED with retry-after', async (t) => {
  const request = { ...ocrRaw(1), model_name: 'limited' }
  t.equal(codeOf(await refusal(call('ModelInfer', request))), 'model_not_found', 'the first call passes the limit (and finds no model)')
  const e = await refusal(call('ModelInfer', request))
  t.equal(e.code, grpc.status.RESOURCE_EXHAUSTED)
  t.equal(codeOf(e), 'rate_limited')
  t.ok(Number(e.metadata.get('retry-after')[0]) > 0, 'retry-after in the trailers')
})

t.test('a message over grpc.maxReceiveMessageBytes is RESOURCE_EXHAUSTED; ModelStreamInfer is UNIMPLEMENTED', async (t) => {
  const big = await refusal(call('ModelInfer', ocrRaw(24)))
  t.equal(big.code, grpc.status.RESOURCE_EXHAUSTED)
  const md = new grpc.Metadata()
  md.set('authorization', `Bearer ${await gw.token()}`)
  const stream = (client as any).ModelStreamInfer(md) as grpc.ClientDuplexStream<unknown, unknown>
  const e = await new Promise<GrpcError>((resolve) => stream.on('error', resolve))
  t.equal(e.code, grpc.status.UNIMPLEMENTED)
  t.match(e.details, /ModelInfer/, 'says what to use instead')
})

t.test('the listener refuses TLS 1.2', async (t) => {
  const socket = tlsConnect({ host: '127.0.0.1', port, ca: caPem, cert: clientCert, key: clientKey, maxVersion: 'TLSv1.2', ALPNProtocols: ['h2'] })
  const [err] = (await once(socket, 'error')) as [Error & { code?: string }]
  t.match(err.code, /ERR_SSL|ECONNRESET/, `the handshake fails (${err.code})`)
  socket.destroy()
})

t.test('the listener announces its stream limit and closes a connection that pings too often', async (t) => {
  const session = http2Connect(`https://127.0.0.1:${port}`, { ca: caPem, cert: clientCert, key: clientKey })
  t.teardown(() => session.destroy())
  const closedWith: unknown[] = []
  // After the GOAWAY the session ends with that error code: expected here, and asserted below.
  session.on('error', (e: Error & { code?: string }) => closedWith.push(e.code))
  const [settings] = (await once(session, 'remoteSettings')) as [{ maxConcurrentStreams?: number }]
  t.equal(settings.maxConcurrentStreams, 32, 'SETTINGS_MAX_CONCURRENT_STREAMS is grpc.maxConcurrentStreams')
  const goaway = once(session, 'goaway') as Promise<[number]>
  // No call in flight and far inside keepalive.minPingIntervalMs: the first ping sets the clock, the next two are strikes.
  for (let i = 0; i < 3; i++) session.ping(() => {})
  const [code] = await goaway
  t.equal(code, h2.NGHTTP2_ENHANCE_YOUR_CALM, 'GOAWAY ENHANCE_YOUR_CALM')
  if (!session.closed) await new Promise((resolve) => session.once('close', resolve))
  t.ok(session.destroyed, 'the connection is closed')
  t.same(closedWith, ['ERR_HTTP2_SESSION_ERROR'], 'with the GOAWAY error code')
})

t.test('the per-client connection cap holds on the gRPC listener', async (t) => {
  // `client` holds one connection; three more channels with the same certificate make four.
  const statuses: grpc.status[] = []
  for (let i = 0; i < 3; i++) {
    const e = await call('ServerLive', {}, { token: null, via: clientWith(clientCert, clientKey), deadlineMs: 5000 }).then(() => null, (err: GrpcError) => err)
    statuses.push(e ? e.code : grpc.status.OK)
  }
  t.same(statuses, [grpc.status.OK, grpc.status.OK, grpc.status.UNAVAILABLE], 'the fourth connection of one client is refused (server.maxConnectionsPerClient 3)')
  t.ok((await metric('bulwark_grpc_connections_refused_total', 'reason="per_client"')) >= 1, 'counted in bulwark_grpc_connections_refused_total')
})

t.test('the audit records of an answered and a refused call', async (t) => {
  await call('ModelInfer', { ...ocrRaw(1), id: 'audited' })
  await refusal(call('ModelInfer', ocrRaw(1), { token: null }))
  const path = '/inference.GRPCInferenceService/ModelInfer'
  const recs: any[] = requestRecords(auditDir).map((l) => l.rec).filter((r: any) => r.path === path)
  const answered = recs.findLast((r: any) => r.decision === 'allowed')
  t.match(answered, { method: 'POST', model: 'ocr-cls', version: '1', verb: 'infer', status: 200, stage: 'complete', identity: { id: DEV_WORKLOAD }, principal: { sub: 'dev' } })
  t.equal(answered.inputs.length, 1, 'the input digest is recorded')
  t.equal(answered.outputs.length, 1, 'the output digest is recorded')
  t.ok(answered.stageMs['encode-answer'] >= 0, "encoding the answer is timed beside the links (it comes before the record; sending it, after)")
  const refused = recs.at(-1)
  t.match(refused, { decision: 'denied', status: 401, code: 'unauthenticated', stage: 'jwt-auth', identity: { id: DEV_WORKLOAD }, principal: null })
})
