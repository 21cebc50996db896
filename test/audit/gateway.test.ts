// The audit trail of a real gateway: every request through the real front door (mTLS, JWT,
// policies, rate limits) and the real ocr-cls model leaves exactly one record, with the
// decision, stage and precise reason; no record holds a token or tensor data; the log
// verifies. And the gateway fails closed when the audit log cannot be written.
//
// The cases are a table: a new refusal (a new stage, a new check) is one more row.

import t from 'tap'
import { readFileSync, readdirSync } from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { parse as parseYaml } from 'yaml'
import { request as undiciRequest } from 'undici'
import { buildConfig } from '../../src/config/load.ts'
import { realDeps } from '../../src/deps.ts'
import { buildGateway } from '../../src/server.ts'
import { sha256 } from '../../src/audit/chain.ts'
import { publicKeyPath, writeSigningKey } from '../../src/audit/keys.ts'
import { verifyAuditLog } from '../../src/audit/verify.ts'
import { cryptoRandom } from '../../src/deps.ts'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { logSink, startGateway, frontDoorOff } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { faultyFs, publicKeys, requestRecords, tempDir, testKey } from './helpers.ts'

const SHAPE = [1, 3, 48, 192]
const COUNT = SHAPE.reduce((a, b) => a * b, 1)
/** A value no record could contain by accident (records round numbers to 3 decimals). */
const MARKER = 0.31415926
const tensor = new Float32Array(COUNT).map((_, i) => (i % 2 === 0 ? MARKER : -MARKER))
const tensorDigest = sha256(new Uint8Array(tensor.buffer)).toString('hex')
const inferBody = (data: number[] = Array.from(tensor), shape = SHAPE) => ({ inputs: [{ name: 'x', datatype: 'FP32', shape, data }] })

// The repo's policy, releasing the classifier's scores (rounded) so there is an output to digest.
const repoPolicy = {
  ...(parseYaml(readFileSync(path.join(repoRoot, 'policies', 'ocr-cls.yaml'), 'utf8')) as Record<string, unknown>),
  output: { mode: 'scores', outputs: ['softmax_0.tmp_0'] },
}
const policyFor = (model: string, extra: Record<string, unknown> = {}) => ({ ...repoPolicy, model, ...extra })

