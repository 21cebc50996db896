// The admin listener on its own thread (loadShedding.isolateAdmin, what `bulwark serve` does):
// the same answers as the in-process routes, metrics relayed from the event loop, and
// /healthz failing when the gateway's event loop stops reporting (a wedged loop must fail
// liveness), answered meanwhile by the thread.

import { spawn } from 'node:child_process'
import t from 'tap'
import { request } from 'undici'
import { mnistRequest, startGateway } from '../../kit/gateway.ts'

t.test('the admin thread answers what the in-process routes answer', async (t) => {
  const gw = await startGateway({ models: ['mnist'], config: { loadShedding: { livenessTimeoutMs: 1000 } } })
  t.teardown(() => gw.close())
  const addr = await gw.gateway.serveAdmin({ host: '127.0.0.1', port: 0 })
  const url = `http://127.0.0.1:${addr.port}`
  t.equal((await gw.request('/v2/models/mnist/infer', { body: await mnistRequest() })).status, 200)
  await new Promise((r) => setTimeout(r, 300))

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

  // Wedge the event loop for 2.5 s; a separate process asks /healthz after 1.6 s.
  const probe = spawn(process.execPath, ['-e', `setTimeout(() => fetch('${url}/healthz').then((r) => process.stdout.write(String(r.status))), 1600)`], { stdio: ['ignore', 'pipe', 'inherit'] })
  let out = ''
  probe.stdout!.on('data', (d) => (out += d))
  const exited = new Promise((r) => probe.once('exit', r))
  await new Promise((r) => setTimeout(r, 300))
  const until = performance.now() + 2500
  while (performance.now() < until) {
    // busy: no timers, no I/O on this thread
  }
  await exited
  t.equal(out, '503', 'while the event loop is wedged, /healthz fails (answered by the admin thread)')
  await new Promise((r) => setTimeout(r, 400))
  t.equal((await request(`${url}/healthz`)).statusCode, 200, 'and recovers when it reports again')
})
