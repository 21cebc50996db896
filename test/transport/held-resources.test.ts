// What a client can hold without being admitted: nothing reads a body before the front door
// has admitted an inference call (unknown routes, wrong methods and refusals are answered
// from the headers, and the connection closes instead of the body being read); a stalled
// upload is cut off after server.bodyIdleTimeoutMs with 408 and frees the slots it held; one
// client certificate cannot open more than server.maxConnectionsPerClient connections; a
// caller with a valid token refused before a body of up to 1 MiB is read keeps its connection
// (the body is drained); a
// connection closed after a refusal with its body unread costs its address
// server.closedOnRefusalCost new connections when the client showed no valid token (a caller
// with one pays nothing extra), and a connection refused for its rate is reset before the TLS
// server sees it (no handshake failure is counted for it).
// Every case goes over a real TLS connection with the dev client certificate.

import { once } from 'node:events'
import { readFile } from 'node:fs/promises'
import tls from 'node:tls'
import t from 'tap'
import { buildConfig, ConfigError } from '../../src/config/load.ts'
import { cryptoRandom, realDeps } from '../../src/deps.ts'
import { issueCertificate } from '../../src/dev/pki.ts'
import { FakeClock } from '../../kit/clock.ts'
import { startGateway, type TestGateway } from '../../kit/gateway.ts'

const MiB = 1024 * 1024

interface Raw {
  socket: tls.TLSSocket
  /** Everything the server sent, once it closed the connection. */
  closed: Promise<string>
}

/** A TLS connection to the gateway, with the dev client certificate unless others are given. */
async function connect(gw: TestGateway, creds?: { cert: string; key: string }): Promise<Raw> {
  const url = new URL(gw.url)
  const socket = tls.connect({
    host: url.hostname,
    port: Number(url.port),
    ca: await readFile(gw.pki.files.ca),
    cert: creds?.cert ?? (await readFile(gw.pki.files.clientCert)),
    key: creds?.key ?? (await readFile(gw.pki.files.clientKey)),
    servername: 'localhost',
  })
  let text = ''
  socket.on('data', (d: Buffer) => (text += d.toString('latin1')))
  socket.on('error', () => {})
  const closed = once(socket, 'close').then(() => text)
  // A connection closed before its handshake completes rejects (the server refused it).
  const refused = closed.then(() => Promise.reject(new Error('closed before the TLS handshake completed')))
  refused.catch(() => {}) // a connection closed after its handshake settles nothing here
  await Promise.race([once(socket, 'secureConnect'), refused])
  return { socket, closed }
}

/** Request headers for `path` announcing a body of `length` bytes. */
const head = (method: string, path: string, length: number, token?: string) =>
  `${method} ${path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${length}\r\n${token ? `Authorization: Bearer ${token}\r\n` : ''}\r\n`

t.test('a body nobody admitted is never read: the answer comes from the headers, then the connection closes', async (t) => {
  const gw = await startGateway({ models: ['mnist'] })
  t.teardown(() => gw.close())
  const token = await gw.token()
  const cases: [string, string, string | undefined, number, string][] = [
    ['POST', '/v2/no/such/route', token, 404, 'not_found'],
    ['POST', '/v2/models/mnist', token, 404, 'not_found'],
    ['POST', '/v2/health/live', token, 404, 'not_found'],
    ['POST', '/v2/models/mnist/infer', undefined, 401, 'unauthenticated'],
  ]
  for (const [method, path, bearer, status, code] of cases) {
    const c = await connect(gw)
    // 30 MiB announced, 1 KiB sent: had the server read the body, it would still be waiting.
    c.socket.write(head(method, path, 30 * MiB, bearer) + ' '.repeat(1024))
    const answer = await c.closed
    t.match(answer, new RegExp(`^HTTP/1.1 ${status} `), `${method} ${path}: ${status} without the body`)
    t.match(answer, /\r\nconnection: close\r\n/i, `${method} ${path}: the server closes the connection`)
    t.match(answer, `"code":"${code}"`)
  }
})

