// Repeated identical refusals are aggregated (src/audit/aggregate.ts): the first of a run is
// written in full, the identical ones within audit.aggregation.windowMs are counted, and one
// "aggregate" record with the count, first and last time, and what they share is written
// when the window closes (the clock's timer) or at shutdown. It is chained and checkpointed:
// the log verifies, the verifier counts it, and a changed count is found on its line. Answers
// served are never aggregated, nor refusals with evidence of their own or cut short by the
// client; while the log cannot be written nothing is counted. The tallies are bounded.
// A gateway on plain HTTP (inject) with a FakeClock; the real-TLS path is in identity.test.ts.

import t from 'tap'
import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { aggregationKey, TALLY_MAX } from '../../src/audit/aggregate.ts'
import { writeSigningKey } from '../../src/audit/keys.ts'
import type { AuditRecord } from '../../src/audit/record.ts'
import { verifyAuditLog } from '../../src/audit/verify.ts'
import { buildConfig } from '../../src/config/load.ts'
import { cryptoRandom } from '../../src/deps.ts'
import { buildGateway } from '../../src/server.ts'
import { frontDoorOff } from '../../kit/gateway.ts'
import { FakeClock } from '../helpers/fake-clock.ts'
import { faultyFs, publicKeys, readAudit, tempDir, testKey } from './helpers.ts'

const WINDOW_MS = 10_000

/** A gateway with no model on plain HTTP; `audit` is merged over the audit settings here. */
async function gatewayOnFakeClock(audit: Record<string, unknown> = {}, fs?: ReturnType<typeof faultyFs>) {
  const dir = tempDir('aggregate')
  const keyFile = path.join(dir, 'audit-key.pem')
  await writeSigningKey(keyFile, testKey, cryptoRandom)
  const auditDir = path.join(dir, 'audit')
  const config = buildConfig(
    { ...frontDoorOff, models: { serve: [] }, audit: { directory: auditDir, retryMs: 30, checkpoint: { signingKeyFile: keyFile }, aggregation: { windowMs: WINDOW_MS }, ...audit } },
    'test config',
  )
  const clock = new FakeClock(Date.now())
  const gateway = await buildGateway({ config, baseDir: dir, source: 'test config' }, { clock, random: cryptoRandom }, { logLevel: 'silent', audit: { fs } })
  return { gateway, clock, auditDir }
}

const lines = (dir: string) => readAudit(dir).map((l) => l.rec).filter((r) => r.type !== 'checkpoint')

t.test('N identical refusals: one record in full, then one aggregate record with the count N-1 when the window closes; the log verifies', async (t) => {
  const { gateway, clock, auditDir } = await gatewayOnFakeClock()
  t.teardown(() => gateway.close(0))
  const N = 6
  const ids: string[] = []
  for (let i = 0; i < N; i++) {
    clock.advance(100)
    // Different paths, one route (none matched): junk that invents paths is one run.
    const res = await gateway.api.inject({ url: `/junk-${i}` })
    t.equal(res.statusCode, 404)
    ids.push(res.headers['x-request-id'] as string)
  }
  await gateway.audit.writer!.whenIdle()
  t.match(lines(auditDir), [{ type: 'request', id: ids[0], status: 404, code: 'not_found', stage: 'router', path: '/junk-0' }], 'only the first is written before the window closes')
  t.equal(lines(auditDir).length, 1)
  t.match(await gateway.metrics.render(), new RegExp(`^bulwark_audit_refusals_aggregated_total ${N - 1}$`, 'm'), 'the rest are counted')

  await clock.tick(WINDOW_MS)
  await gateway.audit.writer!.whenIdle()
  const [full, aggregate] = lines(auditDir)
  t.equal(lines(auditDir).length, 2, 'one aggregate record more')
  t.match(aggregate, {
    type: 'aggregate',
    firstId: ids[0],
    count: N - 1,
    windowMs: WINDOW_MS,
    method: 'GET',
    route: '',
    verb: 'server',
    decision: 'denied',
    stage: 'router',
    status: 404,
    code: 'not_found',
    client: { addresses: { values: { '127.0.0.1': N - 1 }, more: 0 } },
    models: { values: {}, more: 0 },
  })
  t.ok(Date.parse(aggregate!.firstAt as string) > Date.parse(full!.receivedAt as string), 'first time: the second refusal')
  t.equal(Date.parse(aggregate!.lastAt as string) - Date.parse(aggregate!.firstAt as string), (N - 2) * 100, 'last time: the last refusal')
  const reasons = (aggregate!.reasons as { values: Record<string, number>; more: number }).values
  t.same(Object.keys(reasons).sort(), ids.slice(1).map((_, i) => `no route GET /junk-${i + 1}; see GET /v2 and the Open Inference Protocol v2 paths`).sort(), 'each reason, tallied')

  const after = await gateway.api.inject({ url: '/junk-again' })
  await gateway.audit.writer!.whenIdle()
  t.match(lines(auditDir).at(-1), { type: 'request', id: after.headers['x-request-id'], path: '/junk-again' }, 'after the window, the next refusal opens a new run, in full')

  await gateway.close(0)
  const report = await verifyAuditLog(auditDir, publicKeys)
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
  t.match(report, { records: 2, aggregates: 1, aggregatedRefusals: N - 1, closedCleanly: true }, 'the verifier counts the aggregate record and the refusals it stands for')

  // Chained and signed like any other line: a count lowered afterwards is found on its line.
  const at = readAudit(auditDir).find((l) => l.rec.type === 'aggregate')!
  const file = path.join(auditDir, at.file)
  writeFileSync(file, readFileSync(file, 'utf8').replace(`"count":${N - 1},`, '"count":1,'))
  const tampered = await verifyAuditLog(auditDir, publicKeys)
  t.notOk(tampered.ok, 'a changed aggregate record does not verify')
  t.match(tampered.problems[0], { kind: 'modified', file: at.file, line: at.line })
})

