// Screening through a real gateway (mTLS, JWT, the bundled mnist policy, calibration and
// ONNX model): benign digits are answered, an adversarial example gets 422, a probing run
// gets 403 and a cool-down, and every score reaches the audit record and the metrics.
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { argmax, forward, lossInputGradient } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { startGateway } from '../../kit/gateway.ts'
import { weights } from './cnn-runner.ts'
import { gaussian, jitter, seeded } from './helpers.ts'

const test = loadMnist().test
const body = (x: Float32Array) => ({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: Array.from(x) }] })

function fgsm(): Float32Array {
  for (let i = 10; ; i++) {
    const g = lossInputGradient(weights, test.images[i]!, test.labels[i]!).grad
    const adv = test.images[i]!.map((v, k) => Math.min(1, Math.max(0, v + 0.3 * Math.sign(g[k]!))))
    if (argmax(forward(weights, adv).logits) !== test.labels[i]) return adv
  }
}

t.test('the bundled mnist screening, end to end', async (t) => {
  const gw = await startGateway({ models: ['mnist'] })
  t.teardown(() => gw.close())
  const alice = await gw.token({ sub: 'alice' })
  const mallory = await gw.token({ sub: 'mallory' })

  const ok = await gw.request('/v2/models/mnist/infer', { body: body(test.images[0]!), token: alice })
  t.equal(ok.status, 200)

  const adv = await gw.request('/v2/models/mnist/infer', { body: body(fgsm()), token: alice })
  t.equal(adv.status, 422)
  t.equal(adv.body.code, 'suspicious_input')

  const normal = gaussian(seeded(21))
  const statuses: number[] = []
  for (let q = 0; q < 25; q++) {
    const r = await gw.request('/v2/models/mnist/infer', { body: body(jitter(test.images[99]!, 0.01, normal)), token: mallory })
    statuses.push(r.status)
    if (r.status === 403) t.equal(r.body.code, 'attack_suspected')
  }
  // The model-wide index (acrossCallers) holds alice's 2 queries and mallory's probes: from
  // the 19th probe on it has k = 20 earlier queries; at the 20th, 19 of them are close.
  t.same(statuses.slice(0, 19), new Array(19).fill(200), 'the first 19 probes have too few close neighbours')
  t.equal(statuses[19], 403, 'the 20th is refused, one before its own history could (21st)')
  t.same(statuses.slice(20), new Array(5).fill(403), 'then the cool-down refuses everything')
  t.equal((await gw.request('/v2/models/mnist/infer', { body: body(test.images[1]!), token: alice })).status, 200, 'other callers are served')

  const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text()
  t.match(metrics, /bulwark_screening_alarms_total\{action="refused",detector="feature-squeezing",model="mnist"\} 1/)
  t.match(metrics, /bulwark_screening_alarms_total\{action="refused",detector="stateful-callers",model="mnist"\} 1/)
  t.match(metrics, /bulwark_screening_alarms_total\{action="refused",detector="cooldown",model="mnist"\} 5/)
  t.match(metrics, /bulwark_screening_score_count\{detector="feature-squeezing",model="mnist"\} \d+/)

  // The audit trail holds each request's flags.
  const dir = path.join(gw.dir, '.bulwark/audit')
  const records = readdirSync(dir).flatMap((f) => readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)))
  const requests = records.filter((r) => r.type === 'request')
  const refused = requests.find((r) => r.code === 'suspicious_input')
  t.ok(refused, 'the 422 is audited')
  t.match(refused.flags, [{ detector: 'feature-bounds' }, { detector: 'feature-squeezing', alarm: true }])
  t.ok(requests.some((r) => r.code === 'attack_suspected' && r.flags.some((f: { detector: string; alarm: boolean }) => f.detector === 'stateful-callers' && f.alarm)))
})
