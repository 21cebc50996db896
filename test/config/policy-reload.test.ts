// Policies change under load, with no restart, through the gateway's real front door (mTLS,
// JWTs) and the real mnist model. A policy edit that revokes one of two callers applies to
// every request that starts after the reload, within the reload interval plus one second of
// the edit, while the other caller's requests all succeed and no request fails in any other
// way. An invalid edit keeps the policies in force: the log names the file and the path, the
// failure is counted, /readyz stays ready and says the served policies are stale, until the
// folder is fixed. A removed policy denies its model. And the privacy budget's charges, the
// screening detectors' history and the rate-limit counts carry over a reload, also one that
// shortens the budget's window.

import t from 'tap'
import { readFile, rm } from 'node:fs/promises'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { stringify } from 'yaml'
import { writeFileAtomic } from '../../src/dev/pki.ts'
import { mnistRequest, startGateway, type TestGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { Changes } from '../../kit/wait.ts'

const DEV = 'spiffe://bulwark.local/ns/default/sa/dev'
const INTERVAL_MS = 1000
const body = await mnistRequest()

/** mnist's policy admitting the dev workload for callers whose token says tenant is one of `tenants`. */
const mnistPolicy = (tenants: string[]) => ({
  model: 'mnist',
  allow: [
    { verbs: ['infer'], workloads: [DEV], scopes: ['mnist:infer'], claims: { tenant: tenants } },
    { verbs: ['metadata'], workloads: [DEV], scopes: ['mnist:metadata'] },
  ],
  rateLimit: { requestsPerWindow: 1_000_000, windowMs: 1000 },
  output: { outputs: ['probabilities'] },
})

const reloaded = (gw: TestGateway, since: number) => gw.logged((l) => l.msg === 'policies reloaded; requests that start from now on use them', since)
const refused = (gw: TestGateway, since: number) => gw.logged((l) => l.msg === 'policy change refused; the policies in force stay until the folder is fixed', since)

interface Sent {
  tenant: string
  startMs: number
  endMs: number
  status: number
  code: string | undefined
}

t.test('a revoked caller is refused from the reload on, under steady load, and nothing else fails', async (t) => {
  // Each refusal closes its connection and the revoked caller reconnects at once, many times a
  // second from the test's one address: the per-address handshake rate (its own tests) is
  // lifted so that it is the policy, not that limit, that answers.
  const server = { newConnectionsPerSecondPerAddress: 1_000_000, closedOnRefusalCost: 1 }
  const gw = await startGateway({ models: ['mnist'], policies: { mnist: mnistPolicy(['a', 'b']) }, config: { server, policies: { reloadCheckIntervalMs: INTERVAL_MS } } })
  t.teardown(() => gw.close())
  const tokens = { a: await gw.token({ sub: 'a', scopes: ['mnist:infer'], claims: { tenant: 'a' } }), b: await gw.token({ sub: 'b', scopes: ['mnist:infer'], claims: { tenant: 'b' } }) }
  const sent: Sent[] = []
  const progress = new Changes()
  let running = true
  const loop = async (tenant: 'a' | 'b') => {
    while (running) {
      const startMs = performance.now()
      const res = await gw.request('/v2/models/mnist/infer', { body, token: tokens[tenant] })
      sent.push({ tenant, startMs, endMs: performance.now(), status: res.status, code: res.body?.code })
      progress.notify()
    }
  }
  // Two callers, two connections' worth of requests each, back to back.
  const loops = [loop('a'), loop('a'), loop('b'), loop('b')]
  await progress.until(() => sent.filter((s) => s.tenant === 'b').length >= 10)

  const logIndex = gw.logs.length
  const editMs = performance.now()
  await writeFileAtomic(path.join(gw.dir, 'policies', 'mnist.yaml'), stringify(mnistPolicy(['a'])))
  const applied = await reloaded(gw, logIndex)
  const appliedMs = performance.now()
  await progress.until(() => sent.filter((s) => s.tenant === 'b' && s.startMs > appliedMs).length >= 10 && sent.filter((s) => s.tenant === 'a' && s.startMs > appliedMs).length >= 10)
  running = false
  await Promise.all(loops)

  t.equal(applied.generation, 2, 'the edit is the second generation')
  t.ok(appliedMs - editMs < INTERVAL_MS + 1000, `applied ${Math.round(appliedMs - editMs)} ms after the edit: within the reload interval plus one second`)
  const a = sent.filter((s) => s.tenant === 'a')
  const b = sent.filter((s) => s.tenant === 'b')
  t.same(a.filter((s) => s.status !== 200), [], `all ${a.length} requests of the caller still admitted succeed, before, during and after the reload`)
  t.same(b.filter((s) => s.endMs < editMs && s.status !== 200), [], 'the revoked caller was served until the edit')
  const after = b.filter((s) => s.startMs > appliedMs)
  t.same(after.filter((s) => s.status !== 403 || s.code !== 'forbidden'), [], `each of the revoked caller's ${after.length} requests started after the reload is refused 403 forbidden`)
  t.same(sent.filter((s) => s.status !== 200 && s.status !== 403), [], 'no request failed in any other way')
  const reason = gw.logs.find((l) => l.msg === 'request refused' && typeof l.reason === 'string' && l.reason.includes('claim "tenant"'))
  t.ok(reason, 'the refusal says which claim no longer matches')
})

t.test('an invalid edit keeps the policies in force, logged, counted, and stale in /readyz; a removed policy denies its model', async (t) => {
  const gw = await startGateway({ models: ['mnist'], policies: { mnist: mnistPolicy(['a']) }, config: { policies: { reloadCheckIntervalMs: INTERVAL_MS } } })
  t.teardown(() => gw.close())
  const token = await gw.token({ sub: 'a', scopes: ['mnist:infer'], claims: { tenant: 'a' } })
  const file = path.join(gw.dir, 'policies', 'mnist.yaml')

  let logIndex = gw.logs.length
  await writeFileAtomic(file, stringify({ ...mnistPolicy([]), allow: [{ verbs: ['infer'], workloads: [DEV], scopes: ['mnist:infer'], claims: { tenant: [] } }] }))
  const line = await refused(gw, logIndex)
  const problems = (line.problems as string[]).join('\n')
  t.match(problems, `${file} /allow/0/claims/tenant`, 'the log line names the file and the path')
  t.match(problems, /Expected array length to be greater or equal to 1/, 'and what is wrong')
  t.match(await gw.gateway.metrics.render(), /bulwark_policy_reloads_total\{outcome="failed"\} 1/, 'the refused change is counted')
  t.match(await gw.gateway.metrics.render(), /bulwark_policy_stale 1/)
  const ready = await gw.gateway.admin.inject({ method: 'GET', url: '/readyz' })
  t.equal(ready.statusCode, 200, 'the gateway stays ready: it serves the policies it had')
  t.match(ready.json().policies, { state: 'stale', generation: 1, problems: [new RegExp(`${file.replace(/[.]/g, '\\.')} /allow/0/claims/tenant`)] }, '/readyz says the served policies are stale, and why')
  t.equal((await gw.request('/v2/models/mnist/infer', { body, token })).status, 200, 'the policy in force still admits the caller')

  // Fixed: applied, current again.
  logIndex = gw.logs.length
  await writeFileAtomic(file, stringify(mnistPolicy(['a', 'c'])))
  await reloaded(gw, logIndex)
  t.match((await gw.gateway.admin.inject({ method: 'GET', url: '/readyz' })).json().policies, { state: 'current', generation: 2, problems: [] })
  t.match(await gw.gateway.metrics.render(), /bulwark_policy_stale 0/)

  // Removed: nobody may call mnist.
  logIndex = gw.logs.length
  await rm(file)
  await reloaded(gw, logIndex)
  const denied = await gw.request('/v2/models/mnist/infer', { body, token })
  t.equal(denied.status, 403, 'a model whose policy was removed is denied')
  t.ok(gw.logs.some((l) => l.msg === 'request refused' && String(l.reason).includes('no policy for this model (default deny)')), 'by default deny')
})

t.test('budget charges, screening history and rate-limit counts carry over a reload that shortens the budget window', async (t) => {
  const gw = await startGateway({ models: ['mnist'], config: { policies: { reloadCheckIntervalMs: INTERVAL_MS } } })
  t.teardown(() => gw.close())
  const file = path.join(gw.dir, 'policies', 'mnist.yaml')
  const entries = async () => Number(/bulwark_screening_state_entries\{detector="stateful",model="mnist"\} (\d+)/.exec(await gw.gateway.metrics.render())?.[1])
  // Distinct digits (one pixel apart): the stateful detector keeps each query, an exact repeat once.
  let sent = 0
  const variant = () => {
    const b = structuredClone(body) as { inputs: { data: number[] }[] }
    b.inputs[0]!.data[++sent] = 0.5
    return b
  }
  const infer = async () => {
    const res = await gw.request('/v2/models/mnist/infer', { body: variant() })
    t.equal(res.status, 200)
    return res.body.parameters as Record<string, number>
  }
  await infer()
  await infer()
  const before = await infer()
  const cost = before.privacy_epsilon_cost!
  t.ok(cost > 0, 'each answer is charged')
  t.equal(await entries(), 3, 'the stateful detector holds the three queries')

  // Shorter budget window, the stateful detector judging in observe mode, a lower rate limit.
  const original = await readFile(path.join(repoRoot, 'policies', 'mnist.yaml'), 'utf8')
  const edited = original
    .replace('budget: { epsilon: 6400, windowMs: 3600000 }', 'budget: { epsilon: 6400, windowMs: 600000 }')
    .replace('  stateful:\n    k: 20', '  stateful:\n    mode: observe\n    k: 20')
    .replace('requestsPerWindow: 1000\n  windowMs: 1000', 'requestsPerWindow: 4\n  windowMs: 60000')
  t.not(edited, original)
  const logIndex = gw.logs.length
  await writeFileAtomic(file, edited)
  await reloaded(gw, logIndex)

  t.equal(await entries(), 3, 'the screening history is still there after the reload')
  const after = await infer()
  t.equal(after.privacy_window_ms, 600000, 'the new window applies')
  t.equal(after.privacy_epsilon_left, before.privacy_epsilon_left! - cost, 'the charges made before the reload still count: the budget was not reset or shortened')
  t.equal(await entries(), 4, 'and the history goes on from where it was')
  // The four requests this minute fill the new limit of 4: the count made before the reload counts.
  const limited = await gw.request('/v2/models/mnist/infer', { body: variant() })
  t.equal(limited.status, 429, 'the rate-limit count made before the reload counts against the new limit')
})