t.test('a mixed run through the front door: one record per request, each with its decision, stage and reason', async (t) => {
  const auditDir = tempDir('gw-audit')
  const keyFile = path.join(tempDir('gw-key'), 'audit-key.pem')
  await writeSigningKey(keyFile, testKey, cryptoRandom)
  const gw = await startGateway({
    // "broken" is listed but has no model folder: it fails to load, and stays not ready.
    models: ['ocr-cls', 'broken'],
    policies: {
      'ocr-cls': repoPolicy,
      broken: policyFor('broken'),
      limited: policyFor('limited', { rateLimit: { requestsPerWindow: 1, windowMs: 60_000 } }),
    },
    config: {
      server: { bodyLimitBytes: 2 * 1024 * 1024 },
      // Each refusal here is checked by its own record: the two 401s at jwt-auth would
      // otherwise be one run (aggregation has its own tests, test/audit/aggregate.test.ts).
      audit: { directory: auditDir, checkpoint: { signingKeyFile: keyFile, everyRecords: 7 }, aggregation: { enabled: false } },
    },
  })
  let closed = false
  t.teardown(() => (closed ? undefined : gw.close()))

  const token = await gw.token()
  const noScope = await gw.token({ scopes: ['ocr-cls:metadata'] })
  const tokensUsed = [token, noScope]
  const bogus = 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJl'
  tokensUsed.push(bogus)

  const binaryRequest = async () => {
    const header = Buffer.from(JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape: SHAPE, parameters: { binary_data_size: tensor.byteLength } }] }))
    const res = await undiciRequest(`${gw.url}/v2/models/ocr-cls/infer`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream', 'inference-header-content-length': String(header.length) },
      body: Buffer.concat([header, Buffer.from(tensor.buffer)]),
      dispatcher: gw.agent,
    })
    return { status: res.statusCode, headers: res.headers, body: JSON.parse(await res.body.text()) as unknown }
  }

  interface Case {
    name: string
    send: () => Promise<{ status: number; headers: Record<string, string | string[] | undefined>; body: any }>
    status: number
    decision: 'allowed' | 'denied' | 'error'
    stage: string
    code: string | null
    verb?: string
    reason?: RegExp
    principal?: boolean
    inputs?: boolean
    outputs?: boolean
  }
  const cases: Case[] = [
    { name: 'allowed inference (JSON)', send: () => gw.request('/v2/models/ocr-cls/infer', { token, body: inferBody() }), status: 200, decision: 'allowed', stage: 'complete', code: null, verb: 'infer', principal: true, inputs: true, outputs: true },
    { name: 'allowed inference (binary tensor)', send: binaryRequest, status: 200, decision: 'allowed', stage: 'complete', code: null, verb: 'infer', principal: true, inputs: true, outputs: true },
    { name: 'allowed model metadata', send: () => gw.request('/v2/models/ocr-cls', { token }), status: 200, decision: 'allowed', stage: 'complete', code: null, verb: 'metadata', principal: true },
    { name: 'server metadata (no pipeline)', send: () => gw.request('/v2', { token: null }), status: 200, decision: 'allowed', stage: 'complete', code: null, verb: 'server' },
    { name: 'no token', send: () => gw.request('/v2/models/ocr-cls/infer', { token: null, body: inferBody([0], [1]) }), status: 401, decision: 'denied', stage: 'jwt-auth', code: 'unauthenticated', principal: false },
    { name: 'a forged token', send: () => gw.request('/v2/models/ocr-cls/infer', { token: bogus, body: inferBody([0], [1]) }), status: 401, decision: 'denied', stage: 'jwt-auth', code: 'unauthenticated', principal: false },
    { name: 'a token without the infer scope', send: () => gw.request('/v2/models/ocr-cls/infer', { token: noScope, body: inferBody([0], [1]) }), status: 403, decision: 'denied', stage: 'model-policy', code: 'forbidden', principal: true },
    { name: 'rate limit: first call passes the limiter (the model is not served)', send: () => gw.request('/v2/models/limited/infer', { token, body: inferBody([0], [1]) }), status: 404, decision: 'denied', stage: 'input-validation', code: 'model_not_found' },
    { name: 'rate limit: second call is refused', send: () => gw.request('/v2/models/limited/infer', { token, body: inferBody([0], [1]) }), status: 429, decision: 'denied', stage: 'rate-limit', code: 'rate_limited', principal: true },
    { name: 'wrong shape', send: () => gw.request('/v2/models/ocr-cls/infer', { token, body: inferBody([0, 0], [1, 2]) }), status: 400, decision: 'denied', stage: 'input-validation', code: 'shape_mismatch', reason: /dimensions|dimension/ },
    { name: 'value out of range', send: () => gw.request('/v2/models/ocr-cls/infer', { token, body: inferBody(Array.from(tensor, (v, i) => (i === 5 ? 7 : v))) }), status: 400, decision: 'denied', stage: 'input-validation', code: 'value_out_of_range', reason: /element 5 is 7/ },
    { name: 'invalid JSON', send: () => gw.request('/v2/models/ocr-cls/infer', { token, body: undefined, headers: { 'content-type': 'application/json' }, method: 'POST' }), status: 400, decision: 'denied', stage: 'body-read', code: 'invalid_json' },
    { name: 'body too large', send: () => gw.request('/v2/models/ocr-cls/infer', { token, body: inferBody(new Array(800_000).fill(0.5)) }), status: 413, decision: 'denied', stage: 'body-read', code: 'payload_too_large' },
    { name: 'model not ready', send: () => gw.request('/v2/models/broken/infer', { token, body: inferBody([0], [1]) }), status: 503, decision: 'error', stage: 'input-validation', code: 'model_not_ready' },
    { name: 'unknown route', send: () => gw.request('/v2/nope?access_token=in-the-query', { token: null }), status: 404, decision: 'denied', stage: 'router', code: 'not_found', verb: 'server' },
  ]

  const sent: { c: Case; id: string; body: any }[] = []
  for (const c of cases) {
    const res = await c.send()
    t.equal(res.status, c.status, `${c.name}: HTTP ${c.status}`)
    const id = res.headers['x-request-id']
    t.type(id, 'string', `${c.name}: the response names its request id`)
    sent.push({ c, id: id as string, body: res.body })
  }
  await gw.close()
  closed = true

  const records = requestRecords(auditDir)
  t.equal(records.length, cases.length, 'exactly one record per request')
  const byId = new Map(records.map((l) => [l.rec.id as string, l.rec]))
  t.equal(byId.size, records.length, 'no request has two records')
  for (const { c, id, body } of sent) {
    const rec = byId.get(id)
    if (!rec) {
      t.fail(`${c.name}: no record for ${id}`)
      continue
    }
    t.match(rec, { decision: c.decision, stage: c.stage, status: c.status, code: c.code }, `${c.name}: ${c.decision} at ${c.stage}`)
    if (c.verb) t.equal(rec.verb, c.verb, `${c.name}: verb`)
    if (c.code !== null) t.ok(typeof rec.reason === 'string' && rec.reason.length > 0, `${c.name}: the precise reason is recorded`)
    if (c.reason) t.match(rec.reason, c.reason, `${c.name}: reason`)
    if (rec.verb !== 'server') t.match(rec.identity, { id: DEV_WORKLOAD, kind: 'spiffe' }, `${c.name}: the workload from the client certificate`)
    t.match(rec.client, { address: '127.0.0.1', tls: 'TLSv1.3' }, `${c.name}: client address and TLS version`)
    if (c.principal === true) t.match(rec.principal, { sub: 'dev' }, `${c.name}: the token's subject`)
    if (c.principal === false) t.equal(rec.principal, null, `${c.name}: no principal`)
    if (c.inputs) t.same(rec.inputs, [{ name: 'x', datatype: 'FP32', shape: SHAPE, sha256: tensorDigest }], `${c.name}: input digest over the tensor bytes`)
    if (c.outputs) {
      const returned = (body.outputs as { name: string; datatype: string; shape: number[]; data: number[] }[]).map((o) => ({
        name: o.name,
        datatype: o.datatype,
        shape: o.shape,
        sha256: sha256(new Uint8Array(Float32Array.from(o.data).buffer)).toString('hex'),
      }))
      t.ok(returned.length > 0, `${c.name}: an output was returned`)
      t.same(rec.outputs, returned, `${c.name}: a digest of each output as returned (after output protection)`)
    }
    if (c.decision === 'allowed' && c.verb === 'infer') t.ok((rec.stageMs as Record<string, number>)['model-inference']! > 0, 'per-stage latencies')
  }
  const bodyDigested = byId.get(sent.find((s) => s.c.name === 'wrong shape')!.id)!
  t.match(bodyDigested.bodySha256, /^[0-9a-f]{64}$/, 'a refused body is identified by its digest')

  const text = readdirSync(auditDir).map((f) => readFileSync(path.join(auditDir, f), 'utf8')).join('')
  for (const tok of tokensUsed) t.notOk(text.includes(tok), 'no token in the audit files')
  t.notOk(text.includes(tok3(token)), 'not even the token signature')
  t.notOk(/bearer/i.test(text), 'no authorization header')
  t.notOk(text.includes('0.314159'), 'no tensor values')
  t.notOk(text.includes(Buffer.from(tensor.buffer, 0, 12).toString('base64')) || text.includes(Buffer.from(tensor.buffer, 0, 12).toString('hex')), 'no tensor bytes')
  t.notOk(text.includes('in-the-query'), 'no query string')
  t.notOk(text.includes('BEGIN CERTIFICATE'), 'no certificate')

  const report = await verifyAuditLog(auditDir, publicKeys)
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
  t.ok(report.closedCleanly, 'closed with a shutdown checkpoint')
})