t.test('answers served are never aggregated; different refusals are different runs', async (t) => {
  const { gateway, auditDir } = await gatewayOnFakeClock()
  for (let i = 0; i < 3; i++) t.equal((await gateway.api.inject({ url: '/v2/health/live' })).statusCode, 200)
  await gateway.api.inject({ url: '/nope' })
  await gateway.api.inject({ method: 'POST', url: '/nope' })
  await gateway.api.inject({ url: '/v2/models/x' })
  await gateway.close(0)
  t.same(
    lines(auditDir).map((r) => [r.type, r.method, r.status]),
    [
      ['request', 'GET', 200],
      ['request', 'GET', 200],
      ['request', 'GET', 200],
      ['request', 'GET', 404],
      ['request', 'POST', 404],
      ['request', 'GET', 404],
    ],
    'one record each',
  )
})

t.test('shutdown writes the open runs\' aggregate records before its checkpoint', async (t) => {
  const { gateway, auditDir } = await gatewayOnFakeClock()
  for (let i = 0; i < 4; i++) await gateway.api.inject({ url: '/nope' })
  await gateway.close(0)
  const all = readAudit(auditDir).map((l) => l.rec)
  t.match(all.slice(-2), [{ type: 'aggregate', count: 3 }, { type: 'checkpoint', event: 'shutdown' }])
  t.ok((await verifyAuditLog(auditDir, publicKeys)).ok)
})

t.test('while the log cannot be written, an identical refusal is not counted: it fails closed like any other', async (t) => {
  const fs = faultyFs()
  const { gateway } = await gatewayOnFakeClock({}, fs)
  t.teardown(() => gateway.close(0))
  t.equal((await gateway.api.inject({ url: '/nope' })).statusCode, 404, 'the first, in full: its run is open')
  fs.fail = 'ENOSPC'
  t.equal((await gateway.api.inject({ url: '/v2' })).statusCode, 503, 'a write fails: the log is failing')
  const res = await gateway.api.inject({ url: '/nope' })
  t.equal(res.statusCode, 503)
  t.equal(res.json().code, 'audit_unavailable')
  fs.fail = null
})

t.test('aggregation can be switched off: every refusal its own record', async (t) => {
  const { gateway, auditDir } = await gatewayOnFakeClock({ aggregation: { enabled: false } })
  for (let i = 0; i < 3; i++) await gateway.api.inject({ url: '/nope' })
  await gateway.close(0)
  t.same(lines(auditDir).map((r) => r.type), ['request', 'request', 'request'])
})

// --- what makes refusals identical ---

