// Property-based fuzzing of the request parsing and validation path (fast-check): whatever a
// client sends to an inference route, the answer is a 2xx with a protocol body, or a 4xx with
// `{"error": "...", "code": "..."}`, and the gateway keeps serving. Never a 5xx, never a crash.
//
// Inputs are of two kinds, mixed: structured ones (valid OIP v2 requests for the bundled
// models, then mutated: fields removed or added, wrong types, shapes, dtypes, element counts,
// values out of range, non-finite numbers, nesting, binary tensor headers with wrong lengths)
// that reach deep into validation, and unstructured ones (random bytes, random JSON, random
// content types and binary-length headers) that hit the body splitter and JSON parser.
//
// The one 5xx allowed is 504 deadline_exceeded for a request that asked for its own tiny
// deadline (parameters.timeout, microseconds): that is the protocol doing what was asked. The
// bundled policies apply (screening included), so 403, 422 and (once the one caller has spent
// its privacy budget) 429 refusals are expected too.
//
// `npm run fuzz` (CI): BULWARK_FUZZ_RUNS cases (default 10,000); BULWARK_FUZZ_SEED replays a
// failure (fast-check prints the seed and path of the smallest failing case).

import t from 'tap'
import fc from 'fast-check'
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { buildConfig } from '../../src/config/load.ts'
import { realDeps } from '../../src/deps.ts'
import { errorCodes } from '../../src/errors.ts'
import { HEADER_LENGTH } from '../../src/oip/codec.ts'
import { buildGateway } from '../../src/server.ts'
import { repoRoot } from '../../kit/paths.ts'

const RUNS = Number(process.env.BULWARK_FUZZ_RUNS ?? 10_000)
const SEED = process.env.BULWARK_FUZZ_SEED === undefined ? undefined : Number(process.env.BULWARK_FUZZ_SEED)
const work = mkdtempSync(path.join(tmpdir(), 'bulwark-fuzz-'))

// The serving core with the front door off (as test/gateway/core-gateway.ts), the audit trail on
// (every refusal is recorded, so record building sees every odd input too) in a scratch folder.
const config = buildConfig(
  {
    tls: { enabled: false },
    auth: { enabled: false },
    authorization: { enabled: false },
    rateLimits: { enabled: false },
    server: { bodyLimitBytes: 1024 * 1024 },
    models: { directory: path.join(repoRoot, 'models'), serve: [{ name: 'mnist' }, { name: 'ocr-cls' }] },
    policies: { directory: path.join(repoRoot, 'policies') },
    // The development audit key is created under the scratch folder (baseDir) on first use.
    // One record per request (no aggregation of repeated refusals), so each is counted below.
    audit: { directory: path.join(work, 'audit'), durability: 'relaxed', aggregation: { enabled: false } },
    // Every fuzzed request comes from one address: the per-client limit would refuse most of them before the checks under test.
    clientLimits: { enabled: false },
    state: { directory: path.join(work, 'state') },
  },
  'fuzz config',
)
const gateway = await buildGateway({ config, baseDir: work, source: 'fuzz config' }, realDeps, { logLevel: 'silent' })
await gateway.load()
t.teardown(() => gateway.close(2000))
const api = gateway.api

const fixture = readFileSync(path.join(repoRoot, 'test/fixtures/mnist-request.json'), 'utf8')
const digit: number[] = JSON.parse(fixture).inputs[0].data

interface FuzzRequest {
  kind: string
  url: string
  headers: Record<string, string>
  payload: Buffer
  /** Whether the request set its own deadline (parameters.timeout). */
  ownDeadline: boolean
}

const DATATYPES = ['BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', 'INT32', 'INT64', 'FP16', 'FP32', 'FP64', 'BYTES', 'fp32', 'FLOAT', '']
const MODELS = {
  mnist: { input: 'input', output: 'probabilities', item: [1, 28, 28], range: [0, 1] as const },
  'ocr-cls': { input: 'x', output: 'softmax_0.tmp_0', item: [3, 48, 192], range: [-1, 1] as const },
}
type ModelName = keyof typeof MODELS

