// The per-client limit before authentication (src/stages/client-limit.ts): a token bucket per
// client certificate (per address without TLS) on the injected clock. Past its burst a client
// is refused with 429 client_rate_limited and Retry-After, counted; it gets a request back per
// 1/requestsPerSecond; other clients keep their own buckets; the clients held stay within
// maxClients; a request whose caller showed a valid token gives its token back when it ends.
// Over real TLS: a client sending junk without a token is refused past its burst, on model and
// server routes alike, before the token check, while another client's junk still reaches the
// token check; a caller with a valid token sends past the burst unrefused.

import t from 'tap'
import { createHash, X509Certificate } from 'node:crypto'
import { buildConfig } from '../../src/config/load.ts'
import { realDeps } from '../../src/deps.ts'
import { createCa, issueCertificate } from '../../src/dev/pki.ts'
import { clientKeyOf, createClientLimitLink } from '../../src/stages/client-limit.ts'
import { startGateway } from '../../kit/gateway.ts'
import { FakeClock } from '../helpers/fake-clock.ts'
import { fakeContext } from '../helpers/context.ts'

const limits = (over: Partial<{ requestsPerSecond: number; burst: number; maxClients: number }> = {}) => ({ enabled: true, requestsPerSecond: 2, burst: 3, maxClients: 100, ...over })
const from = (address: string) => fakeContext({ client: { address } })

t.test('the defaults admit normal traffic: 1000 requests/s sustained, bursts of 2000, 10,000 clients', async (t) => {
  t.same(buildConfig({}, 'test').clientLimits, { enabled: true, requestsPerSecond: 1000, burst: 2000, maxClients: 10_000 })
})

t.test('past its burst a client is refused with 429 client_rate_limited and Retry-After, and gets one request back per 1/rate', async (t) => {
  const clock = new FakeClock()
  const link = createClientLimitLink(limits(), { clock })
  t.match(link, { name: 'client-limit', phase: 'arrival' })
  t.same([...link.verbs].sort(), ['infer', 'metadata', 'server'], 'every verb: unknown routes and health cost a record too')
  for (let i = 0; i < 3; i++) link.run(from('10.0.0.1'))
  const refused = (() => {
    try {
      link.run(from('10.0.0.1'))
    } catch (err) {
      return err as { code: string; status: number; headers: Record<string, string>; reason: string }
    }
  })()
  t.match(refused, { code: 'client_rate_limited', status: 429 }, 'the fourth within the same instant')
  t.equal(refused?.headers['retry-after'], '1', 'Retry-After in whole seconds, at least 1')
  t.match(refused?.reason, /client addr:10\.0\.0\.1 is past its burst of 3 at 2 requests\/s/, 'the precise reason names the client and the limit')
  t.doesNotThrow(() => link.run(from('10.0.0.2')), 'another client has its own bucket')

  clock.advance(499)
  t.throws(() => link.run(from('10.0.0.1')), { code: 'client_rate_limited' }, 'not yet: half a token is not a request')
  clock.advance(1)
  t.doesNotThrow(() => link.run(from('10.0.0.1')), 'after 1/rate (500 ms) one more')
  t.throws(() => link.run(from('10.0.0.1')), { code: 'client_rate_limited' })
  clock.advance(60_000)
  for (let i = 0; i < 3; i++) link.run(from('10.0.0.1'))
  t.throws(() => link.run(from('10.0.0.1')), { code: 'client_rate_limited' }, 'idle time refills the bucket up to the burst, no further')

  const metrics = Object.fromEntries(link.metrics.map((m) => [m.name, m]))
  t.equal((metrics.bulwark_client_rate_limited_total as unknown as { get(): number }).get(), 4, 'each refusal counted')
})

t.test('a request whose caller showed a valid token gives its token back when it ends; junk and refused requests do not', async (t) => {
  const clock = new FakeClock()
  const link = createClientLimitLink(limits({ burst: 2 }), { clock })
  const principal = { subject: 'alice', issuer: 'i', scopes: [], claims: {}, expiresAtMs: Infinity }
  for (let i = 0; i < 10; i++) {
    const ctx = fakeContext({ client: { address: 'a' }, principal })
    link.run(ctx)
    link.onDestroy!(ctx)
  }
  t.pass('ten requests with a valid token in one instant, on a burst of 2: none refused')
  const junk = [from('a'), from('a')]
  for (const ctx of junk) link.run(ctx)
  const refused = from('a')
  t.throws(() => link.run(refused), { code: 'client_rate_limited' }, 'junk spends the bucket')
  link.onDestroy!(refused)
  for (const ctx of junk) link.onDestroy!(ctx)
  t.throws(() => link.run(from('a')), { code: 'client_rate_limited' }, 'and gets nothing back, nor does the refused request')
})