t.test('a caller with a valid token refused before a small body is read keeps its connection: the body is drained, not held', async (t) => {
  const gw = await startGateway({ models: ['mnist'] })
  t.teardown(() => gw.close())
  const c = await connect(gw)
  const noScope = await gw.token({ scopes: [] })
  let answers = 0
  const twoAnswers = new Promise<void>((resolve) => c.socket.on('data', (d: Buffer) => (answers += (d.toString('latin1').match(/HTTP\/1.1 /g) ?? []).length) >= 2 && resolve()))
  const body = '{"inputs":[]}'.padEnd(64 * 1024)
  c.socket.write(head('POST', '/v2/models/mnist/infer', body.length, noScope) + body)
  c.socket.write('GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n')
  await twoAnswers
  t.notOk(c.socket.destroyed, 'the 403 left the connection open, and a second request was answered on it')
  c.socket.end()
  const text = await c.closed
  t.match(text, /^HTTP\/1.1 403 /, 'the refusal first')
  t.notMatch(text.split('\r\n\r\n')[0]!, /connection: close/i, 'without Connection: close')
  t.match(text, /HTTP\/1.1 200 [^]*$/, 'then the next request\'s answer, on the same connection')
})

t.test('a stalled upload is cut off with 408 request_timeout and frees its rate-limit and load-shedding slots', async (t) => {
  const clock = new FakeClock(Date.now())
  // One request in flight per caller: while the upload stalls, the same caller is refused.
  const gw = await startGateway({ models: ['mnist'], deps: { clock, random: cryptoRandom }, config: { rateLimits: { maxInFlightPerPrincipal: 1 } } })
  t.teardown(() => gw.close())
  const idleMs = 10_000 // server.bodyIdleTimeoutMs, at its default
  const c = await connect(gw)
  c.socket.write(head('POST', '/v2/models/mnist/infer', 4096, await gw.token()) + '{"inputs": [')
  // The body-read link is now waiting for the rest: once its idle timer is set, time runs out.
  await clock.timerSet(idleMs)
  t.equal(gw.gateway.inFlight(), 1, 'the upload holds a load-shedding slot while it stalls')
  t.equal((await gw.request('/v2/models/mnist')).status, 429, 'and its caller\'s one in-flight slot')
  clock.advance(idleMs)
  const answer = await c.closed
  t.match(answer, /^HTTP\/1.1 408 /)
  t.match(answer, /"code":"request_timeout"/)
  t.match(answer, /\r\nconnection: close\r\n/i)
  t.equal(gw.gateway.inFlight(), 0, 'the load-shedding slot is free again')
  t.equal((await gw.request('/v2/models/mnist')).status, 200, 'the same caller is served again: its in-flight slot was freed too')
})

