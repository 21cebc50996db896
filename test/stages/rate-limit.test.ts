// Rate limits: per principal (token subject and workload) and per model, from the model's
// policy, counted by @fastify/rate-limit; 429 rate_limited with Retry-After and the
// X-RateLimit headers; and a cap on one principal's requests in flight, across models.

import t from 'tap'
import { isBulwarkError } from '../../src/errors.ts'
import type { PolicySet } from '../../src/config/policy.ts'
import { createRateLimitStage, type Limiter } from '../../src/stages/rate-limit.ts'
import { fakeContext } from '../helpers/context.ts'
import { callerKeyOf } from '../../src/types.ts'
import { startGateway } from '../../kit/gateway.ts'

const dev = 'spiffe://bulwark.local/ns/default/sa/dev'
const policy = (model: string, requestsPerWindow: number) => ({
  model,
  allow: [{ verbs: ['infer', 'metadata'], workloads: [dev], scopes: [`${model}:use`] }],
  rateLimit: { requestsPerWindow, windowMs: 60_000 },
})

t.test('through the gateway: the model\'s window, per principal and per model', async (t) => {
  const gw = await startGateway({ policies: { mnist: policy('mnist', 3), 'ocr-cls': policy('ocr-cls', 5) } })
  t.teardown(() => gw.close())
  const alice = await gw.token({ sub: 'alice', scopes: ['mnist:use', 'ocr-cls:use'] })
  const bob = await gw.token({ sub: 'bob', scopes: ['mnist:use'] })
  const call = (token: string, model = 'mnist') => gw.request(`/v2/models/${model}`, { token })

  for (let i = 1; i <= 3; i++) {
    const res = await call(alice)
    t.equal(res.status, 404, `request ${i} passes the front door (no model is served: 404 from the core)`)
  }
  const limited = await call(alice)
  t.equal(limited.status, 429, 'the 4th in the window is refused')
  t.same(limited.body, { error: 'too many requests; retry after Retry-After seconds', code: 'rate_limited' })
  const retryAfter = Number(limited.headers['retry-after'])
  t.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After: ${retryAfter}`)
  t.equal(limited.headers['x-ratelimit-limit'], '3')
  t.equal(limited.headers['x-ratelimit-remaining'], '0')
  t.equal(limited.headers['x-ratelimit-reset'], String(retryAfter))
  t.match(gw.logsWith('request refused').at(-1), { code: 'rate_limited', stage: 'rate-limit', reason: /"alice".*exceeded 3 requests per 60000 ms on model "mnist"/ })

  t.equal((await call(bob)).status, 404, 'another subject on the same workload has its own count')
  t.equal((await call(alice, 'ocr-cls')).status, 404, 'the same principal on another model has that model\'s count')
  // No model is served here, so the metrics name none: every label value is bounded by the configuration.
  t.match(await gw.gateway.metrics.render(), /bulwark_requests_total\{code="rate_limited",model="_unknown",status="429",verb="metadata"\} 1/, 'the refusal is counted')
})

t.test('through the gateway: in-flight slots are given back when responses end', async (t) => {
  const gw = await startGateway({ policies: { mnist: policy('mnist', 1000) }, config: { rateLimits: { maxInFlightPerPrincipal: 1 } } })
  t.teardown(() => gw.close())
  const token = await gw.token({ scopes: ['mnist:use'] })
  for (let i = 0; i < 5; i++) t.equal((await gw.request('/v2/models/mnist', { token })).status, 404, `sequential request ${i + 1} is admitted`)
  const stage = gw.gateway.stages.find((s) => s.name === 'rate-limit') as ReturnType<typeof createRateLimitStage>
  t.equal(stage.inFlight(JSON.stringify(['https://bulwark.local/dev', 'dev', dev])), 0, 'no slot is left held')
})

t.test('the stage: at most maxInFlightPerPrincipal at once, across models; release is idempotent', async (t) => {
  const counting: Limiter = async () => ({ exceeded: false, limit: 100, remaining: 99, resetSeconds: 1 })
  const policies = new Map([
    ['a', { rateLimit: { requestsPerWindow: 100, windowMs: 1000 } }],
    ['b', { rateLimit: { requestsPerWindow: 100, windowMs: 1000 } }],
  ]) as unknown as PolicySet
  const stage = createRateLimitStage({ rateLimits: { enabled: true, maxInFlightPerPrincipal: 2, storeEntries: 100 }, policies }, { limiterFor: () => counting })
  const who = { identity: { id: dev, kind: 'spiffe' as const }, principal: { subject: 'alice', issuer: 'i', scopes: [], claims: {}, expiresAtMs: 0 } }
  const one = fakeContext({ ...who, target: { model: 'a' } })
  const two = fakeContext({ ...who, target: { model: 'b' } })
  const three = fakeContext({ ...who, target: { model: 'a' } })
  await stage.run(one)
  await stage.run(two)
  const refused = await Promise.resolve(stage.run(three)).then(() => null, (e: unknown) => e)
  t.ok(isBulwarkError(refused) && refused.code === 'rate_limited' && refused.headers['retry-after'] === '1', 'the third at once is refused with Retry-After')
  t.match(isBulwarkError(refused) ? refused.reason : '', /already has 2 requests in flight/)
  const other = fakeContext({ identity: who.identity, principal: { ...who.principal, subject: 'bob' }, target: { model: 'a' } })
  await stage.run(other)
  t.pass('another principal is not affected')
  stage.onDestroy(one)
  stage.onDestroy(one)
  t.equal(stage.inFlight(one.callerKey), 1, 'a double release frees one slot only')
  await stage.run(three)
  t.pass('a freed slot admits the next')
})

t.test('the caller key: issuer, subject and workload; the workload alone; one shared key with neither', async (t) => {
  const ctx = fakeContext({ identity: { id: 'spiffe://td/x', kind: 'spiffe' }, principal: { subject: 'a|b', issuer: 'i', scopes: [], claims: {}, expiresAtMs: 0 } })
  t.equal(callerKeyOf(ctx), JSON.stringify(['jwt', 'i', 'a|b', 'spiffe://td/x']), 'JSON-encoded, so no subject can forge another caller\'s key')
  t.equal(callerKeyOf(fakeContext({ identity: { id: 'spiffe://td/x', kind: 'spiffe' } })), JSON.stringify(['workload', 'spiffe://td/x']))
  t.equal(callerKeyOf(fakeContext({ client: { address: '10.0.0.7' } })), callerKeyOf(fakeContext({ client: { address: '10.0.0.8' } })), 'callers with neither token nor certificate share one key')
})
