// A keep-alive connection holds no more trust than a new handshake would: its client
// certificate's validity dates are checked on every request against the gateway's clock, and
// once the certificate has expired the request is refused (401 unauthenticated) and the
// connection closed, so the client must come back with a current certificate. Real TLS, real
// tokens; the gateway's clock is a FakeClock that starts at the real time (the handshake
// itself checks the dates on real time) and is moved past the certificate's notAfter.

import t from 'tap'
import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import { Client } from 'undici'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { realDeps } from '../../src/deps.ts'
import { issueCertificate } from '../../src/dev/pki.ts'
import { startGateway } from '../../kit/gateway.ts'
import { FakeClock } from '../helpers/fake-clock.ts'

const clock = new FakeClock(Date.now())
const gw = await startGateway({ deps: { clock, random: realDeps.random } })
t.teardown(() => gw.close())
const ca = await readFile(gw.pki.files.ca, 'utf8')

/** GET /v2/models/mnist on `client` with a fresh token: 404 (no model served) means the front door let it in. */
async function metadata(client: Client): Promise<{ status: number; body: { code?: string }; connection: unknown }> {
  const res = await client.request({ path: '/v2/models/mnist', method: 'GET', headers: { authorization: `Bearer ${await gw.token()}` } })
  const body = (await res.body.json()) as { code?: string }
  return { status: res.statusCode, body, connection: res.headers.connection }
}

t.test('a client certificate that expires while its keep-alive connection is open', async (t) => {
  // X.509 times have whole seconds: a notAfter 60 s from now, rounded down.
  const notAfterMs = Math.floor(clock.nowMs() / 1000) * 1000 + 60_000
  const shortLived = await issueCertificate(gw.ca, { clock, random: realDeps.random }, { commonName: 'dev', usage: 'client', uris: [DEV_WORKLOAD], notAfterMs })
  let connects = 0
  const client = new Client(gw.url, { connect: { ca, cert: shortLived.certPem, key: shortLived.keyPem }, keepAliveTimeout: 600_000, pipelining: 1 })
  client.on('connect', () => connects++)
  t.teardown(() => client.destroy())

  t.equal((await metadata(client)).status, 404, 'valid: admitted by the front door')
  clock.advance(30_000)
  t.equal((await metadata(client)).status, 404, 'still valid half-way: admitted on the same connection')
  t.equal(connects, 1)

  clock.advance(notAfterMs + 1 - clock.nowMs())
  const closed = once(client, 'disconnect')
  const expired = await metadata(client)
  t.equal(expired.status, 401, 'past notAfter: refused')
  t.equal(expired.body.code, 'unauthenticated')
  t.equal(expired.connection, 'close', 'the answer says the connection closes')
  await closed
  t.pass('and the gateway closes it')
  const logged = gw.logsWith('request refused').at(-1)
  t.equal(logged?.stage, 'mtls-identity')
  t.match(logged?.reason, new RegExp(`expired at ${new Date(notAfterMs).toISOString()}`), `the log says why: ${logged?.reason}`)

  // A new connection with the same certificate passes the handshake (OpenSSL reads the real
  // time, still inside the validity dates) and is refused by the same per-request check.
  const again = await metadata(client)
  t.equal(connects, 2, 'the client reconnected')
  t.equal(again.status, 401, 'and the expired certificate is refused on the new connection too')
})

t.test('a certificate that is still valid is not disturbed by the check', async (t) => {
  const client = new Client(gw.url, { connect: { ca, cert: await readFile(gw.pki.files.clientCert, 'utf8'), key: await readFile(gw.pki.files.clientKey, 'utf8') }, keepAliveTimeout: 600_000 })
  let disconnects = 0
  client.on('disconnect', () => disconnects++)
  t.teardown(() => client.destroy())
  for (let i = 0; i < 3; i++) {
    const res = await metadata(client)
    t.equal(res.status, 404)
    t.not(res.connection, 'close', 'the connection stays open')
  }
  t.equal(disconnects, 0)
})
