// The front door's negative matrix: every way of knocking without the right credentials,
// each through a real TLS connection to a real gateway with the real mnist model. Each is
// refused with the right status and stable code (or a failed handshake), the client learns
// nothing but the code, the server log holds the precise reason, and the gateway keeps serving.

import t, { type Test } from 'tap'
import { once as onceEvent } from 'node:events'
import { connect as tlsConnect } from 'node:tls'
import { readFile } from 'node:fs/promises'
import { SignJWT, UnsecuredJWT, importJWK, type JWK } from 'jose'
import { request } from 'undici'
import { createCa, issueCertificate } from '../../src/dev/pki.ts'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { realDeps } from '../../src/deps.ts'
import { mnistRequest, startGateway } from '../../kit/gateway.ts'

const gw = await startGateway({ models: ['mnist'] })
t.teardown(() => gw.close())
const body = await mnistRequest()
const nowS = () => Math.floor(Date.now() / 1000)

/** After each refusal the gateway must still answer a good request. */
async function stillServes(t: Test) {
  const res = await gw.request('/v2/models/mnist/infer', { body })
  t.equal(res.status, 200, 'a good request still succeeds')
  // What the answer reveals is the output-privacy stage's business; that it is an answer is ours.
  t.equal(res.body.model_name, 'mnist', 'and is answered by the model')
  t.ok(Array.isArray(res.body.outputs) && res.body.outputs.length > 0, 'with outputs')
}

/** The last refusal in the server log (the precise reason lives there, not in the response). */
const lastRefusal = () => gw.logsWith('request refused').at(-1) as { code: string; reason: string; stage: string } | undefined

t.test('the good request succeeds', async (t) => {
  await stillServes(t)
})

// --- transport: the TLS handshake refuses; no HTTP request exists ---

const foreignCa = await createCa(realDeps, { commonName: 'Somebody else CA' })
const foreign = await issueCertificate(foreignCa, realDeps, { commonName: 'dev', usage: 'client', uris: [DEV_WORKLOAD] })
const expired = await issueCertificate(gw.ca, realDeps, {
  commonName: 'dev',
  usage: 'client',
  uris: [DEV_WORKLOAD],
  notBeforeMs: Date.now() - 10 * 86_400_000,
  notAfterMs: Date.now() - 86_400_000,
})

const handshakeCases: { name: string; tls: { cert?: string; key?: string }; reason: string }[] = [
  { name: 'no client certificate', tls: {}, reason: 'NO_CLIENT_CERTIFICATE' },
  { name: 'a certificate from a foreign CA', tls: { cert: foreign.certPem, key: foreign.keyPem }, reason: 'UNABLE_TO_VERIFY_LEAF_SIGNATURE' },
  { name: 'an expired certificate', tls: { cert: expired.certPem, key: expired.keyPem }, reason: 'CERT_HAS_EXPIRED' },
]

for (const c of handshakeCases) {
  t.test(`refused at the handshake: ${c.name}`, async (t) => {
    const since = gw.logs.length
    const counted = async () => Number(new RegExp(`bulwark_tls_handshake_failures_total\\{reason="${c.reason}"\\} (\\d+)`).exec(await gw.gateway.metrics.render())?.[1] ?? 0)
    const countedBefore = await counted()
    const agent = gw.agentWith(c.tls)
    const err = await gw.request('/v2/models/mnist/infer', { body, dispatcher: agent }).then(
      (res) => t.fail(`expected the connection to fail, got HTTP ${res.status}`),
      (e: Error & { code?: string }) => e,
    )
    t.ok(err instanceof Error, `the client sees a connection error (${(err as Error & { code?: string })?.code})`)
    // The server side of the refused handshake is logged with the precise reason, and counted.
    await gw.logged((l) => l.msg === 'TLS handshake refused' && l.reason === c.reason, since)
    t.pass(`the server log says ${c.reason}`)
    t.equal(await counted(), countedBefore + 1, 'bulwark_tls_handshake_failures_total counts it')
    t.notOk(gw.logsWith('request refused').some((l) => (l.reqId as string | undefined) && l.stage === 'mtls-identity'), 'no HTTP request reached the pipeline')
    await stillServes(t)
  })
}

// --- HTTP: refusals with a status and a stable code ---

