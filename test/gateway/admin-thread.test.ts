// The admin listener on its own thread (loadShedding.isolateAdmin, what `bulwark serve` does):
// the same answers as the in-process routes, metrics relayed from the event loop, and
// /healthz failing when the gateway's event loop stops reporting (a wedged loop must fail
// liveness), answered meanwhile by the thread.

import { spawnSync } from 'node:child_process'
import t from 'tap'
import { request } from 'undici'
import { mnistRequest, startGateway } from '../../kit/gateway.ts'

const LIVENESS_TIMEOUT_MS = 1000

/** The wedge's probe: asks /healthz until it fails (at most 15 s), then prints every status it got. */
const PROBE = `
import { eventually } from ${JSON.stringify(new URL('../../kit/wait.ts', import.meta.url).href)}
const url = process.argv.at(-1)
const statuses = []
const failed = async () => {
  statuses.push((await fetch(url + '/healthz')).status)
  return statuses.at(-1) === 503
}
// real wait: the admin thread turns /healthz to 503 on its own timer (livenessTimeoutMs, on the system clock: a thread takes no injected clock), seen only from outside.
await eventually(failed, { timeoutMs: 15_000, everyMs: 50, what: '/healthz failing' }).catch(() => {})
process.stdout.write(JSON.stringify(statuses))
`

t.test('the admin thread answers what the in-process routes answer', async (t) => {
  const gw = await startGateway({ models: ['mnist'], config: { loadShedding: { livenessTimeoutMs: LIVENESS_TIMEOUT_MS } } })
  t.teardown(() => gw.close())
  const addr = await gw.gateway.serveAdmin({ host: '127.0.0.1', port: 0 })
  const url = `http://127.0.0.1:${addr.port}`
  t.equal((await gw.request('/v2/models/mnist/infer', { body: await mnistRequest() })).status, 200)
  // The thread has the event loop's readiness from its start (serveAdmin reports it before
  // resolving); metrics are rendered by the event loop at each scrape. Nothing to wait for.

  const health = await request(`${url}/healthz`)
  t.equal(health.statusCode, 200)
  t.same(await health.body.json(), { status: 'ok' })
  const ready = await request(`${url}/readyz`)
  const inProcess = await gw.gateway.admin.inject('/readyz')
  t.equal(ready.statusCode, inProcess.statusCode)
  t.same(await ready.body.json(), inProcess.json(), 'the same readiness body')
  const metrics = await request(`${url}/metrics`)
  t.match(metrics.headers['content-type'], /^text\/plain; version=0\.0\.4/)
  t.match(await metrics.body.text(), /bulwark_requests_total\{code="ok",model="mnist",status="200",verb="infer"\} 1/, 'metrics come from the event loop')
  t.equal((await request(`${url}/nope`)).statusCode, 404)

  // Wedge the event loop: spawnSync blocks this thread (no timers, no I/O) until its child
  // exits. The child, a separate process, asks the admin thread for /healthz until it fails.
  const probe = spawnSync(process.execPath, ['--input-type=module', '-e', PROBE, url], { encoding: 'utf8', timeout: 30_000 })
  t.equal(probe.status, 0, `the probe ran (${probe.stderr})`)
  const statuses = JSON.parse(probe.stdout) as number[]
  t.equal(statuses.at(-1), 503, `while the event loop is wedged, /healthz fails (answered by the admin thread): ${statuses.join(' ')}`)

  // The heartbeat, overdue, fires at the first timers phase after the wedge; two turns of the
  // loop (a check phase, then another after the next timers phase) and its report is posted,
  // ahead of any request below.
  await new Promise((r) => setImmediate(r))
  await new Promise((r) => setImmediate(r))
  t.equal((await request(`${url}/healthz`)).statusCode, 200, 'and recovers when it reports again')
})
