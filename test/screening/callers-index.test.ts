// The stateful detector's model-wide index, through a real gateway (mTLS, JWTs, the bundled
// mnist policy, its calibration and the ONNX model): near-duplicate probing split over 20
// identities, 20 queries each, is refused long before its 400th query; without the index
// (acrossCallers: 0) none of the 400 is; 20 benign identities sending distinct digits get
// no 403.
import { readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { parse } from 'yaml'
import { loadMnist } from '../../models/mnist/data.ts'
import { startGateway, type TestGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { gaussian, jitter, seeded } from './helpers.ts'

const test = loadMnist().test
const body = (x: Float32Array) => ({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: Array.from(x) }] })

/** The bundled mnist policy, with `acrossCallers` set as given. */
function bundledWith(acrossCallers: number): Record<string, unknown> {
  const policy = parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8')) as { screening: { calibrationFile: string; stateful: Record<string, unknown> } }
  policy.screening.calibrationFile = path.join(repoRoot, 'policies', policy.screening.calibrationFile)
  policy.screening.stateful.acrossCallers = acrossCallers
  return policy
}

/** 20 identities take turns sending 20 probes each: small noise around one digit. Returns each query's status. */
async function splitProbing(gw: TestGateway, prefix: string): Promise<number[]> {
  const tokens = await Promise.all(Array.from({ length: 20 }, (_, i) => gw.token({ sub: `${prefix}-${i}` })))
  const normal = gaussian(seeded(31))
  const statuses: number[] = []
  for (let q = 0; q < 400; q++) {
    const r = await gw.request('/v2/models/mnist/infer', { body: body(jitter(test.images[99]!, 0.01, normal)), token: tokens[q % 20]! })
    statuses.push(r.status)
  }
  return statuses
}

t.test('with the bundled index, probing split over 20 identities is refused before 400 queries', async (t) => {
  t.equal((parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8')) as { screening: { stateful: { acrossCallers: number } } }).screening.stateful.acrossCallers, 1000, 'the bundled policy keeps 1,000 queries of all callers')
  const gw = await startGateway({ models: ['mnist'] })
  t.teardown(() => gw.close())

  const benign = await Promise.all(Array.from({ length: 20 }, (_, i) => gw.token({ sub: `reader-${i}` })))
  const answered: number[] = []
  for (let q = 0; q < 100; q++) answered.push((await gw.request('/v2/models/mnist/infer', { body: body(test.images[q * 7]!), token: benign[q % 20]! })).status)
  t.equal(answered.filter((s) => s === 403).length, 0, '20 benign identities, 100 distinct digits: none refused as an attack')
  t.ok(answered.filter((s) => s === 200).length >= 90, 'answered but for feature squeezing\'s few false positives (422)')

  const statuses = await splitProbing(gw, 'sybil')
  const first = statuses.indexOf(403)
  t.ok(first >= 0 && first < 400, `the first 403 comes at query ${first + 1}`)
  t.ok(first <= 40, 'within two rounds of the identities after the index holds k = 20 probes')
  t.ok(statuses.filter((s) => s === 403).length >= 300, `most of the run is refused (${statuses.filter((s) => s === 403).length} of 400)`)
  const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text()
  t.match(metrics, /bulwark_screening_alarms_total\{action="refused",detector="stateful-callers",model="mnist"\} [1-9]/, 'counted as the model-wide detector')
  t.notMatch(metrics, /bulwark_screening_alarms_total\{action="refused",detector="stateful",model="mnist"\}/, 'no identity alone sent enough to alarm its own history')
})

t.test('without the index (acrossCallers: 0), none of the 400 split probes is refused', async (t) => {
  const gw = await startGateway({ models: ['mnist'], policies: { mnist: bundledWith(0) } })
  t.teardown(() => gw.close())
  const statuses = await splitProbing(gw, 'sybil')
  t.same(new Set(statuses), new Set([200]), 'each identity sends 20 probes: never k = 20 earlier ones of its own')
})
