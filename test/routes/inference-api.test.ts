// Every Open Inference Protocol v2 endpoint and every error path, through the HTTP layer
// (fastify inject), with the real bundled models running in onnxruntime worker threads.
import t, { type Test } from 'tap'
import { readFileSync } from 'node:fs'
import { coreGateway } from '../gateway/core-gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { HEADER_LENGTH } from '../../src/oip/codec.ts'

const gateway = await coreGateway({ server: { bodyLimitBytes: 1024 * 1024 } })
t.teardown(() => gateway.close(1000))
const api = gateway.api
const fixture = readFileSync(`${repoRoot}/test/fixtures/mnist-request.json`, 'utf8')
const digit: number[] = JSON.parse(fixture).inputs[0].data

const infer = (payload: unknown, model = 'mnist', headers: Record<string, string> = {}) =>
  api.inject({ method: 'POST', url: `/v2/models/${model}/infer`, headers: { 'content-type': 'application/json', ...headers }, payload: typeof payload === 'string' || Buffer.isBuffer(payload) ? payload : JSON.stringify(payload) })
const argmax = (xs: number[]) => xs.indexOf(Math.max(...xs))

/** After each refusal the server must still answer a good request correctly. */
async function stillServes(t: Test) {
  const res = await infer(fixture)
  t.equal(res.statusCode, 200, 'still serving')
  t.equal(argmax(res.json().outputs[0].data), 7)
}

t.test('health, readiness and server metadata', async (t) => {
  t.same((await api.inject('/v2/health/live')).json(), { live: true })
  const ready = await api.inject('/v2/health/ready')
  t.equal(ready.statusCode, 200)
  t.same(ready.json(), { ready: true })
  const meta = (await api.inject('/v2')).json()
  t.equal(meta.name, 'bulwark')
  t.ok(meta.extensions.includes('binary_tensor_data'))
})

t.test('model metadata and readiness, with and without a version', async (t) => {
  for (const url of ['/v2/models/mnist', '/v2/models/mnist/versions/1']) {
    const res = await api.inject(url)
    t.equal(res.statusCode, 200, url)
    t.same(res.json(), {
      name: 'mnist',
      versions: ['1'],
      platform: 'onnxruntime_onnx',
      inputs: [{ name: 'input', datatype: 'FP32', shape: [-1, 1, 28, 28] }],
      outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [-1, 10] }],
    })
    t.same((await api.inject(`${url}/ready`)).json(), { name: 'mnist', ready: true })
  }
  t.equal((await api.inject('/v2/models/ocr-cls')).json().inputs[0].shape.join(','), '-1,3,48,192')
})

t.test('the first request of the README returns the right digit, and echoes the id', async (t) => {
  const res = await infer(fixture)
  t.equal(res.statusCode, 200)
  const body = res.json()
  t.equal(body.model_name, 'mnist')
  t.equal(body.model_version, '1')
  t.equal(body.id, 'first-request')
  t.same(body.outputs[0].shape, [1, 10])
  t.equal(argmax(body.outputs[0].data), 7, 'classified as 7')
  t.ok(Math.abs(body.outputs[0].data.reduce((a: number, b: number) => a + b, 0) - 1) < 1e-4, 'probabilities sum to 1')
})

t.test('nested data, the /versions/ form and outputs selection give the same answer', async (t) => {
  const nested = [[Array.from({ length: 28 }, (_, r) => digit.slice(r * 28, r * 28 + 28))]]
  const res = await api.inject({
    method: 'POST',
    url: '/v2/models/mnist/versions/1/infer',
    payload: { inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: nested }], outputs: [{ name: 'probabilities' }] },
  })
  t.equal(res.statusCode, 200)
  const flat = (await infer(fixture)).json().outputs[0].data
  t.same(res.json().outputs[0].data, flat)
})

t.test('binary tensors in, binary tensors out', async (t) => {
  const x = new Float32Array(digit)
  const head = Buffer.from(JSON.stringify({
    inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], parameters: { binary_data_size: x.byteLength } }],
    outputs: [{ name: 'probabilities', parameters: { binary_data: true } }],
  }))
  const res = await api.inject({
    method: 'POST',
    url: '/v2/models/mnist/infer',
    headers: { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.length) },
    payload: Buffer.concat([head, Buffer.from(x.buffer)]),
  })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'application/octet-stream')
  const n = Number(res.headers[HEADER_LENGTH])
  const header = JSON.parse(res.rawPayload.subarray(0, n).toString())
  t.same(header.outputs[0], { name: 'probabilities', datatype: 'FP32', shape: [1, 10], parameters: { binary_data_size: 40 } })
  const probs = new Float32Array(res.rawPayload.subarray(n).buffer.slice(res.rawPayload.byteOffset + n, res.rawPayload.byteOffset + n + 40))
  t.equal(argmax(Array.from(probs)), 7)
  const jsonProbs = (await infer(fixture)).json().outputs[0].data
  t.same(Array.from(probs), jsonProbs.map(Math.fround), 'binary and JSON outputs carry the same float32 numbers')
})

