// Screening state shared by two gateways through one Redis (`state.redis`), end to end: mTLS,
// JWT, the bundled mnist policy and calibration, the ONNX model. A caller probing with
// near-duplicates alternately on both is refused at the same request as on one gateway, and
// then by the cool-down on the other; with Redis gone, a screened request fails closed (503
// state_unavailable at the screening stage, rate limits told to let it through) and /readyz
// says why.

import t from 'tap'
import { request as undiciRequest } from 'undici'
import { loadMnist } from '../../models/mnist/data.ts'
import { startGateway, type TestGateway } from '../../kit/gateway.ts'
import { gaussian, jitter, seeded } from './helpers.ts'
import { REDIS_SERVER, sharedState, startRedis } from '../helpers/scaleout.ts'

const test = loadMnist().test
const body = (x: Float32Array) => ({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: Array.from(x) }] })

if (!REDIS_SERVER) t.test('needs redis-server (.ci/run installs it)', { skip: 'redis-server is not installed' }, () => {})
else {
  t.test('two gateways, one Redis: one probing caller, one history, one cool-down', async (t) => {
    const redis = await startRedis(t)
    const config = { state: { redis: { url: redis.url, commandTimeoutMs: 200, rateLimitsWhenUnavailable: 'allow' } } }
    const gateways: TestGateway[] = []
    for (let i = 0; i < 2; i++) {
      const gw = await startGateway({ models: ['mnist'], config })
      t.teardown(() => gw.close())
      gateways.push(gw)
    }
    // Each gateway has its own development PKI; the caller (issuer, subject, workload) is the same.
    const tokens = await Promise.all(gateways.map((gw) => gw.token({ sub: 'mallory' })))
    const normal = gaussian(seeded(21))
    const statuses: string[] = []
    for (let q = 0; q < 22; q++) {
      const r = await gateways[q % 2]!.request('/v2/models/mnist/infer', { body: body(jitter(test.images[99]!, 0.01, normal)), token: tokens[q % 2]! })
      statuses.push(r.status === 200 ? 'ok' : `${r.status} ${r.body.code}`)
    }
    t.same(statuses.slice(0, 20), new Array(20).fill('ok'), 'the first 20 probes have too little history, over both gateways together')
    t.equal(statuses[20], '403 attack_suspected', 'the 21st is refused, as by one gateway (test/screening/gateway.test.ts)')
    t.equal(statuses[21], '403 attack_suspected', 'the next, on the other gateway, by the cool-down')
    t.match(await (await fetch(`${gateways[1]!.adminUrl}/metrics`)).text(), /bulwark_screening_alarms_total\{action="refused",detector="cooldown",model="mnist"\} 1/, 'counted as a cool-down refusal')

    await redis.stop()
    // ioredis notices the killed redis-server on its socket: wait for its status event.
    await Promise.all(gateways.map((gw) => sharedState(gw.gateway.sharedState!, 'down')))
    t.ok(gateways.every((gw) => !gw.gateway.sharedState!.up), 'the gateways notice')
    const refused = await gateways[0]!.request('/v2/models/mnist/infer', { body: body(test.images[0]!), token: await gateways[0]!.token({ sub: 'alice' }) })
    t.equal(refused.status, 503)
    t.equal(refused.body.code, 'state_unavailable', 'a screened request fails closed')
    t.ok(refused.headers['retry-after'])
    t.match(gateways[0]!.logsWith('request not served').at(-1), { code: 'state_unavailable', stage: 'screen-input' })
    const readyz = await undiciRequest(`${gateways[0]!.adminUrl}/readyz`)
    const rz = (await readyz.body.json()) as { checks: Record<string, string> }
    t.equal(readyz.statusCode, 503, '/readyz: not ready')
    t.match(rz.checks['shared-state'], /Redis redis:\/\/127\.0\.0\.1:\d+\/0 is \w+.*screening as configured/)
  })
}