t.test('one client certificate cannot open more than maxConnectionsPerClient connections; another client can', async (t) => {
  const gw = await startGateway({ models: ['mnist'], config: { server: { maxConnectionsPerClient: 2 } } })
  t.teardown(() => gw.close())
  const first = await connect(gw)
  const second = await connect(gw)
  const third = await connect(gw)
  t.equal(await third.closed, '', 'the third connection is closed by the server without an answer')
  const other = await issueCertificate(gw.ca, realDeps, { commonName: 'other', usage: 'client', uris: ['spiffe://bulwark.local/ns/default/sa/other'] })
  const stranger = await connect(gw, { cert: other.certPem, key: other.keyPem })
  stranger.socket.write('GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
  t.match(await stranger.closed, /^HTTP\/1.1 200 /, 'a client with another certificate is admitted')
  first.socket.write('GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
  t.match(await first.closed, /^HTTP\/1.1 200 /, 'the first two still work')
  second.socket.destroy()
  const metrics = await gw.gateway.metrics.render()
  t.match(metrics, /bulwark_connections_refused_total\{reason="per_client"\} 1/)
})

t.test('new connections past newConnectionsPerSecondPerAddress are closed before the handshake, until the second is over', async (t) => {
  const clock = new FakeClock(Date.now())
  const gw = await startGateway({ deps: { clock, random: cryptoRandom }, config: { server: { newConnectionsPerSecondPerAddress: 2 } } })
  t.teardown(() => gw.close())
  const a = await connect(gw)
  const b = await connect(gw)
  const refused = await connect(gw).then(
    () => 'handshake completed',
    () => 'closed before the handshake',
  )
  t.equal(refused, 'closed before the handshake', 'the third new connection within the second')
  clock.advance(1000)
  const c = await connect(gw)
  t.ok(c.socket.authorized, 'a second later, a new connection is admitted again')
  for (const x of [a, b, c]) x.socket.destroy()
  t.match(await gw.gateway.metrics.render(), /bulwark_connections_refused_total\{reason="rate"\} 1/)
})

t.test('a connection closed on a refusal without a valid token costs closedOnRefusalCost new connections; refused ones never reach the TLS server', async (t) => {
  const clock = new FakeClock(Date.now())
  const gw = await startGateway({ models: ['mnist'], deps: { clock, random: cryptoRandom }, config: { server: { newConnectionsPerSecondPerAddress: 10, closedOnRefusalCost: 10 } } })
  t.teardown(() => gw.close())
  const answered = await connect(gw)
  answered.socket.write('GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n')
  t.match(await answered.closed, /^HTTP\/1.1 200 /, 'an answered request closes its connection at the client\'s asking')
  const forbidden = await connect(gw)
  forbidden.socket.write(head('POST', '/v2/models/mnist/infer', 2 * MiB, await gw.token({ scopes: [] })) + '{"inputs":')
  t.match(await forbidden.closed, /^HTTP\/1.1 403 /, 'a caller with a valid token refused before its (2 MiB) body is read: the connection closes too')
  const second = await connect(gw)
  t.ok(second.socket.authorized, 'neither costs more than its own connection: the next one is admitted')
  second.socket.write(head('POST', '/v2/models/mnist/infer', MiB) + '{"inputs":')
  t.match(await second.closed, /^HTTP\/1.1 401 /, 'a refusal with the body unread closes the connection')
  const refused = await connect(gw).then(
    () => 'handshake completed',
    () => 'reset before the handshake',
  )
  t.equal(refused, 'reset before the handshake', 'three connections and one refusal-close without a token (1 + 1 + 1 + 10) overdraw the 10 a second')
  clock.advance(100)
  t.equal(await connect(gw).then(() => 'admitted', () => 'reset'), 'reset', 'a tenth of a second later the debt is not yet paid')
  clock.advance(400)
  const paid = await connect(gw)
  t.ok(paid.socket.authorized, 'once it is, new connections are admitted again')
  paid.socket.destroy()
  const metrics = await gw.gateway.metrics.render()
  t.match(metrics, /bulwark_connections_refused_total\{reason="rate"\} 2/)
  t.notMatch(metrics, /bulwark_tls_handshake_failures_total\{/, 'the reset connections never became TLS sockets, so no handshake failed')
})

t.test('the receive timeouts reach the server, and a receive timeout shorter than the header timeout stops the start', async (t) => {
  const gw = await startGateway({ config: { server: { headersTimeoutMs: 2_000, receiveTimeoutMs: 20_000 } } })
  t.teardown(() => gw.close())
  t.equal(gw.gateway.api.server.headersTimeout, 2_000)
  t.equal(gw.gateway.api.server.requestTimeout, 20_000)
  t.equal(gw.gateway.api.server.maxConnections, 4096, 'the total connection cap, at its default')
  t.throws(() => buildConfig({ server: { headersTimeoutMs: 5_000, receiveTimeoutMs: 1_000 } }, 'x.yaml'), ConfigError)
})