const refusal = (over: Partial<AuditRecord> = {}): AuditRecord => ({
  type: 'request',
  id: 'r',
  receivedAt: '2030-01-01T00:00:00.000Z',
  answeredAt: '2030-01-01T00:00:00.001Z',
  durationMs: 1,
  method: 'POST',
  path: '/v2/models/m/infer',
  client: { address: '10.0.0.1', tls: 'TLSv1.3' },
  identity: { id: 'spiffe://x/a', kind: 'spiffe', certSha256: 'aa'.repeat(32) },
  principal: null,
  model: 'm',
  version: null,
  verb: 'infer',
  decision: 'denied',
  stage: 'jwt-auth',
  status: 401,
  code: 'unauthenticated',
  reason: 'no Authorization header',
  stageMs: {},
  bytesIn: null,
  bytesOut: 10,
  bodySha256: null,
  inputs: null,
  outputs: null,
  flags: [],
  privacy: null,
  ...over,
})

t.test('identical: same client, principal, status, code, stage, method, route and verb; model, address and reason may differ', async (t) => {
  const route = '/v2/models/:model/infer'
  const base = aggregationKey(refusal(), route)
  t.type(base, 'string')
  t.equal(aggregationKey(refusal({ model: 'invented-1', path: '/v2/models/invented-1/infer', client: { address: '10.0.0.2', tls: 'TLSv1.3' }, reason: 'signature does not verify' }), route), base)
  const different: [string, Partial<AuditRecord>, string?][] = [
    ['another certificate', { identity: { id: 'spiffe://x/a', kind: 'spiffe', certSha256: 'bb'.repeat(32) } }],
    ['another principal', { principal: { sub: 'alice', iss: 'i' } }],
    ['another status', { status: 403, code: 'forbidden' }],
    ['another stage', { stage: 'mtls-identity' }],
    ['another method', { method: 'GET' }],
    ['another route', {}, '/v2/models/:model'],
    ['another parser error (no code: the reason decides)', { code: null, reason: 'HPE_INVALID_METHOD: Invalid method' }],
  ]
  for (const [name, over, otherRoute] of different) t.not(aggregationKey(refusal(over), otherRoute ?? route), base, name)
  t.not(aggregationKey(refusal({ identity: null }), route), aggregationKey(refusal({ identity: null, client: { address: '10.0.0.9', tls: null } }), route), 'without a certificate the address is the client')
})

t.test('never aggregated: answers served, refusals with evidence of their own, exchanges the client cut short', async (t) => {
  const digest = { name: 'x', datatype: 'FP32', shape: [1], sha256: 'cc'.repeat(32) }
  const cases: [string, Partial<AuditRecord>][] = [
    ['an answer served', { decision: 'allowed', status: 200, code: null, reason: null, stage: 'complete' }],
    ['input digests', { inputs: [digest], stage: 'screen-input', status: 422, code: 'suspicious_input' }],
    ['a body digest', { bodySha256: 'dd'.repeat(32), stage: 'input-validation', status: 400, code: 'shape_mismatch' }],
    ['screening flags', { flags: [{ detector: 'd', score: 1, threshold: 0.5, alarm: true }] }],
    ['a privacy charge', { privacy: { epsilonSpent: 0.1, epsilonLeft: 0.9 } }],
    ['client_closed_request', { status: 499, code: 'client_closed_request', stage: 'body-read' }],
    ['request_timeout', { status: 408, code: 'request_timeout', stage: 'body-read' }],
  ]
  for (const [name, over] of cases) t.equal(aggregationKey(refusal(over), '/v2/models/:model/infer'), null, name)
})

t.test('the tallies of an aggregate record are bounded', async (t) => {
  const { gateway, clock, auditDir } = await gatewayOnFakeClock()
  // An unknown model's metadata: one route, the model name invented each time.
  for (let i = 0; i <= TALLY_MAX + 5; i++) await gateway.api.inject({ url: `/v2/models/invented-${i}` })
  await clock.tick(WINDOW_MS)
  await gateway.close(0)
  const aggregate = lines(auditDir).find((r) => r.type === 'aggregate')!
  const models = aggregate.models as { values: Record<string, number>; more: number }
  t.equal(aggregate.count, TALLY_MAX + 5)
  t.equal(Object.keys(models.values).length, TALLY_MAX, `at most ${TALLY_MAX} names`)
  t.equal(models.more, 5, 'the rest counted together')
})