t.test('the clients held stay within maxClients: the one seen least recently is forgotten first', async (t) => {
  const clock = new FakeClock()
  const link = createClientLimitLink(limits({ burst: 1, maxClients: 2 }), { clock })
  link.run(from('a'))
  link.run(from('b'))
  t.throws(() => link.run(from('a')), { code: 'client_rate_limited' }, 'a is held (and now the most recent)')
  link.run(from('c'))
  t.equal(link.clients(), 2, 'at most maxClients')
  t.throws(() => link.run(from('a')), { code: 'client_rate_limited' }, 'a was seen more recently than b: still held, still empty')
  t.doesNotThrow(() => link.run(from('b')), 'b was forgotten, and starts again with a full bucket')
})

t.test('the client key is the SHA-256 of the certificate DER, or the address without a certificate', async (t) => {
  const ca = await createCa(realDeps, { commonName: 'test CA' })
  const cert = new X509Certificate((await issueCertificate(ca, realDeps, { commonName: 'c', usage: 'client' })).certPem)
  const key = clientKeyOf({ peerCertificate: cert, address: '10.1.2.3' })
  t.equal(key, `cert:${createHash('sha256').update(cert.raw).digest('hex')}`)
  t.equal(key, `cert:${cert.fingerprint256.replace(/:/g, '').toLowerCase()}`, 'the same digest the audit record names')
  t.equal(clientKeyOf({ peerCertificate: null, address: '10.1.2.3' }), 'addr:10.1.2.3')
})

t.test('over real TLS: junk without a token is refused past the client\'s burst, before the token check; another client is unaffected', async (t) => {
  // The gateway's clock starts at the real time (the handshake checks certificate dates on
  // real time) and stands still: no token comes back unless the test moves it.
  const clock = new FakeClock(Date.now())
  const gw = await startGateway({ deps: { clock, random: realDeps.random }, config: { clientLimits: { requestsPerSecond: 1, burst: 3 } } })
  t.teardown(() => gw.close())
  const junk = { token: null, body: { inputs: 'junk' } } as const

  for (let i = 0; i < 3; i++) {
    const res = await gw.request('/v2/models/mnist/infer', junk)
    t.equal(res.status, 401, `junk ${i + 1} of the burst reaches the token check`)
  }
  const limited = await gw.request('/v2/models/mnist/infer', junk)
  t.equal(limited.status, 429, 'past the burst: 429')
  t.same(limited.body, { error: 'too many requests from this client; retry after the Retry-After delay', code: 'client_rate_limited' })
  t.equal(limited.headers['retry-after'], '1')
  const refusal = gw.logsWith('request refused').at(-1)
  t.match(refusal, { code: 'client_rate_limited', stage: 'client-limit', reason: /^client cert:[0-9a-f]{64} is past its burst of 3 at 1 requests\/s/ }, 'the server log says which client, and why')
  t.equal((await gw.request('/v2/nope', { token: null })).status, 429, 'unknown routes count against the same bucket')
  t.equal((await gw.request('/v2/health/live', { token: null })).status, 429, 'and server routes')

  const other = await issueCertificate(gw.ca, { clock, random: realDeps.random }, { commonName: 'other', usage: 'client', uris: ['spiffe://bulwark.local/ns/default/sa/other'] })
  const otherAgent = gw.agentWith({ cert: other.certPem, key: other.keyPem })
  const res = await gw.request('/v2/models/mnist/infer', { ...junk, dispatcher: otherAgent })
  t.equal(res.status, 401, 'another client certificate: its junk still reaches the token check')
  const metadata = await gw.request('/v2/models/mnist', { dispatcher: otherAgent, token: await gw.token() })
  t.equal(metadata.body.code, 'model_not_found', 'and with a token it gets past the front door (no model is served here)')

  clock.advance(1000)
  t.equal((await gw.request('/v2/models/mnist/infer', junk)).status, 401, 'a second later the first client has one request again')
  t.equal((await gw.request('/v2/models/mnist/infer', junk)).status, 429)
  t.match(await gw.gateway.metrics.render(), /^bulwark_client_rate_limited_total 4$/m, 'counted')
  const token = await gw.token()
  const codes: string[] = []
  for (let i = 0; i < 6; i++) codes.push((await gw.request('/v2/models/mnist', { dispatcher: otherAgent, token })).body.code)
  t.same(codes, Array(6).fill('model_not_found'), 'one after another, six requests with a valid token on what is left of a burst of 3, the clock frozen: none refused here')
})