/** The signature part of a JWT. */
function tok3(jwt: string): string {
  return jwt.split('.')[2]!
}

// --- failing closed, on a plain-HTTP gateway (inject) with an injected file system ---

async function plainGateway(over: Record<string, unknown> = {}, fs?: ReturnType<typeof faultyFs>) {
  const dir = tempDir('gw-plain')
  const keyFile = path.join(dir, 'audit-key.pem')
  await writeSigningKey(keyFile, testKey, cryptoRandom)
  const config = buildConfig(
    { ...frontDoorOff, models: { serve: [] }, audit: { directory: path.join(dir, 'audit'), retryMs: 30, checkpoint: { signingKeyFile: keyFile } }, ...over },
    'test config',
  )
  const logs = logSink()
  const gateway = await buildGateway({ config, baseDir: dir, source: 'test config' }, realDeps, { logLevel: 'info', logStream: logs.stream, audit: { fs } })
  return { gateway, dir, auditDir: path.join(dir, 'audit'), logs }
}

t.test('when the audit log cannot be written every request gets 503 audit_unavailable, /readyz says why, and it recovers', async (t) => {
  const fs = faultyFs()
  const { gateway, auditDir, logs } = await plainGateway({}, fs)
  t.teardown(() => gateway.close(500))
  const ok = await gateway.api.inject({ url: '/v2/health/live' })
  t.equal(ok.statusCode, 200)
  const ready = await gateway.admin.inject({ url: '/readyz' })
  t.equal(ready.json().checks.audit, 'ok')

  fs.fail = 'ENOSPC'
  for (const url of ['/v2/health/live', '/v2/models/x/infer', '/nope']) {
    const res = await gateway.api.inject({ url, method: url.endsWith('infer') ? 'POST' : 'GET', payload: url.endsWith('infer') ? '{}' : undefined })
    t.equal(res.statusCode, 503, `${url}: refused`)
    t.same(res.json(), { error: 'the audit log cannot be written, so the request is refused; retry later', code: 'audit_unavailable' })
    t.ok(res.headers['retry-after'], 'with Retry-After')
  }
  const notReady = await gateway.admin.inject({ url: '/readyz' })
  t.equal(notReady.statusCode, 503, '/readyz: not ready')
  t.match(notReady.json().checks.audit, /ENOSPC/)

  fs.fail = null
  // A whole gateway on the real clock (realDeps): the writer's probe runs on real time, and its
  // log line says when it has recovered. The probe itself is tested on a fake clock in writer.test.ts.
  await logs.next((l) => /writable again/.test(String(l.msg)))
  t.equal((await gateway.admin.inject({ url: '/readyz' })).json().checks.audit, 'ok', 'ready again')
  const again = await gateway.api.inject({ url: '/v2/health/live' })
  t.equal(again.statusCode, 200, 'serving again')
  await gateway.close(500)
  t.same(requestRecords(auditDir).map((l) => l.rec.status), [200, 200], 'the refused requests left no record; the served ones did')
  t.ok((await verifyAuditLog(auditDir, publicKeys)).ok)
})

