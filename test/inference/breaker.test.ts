// The circuit breaker, against a real upstream process killed and restarted under a bounded
// open-loop load through the gateway's full front door: the breaker opens within its rolling
// window, every request is answered (200, or 503 upstream_unavailable, each counted) and none
// outlives its deadline, and once the upstream is back traffic resumes through half-open,
// then closed. (How fast the refusals are is the bench's to measure.)
//
// Time here is real: the upstream is a real process, and the breaker's rolling window and
// reset timeout run on opossum's own timers.

import t from 'tap'
import { Agent, request } from 'undici'
import { startGateway } from '../../kit/gateway.ts'
import type { BreakerState, UpstreamBackend } from '../../src/inference/upstream-backend.ts'
import { jsonBody, mnistDigits, startUpstream, waitUntil } from '../helpers/scaleout.ts'

const policy = {
  model: 'mnist',
  allow: [{ verbs: ['infer', 'metadata'], workloads: ['spiffe://bulwark.local/ns/default/sa/dev'], scopes: ['mnist:infer'] }],
  rateLimit: { requestsPerWindow: 10_000, windowMs: 1000 },
}
const breaker = { volumeThreshold: 5, errorThresholdPercentage: 50, rollingWindowMs: 2000, rollingBuckets: 10, resetTimeoutMs: 1000, callTimeoutMs: 1000 }
const DEADLINE_MS = 2000
const RATE = 80

interface Sample {
  sentMs: number
  ms: number
  status: number
  code: string | null
}

