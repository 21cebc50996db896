// The circuit breaker, against a real upstream process killed and restarted under load through
// the gateway's full front door (CLIENTS concurrent clients, each phase a counted number of
// requests): while the upstream is down every request is answered 503 upstream_unavailable
// and the breaker opens within its rolling window of the kill; once the upstream is back the
// breaker half-opens, the next request is its trial and closes it, and traffic is served
// again. Every request is answered (200, or 503 upstream_unavailable, each counted) and none
// outlives its deadline. (How fast the refusals are is the bench's to measure.)
//
// Nothing here sleeps: the test waits for answers and for the breaker's own transitions
// (UpstreamBackend.onBreakerChange). The breaker's rolling window and reset timeout run on
// opossum's own timers, so the half-open transition still comes resetTimeoutMs after opening.

import t from 'tap'
import { Agent, request } from 'undici'
import { startGateway } from '../../kit/gateway.ts'
import { Changes } from '../../kit/wait.ts'
import type { BreakerState, UpstreamBackend } from '../../src/inference/upstream-backend.ts'
import { jsonBody, mnistDigits, startUpstream } from '../helpers/scaleout.ts'

const policy = {
  model: 'mnist',
  allow: [{ verbs: ['infer', 'metadata'], workloads: ['spiffe://bulwark.local/ns/default/sa/dev'], scopes: ['mnist:infer'] }],
  rateLimit: { requestsPerWindow: 10_000, windowMs: 1000 },
}
const breaker = { volumeThreshold: 5, errorThresholdPercentage: 50, rollingWindowMs: 2000, rollingBuckets: 10, resetTimeoutMs: 1000, callTimeoutMs: 1000 }
const DEADLINE_MS = 2000
const CLIENTS = 4

type Phase = 'before' | 'down' | 'trial' | 'after'

interface Sample {
  phase: Phase
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
  // Every transition, when it happened.
  const states: { ms: number; state: BreakerState }[] = []
  const transitions = new Changes()
  t.teardown(backend.onBreakerChange((_endpoint, state) => {
    states.push({ ms: performance.now(), state })
    transitions.notify()
  }))
  /** The first transition to `state` at or after index `from` of `states`. */
  const transition = (state: BreakerState, from: number) => transitions.until(() => states.slice(from).find((s) => s.state === state))

  const token = await gw.token({ ttlSeconds: 600 })
  const bodies = mnistDigits(10).map((d) => JSON.stringify(jsonBody([d])))
  const client = gw.agent as Agent
  const samples: Sample[] = []
  let sent = 0
  const send = async (phase: Phase): Promise<Sample> => {
    const t0 = performance.now()
    const body = bodies[sent++ % bodies.length]
    const sample = await request(`${gw.url}/v2/models/mnist/infer`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body,
      dispatcher: client,
    }).then(
      async (res) => ({ phase, ms: performance.now() - t0, status: res.statusCode, code: ((await res.body.json()) as { code?: string }).code ?? null }),
      () => ({ phase, ms: performance.now() - t0, status: 0, code: 'connection' }),
    )
    samples.push(sample)
    return sample
  }
  /** CLIENTS clients, each sending as soon as its last answer came, `count` requests in all (fewer once `enough()`). */
  const load = async (phase: Phase, count: number, enough: () => boolean = () => false) => {
    let left = count
    await Promise.all(Array.from({ length: CLIENTS }, async () => {
      while (left > 0 && !enough()) {
        left--
        await send(phase)
      }
    }))
  }
  const inPhase = (phase: Phase) => samples.filter((s) => s.phase === phase)

  await load('before', 60)
  t.ok(inPhase('before').every((s) => s.status === 200), 'before the kill every request is served')

  // Kill the upstream; under load the breaker opens. Then restart it on the same port.
  const killMs = performance.now()
  const opening = transition('open', states.length)
  let open = false
  void opening.then(() => (open = true))
  await up.stop('SIGKILL')
  await load('down', 1000, () => open)
  t.ok(open, 'the breaker opens')
  const openMs = (await opening).ms
  t.ok(openMs - killMs <= breaker.rollingWindowMs, `within the rolling window: ${(openMs - killMs).toFixed(0)} ms after the kill (window ${breaker.rollingWindowMs} ms)`)
  const readyz = await request(`${gw.adminUrl}/readyz`)
  const rz = (await readyz.body.json()) as any
  t.equal(readyz.statusCode, 503, '/readyz: not ready while every breaker is open')
  t.match(rz.checks['upstream:mnist'], /circuit breaker open/)
  t.equal(rz.upstreams.mnist[0].state, 'open')
  t.match(await gw.gateway.metrics.render(), /bulwark_upstream_breaker_state\{endpoint="http:\/\/127\.0\.0\.1:\d+",model="mnist",state="open"\} 1/, 'the breaker state is a metric')
  // The load keeps meeting the open breaker while the upstream process stays down.
  await load('down', 60)
  const down = inPhase('down')
  t.ok(down.length > 50 && down.every((s) => s.status === 503), `refused while the upstream is down (${down.length})`)

  up = await startUpstream({}, { apiPort, adminPort })
  // Half-open lets one trial call through: send it once the breaker is half-open. A trial
  // that still fails opens the breaker again, and the next half-open gets another.
  for (let trial = 0; trial < 5 && backend.status()[0]!.state !== 'closed'; trial++) {
    if (backend.status()[0]!.state !== 'half-open') await transition('half-open', states.length)
    await send('trial')
  }
  t.equal(backend.status()[0]!.state, 'closed', 'the breaker closes again')
  t.equal(inPhase('trial').at(-1)?.status, 200, 'the trial that closed it was served by the restarted upstream')

  await load('after', 60)
  const after = inPhase('after')
  t.ok(after.length === 60 && after.every((s) => s.status === 200), `traffic resumes: ${after.filter((s) => s.status === 200).length}/${after.length} served`)

  t.comment(`${samples.length} requests from ${CLIENTS} clients; breaker: ${states.map((s) => `${s.state}@${(s.ms - killMs).toFixed(0)}`).join(' -> ')} (ms after the kill)`)
  // Each trial while the upstream is still down opens the breaker again: closed, (open, half-open) n times, closed.
  const metrics = await gw.gateway.metrics.render()
  const entered = (state: BreakerState) => Number(new RegExp(`bulwark_upstream_breaker_transitions_total\\{endpoint="[^"]+",model="mnist",state="${state}"\\} (\\d+)`).exec(metrics)?.[1] ?? 0)
  const [opened, halfOpened, closed] = [entered('open'), entered('half-open'), entered('closed')]
  t.ok(opened >= 1 && halfOpened === opened && closed === 1, `every opening ended in a trial, and the last trial closed it (open ${opened}, half-open ${halfOpened}, closed ${closed}); each transition is counted`)
  t.same([states[0]?.state, states.at(-1)?.state], ['open', 'closed'], 'first open, last closed')

  const refusals = samples.filter((s) => s.status === 503)
  const worst = Math.max(...samples.map((s) => s.ms))
  t.ok(samples.every((s) => s.status === 200 || (s.status === 503 && s.code === 'upstream_unavailable')), 'every request is answered: 200, or 503 upstream_unavailable')
  t.ok(worst < DEADLINE_MS, `no request hangs past its deadline (slowest ${worst.toFixed(0)} ms, deadline ${DEADLINE_MS} ms)`)
  t.ok(gw.gateway.metrics.requests.get({ model: 'mnist', verb: 'infer', status: '503', code: 'upstream_unavailable' }) === refusals.length, 'each refusal is counted')
})