t.test('audit can be switched off (benchmark baseline): no files, responses unchanged', async (t) => {
  const { gateway, auditDir } = await plainGateway({ audit: { enabled: false } })
  const res = await gateway.api.inject({ url: '/v2' })
  t.equal(res.statusCode, 200)
  t.type(res.headers['x-request-id'], 'string')
  t.equal(gateway.audit.writer, null)
  await gateway.close(500)
  t.throws(() => readdirSync(auditDir), /ENOENT/)
})

t.test('a configured signing key that does not exist stops the start with a clear message', async (t) => {
  await t.rejects(plainGateway({ audit: { checkpoint: { signingKeyFile: '/nonexistent/audit-key.pem' } } }), /audit\/checkpoint\/signingKeyFile: cannot read the audit signing key .*bulwark audit keygen/)
})

t.test('the development key is created with mode 0600 when the default path is missing', async (t) => {
  const dir = tempDir('gw-devkey')
  const config = buildConfig({ ...frontDoorOff, models: { serve: [] } }, 'test config')
  const gateway = await buildGateway({ config, baseDir: dir, source: 'test config' }, realDeps, { logLevel: 'silent' })
  await gateway.api.inject({ url: '/v2' })
  await gateway.close(500)
  const key = path.join(dir, '.bulwark/dev/audit-key.pem')
  t.equal((await import('node:fs')).statSync(key).mode & 0o777, 0o600)
  const { loadVerifyKey } = await import('../../src/audit/keys.ts')
  const report = await verifyAuditLog(path.join(dir, '.bulwark/audit'), [await loadVerifyKey(publicKeyPath(key))])
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
  t.equal(report.records, 1)
})

t.test('requests refused by the HTTP parser itself are audited too (431 header section too large, 400 malformed)', async (t) => {
  const { gateway, auditDir } = await plainGateway({ server: { maxHeaderBytes: 1024, listen: '127.0.0.1:0' } })
  await gateway.api.listen({ host: '127.0.0.1', port: 0 })
  const port = (gateway.api.server.address() as import('node:net').AddressInfo).port
  const raw = (text: string) =>
    new Promise<string>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => s.write(text))
      let got = ''
      s.on('data', (c) => (got += c.toString()))
      s.on('close', () => resolve(got))
      s.on('error', () => {})
    })
  t.match(await raw(`GET /v2 HTTP/1.1\r\nhost: x\r\nx-big: ${'a'.repeat(4096)}\r\n\r\n`), /^HTTP\/1\.1 431 /)
  t.match(await raw('NOT HTTP AT ALL\r\n\r\n'), /^HTTP\/1\.1 400 /)
  await gateway.close(500)
  const recs = requestRecords(auditDir).map((l) => l.rec)
  t.match(recs, [
    { status: 431, decision: 'denied', stage: 'transport', verb: 'server', code: null, reason: /HPE_HEADER_OVERFLOW/ },
    { status: 400, decision: 'denied', stage: 'transport', verb: 'server', code: null, reason: /HPE_/ },
  ])
  t.notOk(readFileSync(path.join(auditDir, readdirSync(auditDir).find((f) => f.endsWith('.jsonl'))!), 'utf8').includes('aaaaaaaa'), 'not the header itself')
})
