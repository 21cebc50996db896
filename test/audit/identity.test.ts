// Every record names the client certificate, over real mTLS: its workload identity (SPIFFE
// ID, else CN) and its SHA-256, also where the mtls-identity link never ran or refused: an
// unknown route (404), a server-level route, a refusal before the token (the per-client
// limit), a request the HTTP parser refused (431), a certificate that names no usable
// identity (kind "none", with its digest). And junk without a token, repeated, is one record
// in full and one aggregate record that names the same client.

import t from 'tap'
import { X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { verifyAuditLog } from '../../src/audit/verify.ts'
import { writeSigningKey } from '../../src/audit/keys.ts'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { cryptoRandom, realDeps } from '../../src/deps.ts'
import { issueCertificate } from '../../src/dev/pki.ts'
import { startGateway } from '../../kit/gateway.ts'
import { publicKeys, readAudit, tempDir, testKey } from './helpers.ts'

const sha256Of = (pem: string) => new X509Certificate(pem).fingerprint256.replace(/:/g, '').toLowerCase()

t.test('every record names the client certificate, including 404s, server routes and refusals before the token', async (t) => {
  // A burst of 5 and (nearly) no refill: the dev client's sixth request that reaches the
  // chain is refused by the per-client limit.
  const auditDir = tempDir('identity')
  const keyFile = path.join(tempDir('identity-key'), 'audit-key.pem')
  await writeSigningKey(keyFile, testKey, cryptoRandom)
  const gw = await startGateway({ config: { clientLimits: { requestsPerSecond: 0.001, burst: 5 }, audit: { directory: auditDir, checkpoint: { signingKeyFile: keyFile } } } })
  let closed = false
  t.teardown(() => (closed ? undefined : gw.close()))
  const dev = { id: DEV_WORKLOAD, kind: 'spiffe', certSha256: sha256Of(await readFile(gw.pki.files.clientCert, 'utf8')) }

  const sent: { name: string; status: number; id: string | undefined }[] = []
  const send = async (name: string, p: Promise<{ status: number; headers: Record<string, unknown> }>) => {
    const res = await p
    sent.push({ name, status: res.status, id: res.headers['x-request-id'] as string | undefined })
  }
  await send('unknown route', gw.request('/v2/nope', { token: null }))
  await send('server route', gw.request('/v2/health/live', { token: null }))
  await send('no token', gw.request('/v2/models/mnist/infer', { token: null, body: {} }))
  // Two URI SANs beside a SPIFFE ID: not an X.509-SVID, refused by mtls-identity.
  const odd = await issueCertificate(gw.ca, realDeps, { commonName: 'odd', usage: 'client', uris: ['spiffe://bulwark.local/ns/default/sa/odd', 'https://example.com/odd'] })
  await send('a certificate with no usable identity', gw.request('/v2/models/mnist/infer', { token: null, body: {}, dispatcher: gw.agentWith({ cert: odd.certPem, key: odd.keyPem }) }))
  await send('header section too large (HTTP parser)', gw.request('/v2', { headers: { 'x-big': 'a'.repeat(20_000) }, token: null }))
  for (let i = 0; i < 3; i++) await send(`junk ${i}`, gw.request('/v2/models/mnist/infer', { token: null, body: {} }))
  t.same(
    sent.map((s) => s.status),
    [404, 200, 401, 401, 431, 401, 401, 429],
    'the answers (the other certificate has a bucket of its own; the parser\'s refusal never reached the chain)',
  )
  await gw.close()
  closed = true

  const recs = readAudit(auditDir).map((l) => l.rec)
  const byId = new Map(recs.filter((r) => r.type === 'request').map((r) => [r.id as string, r]))
  const rec = (name: string) => byId.get(sent.find((s) => s.name === name)!.id ?? '')
  t.match(rec('unknown route'), { status: 404, stage: 'router', verb: 'server', identity: dev }, 'a 404 names the client')
  t.match(rec('server route'), { status: 200, verb: 'server', identity: dev }, 'a server-level route names the client')
  t.match(rec('no token'), { status: 401, stage: 'jwt-auth', identity: dev }, 'a refusal before the token names the client')
  t.equal(rec('junk 0'), undefined, 'the junk repeated is counted, not written one by one (the aggregate record below)')
  t.equal(rec('junk 1'), undefined)
  t.match(rec('a certificate with no usable identity'), { status: 401, stage: 'mtls-identity', identity: { id: '', kind: 'none', certSha256: sha256Of(odd.certPem) } }, 'a certificate the identity link refused: its digest')
  const parser = recs.find((r) => r.status === 431)
  t.match(parser, { stage: 'transport', identity: dev }, 'a request the HTTP parser refused names the client')
  t.match(rec('junk 2'), { status: 429, stage: 'client-limit', identity: dev }, 'a refusal by the per-client limit names the client')

  const aggregate = recs.find((r) => r.type === 'aggregate' && r.stage === 'jwt-auth')
  t.match(aggregate, { count: 2, firstId: sent.find((s) => s.name === 'no token')!.id, status: 401, code: 'unauthenticated', identity: dev, principal: null, route: '/v2/models/:model/infer' }, 'repeated junk: one aggregate record that names the client')

  const report = await verifyAuditLog(auditDir, publicKeys)
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
})