t.test('JSON outputs print float32 values in their shortest exact form', async (t) => {
  const { float32Text } = await import('../../src/oip/codec.ts')
  t.equal(float32Text(Math.fround(0.12)), '0.12')
  t.equal(float32Text(Math.fround(1 / 3)), '0.33333334')
  t.equal(float32Text(0), '0')
  t.equal(float32Text(Math.fround(7.7e-13)), '7.7e-13')
  const wrong: number[] = []
  for (let i = 0; i < 10_000; i++) {
    const v = Math.fround(Math.sin(i) * 10 ** ((i % 20) - 10))
    if (Math.fround(Number(float32Text(v))) !== v) wrong.push(v)
  }
  t.same(wrong, [], 'every value reads back exactly')
})

t.test('binary_data_output: true makes every output binary', async (t) => {
  const res = await infer({ ...JSON.parse(fixture), parameters: { binary_data_output: true } })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'application/octet-stream')
  t.equal(res.rawPayload.length - Number(res.headers[HEADER_LENGTH]), 40)
})

const bad: [string, () => Promise<{ statusCode: number; json: () => any }>, number, string][] = [
  ['malformed JSON', () => infer('{"inputs": [', 'mnist'), 400, 'invalid_json'],
  ['wrong dtype', () => infer({ inputs: [{ name: 'input', datatype: 'FP64', shape: [1, 1, 28, 28], data: digit }] }), 400, 'datatype_mismatch'],
  ['wrong shape', () => infer({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 784], data: digit }] }), 400, 'shape_mismatch'],
  ['data length not matching shape', () => infer({ inputs: [{ name: 'input', datatype: 'FP32', shape: [2, 1, 28, 28], data: digit }] }), 400, 'data_length_mismatch'],
  ['a value out of range', () => infer({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: digit.map((v, i) => (i === 5 ? 3 : v)) }] }), 400, 'value_out_of_range'],
  ['NaN where the manifest forbids it', () => {
    const x = new Float32Array(digit)
    x[100] = NaN
    const head = Buffer.from(JSON.stringify({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], parameters: { binary_data_size: x.byteLength } }] }))
    return infer(Buffer.concat([head, Buffer.from(x.buffer)]), 'mnist', { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.length) })
  }, 400, 'non_finite_value'],
  ['a binary header length that lies', () => {
    const x = new Float32Array(digit)
    const head = Buffer.from(JSON.stringify({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], parameters: { binary_data_size: x.byteLength } }] }))
    return infer(Buffer.concat([head, Buffer.from(x.buffer)]), 'mnist', { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.length + 7) })
  }, 400, 'invalid_json'],
  ['a binary header length past the body', () => infer(Buffer.from('{}'), 'mnist', { [HEADER_LENGTH]: '99999' }), 400, 'invalid_binary_header'],
  ['an unknown model', () => infer(fixture, 'nope'), 404, 'model_not_found'],
  ['an unknown version', () => api.inject({ method: 'POST', url: '/v2/models/mnist/versions/9/infer', payload: fixture, headers: { 'content-type': 'application/json' } }), 404, 'version_not_found'],
  ['a body over the limit', () => infer(Buffer.alloc(2 * 1024 * 1024, 0x20)), 413, 'payload_too_large'],
  ['an unknown route', () => api.inject('/v3/whatever'), 404, 'not_found'],
  ['metadata of an unknown model', () => api.inject('/v2/models/nope'), 404, 'model_not_found'],
  ['a batch over the model maximum', () => infer({ inputs: [{ name: 'input', datatype: 'FP32', shape: [65, 1, 28, 28], data: new Array(65 * 784).fill(0) }] }), 400, 'batch_too_large'],
  ['an empty body', () => infer(''), 400, 'invalid_json'],
  ['a URL with bad percent-encoding', () => api.inject({ method: 'POST', url: '/v2/models/%zz/infer', payload: fixture, headers: { 'content-type': 'application/json' } }), 400, 'bad_request'],
  ['a model name over 128 characters', () => infer(fixture, 'm'.repeat(200)), 400, 'bad_request'],
]

for (const [name, send, status, code] of bad) {
  t.test(`refuses ${name} with ${status} ${code}, and keeps serving`, async (t) => {
    const res = await send()
    t.equal(res.statusCode, status)
    const body = res.json()
    t.equal(body.code, code)
    t.type(body.error, 'string')
    t.ok(body.error.length > 10, `message says what is wrong: ${body.error}`)
    await stillServes(t)
  })
}

t.test('a client timeout that has passed gives 504', async (t) => {
  const res = await infer({ ...JSON.parse(fixture), parameters: { timeout: 1 } })
  t.equal(res.statusCode, 504)
  t.equal(res.json().code, 'deadline_exceeded')
  await stillServes(t)
})

t.test('metrics count requests by code and record batch sizes', async (t) => {
  const text = (await gateway.admin.inject('/metrics')).body
  t.match(text, /bulwark_requests_total\{code="ok",model="mnist",status="200",verb="infer"\} \d+/)
  t.match(text, /bulwark_requests_total\{code="datatype_mismatch",model="mnist",status="400",verb="infer"\} 1/)
  t.match(text, /bulwark_batch_size_count\{model="mnist"\} \d+/)
  t.match(text, /bulwark_stage_duration_seconds_count\{stage="model-inference"\} \d+/)
  t.match(text, /bulwark_queue_depth\{model="mnist"\} 0/)
})

t.test('admin health and readiness', async (t) => {
  t.equal((await gateway.admin.inject('/healthz')).statusCode, 200)
  const ready = await gateway.admin.inject('/readyz')
  t.equal(ready.statusCode, 200)
  t.same(ready.json().models, { mnist: 'ready', 'ocr-cls': 'ready' })
})