t.test('kill the upstream under load: 503s while it is down, breaker opens, traffic resumes through half-open', async (t) => {
  let up = await startUpstream()
  t.teardown(() => up.stop())
  const { apiPort, adminPort } = up
  const gw = await startGateway({
    models: ['mnist'],
    policies: { mnist: policy },
    config: {
      server: { requestTimeoutMs: DEADLINE_MS },
      // Every answer is still audited; strict durability would add this machine's fsync
      // latency (tens of ms at p99 when its disk is busy) to each one, refusals included.
      audit: { durability: 'relaxed' },
      models: { serve: [{ name: 'mnist', upstream: { endpoints: [`http://127.0.0.1:${apiPort}`], breaker } }] },
    },
  })
  t.teardown(() => gw.close())
  const backend = gw.gateway.registry.upstreams()[0]!.backend as UpstreamBackend
  const states: { ms: number; state: BreakerState }[] = [{ ms: performance.now(), state: 'closed' }]
  const sample = () => {
    const s = backend.status()[0]!.state
    if (s !== states.at(-1)!.state) states.push({ ms: performance.now(), state: s })
    return s
  }
  // Real: the breaker's state changes on opossum's timers; sampled often to time its transitions.
  const watch = setInterval(sample, 2)
  t.teardown(() => clearInterval(watch))

  const token = await gw.token({ ttlSeconds: 600 })
  const bodies = mnistDigits(10).map((d) => JSON.stringify(jsonBody([d])))
  const client = gw.agent as Agent
  const samples: Sample[] = []
  let stop = false
  t.teardown(() => void (stop = true))
  const load = (async () => {
    const t0 = performance.now()
    const inflight: Promise<void>[] = []
    for (let i = 0; !stop; i++) {
      const due = t0 + (i * 1000) / RATE
      const wait = due - performance.now()
      // Real: open-loop load on a real process leaves on schedule, whatever the answers' latency.
      if (wait > 0) await new Promise((r) => setTimeout(r, wait))
      inflight.push(
        request(`${gw.url}/v2/models/mnist/infer`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
          body: bodies[i % bodies.length],
          dispatcher: client,
        }).then(
          async (res) => {
            const body = (await res.body.json()) as { code?: string }
            samples.push({ sentMs: due, ms: performance.now() - due, status: res.statusCode, code: body.code ?? null })
          },
          () => void samples.push({ sentMs: due, ms: performance.now() - due, status: 0, code: 'connection' }),
        ),
      )
    }
    await Promise.all(inflight)
  })()

  // Real (as each phase below): traffic through a live upstream process, before the kill.
  await new Promise((r) => setTimeout(r, 1500))
  const byPhase = (from: number, to: number) => samples.filter((s) => s.sentMs >= from && s.sentMs < to)
  const before = byPhase(0, performance.now() - 300)
  t.ok(before.length > 50 && before.every((s) => s.status === 200), 'before the kill every request is served')

  // Kill the upstream, watch the breaker open, restart it on the same port, watch traffic resume.
  const killMs = performance.now()
  await up.stop('SIGKILL')
  // Real: polls the breaker, which opens on opossum's rolling window.
  t.ok(await waitUntil(() => sample() === 'open', breaker.rollingWindowMs + 500), 'the breaker opens')
  const openMs = states.find((s) => s.state === 'open' && s.ms >= killMs)!.ms
  t.ok(openMs - killMs <= breaker.rollingWindowMs, `within the rolling window: ${(openMs - killMs).toFixed(0)} ms after the kill (window ${breaker.rollingWindowMs} ms)`)
  const readyz = await request(`${gw.adminUrl}/readyz`)
  const rz = (await readyz.body.json()) as any
  t.equal(readyz.statusCode, 503, '/readyz: not ready while every breaker is open')
  t.match(rz.checks['upstream:mnist'], /circuit breaker open/)
  t.equal(rz.upstreams.mnist[0].state, 'open')
  t.match(await gw.gateway.metrics.render(), /bulwark_upstream_breaker_state\{endpoint="http:\/\/127\.0\.0\.1:\d+",model="mnist",state="open"\} 1/, 'the breaker state is a metric')
  // Real: the load keeps meeting the open breaker while the upstream process stays down.
  await new Promise((r) => setTimeout(r, 1500))
  const restartMs = performance.now()
  up = await startUpstream({}, { apiPort, adminPort })
  const upMs = performance.now()
  // Real: polls the breaker, which half-opens on opossum's reset timeout.
  t.ok(await waitUntil(() => sample() === 'closed', breaker.resetTimeoutMs * 3 + 2000), 'the breaker closes again')
  const closedMs = performance.now()
  // Real: traffic through the restarted upstream process.
  await new Promise((r) => setTimeout(r, 1500))
  const endMs = performance.now()
  stop = true
  await load

  const down = byPhase(killMs, restartMs).filter((s) => s.status === 503)
  t.comment(`${samples.length} requests at ${RATE}/s; upstream down ${(upMs - killMs).toFixed(0)} ms; ` +
    `breaker: ${states.filter((s) => s.ms >= killMs).map((s) => `${s.state}@${(s.ms - killMs).toFixed(0)}`).join(' -> ')}`)
  t.ok(down.length > 50, `refused while the upstream is down (${down.length})`)
  // Each trial while the upstream is still down opens the breaker again: closed, (open, half-open) n times, closed.
  const metrics = await gw.gateway.metrics.render()
  const entered = (state: BreakerState) => Number(new RegExp(`bulwark_upstream_breaker_transitions_total\\{endpoint="[^"]+",model="mnist",state="${state}"\\} (\\d+)`).exec(metrics)?.[1] ?? 0)
  const [opened, halfOpened, closed] = [entered('open'), entered('half-open'), entered('closed')]
  t.ok(opened >= 1 && halfOpened === opened && closed === 1, `every opening ended in a trial, and the last trial closed it (open ${opened}, half-open ${halfOpened}, closed ${closed}); each transition is counted`)
  t.same([states[1]?.state, states.at(-1)?.state], ['open', 'closed'], 'first open, last closed')
  const after = byPhase(closedMs + 100, endMs)
  t.ok(after.length > 20 && after.every((s) => s.status === 200), `traffic resumes: ${after.filter((s) => s.status === 200).length}/${after.length} served`)

  const refusals = samples.filter((s) => s.status === 503)
  const worst = Math.max(...samples.map((s) => s.ms))
  t.ok(samples.every((s) => s.status === 200 || (s.status === 503 && s.code === 'upstream_unavailable')), 'every request is answered: 200, or 503 upstream_unavailable')
  t.ok(worst < DEADLINE_MS, `no request hangs past its deadline (slowest ${worst.toFixed(0)} ms, deadline ${DEADLINE_MS} ms)`)
  t.ok(gw.gateway.metrics.requests.get({ model: 'mnist', verb: 'infer', status: '503', code: 'upstream_unavailable' }) === refusals.length, 'each refusal is counted')
})
