// The internal bench's load generator (bench/load.ts) runs on `bulwark bench`'s: against a
// real gateway over mTLS, a closed loop bounded by count answers exactly that many requests
// (its warm-up does not count), tallied by HTTP status; an open loop counts a refusal under
// its status; an origin off loopback is refused before anything is sent.

import t from 'tap'
import { readFile } from 'node:fs/promises'
import { closedLoop, openLoop } from '../../bench/load.ts'
import { startGateway } from '../../kit/gateway.ts'

const gw = await startGateway({ models: [] })
t.teardown(() => gw.close())
const connect = { ca: await readFile(gw.pki.files.ca, 'utf8'), cert: await readFile(gw.pki.files.clientCert, 'utf8'), key: await readFile(gw.pki.files.clientKey, 'utf8') }
const live = { method: 'GET' as const, path: '/v2/health/live' }

t.test('a closed loop bounded by count, tallied by status', async (t) => {
  const r = await closedLoop({ origin: gw.url, connect, concurrency: 3, maxRequests: 5, durationMs: 60_000, warmupMs: 50, next: () => live })
  t.equal(r.requests, 5, 'exactly maxRequests answered, the warm-up aside')
  t.same(r.statuses, { 200: 5 })
  t.equal(r.ok, 5)
  t.equal(r.errors, 0)
  t.ok(r.p50 <= r.p99 && r.p99 <= r.max, 'percentiles in order')
})

t.test('an open loop counts refusals under their status', async (t) => {
  const token = { method: 'GET' as const, path: '/v2/models/mnist' }
  const r = await openLoop({ origin: gw.url, connect, ratePerSec: 100, connections: 2, maxRequests: 4, durationMs: 60_000, next: () => token })
  t.equal(r.requests, 4)
  t.same(r.statuses, { 401: 4 }, 'no token: 401 each time')
  t.equal(r.ok, 0)
})

t.test('loopback only', async (t) => {
  await t.rejects(closedLoop({ origin: 'https://10.1.2.3:8443', concurrency: 1, durationMs: 10, next: () => live }), /load tests target loopback only, not 10\.1\.2\.3/)
})
