// The front door's configuration: TLS 1.3 only by default, TLS 1.2 with AEAD suites only when
// asked, the embedded default (everything on, development files), the checks across fields,
// the pipeline order, and the switch that turns the whole front door off (the benchmark
// baseline: the same gateway over plain HTTP without these stages).

import t from 'tap'
import { once } from 'node:events'
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls'
import { readFile } from 'node:fs/promises'
import { buildConfig, ConfigError, defaultConfig } from '../../src/config/load.ts'
import { securityProblems, TLS12_AEAD_CIPHERS } from '../../src/config/security.ts'
import { buildGateway } from '../../src/server.ts'
import { realDeps } from '../../src/deps.ts'
import { frontDoorOff, startGateway } from '../../kit/gateway.ts'

function handshake(url: string, o: ConnectionOptions): Promise<TLSSocket> {
  const { port } = new URL(url)
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port: Number(port), servername: 'localhost', ...o }, () => resolve(s))
    s.on('error', reject)
  })
}

async function devClient(gw: Awaited<ReturnType<typeof startGateway>>): Promise<ConnectionOptions> {
  const [ca, cert, key] = await Promise.all([gw.pki.files.ca, gw.pki.files.clientCert, gw.pki.files.clientKey].map((f) => readFile(f, 'utf8')))
  return { ca, cert, key }
}

t.test('the embedded default is the secure one', async (t) => {
  const { config } = defaultConfig('/nowhere')
  t.match(config.tls, { enabled: true, minVersion: 'TLSv1.3', certFile: '.bulwark/dev/server.pem', keyFile: '.bulwark/dev/server-key.pem', caFile: '.bulwark/dev/ca.pem' })
  t.match(config.auth, { enabled: true, issuer: 'https://bulwark.local/dev', audience: 'bulwark', jwks: { source: '.bulwark/dev/jwks.json' } })
  t.same(config.auth.algorithms, ['ES256', 'EdDSA', 'RS256', 'PS256'])
  t.equal(config.authorization.enabled, true)
  t.equal(config.rateLimits.enabled, true)
  t.equal(config.policies.directory, 'policies')
  t.same(securityProblems(config), [])
})

t.test('TLS 1.3 only by default', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.close())
  const client = await devClient(gw)
  const s = await handshake(gw.url, client)
  t.equal(s.getProtocol(), 'TLSv1.3')
  s.destroy()
  // The gateway's listener was added first: by this event its log line is written.
  const failed = once(gw.gateway.api.server, 'tlsClientError')
  await t.rejects(handshake(gw.url, { ...client, maxVersion: 'TLSv1.2' }), 'a TLS 1.2 client cannot connect')
  await failed
  t.ok(gw.logsWith('TLS handshake refused').some((l) => /VERSION|PROTOCOL/.test(String(l.reason))), 'the refusal is logged with its reason')
})

t.test('TLS 1.2 when configured: AEAD suites only', async (t) => {
  const gw = await startGateway({ config: { tls: { minVersion: 'TLSv1.2' } } })
  t.teardown(() => gw.close())
  const client = await devClient(gw)
  const s = await handshake(gw.url, { ...client, maxVersion: 'TLSv1.2' })
  t.equal(s.getProtocol(), 'TLSv1.2')
  t.ok((TLS12_AEAD_CIPHERS as readonly string[]).includes(s.getCipher().name), `negotiated ${s.getCipher().name}, an AEAD suite`)
  s.destroy()
  await t.rejects(handshake(gw.url, { ...client, maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA' }), 'a client offering only CBC suites is refused')
})

t.test('a non-AEAD TLS 1.2 suite is not a valid choice', async (t) => {
  const err = (() => {
    try {
      buildConfig({ tls: { minVersion: 'TLSv1.2', tls12Ciphers: ['ECDHE-RSA-AES128-SHA'] } }, 'bulwark.yaml')
    } catch (e) {
      return e
    }
  })()
  t.ok(err instanceof ConfigError)
  t.match((err as ConfigError).message, /\/tls\/tls12Ciphers\/0: "ECDHE-RSA-AES128-SHA" is not allowed; use one of "ECDHE-ECDSA-AES128-GCM-SHA256"/)
  t.throws(() => buildConfig({ tls: { minVersion: 'TLSv1.1' } }, 'x.yaml'), /\/tls\/minVersion: "TLSv1.1" is not allowed; use one of "TLSv1.3", "TLSv1.2"/)
  t.throws(() => buildConfig({ auth: { jwks: { source: 'http://issuer.example/jwks' } } }, 'x.yaml'), /\/auth\/jwks\/source: .*never http/)
})

t.test('checks across fields stop the start with the fix', async (t) => {
  const problems = (raw: Record<string, unknown>) => securityProblems(buildConfig(raw, 'x.yaml'))
  t.match(problems({ auth: { enabled: false } }).join('\n'), /\/authorization\/enabled: .*switch authorization off too/)
  t.match(problems({ tls: { enabled: false } }).join('\n'), /\/authorization\/enabled/)
  t.match(problems({ auth: { maxTokenBytes: 16_380 } }).join('\n'), /\/auth\/maxTokenBytes: 16380 does not fit in server.maxHeaderBytes/)
  t.match(problems({ auth: { jwks: { caFile: 'ca.pem' } } }).join('\n'), /\/auth\/jwks\/caFile: only used when/)
  t.same(problems(frontDoorOff), [])
  await t.rejects(buildGateway({ config: buildConfig({ auth: { enabled: false } }, 'x.yaml'), baseDir: '/nowhere', source: 'x.yaml' }, realDeps, { logLevel: 'silent' }), ConfigError)
})

t.test('the pipeline runs the front door first, in the order pipeline.ts fixes', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.close())
  const names = gw.gateway.stages.map((s) => s.name)
  const frontDoor = ['mtls-identity', 'jwt-auth', 'caller-key', 'model-policy', 'rate-limit']
  t.same(names.filter((n) => frontDoor.includes(n)), frontDoor, 'in this order')
  const firstBody = gw.gateway.stages.findIndex((s) => s.phase === 'body')
  t.ok(frontDoor.every((n) => names.indexOf(n) < firstBody), 'all before the body is read')
  t.ok(gw.gateway.stages.filter((s) => frontDoor.includes(s.name)).every((s) => s.phase === 'headers'), 'all in the headers phase')
})

t.test('front door off: the same gateway over plain HTTP without these stages (benchmark baseline)', async (t) => {
  const gw = await startGateway({ frontDoor: false, models: ['mnist'] })
  t.teardown(() => gw.close())
  t.match(gw.url, /^http:\/\//)
  t.equal(gw.gateway.tls, null)
  const names = gw.gateway.stages.map((s) => s.name)
  for (const n of ['mtls-identity', 'jwt-auth', 'model-policy', 'rate-limit']) t.notOk(names.includes(n), `no ${n}`)
  const res = await gw.request('/v2/models/mnist', { token: null })
  t.equal(res.status, 200, 'no certificate, no token: served')
  t.ok(gw.logs.some((l) => l.msg === 'front door partly or wholly switched off by the configuration'), 'with a warning at start')
})