const oddValue = fc.oneof(
  fc.constant(null),
  fc.boolean(),
  fc.string({ maxLength: 8 }),
  fc.constantFrom(-1, 0, 1, -0, 0.5, 1e308, -1e308, 2 ** 53, 2 ** 64, 5e-324, 65536, 4294967296),
  fc.double(),
  fc.constant([]),
  fc.constant({}),
)
/** Numbers as JSON text can carry them: includes 1e999 (Infinity when parsed) and exponents. */
const oddNumberText = fc.constantFrom('1e999', '-1e999', '1e-400', '-0', '0.0000001', '1.0000001', '-1', '2', 'NaN', 'Infinity', '1E2')

const shapeArb = (item: number[]) =>
  fc.oneof(
    { weight: 4, arbitrary: fc.integer({ min: 1, max: 3 }).map((b) => [b, ...item]) },
    { weight: 2, arbitrary: fc.array(fc.integer({ min: -2, max: 70 }), { minLength: 0, maxLength: 6 }) },
    { weight: 1, arbitrary: fc.constantFrom([0, ...item], [65, ...item], [2 ** 31, ...item], [1, 2 ** 30, 2 ** 30, 1], [-1, ...item], [1.5, ...item], [2 ** 53, 1, 1, 1]) },
    { weight: 1, arbitrary: oddValue },
  )

/** A flat data array of `n` values: mostly in range, with mutations. */
const dataArb = (n: number, range: readonly [number, number]) =>
  fc.oneof(
    { weight: 12, arbitrary: fc.constant(n === digit.length ? digit : Array.from({ length: n }, (_, i) => range[0] + ((i * 7919) % 1000) / 1000 * (range[1] - range[0]))) },
    { weight: 2, arbitrary: fc.array(fc.double({ min: range[0], max: range[1], noNaN: true }), { minLength: Math.max(0, n - 2), maxLength: n + 2 }) },
    { weight: 1, arbitrary: fc.array(oddValue, { maxLength: 20 }) },
    { weight: 1, arbitrary: oddValue },
  )

/** Optional parameters on the request, its inputs and outputs: sensible and odd. */
const parametersArb = fc.oneof(
  { weight: 3, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.oneof(
    fc.record({ binary_data_output: fc.oneof(fc.boolean(), oddValue) }, { requiredKeys: [] }),
    fc.record({ timeout: fc.oneof(fc.integer({ min: 1, max: 10 }), fc.constant(30_000_000), oddValue) }, { requiredKeys: [] }),
    fc.dictionary(fc.string({ maxLength: 6 }), oddValue, { maxKeys: 3 }),
    oddValue,
  ) },
)