const signing = JSON.parse(await readFile(gw.pki.files.jwks, 'utf8')) as { keys: (JWK & { kid: string })[] }
const publicJwk = signing.keys[0]!
const publicPem = await (async () => {
  const { createPublicKey } = await import('node:crypto')
  return createPublicKey({ key: publicJwk as import('node:crypto').JsonWebKey, format: 'jwk' }).export({ type: 'spki', format: 'pem' }) as string
})()
const good = { iss: 'https://bulwark.local/dev', aud: 'bulwark', sub: 'dev', scope: 'mnist:infer mnist:metadata' }

const unlisted = await issueCertificate(gw.ca, realDeps, { commonName: 'intruder', usage: 'client', uris: ['spiffe://bulwark.local/ns/other/sa/intruder'] })

interface HttpCase {
  name: string
  status: number
  code: string
  /** The Authorization header to send (null: none). */
  authorization: () => Promise<string | null>
  agent?: () => ReturnType<typeof gw.agentWith>
  /** What the server log's reason must say. */
  reason: RegExp
}

const bearer = (token: string) => `Bearer ${token}`
const httpCases: HttpCase[] = [
  {
    name: 'a workload the policy does not list',
    status: 403,
    code: 'forbidden',
    authorization: async () => bearer(await gw.token()),
    agent: () => gw.agentWith({ cert: unlisted.certPem, key: unlisted.keyPem }),
    reason: /spiffe:\/\/bulwark\.local\/ns\/other\/sa\/intruder is not listed/,
  },
  { name: 'no token', status: 401, code: 'unauthenticated', authorization: async () => null, reason: /no Authorization header/ },
  { name: 'a malformed token', status: 401, code: 'unauthenticated', authorization: async () => 'Bearer not.a-jwt', reason: /malformed token|not a compact JWS/ },
  { name: 'a non-Bearer scheme', status: 401, code: 'unauthenticated', authorization: async () => `Basic ${Buffer.from('dev:dev').toString('base64')}`, reason: /not Bearer/ },
  {
    name: 'alg: none',
    status: 401,
    code: 'unauthenticated',
    authorization: async () => bearer(new UnsecuredJWT({ ...good }).setIssuedAt().setExpirationTime('5m').encode()),
    reason: /algorithm not allowed/,
  },
  {
    name: 'HS256 signed with the public key as secret (key confusion)',
    status: 401,
    code: 'unauthenticated',
    authorization: async () =>
      bearer(
        await new SignJWT({ ...good })
          .setProtectedHeader({ alg: 'HS256', kid: publicJwk.kid })
          .setIssuedAt()
          .setExpirationTime('5m')
          .sign(new TextEncoder().encode(publicPem)),
      ),
    reason: /algorithm not allowed/,
  },
  {
    name: 'a token signed by another key with the right kid',
    status: 401,
    code: 'unauthenticated',
    authorization: async () => {
      const other = await createCa(realDeps, { commonName: 'x' }) // any P-256 key will do
      const key = await importJWK({ ...(await crypto.subtle.exportKey('jwk', other.keys.privateKey)), alg: 'ES256' } as JWK, 'ES256')
      return bearer(await new SignJWT({ ...good }).setProtectedHeader({ alg: 'ES256', kid: publicJwk.kid }).setIssuedAt().setExpirationTime('5m').sign(key))
    },
    reason: /signature does not verify/,
  },
  {
    name: 'an expired token',
    status: 401,
    code: 'unauthenticated',
    authorization: async () => bearer(await gw.token({ claims: { iat: nowS() - 7200, nbf: nowS() - 7200, exp: nowS() - 3600 } })),
    reason: /expired/,
  },
  {
    name: 'nbf in the future',
    status: 401,
    code: 'unauthenticated',
    authorization: async () => bearer(await gw.token({ notBeforeSeconds: 3600, ttlSeconds: 7200 })),
    reason: /claim "nbf"/,
  },
  { name: 'wrong iss', status: 401, code: 'unauthenticated', authorization: async () => bearer(await gw.token({ issuer: 'https://evil.example' })), reason: /claim "iss"/ },
  { name: 'wrong aud', status: 401, code: 'unauthenticated', authorization: async () => bearer(await gw.token({ audience: 'someone-else' })), reason: /claim "aud"/ },
  {
    name: 'a token lifetime over the maximum',
    status: 401,
    code: 'unauthenticated',
    authorization: async () => bearer(await gw.token({ ttlSeconds: 3 * 86_400 })),
    reason: /lifetime/,
  },
  {
    name: 'a token whose scope covers another model',
    status: 403,
    code: 'forbidden',
    authorization: async () => bearer(await gw.token({ scopes: ['ocr-cls:infer', 'ocr-cls:metadata'] })),
    reason: /lacks scope\(s\) mnist:infer/,
  },
  {
    name: 'an oversized token',
    status: 401,
    code: 'unauthenticated',
    authorization: async () => bearer(await gw.token({ claims: { padding: 'x'.repeat(9000) } })),
    reason: /limit is \d+ \(auth\.maxTokenBytes\)/,
  },
]

