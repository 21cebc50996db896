// Shared state for replicas: two gateway processes sharing one Redis. A principal alternating
// between them is refused at the same totals as against one gateway (its rate limit and its
// privacy budget are one), a restart of either loses nothing, and with Redis gone budgets fail
// closed, rate limits as configured, and /readyz says so.

import { mkdtemp, mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { Agent, request } from 'undici'
import { stringify } from 'yaml'
import { startGateway as startProcess, type GatewayProcess } from '../../kit/gateway-process.ts'
import { loadSigningKey, mintToken } from '../../src/dev/mint-token.ts'
import { DEV_AUDIENCE, DEV_ISSUER } from '../../src/config/security.ts'
import { realDeps } from '../../src/deps.ts'
import { mnistRequest, startGateway } from '../../kit/gateway.ts'
import { REDIS_SERVER, sharedState, startRedis } from '../helpers/scaleout.ts'

const RATE = 9
const policy = {
  model: 'mnist',
  allow: [{ verbs: ['infer'], workloads: ['spiffe://bulwark.local/ns/default/sa/dev'], scopes: ['mnist:infer'] }],
  rateLimit: { requestsPerWindow: RATE, windowMs: 600_000 },
  // Laplace noise at epsilon 1 per answer, 4 per hour: four answers per caller.
  output: { mode: 'label', noise: { mechanism: 'laplace', epsilon: 1 }, budget: { epsilon: 4, windowMs: 3_600_000 } },
}

if (!REDIS_SERVER) t.test('needs redis-server (.ci/run installs it)', { skip: 'redis-server is not installed' }, () => {})
else {
  t.test('two gateway processes, one Redis: one rate limit and one budget per principal', async (t) => {
    const redis = await startRedis(t)
    const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-replicas-'))
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    await mkdir(path.join(dir, 'policies'))
    await writeFile(path.join(dir, 'policies', 'mnist.yaml'), stringify(policy))
    const config = (n: string) => ({
      models: { serve: [{ name: 'mnist', workers: 1, intraOpThreads: 1 }] },
      state: { directory: `state-${n}`, redis: { url: redis.url } },
      audit: { directory: `audit-${n}` },
    })
    // One after the other: the first creates the development PKI in the shared folder, the second uses it.
    let a: GatewayProcess = await startProcess(config('a'), { cwd: dir, logLevel: 'error' })
    t.teardown(() => a.stop())
    const b = await startProcess(config('b'), { cwd: dir, logLevel: 'error' })
    t.teardown(() => b.stop())

    const dev = path.join(dir, '.bulwark/dev')
    const [ca, cert, key] = await Promise.all(['ca.pem', 'client.pem', 'client-key.pem'].map((f) => readFile(path.join(dev, f), 'utf8')))
    const agent = new Agent({ connect: { ca, cert, key } })
    t.teardown(() => agent.close())
    const signing = await loadSigningKey(path.join(dev, 'jwt-key.pem'), path.join(dev, 'jwks.json'))
    const token = (sub: string) => mintToken(signing, { issuer: DEV_ISSUER, audience: DEV_AUDIENCE, subject: sub, scopes: ['mnist:infer'], ttlSeconds: 600 }, realDeps)
    const body = JSON.stringify(await mnistRequest())
    const call = async (gw: GatewayProcess, jwt: string) => {
      const res = await request(`https://127.0.0.1:${gw.apiPort}/v2/models/mnist/infer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${jwt}` },
        body,
        dispatcher: agent,
      })
      const parsed = (await res.body.json()) as { code?: string }
      return res.statusCode === 200 ? 'ok' : (parsed.code ?? String(res.statusCode))
    }
    const sequence = async (gws: GatewayProcess[], jwt: string, n: number) => {
      const out: string[] = []
      for (let i = 0; i < n; i++) out.push(await call(gws[i % gws.length]!, jwt))
      return out
    }

    const alone = await sequence([a], await token('carol'), RATE + 2)
    const expected = [...Array(4).fill('ok'), ...Array(RATE - 4).fill('privacy_budget_exhausted'), 'rate_limited', 'rate_limited']
    t.same(alone, expected, `against one gateway: 4 answers (budget), then refusals, then rate_limited after ${RATE}`)
    const bob = await token('bob')
    const alternating = await sequence([a, b], bob, RATE + 2)
    t.same(alternating, alone, 'alternating between two gateways: refused at the same totals')

    // A restart (SIGKILL, nothing flushed) of either gateway loses no budget and no count.
    await a.stop('SIGKILL')
    a = await startProcess(config('a'), { cwd: dir, logLevel: 'error' })
    t.equal(await call(a, bob), 'rate_limited', 'after a restart: still over the rate limit')
    const dave = await token('dave')
    t.same(await sequence([b], dave, 3), ['ok', 'ok', 'ok'], 'a new caller on the other gateway')
    await b.stop('SIGKILL')
    const b2 = await startProcess(config('b'), { cwd: dir, logLevel: 'error' })
    t.teardown(() => b2.stop())
    t.same(await sequence([a, b2], dave, 3), ['ok', 'privacy_budget_exhausted', 'privacy_budget_exhausted'], 'after the other restarts: the budget is where it was (3 + 1 answers)')
    const readyz = (await (await request(`http://127.0.0.1:${a.adminPort}/readyz`)).body.json()) as any
    t.equal(readyz.checks['shared-state'], 'ok', '/readyz: shared state ok')
  })

  t.test('Redis unreachable: budgets fail closed, rate limits as configured, /readyz says so', async (t) => {
    const redis = await startRedis(t)
    const policies = { mnist: policy }
    const closed = await startGateway({ models: ['mnist'], policies, config: { state: { redis: { url: redis.url, commandTimeoutMs: 200 } } } })
    t.teardown(() => closed.close())
    const open = await startGateway({ models: ['mnist'], policies, config: { state: { redis: { url: redis.url, commandTimeoutMs: 200, rateLimitsWhenUnavailable: 'allow' } } } })
    t.teardown(() => open.close())
    const body = await mnistRequest()
    t.equal((await closed.request('/v2/models/mnist/infer', { body })).status, 200, 'served while Redis is up')

    await redis.stop()
    // ioredis notices the killed redis-server on its socket: wait for its status event.
    await sharedState(closed.gateway.sharedState!, 'down')
    t.equal(closed.gateway.sharedState!.up, false, 'the gateway notices')
    const refused = await closed.request('/v2/models/mnist/infer', { body })
    t.equal(refused.status, 503)
    t.equal(refused.body.code, 'state_unavailable', 'rate limits refuse by default')
    t.ok(refused.headers['retry-after'])
    t.match(closed.logsWith('request not served').at(-1), { code: 'state_unavailable', stage: 'rate-limit' })
    const budget = await open.request('/v2/models/mnist/infer', { body })
    t.equal(budget.body.code, 'state_unavailable', 'rate limits let it through when told to; the budget still refuses')
    t.match(open.logsWith('request not served').at(-1), { code: 'state_unavailable', stage: 'privacy-charge' })
    const readyz = await request(`${closed.adminUrl}/readyz`)
    const rz = (await readyz.body.json()) as any
    t.equal(readyz.statusCode, 503, '/readyz: not ready')
    t.match(rz.checks['shared-state'], /Redis redis:\/\/127\.0\.0\.1:\d+\/0 is \w+/)
    t.match(await closed.gateway.metrics.render(), /bulwark_state_store_up\{store="redis"\} 0/)

    await redis.start()
    // ioredis reconnects on its own backoff timers: wait for its 'ready'.
    await sharedState(closed.gateway.sharedState!, 'up')
    t.ok(closed.gateway.sharedState!.up, 'reconnects by itself')
    t.equal((await closed.request('/v2/models/mnist/infer', { body })).status, 200, 'and serves again')
  })
}
