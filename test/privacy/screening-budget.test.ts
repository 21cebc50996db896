// The privacy budget covers every answer a caller gets, screening's refusals included, through
// a real gateway (mTLS with the development PKI, a development JWT, the bundled mnist policy
// with its screening, calibration and noise, only its budget lowered, and the ONNX model): a
// refusal that read the model's output is charged like an answer (its audit record shows the
// charge), and once the budget cannot pay, random noise, an adversarial example and a clean
// digit all get 429 privacy_budget_exhausted with Retry-After, none a screening verdict; after
// the first of them, the others are refused before screening and the model run at all
// (privacy-precheck), while another caller with budget left is still answered.
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { parse } from 'yaml'
import { argmax, forward, lossInputGradient } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { startGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { weights } from '../screening/cnn-runner.ts'
import { seeded } from '../screening/helpers.ts'

const test = loadMnist().test
const bundled = parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8'))
const EPSILON: number = bundled.output.noise.epsilon
const body = (x: Float32Array) => ({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: Array.from(x) }] })

/** The first held-out digit whose FGSM (eps 0.2) example fools the CNN (the ONNX model's weights). */
function fgsmExample(): Float32Array {
  for (let i = 0; ; i++) {
    const g = lossInputGradient(weights, test.images[i]!, test.labels[i]!).grad
    const adv = test.images[i]!.map((v, k) => Math.min(1, Math.max(0, v + 0.2 * Math.sign(g[k]!))))
    if (argmax(forward(weights, adv).logits) !== test.labels[i]) return adv
  }
}

t.test('screening refusals are paid for, and a spent budget answers 429 whatever the input', async (t) => {
  // Four single-digit requests: each costs one answer and one feature-squeezing verdict.
  const policy = { ...bundled, output: { ...bundled.output, budget: { ...bundled.output.budget, epsilon: 8 * EPSILON } } }
  const gw = await startGateway({ models: ['mnist'], policies: { mnist: policy } })
  t.teardown(() => gw.close())
  const token = await gw.token({ sub: 'alice' })
  const infer = (x: Float32Array) => gw.request('/v2/models/mnist/infer', { body: body(x), token })
  const uniform = seeded(3)
  const noise = Float32Array.from({ length: 784 }, () => uniform())
  const adversarial = fgsmExample()

  const first = await infer(test.images[0]!)
  t.equal(first.status, 200)
  t.match(first.body.parameters, { privacy_epsilon_cost: 2 * EPSILON, privacy_epsilon_spent: 2 * EPSILON }, 'an answer and a verdict')
  for (const [name, x] of [['adversarial', adversarial], ['noise', noise]] as const) {
    const refused = await infer(x)
    t.equal(refused.status, 422, `${name}: refused while the budget can pay`)
    t.equal(refused.body.code, 'suspicious_input')
  }
  const last = await infer(test.images[1]!)
  t.equal(last.status, 200)
  t.equal(last.body.parameters.privacy_epsilon_spent, 8 * EPSILON, 'both refusals were charged like answers')
  t.equal(last.body.parameters.privacy_epsilon_left, 0)

  for (const [name, x] of [['noise', noise], ['adversarial', adversarial], ['clean', test.images[2]!]] as const) {
    const res = await infer(x)
    t.equal(res.status, 429, name)
    t.equal(res.body.code, 'privacy_budget_exhausted', `${name}: the budget's answer, not screening's`)
    t.ok(Number(res.headers['retry-after']) > 0, `${name}: Retry-After`)
  }

  // The audit trail: each refusal carries its charge; the budget refusals read nothing of the model's output.
  const dir = path.join(gw.dir, '.bulwark/audit')
  const records = readdirSync(dir).flatMap((f) => readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)))
  const requests = records.filter((r) => r.type === 'request' && r.model === 'mnist')
  t.same(requests.filter((r) => r.code === 'suspicious_input').map((r) => r.privacy.epsilonSpent), [4 * EPSILON, 6 * EPSILON], 'each 422 charged when it was refused')
  const spent = requests.filter((r) => r.code === 'privacy_budget_exhausted')
  t.equal(spent.length, 3)
  for (const r of spent) t.notOk(r.flags.some((f: { detector: string }) => f.detector === 'feature-squeezing' || f.detector === 'extraction'), 'no verdict on an unpaid answer')
  t.same(spent.map((r) => r.stage), ['privacy-charge', 'privacy-precheck', 'privacy-precheck'], 'the first refusal came after a model run; the next, before one')
  t.ok(spent[0].stageMs['model-inference'] >= 0, 'the first ran the model')
  for (const r of spent.slice(1)) t.same([r.stageMs['model-inference'], r.stageMs['screen-input']], [undefined, undefined], 'the others ran neither screening nor the model')

  const bob = await gw.request('/v2/models/mnist/infer', { body: body(test.images[3]!), token: await gw.token({ sub: 'bob' }) })
  t.equal(bob.status, 200, 'another caller, with budget of its own, is answered')
})