for (const c of httpCases) {
  t.test(`refused: ${c.name}`, async (t) => {
    const authorization = await c.authorization()
    const res = await gw.request('/v2/models/mnist/infer', {
      body,
      ...(authorization === null ? { token: null } : { authorization }),
      ...(c.agent ? { dispatcher: c.agent() } : {}),
    })
    t.equal(res.status, c.status, `status ${c.status}`)
    t.same(Object.keys(res.body).sort(), ['code', 'error'], 'the body has the protocol error and our code, nothing else')
    t.equal(res.body.code, c.code, `code ${c.code}`)
    t.notMatch(res.body.error, c.reason, 'the client does not learn the reason')
    if (c.status === 401) t.equal(res.headers['www-authenticate'], 'Bearer realm="bulwark"')
    const logged = lastRefusal()
    t.equal(logged?.code, c.code)
    t.match(logged?.reason ?? '', c.reason, `the server log says why: ${logged?.reason}`)
    await stillServes(t)
  })
}

t.test('a header section over server.maxHeaderBytes is cut off by the HTTP parser (431)', async (t) => {
  const res = await gw.request('/v2/models/mnist/infer', { body, authorization: `Bearer ${'a'.repeat(20_000)}` })
  t.equal(res.status, 431)
  await stillServes(t)
})

t.test('model metadata follows the policy too: another model\'s scope does not open it', async (t) => {
  const ok = await gw.request('/v2/models/mnist', {})
  t.equal(ok.status, 200)
  const other = await gw.request('/v2/models/mnist', { token: await gw.token({ scopes: ['ocr-cls:metadata'] }) })
  t.equal(other.status, 403)
  t.equal(other.body.code, 'forbidden')
})

t.test('a model without a policy is not callable, and its existence is not revealed', async (t) => {
  const res = await gw.request('/v2/models/ghost/infer', { body })
  t.equal(res.status, 403)
  t.equal(res.body.code, 'forbidden')
  t.match(lastRefusal()?.reason, /no policy for this model \(default deny\)/)
})

t.test('server health needs the client certificate but no token', async (t) => {
  const res = await gw.request('/v2/health/live', { token: null })
  t.equal(res.status, 200)
  const noCert = await request(`${gw.url}/v2/health/live`, { dispatcher: gw.agentWith({}) }).then(
    () => 'answered',
    () => 'refused',
  )
  t.equal(noCert, 'refused')
})

// --- what a caller can hold before it is admitted ---

t.test('an upload to a route that takes no body is answered from its headers; the body is never read', async (t) => {
  const url = new URL(gw.url)
  const [ca, cert, key] = await Promise.all([gw.pki.files.ca, gw.pki.files.clientCert, gw.pki.files.clientKey].map((f) => readFile(f)))
  for (const path of ['/v2/models/mnist', '/v2/no/such/route']) {
    const socket = tlsConnect({ host: url.hostname, port: Number(url.port), ca, cert, key, servername: 'localhost' })
    let answer = ''
    socket.on('data', (d: Buffer) => (answer += d.toString('latin1')))
    await onceEvent(socket, 'secureConnect')
    // 30 MiB announced, a few bytes sent: that an answer comes at all shows nothing waited for the rest.
    socket.write(`POST ${path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${await gw.token()}\r\nContent-Type: application/json\r\nContent-Length: ${30 * 1024 * 1024}\r\n\r\n{"inputs": [`)
    await onceEvent(socket, 'close')
    t.match(answer, /^HTTP\/1.1 404 /, `${path}: 404`)
    t.match(answer, /"code":"not_found"/)
    t.match(answer, /\r\nconnection: close\r\n/i, `${path}: the server closes the connection instead`)
  }
  await stillServes(t)
})

