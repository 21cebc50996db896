// The model-wide index with state in Redis, through two real gateways sharing one Redis (mTLS,
// JWTs, the bundled mnist policy, its calibration and the ONNX model), requests alternating
// between them: 20 benign identities sending distinct digits get no 403; near-duplicate
// probing split over 20 identities, 20 queries each, is refused long before its 400th query,
// and before either gateway alone has seen k = 20 probes; the refusals are the model-wide
// detector's and then the cool-down's it started, never the per-caller detector's; Redis holds
// one capped, expiring index for the model.
import t from 'tap'
import { loadMnist } from '../../models/mnist/data.ts'
import { startGateway, type TestGateway } from '../../kit/gateway.ts'
import { gaussian, jitter, seeded } from './helpers.ts'
import { REDIS_SERVER, startRedis } from '../helpers/scaleout.ts'
import { Redis } from 'ioredis'

const test = loadMnist().test
const body = (x: Float32Array) => ({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: Array.from(x) }] })

if (!REDIS_SERVER) t.test('needs redis-server (.ci/run installs it)', { skip: 'redis-server is not installed' }, () => {})
else {
  t.test('two gateways, one Redis: probing split over 20 identities is refused by the shared index before 400 queries', async (t) => {
    const redis = await startRedis(t)
    const config = { state: { redis: { url: redis.url } } }
    const gateways: TestGateway[] = []
    for (let i = 0; i < 2; i++) {
      const gw = await startGateway({ models: ['mnist'], config })
      t.teardown(() => gw.close())
      gateways.push(gw)
    }
    // Each gateway has its own development PKI; an identity (issuer, subject, workload) is the same on both.
    const tokens = async (prefix: string) => Promise.all(Array.from({ length: 20 }, (_, i) => Promise.all(gateways.map((gw) => gw.token({ sub: `${prefix}-${i}` })))))
    /** Query q goes to gateway q mod 2, from identity floor(q / 2) mod 20: each identity uses both. */
    const send = async (q: number, ids: string[][], x: Float32Array) => (await gateways[q % 2]!.request('/v2/models/mnist/infer', { body: body(x), token: ids[Math.floor(q / 2) % 20]![q % 2]! })).status

    const readers = await tokens('reader')
    const answered: number[] = []
    for (let q = 0; q < 100; q++) answered.push(await send(q, readers, test.images[q * 7]!))
    t.equal(answered.filter((s) => s === 403).length, 0, '20 benign identities, 100 distinct digits: none refused as an attack')
    t.ok(answered.filter((s) => s === 200).length >= 90, 'answered but for feature squeezing\'s few false positives (422)')

    const sybils = await tokens('sybil')
    const normal = gaussian(seeded(31))
    const statuses: number[] = []
    for (let q = 0; q < 400; q++) statuses.push(await send(q, sybils, jitter(test.images[99]!, 0.01, normal)))
    const first = statuses.indexOf(403)
    t.ok(first >= 0 && first < 400, `the first 403 comes at query ${first + 1}`)
    t.ok(first < 40, 'before either gateway alone has seen k = 20 probes (its 21st would be query 41)')
    t.ok(statuses.filter((s) => s === 403).length >= 300, `most of the run is refused (${statuses.filter((s) => s === 403).length} of 400)`)
    const refusedBy = (metrics: string, detector: string) => Number(new RegExp(`bulwark_screening_alarms_total\\{action="refused",detector="${detector}",model="mnist"\\} (\\d+)`).exec(metrics)?.[1] ?? 0)
    const metrics = await Promise.all(gateways.map(async (gw) => (await fetch(`${gw.adminUrl}/metrics`)).text()))
    const byIndex = metrics.map((m) => refusedBy(m, 'stateful-callers'))
    const byCooldown = metrics.map((m) => refusedBy(m, 'cooldown'))
    t.ok(byIndex[0]! + byIndex[1]! >= 20, `refused by the model-wide detector (${byIndex.join(' + ')}), once or more per identity`)
    t.equal(byIndex[0]! + byIndex[1]! + byCooldown[0]! + byCooldown[1]!, statuses.filter((s) => s === 403).length, 'and, after it, by the cool-down it started, which both gateways share')
    t.same(metrics.map((m) => refusedBy(m, 'stateful')), [0, 0], 'no identity alone sent enough to alarm its own history')

    const raw = new Redis(redis.url)
    t.teardown(() => raw.quit())
    const keys = (await raw.keys('*screening:stateful-callers:mnist:*')).sort()
    t.equal(keys.length, 3, 'one index for the model (digests, vectors, pointers)')
    t.ok((await raw.strlen(keys[1]!)) <= 1000 * 49 * 4, 'at most acrossCallers pooled queries')
    for (const key of keys) t.ok((await raw.pttl(key)) > 0, 'expiring')
  })
}
