// Per-item screening of a batch through a real gateway (mTLS, JWT, the bundled mnist policy,
// calibration, output privacy and ONNX model). What is asserted: a batch of clean digits with
// one FGSM example among them is answered with status 200, the clean digits' labels released
// and the adversarial one's row zeroed, named in the response parameters and in the audit
// record; the batch is charged one answer and one squeezing verdict per item; a single
// adversarial digit is still refused 422 suspicious_input, and so is a batch whose every item
// is refused. Over gRPC the same batch gets the same answer, the withheld items in a string
// parameter.
import { readdirSync, readFileSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import * as grpc from '@grpc/grpc-js'
import t from 'tap'
import { argmax, forward, lossInputGradient } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { parsePolicy, type Policy } from '../../src/config/policy.ts'
import type { ScreeningPolicy } from '../../src/config/screening-policy.ts'
import type { Manifest } from '../../src/inference/manifest.ts'
import { compileScreening } from '../../src/screening/build.ts'
import type { CalibrationFile } from '../../src/screening/calibration.ts'
import { squeezingScore } from '../../src/screening/feature-squeezing.ts'
import { startGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { inferenceServiceClient } from '../../src/transport/grpc.ts'
import { weights } from './cnn-runner.ts'
import { seededRandom } from './helpers.ts'

const test = loadMnist().test
const bundled = parsePolicy(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8'), 'mnist.yaml').policy as Policy
const manifest = JSON.parse(readFileSync(path.join(repoRoot, 'models/mnist/manifest.json'), 'utf8')) as Manifest
const calibration = JSON.parse(readFileSync(path.join(repoRoot, 'policies/mnist.screening.json'), 'utf8')) as CalibrationFile
const screening = compileScreening('mnist', bundled.screening as ScreeningPolicy, manifest, calibration, seededRandom(5))
const squeezing = screening.detectors.find((d) => d.name === 'feature-squeezing')!
const EPSILON = bundled.output.noise.epsilon

/** The squeezing score the gateway computes for a digit (the same network, in TypeScript). */
const score = (x: Float32Array) => squeezingScore(forward(weights, x).probs, squeezing.variants!(x).map((v) => forward(weights, v).probs))
const threshold = calibration.featureSqueezing!.threshold

/** Held-out digits far below the squeezing threshold, so their verdict is not in doubt. */
function cleanDigits(n: number): Float32Array[] {
  const out: Float32Array[] = []
  for (let i = 200; out.length < n; i++) if (score(test.images[i]!) < threshold / 4) out.push(test.images[i]!)
  return out
}

/** FGSM (eps 0.3) examples that fool the network and score far above the threshold. */
function fgsm(n: number): Float32Array[] {
  const out: Float32Array[] = []
  for (let i = 10; out.length < n; i++) {
    const g = lossInputGradient(weights, test.images[i]!, test.labels[i]!).grad
    const adv = test.images[i]!.map((v, k) => Math.min(1, Math.max(0, v + 0.3 * Math.sign(g[k]!))))
    if (argmax(forward(weights, adv).logits) !== test.labels[i] && score(adv) > 1.5 * threshold) out.push(adv)
  }
  return out
}

const body = (xs: Float32Array[]) => ({ inputs: [{ name: 'input', datatype: 'FP32', shape: [xs.length, 1, 28, 28], data: xs.flatMap((x) => Array.from(x)) }] })

t.test('a batch with one adversarial digit: the clean ones answered, the flagged one withheld', async (t) => {
  const gw = await startGateway({ models: ['mnist'] })
  t.teardown(() => gw.close())
  const alice = await gw.token({ sub: 'alice' })
  const clean = cleanDigits(9)
  const [adv, adv2] = fgsm(2)

  const batch = [...clean.slice(0, 3), adv!, ...clean.slice(3, 7)]
  const r = await gw.request('/v2/models/mnist/infer', { body: body(batch), token: alice })
  t.equal(r.status, 200, 'the batch is answered')
  const out = r.body.outputs[0]
  t.same(out.shape, [8, 10], 'one row per item, the shape of any answer')
  const rows = Array.from({ length: 8 }, (_, i) => (out.data as number[]).slice(i * 10, i * 10 + 10))
  t.same(rows[3], new Array(10).fill(0), 'the adversarial digit\'s row is withheld (zeroed)')
  for (const i of [0, 1, 2, 4, 5, 6, 7]) t.equal(rows[i]!.filter((v) => v === 1).length, 1, `item ${i}: a released one-hot label`)
  t.equal(r.body.parameters.screening_withheld_items, '3')
  t.equal(r.body.parameters.screening_withheld_code, 'suspicious_input')
  t.equal(r.body.parameters.privacy_epsilon_cost, 16 * EPSILON, 'eight answers and eight squeezing verdicts, each at the answer\'s ε')
  t.equal(r.body.parameters.privacy_epsilon_spent, 16 * EPSILON)

  const single = await gw.request('/v2/models/mnist/infer', { body: body([adv!]), token: alice })
  t.equal(single.status, 422, 'a single adversarial digit is refused as before')
  t.equal(single.body.code, 'suspicious_input')

  const all = await gw.request('/v2/models/mnist/infer', { body: body([adv!, adv2!]), token: alice })
  t.equal(all.status, 422, 'a batch whose every item is refused is refused')
  t.equal(all.body.code, 'suspicious_input')

  const ok = await gw.request('/v2/models/mnist/infer', { body: body([clean[7]!, clean[8]!]), token: alice })
  t.equal(ok.status, 200)
  t.notOk('screening_withheld_items' in ok.body.parameters, 'nothing withheld, nothing said')
  // 16 + 2 (single: answer and verdict) + 4 (both refused) + 4 (the clean pair), all charged.
  t.equal(ok.body.parameters.privacy_epsilon_spent, 26 * EPSILON, 'the refusals were paid for as well')

  const dir = path.join(gw.dir, '.bulwark/audit')
  const records = readdirSync(dir).flatMap((f) => readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)))
  const requests = records.filter((rec) => rec.type === 'request' && rec.model === 'mnist')
  const answered = requests.find((rec) => rec.status === 200 && rec.flags.some((f: { withheld?: number[] }) => f.withheld))
  const flag = answered?.flags.find((f: { detector: string }) => f.detector === 'feature-squeezing')
  t.same(flag?.withheld, [3], 'the audit record names the withheld item')
  t.equal(flag?.alarm, true)
  t.equal(requests.filter((rec) => rec.code === 'suspicious_input').length, 2)
})

t.test('over gRPC: the same batch, the withheld item named in a string parameter', async (t) => {
  const gw = await startGateway({ models: ['mnist'] })
  t.teardown(() => gw.close())
  const port = await gw.gateway.grpc!.listen('127.0.0.1', 0)
  const [ca, cert, key] = await Promise.all([gw.pki.files.ca, gw.pki.files.clientCert, gw.pki.files.clientKey].map((f) => readFile(f)))
  const Service = inferenceServiceClient()
  const client = new Service(`127.0.0.1:${port}`, grpc.credentials.createSsl(ca!, key!, cert!)) as any
  t.teardown(() => client.close())
  const md = new grpc.Metadata()
  md.set('authorization', `Bearer ${await gw.token({ sub: 'grpc-alice' })}`)
  const batch = [...cleanDigits(2), fgsm(1)[0]!]
  const request = { model_name: 'mnist', inputs: [{ name: 'input', datatype: 'FP32', shape: [3, 1, 28, 28], contents: { fp32_contents: batch.flatMap((x) => Array.from(x)) } }] }
  const res = await new Promise<any>((resolve, reject) => client.ModelInfer(request, md, (err: Error | null, r: unknown) => (err ? reject(err) : resolve(r))))
  t.equal(res.parameters.screening_withheld_items.string_param, '2')
  const data = res.outputs[0].contents.fp32_contents as number[]
  t.same(data.slice(20, 30), new Array(10).fill(0), 'the adversarial digit\'s row is zeroed')
  t.equal(data.slice(0, 20).filter((v) => v === 1).length, 2, 'the two clean digits are answered')
})