// --- a SPIFFE ID with dot segments; tokens that are not access tokens ---

t.test('refused: a client certificate whose SPIFFE ID walks out of a ns/default/* rule with ..', async (t) => {
  // The bundled mnist policy grants metadata to spiffe://bulwark.local/ns/default/*; this ID
  // starts with that prefix but, with its dot segments resolved, names ns/evil.
  const walker = await issueCertificate(gw.ca, realDeps, { commonName: 'walker', usage: 'client', uris: ['spiffe://bulwark.local/ns/default/../../ns/evil/sa/x'] })
  const res = await gw.request('/v2/models/mnist', { dispatcher: gw.agentWith({ cert: walker.certPem, key: walker.keyPem }) })
  t.equal(res.status, 401, 'status 401')
  t.same(Object.keys(res.body).sort(), ['code', 'error'])
  t.equal(res.body.code, 'unauthenticated')
  const logged = lastRefusal()
  t.equal(logged?.stage, 'mtls-identity', 'refused by mtls-identity, before any policy looks at the ID')
  t.match(logged?.reason ?? '', /malformed SPIFFE ID .*: the path has a dot segment \(\.\.\)/, `the server log says why: ${logged?.reason}`)
  t.notMatch(res.body.error, /dot segment/, 'the client does not learn the reason')
  await stillServes(t)
})

t.test('refused: tokens of the right issuer, audience and key that are not access tokens (typ)', async (t) => {
  const { loadSigningKey, mintToken } = await import('../../src/dev/mint-token.ts')
  const signingKey = await loadSigningKey(gw.pki.files.jwtKey, gw.pki.files.jwks)
  const typed = (type: string | null) =>
    mintToken(signingKey, { issuer: good.iss, audience: good.aud, subject: 'dev', scopes: good.scope.split(' '), ttlSeconds: 300, type }, realDeps)
  const cases: [what: string, type: string | null, reason: RegExp][] = [
    ['an ID token typed id+jwt', 'id+jwt', /token type \(typ header\) "id\+jwt" is not an access token type/],
    ['a DPoP proof', 'dpop+jwt', /token type \(typ header\) "dpop\+jwt" is not an access token type/],
    ['an untyped token', null, /the token has no typ header/],
  ]
  for (const [what, type, reason] of cases) {
    const res = await gw.request('/v2/models/mnist/infer', { body, token: await typed(type) })
    t.equal(res.status, 401, `${what}: 401`)
    t.equal(res.body.code, 'unauthenticated', `${what}: unauthenticated`)
    t.equal(res.headers['www-authenticate'], 'Bearer realm="bulwark"')
    const logged = lastRefusal()
    t.equal(logged?.stage, 'jwt-auth')
    t.match(logged?.reason ?? '', reason, `${what}: the server log says why: ${logged?.reason}`)
  }
  const accepted = await gw.request('/v2/models/mnist/infer', { body, token: await typed('application/at+jwt') })
  t.equal(accepted.status, 200, 'the same token typed application/at+jwt is served')
  await stillServes(t)
})

// --- abuse: made-up model names, a client that hangs up mid-body ---

t.test('refused requests for made-up model names add no metric series and name none of them', async (t) => {
  const series = async () => (await gw.gateway.metrics.render()).split('\n').filter((l) => l.startsWith('bulwark_'))
  const names = ['made-up-a', 'made-up-b', 'made-up-c'].map((n) => `${n}-${'z'.repeat(60)}`)
  // One of each refusal first, so that every series the rest could touch exists.
  await gw.request('/v2/models/warm-up/infer', { body, token: null })
  await gw.request('/v2/models/warm-up/infer', { body })
  const before = await series()
  for (const name of names) {
    t.equal((await gw.request(`/v2/models/${name}/infer`, { body, token: null })).status, 401)
    t.equal((await gw.request(`/v2/models/${name}/infer`, { body })).status, 403)
  }
  const after = await series()
  t.equal(after.length, before.length, 'no new series')
  t.notOk(after.some((l) => names.some((n) => l.includes(n))), 'no made-up name is a label value')
  t.ok(after.some((l) => l.startsWith('bulwark_requests_total{code="unauthenticated",model="_unknown"')), 'they count under model="_unknown"')
  await stillServes(t)
})