/** A structured request: a valid one for the model, with zero or more mutations applied. */
const structuredArb = fc
  .record({
    // ocr-cls requests are 27,648 floats per item (half a megabyte of JSON): fewer of them keeps the run short.
    model: fc.oneof({ weight: 9, arbitrary: fc.constant<ModelName>('mnist') }, { weight: 1, arbitrary: fc.constant<ModelName>('ocr-cls') }),
    versionPath: fc.oneof({ weight: 8, arbitrary: fc.constantFrom('', '/versions/1') }, { weight: 1, arbitrary: fc.constantFrom('/versions/2', '/versions/%00', '/versions/..', '/versions/') }),
    batch: fc.integer({ min: 1, max: 2 }),
    binary: fc.boolean(),
    // About a quarter of the cases are left unmutated (they must be served), the rest get one to three mutations.
    mutate: fc.oneof({ weight: 1, arbitrary: fc.constant<string[]>([]) }, { weight: 2, arbitrary: fc.array(
      fc.constantFrom(
        'drop-inputs', 'empty-inputs', 'inputs-not-array', 'drop-name', 'rename', 'duplicate-input', 'extra-input',
        'datatype', 'shape', 'data', 'data-number-text', 'nest-data', 'deep-nest', 'drop-data', 'extra-field', 'id',
        'outputs', 'parameters', 'input-parameters', 'header-length', 'binary-size', 'binary-bytes', 'top-level', 'truncate',
      ),
      { minLength: 1, maxLength: 3 },
    ) }),
    datatype: fc.constantFrom(...DATATYPES),
    shape: fc.constant(null).chain(() => shapeArb([1, 28, 28])),
    odd: oddValue,
    numberText: oddNumberText,
    parameters: parametersArb,
    outputs: fc.oneof(
      { weight: 3, arbitrary: fc.constant(undefined) },
      fc.array(fc.record({ name: fc.oneof(fc.constantFrom('probabilities', 'softmax_0.tmp_0', 'nope', ''), oddValue), parameters: fc.option(fc.record({ binary_data: fc.oneof(fc.boolean(), oddValue) }), { nil: undefined }) }, { requiredKeys: ['name'] }), { maxLength: 3 }),
      { weight: 1, arbitrary: oddValue },
    ),
    headerDelta: fc.oneof(fc.integer({ min: -3, max: 3 }), fc.constantFrom('abc', '-1', '1e3', ' 12', '99999999999', '0', '')),
    bytesDelta: fc.integer({ min: -5, max: 5 }),
    truncateAt: fc.nat(),
    junk: fc.uint8Array({ maxLength: 64 }),
  })
  .chain((p) => {
    const m = MODELS[p.model]
    const count = p.batch * m.item.reduce((a, b) => a * b, 1)
    return dataArb(count, m.range).map((data) => ({ ...p, data, count }))
  })
  .map((p): FuzzRequest => {
    const m = MODELS[p.model]
    const has = (x: string) => (p.mutate as readonly string[]).includes(x)
    const input: Record<string, unknown> = { name: m.input, datatype: 'FP32', shape: [p.batch, ...m.item] }
    let binary: Buffer | null = null
    if (p.binary && Array.isArray(p.data) && p.data.every((v) => typeof v === 'number')) {
      binary = Buffer.from(new Float32Array(p.data as number[]).buffer)
      input.parameters = { binary_data_size: binary.byteLength }
    } else {
      input.data = p.data
    }
    const body: Record<string, unknown> = { id: 'fuzz', inputs: [input] }
    if (has('drop-inputs')) delete body.inputs
    if (has('empty-inputs')) body.inputs = []
    if (has('inputs-not-array')) body.inputs = p.odd
    if (has('drop-name')) delete input.name
    if (has('rename')) input.name = typeof p.odd === 'string' ? p.odd : 'other'
    if (has('duplicate-input')) body.inputs = [input, input]
    if (has('extra-input')) body.inputs = [input, { ...input, name: 'extra' }]
    if (has('datatype')) input.datatype = p.datatype
    if (has('shape')) input.shape = p.shape
    if (has('data')) input.data = p.odd
    if (has('nest-data') && Array.isArray(input.data)) input.data = [[input.data]]
    if (has('deep-nest')) input.data = JSON.parse('['.repeat(40) + '0.5' + ']'.repeat(40))
    if (has('drop-data')) delete input.data
    if (has('extra-field')) body.unexpected = p.odd
    if (has('id')) body.id = p.odd
    if (p.outputs !== undefined || has('outputs')) body.outputs = p.outputs
    if (p.parameters !== undefined || has('parameters')) body.parameters = p.parameters ?? p.odd
    if (has('input-parameters')) input.parameters = { ...(input.parameters as object), binary_data_size: p.odd }
    if (has('binary-size') && binary) input.parameters = { binary_data_size: binary.byteLength + p.bytesDelta }
    const ownDeadline = typeof body.parameters === 'object' && body.parameters !== null && 'timeout' in body.parameters
    let json = JSON.stringify(has('top-level') ? p.odd : body) ?? 'null'
    // A number as JSON text can carry what JSON.stringify cannot (1e999 is Infinity once parsed).
    if (has('data-number-text') && Array.isArray(input.data) && input.data.length > 0) json = json.replace(/"data":\[\[*-?[0-9.e-]+/, (s) => s.replace(/-?[0-9.e-]+$/, p.numberText))
    let header: Buffer = Buffer.from(json)
    if (has('truncate')) header = header.subarray(0, p.truncateAt % (header.length + 1))
    const headers: Record<string, string> = { 'content-type': 'application/json' }
    let payload = header
    if (binary || has('header-length')) {
      let bytes = binary ?? Buffer.from(p.junk)
      if (has('binary-bytes')) bytes = p.bytesDelta >= 0 ? Buffer.concat([bytes, Buffer.alloc(p.bytesDelta)]) : bytes.subarray(0, bytes.length + p.bytesDelta)
      payload = Buffer.concat([header, bytes])
      headers['content-type'] = 'application/octet-stream'
      headers[HEADER_LENGTH] = typeof p.headerDelta === 'number' && has('header-length') ? String(header.length + p.headerDelta) : typeof p.headerDelta === 'string' && has('header-length') ? p.headerDelta : String(header.length)
    }
    return { kind: `structured ${p.model}${binary ? ' binary' : ''} [${p.mutate.join(',')}]`, url: `/v2/models/${p.model}${p.versionPath}/infer`, headers, payload, ownDeadline }
  })

/** Unstructured: random bytes or random JSON, random content types and length headers, random model paths. */
const unstructuredArb = fc
  .record({
    body: fc.oneof(
      fc.uint8Array({ maxLength: 2048 }).map((b) => Buffer.from(b)),
      fc.jsonValue({ maxDepth: 4 }).map((v) => Buffer.from(JSON.stringify(v) ?? '')),
      fc.string({ unit: 'binary', maxLength: 512 }).map((s) => Buffer.from(s)),
      fc.constantFrom('', '{', '[', '{"inputs":', '\u0000', '{"inputs":[{"name":"input"}]}', '{"__proto__":{"x":1},"inputs":[]}', '{"constructor":{"prototype":{}}}').map((s) => Buffer.from(s)),
    ),
    // Odd model path segments: unknown names, encoded slashes, bad percent-encodings, over-long names.
    model: fc.constantFrom('mnist', 'ocr-cls', 'unknown', 'MNIST', 'mnist%2F..', '..', '%zz', '%', 'mnist%00', '%C0%AF', 'a'.repeat(130)),
    contentType: fc.constantFrom('application/json', 'application/octet-stream', 'text/plain', 'multipart/form-data; boundary=x', 'application/json; charset=utf-16', undefined),
    headerLength: fc.option(fc.oneof(fc.nat({ max: 3000 }).map(String), fc.string({ maxLength: 12 })), { nil: undefined }),
  })
  .map((p): FuzzRequest => {
    const headers: Record<string, string> = {}
    if (p.contentType !== undefined) headers['content-type'] = p.contentType
    // HTTP header values cannot hold control characters; the client library would refuse to send them.
    if (p.headerLength !== undefined && /^[\x20-\x7e]*$/.test(p.headerLength)) headers[HEADER_LENGTH] = p.headerLength
    return { kind: 'unstructured', url: `/v2/models/${p.model}/infer`, headers, payload: p.body, ownDeadline: false }
  })

const requestArb = fc.oneof({ weight: 3, arbitrary: structuredArb }, { weight: 1, arbitrary: unstructuredArb })

const codes = new Set<string>(errorCodes)
const seen = new Map<string, number>()
/** Requests sent to the API listener: each must leave an audit record. */
let sent = 0

t.test(`every request gets a 2xx or a 4xx with an error body (${RUNS} cases)`, async (t) => {
  const started = performance.now()
  let cases = 0
  await fc.assert(
    fc.asyncProperty(requestArb, async (req) => {
      cases++
      sent++
      const res = await api.inject({ method: 'POST', url: req.url, headers: req.headers, payload: req.payload })
      const status = res.statusCode
      seen.set(String(status), (seen.get(String(status)) ?? 0) + 1)
      if (status >= 200 && status < 300) {
        const type = String(res.headers['content-type'] ?? '')
        if (type.startsWith('application/json')) {
          const body = res.json()
          if (!Array.isArray(body.outputs)) throw new Error(`${req.kind}: 2xx without outputs: ${res.body.slice(0, 200)}`)
        } else if (res.headers[HEADER_LENGTH] === undefined) {
          throw new Error(`${req.kind}: 2xx binary response without ${HEADER_LENGTH}`)
        }
        return
      }
      const deadline = status === 504 && req.ownDeadline
      if (!(status >= 400 && status < 500) && !deadline) throw new Error(`${req.kind}: status ${status}: ${res.body.slice(0, 300)}`)
      let body: { error?: unknown; code?: unknown }
      try {
        body = res.json()
      } catch {
        throw new Error(`${req.kind}: ${status} with a body that is not JSON: ${res.body.slice(0, 200)}`)
      }
      if (typeof body.error !== 'string' || body.error.length === 0) throw new Error(`${req.kind}: ${status} without an error message: ${res.body.slice(0, 200)}`)
      if (typeof body.code !== 'string' || !codes.has(body.code)) throw new Error(`${req.kind}: ${status} with an unknown code ${JSON.stringify(body.code)}`)
    }),
    { numRuns: RUNS, ...(SEED === undefined ? {} : { seed: SEED }), endOnFailure: true },
  )
  const seconds = (performance.now() - started) / 1000
  t.equal(cases, RUNS, `${cases} cases in ${seconds.toFixed(1)} s; statuses ${JSON.stringify(Object.fromEntries([...seen].sort()))}`)
  t.ok([...seen.keys()].some((s) => s.startsWith('2')), 'some cases were valid and served')
  t.ok([...seen.keys()].filter((s) => s.startsWith('4')).length >= 3, 'several kinds of refusal were reached')
})

t.test('after the storm the gateway still serves, and stays live and ready', async (t) => {
  t.same((await api.inject('/v2/health/live')).json(), { live: true })
  sent++
  t.equal((await gateway.admin.inject('/readyz')).statusCode, 200, 'ready: models loaded, audit trail writable')
  const res = await api.inject({ method: 'POST', url: '/v2/models/mnist/infer', headers: { 'content-type': 'application/json' }, payload: fixture })
  sent++
  if (res.statusCode === 403) {
    // With the front door off every request is the same caller, and thousands of near-identical
    // digits look like a query-based attack to mnist's stateful screening, which then refuses
    // that caller for its cooldown: the defence working, through the whole pipeline.
    t.equal(res.json().code, 'attack_suspected', 'refused by the stateful screening (the fuzzing caller is in cooldown)')
  } else if (res.statusCode === 429) {
    // The same one caller's answers may also have spent mnist's privacy budget: refused, before
    // screening and the model, for as long as the budget's window says.
    t.equal(res.json().code, 'privacy_budget_exhausted', 'refused for the fuzzing caller\'s spent budget')
    t.ok(Number(res.headers['retry-after']) > 0, 'with Retry-After')
  } else {
    t.equal(res.statusCode, 200)
    const out: number[] = res.json().outputs[0].data
    t.equal(out.indexOf(Math.max(...out)), 7, 'the README digit is still a 7')
  }
})

t.test('every fuzzed request was audited', async (t) => {
  // Relaxed durability: a record is written to the OS before its response leaves.
  const dir = path.join(work, 'audit')
  const files = readdirSync(dir).filter((f) => f.endsWith('.jsonl'))
  const lines = files.flatMap((f) => readFileSync(path.join(dir, f), 'utf8').split('\n').filter((l) => l.length > 0))
  const records = lines.filter((l) => l.includes('"type":"request"')).length
  t.equal(records, sent, `${records} audit records for ${sent} inference requests (every exchange on the API listener, refused or served)`)
})