t.test('a client that hangs up mid-body: 499 client_closed_request, logged at info, audited; the gateway keeps serving', async (t) => {
  const { connect } = await import('node:tls')
  const { EventEmitter } = await import('node:events')
  const writer = gw.gateway.audit.writer!
  const append = writer.append.bind(writer)
  t.teardown(() => void (writer.append = append))
  // The record, once durable: a spy on the writer, so the test waits for the gateway, not a timer.
  const recorded = new Promise<Record<string, unknown>>((resolve) => {
    writer.append = (line: string) => {
      const written = append(line)
      const rec = JSON.parse(line) as Record<string, unknown>
      if (rec.code === 'client_closed_request') void written.then(() => resolve(rec))
      return written
    }
  })
  // The gateway has begun reading the body when it listens for its data.
  const reading = new Promise<void>((resolve) =>
    gw.gateway.api.server.once('request', (req: import('node:http').IncomingMessage) => {
      const on = req.on.bind(req)
      req.on = ((event: string, listener: (...args: unknown[]) => void) => (on(event, listener), event === 'data' && resolve(), req)) as typeof req.on
    }),
  )
  const url = new URL(gw.url)
  const [ca, cert, key] = await Promise.all([gw.pki.files.ca, gw.pki.files.clientCert, gw.pki.files.clientKey].map((f) => readFile(f)))
  const text = JSON.stringify(body)
  const socket = connect({ host: url.hostname, port: Number(url.port), ca, cert, key, servername: 'localhost' })
  await EventEmitter.once(socket, 'secureConnect')
  socket.write(`POST /v2/models/mnist/infer HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${await gw.token()}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\n\r\n${text.slice(0, 200)}`)
  await reading
  socket.destroy()
  const rec = await recorded
  t.match(rec, { status: 499, code: 'client_closed_request', stage: 'body-read' }, 'the audit record')
  const line = gw.logs.find((l) => l.reqId === rec.id && l.code === 'client_closed_request')
  t.equal(line?.level, 30, 'logged at info')
  t.notOk(gw.logs.some((l) => l.reqId === rec.id && (l.level as number) >= 50), 'no error line for it')
  await stillServes(t)
})

t.test('junk without a token, past the client\'s burst: 429 client_rate_limited before the token check; another client is unaffected', async (t) => {
  // A gateway of its own with a small burst and (nearly) no refill; the shared one keeps the
  // generous defaults the other cases rely on.
  const small = await startGateway({ config: { clientLimits: { requestsPerSecond: 0.001, burst: 3 } } })
  t.teardown(() => small.close())
  for (let i = 0; i < 3; i++) t.equal((await small.request('/v2/models/mnist/infer', { body, token: null })).status, 401, `junk ${i + 1}: within the burst, refused by the token check`)
  const res = await small.request('/v2/models/mnist/infer', { body, token: null })
  t.equal(res.status, 429)
  t.same(Object.keys(res.body).sort(), ['code', 'error'], 'the body has the protocol error and our code, nothing else')
  t.equal(res.body.code, 'client_rate_limited')
  t.ok(Number(res.headers['retry-after']) >= 1, 'with Retry-After')
  const logged = small.logsWith('request refused').at(-1) as { code: string; stage: string; reason: string } | undefined
  t.match(logged, { code: 'client_rate_limited', stage: 'client-limit' })
  t.notMatch(res.body.error, logged?.reason ?? '', 'the client does not learn the reason')
  const other = await issueCertificate(small.ca, realDeps, { commonName: 'other', usage: 'client', uris: ['spiffe://bulwark.local/ns/default/sa/other'] })
  const again = await small.request('/v2/models/mnist/infer', { body, token: null, dispatcher: small.agentWith({ cert: other.certPem, key: other.keyPem }) })
  t.equal(again.status, 401, 'another client certificate has its own bucket: its request reaches the token check')
  await stillServes(t)
})
