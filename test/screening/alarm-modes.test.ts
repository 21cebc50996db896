// screening.onAlarm through a real gateway (mTLS, JWT, ONNX, the bundled mnist policy with
// onAlarm changed). What is asserted: with `degrade`, a probing run is never refused: from the
// alarm on, and through the cool-down, every answer has the shape, datatype, parameters and
// cost of a real one, its label is random (the same for a repeated query), it is charged, and the audit record and the
// metrics say it was degraded; other callers get real answers. With `delay`, the alarm's
// request and delayQueries more are answered, the next is refused 403 (audit flag
// delayed-alarm), and the cool-down follows. Per-item refusals keep their 422. The degraded
// mechanism permutes each item's row, the same in every output of the item and for the same
// input, and leaves the rest alone; a delayed refusal is not moved by later alarms.
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { parse } from 'yaml'
import { argmax, forward, lossInputGradient } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { startGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { systemClock } from '../../src/deps.ts'
import { createDegrader, DelayedRefusals } from '../../src/screening/alarm-modes.ts'
import { weights } from './cnn-runner.ts'
import { gaussian, jitter, seeded, seededRandom } from './helpers.ts'

const test = loadMnist().test
const body = (x: Float32Array) => ({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: Array.from(x) }] })

function policyWith(screening: Record<string, unknown>): Record<string, unknown> {
  const policy = parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8')) as { screening: Record<string, unknown> }
  policy.screening = { ...policy.screening, calibrationFile: path.join(repoRoot, 'policies', policy.screening.calibrationFile as string), ...screening }
  return policy
}

function fgsm(): Float32Array {
  for (let i = 10; ; i++) {
    const g = lossInputGradient(weights, test.images[i]!, test.labels[i]!).grad
    const adv = test.images[i]!.map((v, k) => Math.min(1, Math.max(0, v + 0.3 * Math.sign(g[k]!))))
    if (argmax(forward(weights, adv).logits) !== test.labels[i]) return adv
  }
}

/** What a client can see of an answer's form: everything but the values. */
const shapeOf = (b: { parameters: Record<string, unknown>; outputs: { name: string; datatype: string; shape: number[]; data: number[] }[] }) => ({
  parameters: Object.keys(b.parameters).sort(),
  cost: b.parameters.privacy_epsilon_cost,
  outputs: b.outputs.map((o) => ({ name: o.name, datatype: o.datatype, shape: o.shape, ones: o.data.filter((v) => v === 1).length, zeros: o.data.filter((v) => v === 0).length })),
})

function auditRecords(dir: string): { status: number; code: string | null; flags: { detector: string; alarm: boolean; degraded?: boolean; delayed?: number }[] }[] {
  const d = path.join(dir, '.bulwark/audit')
  return readdirSync(d)
    .flatMap((f) => readFileSync(path.join(d, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l)))
    .filter((r) => r.type === 'request' && r.model === 'mnist')
}

t.test('onAlarm degrade: the probing caller is answered, degraded, charged, and audited as such', async (t) => {
  const gw = await startGateway({ models: ['mnist'], policies: { mnist: policyWith({ onAlarm: 'degrade' }) }, deps: { clock: systemClock, random: seededRandom('alarm-modes') } })
  t.teardown(() => gw.close())
  const alice = await gw.token({ sub: 'alice' })
  const mallory = await gw.token({ sub: 'mallory' })
  const real = await gw.request('/v2/models/mnist/infer', { body: body(test.images[0]!), token: alice })
  t.equal(real.status, 200)

  const normal = gaussian(seeded(21))
  const answers: { status: number; body: any }[] = []
  for (let q = 0; q < 30; q++) answers.push(await gw.request('/v2/models/mnist/infer', { body: body(jitter(test.images[99]!, 0.01, normal)), token: mallory }))
  t.same(answers.map((a) => a.status), new Array(30).fill(200), 'no probe is refused')
  for (const a of answers) t.same(shapeOf(a.body), shapeOf(real.body), 'each answer has the form of a real one')
  const labels = answers.map((a) => (a.body.outputs[0].data as number[]).indexOf(1))
  const truth = argmax(forward(weights, test.images[99]!).logits)
  t.same(labels.slice(0, 19), new Array(19).fill(truth), 'before the alarm (the 20th probe), the real label')
  t.ok(new Set(labels.slice(19)).size >= 3, `from the alarm on, random labels (${labels.slice(19).join(',')})`)
  t.equal(answers[29]!.body.parameters.privacy_epsilon_spent, 30 * 2 * 16, 'every probe charged as an answer and a verdict, degraded ones too')

  const probe = jitter(test.images[99]!, 0.01, normal)
  const [first, second] = [await gw.request('/v2/models/mnist/infer', { body: body(probe), token: mallory }), await gw.request('/v2/models/mnist/infer', { body: body(probe), token: mallory })]
  t.same(second.body.outputs, first.body.outputs, 'a repeated query gets the same degraded answer')
  const other = await gw.request('/v2/models/mnist/infer', { body: body(test.images[1]!), token: alice })
  t.equal((other.body.outputs[0].data as number[]).indexOf(1), test.labels[1], 'another caller gets the real label')
  const adv = await gw.request('/v2/models/mnist/infer', { body: body(fgsm()), token: mallory })
  t.equal(adv.status, 422, 'a per-item refusal is not degraded away')

  const records = auditRecords(gw.dir)
  const degraded = records.filter((r) => r.flags.some((f) => f.degraded))
  t.equal(degraded.filter((r) => r.status === 200).length, 13, 'the 13 degraded answers are audited as degraded')
  t.equal(degraded.filter((r) => r.status === 422).length, 1, 'and so is the refused adversarial digit (in the cool-down)')
  t.ok(degraded.some((r) => r.flags.some((f) => f.detector === 'stateful-callers' && f.alarm && f.degraded)), 'the alarm that started it')
  t.ok(degraded.some((r) => r.flags.some((f) => f.detector === 'cooldown' && f.degraded)), 'and the cool-down that continues it')
  const metrics = await (await fetch(`${gw.adminUrl}/metrics`)).text()
  t.match(metrics, /bulwark_screening_alarms_total\{action="degraded",detector="cooldown",model="mnist"\} \d+/)
  t.notMatch(metrics, /action="refused",detector="(stateful|stateful-callers|cooldown)"/, 'nothing refused by the stream detectors')
})

t.test('onAlarm delay: refused delayQueries queries after the alarm, then the cool-down', async (t) => {
  const gw = await startGateway({ models: ['mnist'], policies: { mnist: policyWith({ onAlarm: 'delay', delayQueries: 5 }) } })
  t.teardown(() => gw.close())
  const mallory = await gw.token({ sub: 'mallory' })
  const normal = gaussian(seeded(21))
  const statuses: number[] = []
  for (let q = 0; q < 30; q++) statuses.push((await gw.request('/v2/models/mnist/infer', { body: body(jitter(test.images[99]!, 0.01, normal)), token: mallory })).status)
  const records = auditRecords(gw.dir) // mallory's requests, in order
  const alarm = records.findIndex((r) => r.status === 200 && r.flags.some((f) => f.detector === 'stateful-callers' && f.alarm && f.delayed === 5))
  t.ok(alarm >= 19 && alarm <= 20, `the alarm comes where refuse would have refused (probe ${alarm + 1}), answered and audited with its delay`)
  t.same(statuses.slice(0, alarm + 6), new Array(alarm + 6).fill(200), 'the alarm and the 5 queries after it are answered')
  t.same(statuses.slice(alarm + 6), new Array(30 - alarm - 6).fill(403), 'then refused, and the cool-down refuses the rest')
  const refused = records.filter((r) => r.code === 'attack_suspected')
  t.equal(refused[0]?.flags[0]?.detector, 'delayed-alarm', 'the first 403 names the delayed alarm')
  t.ok(refused.slice(1).every((r) => r.flags[0]?.detector === 'cooldown'))
})

t.test('the degraded mechanism permutes each item\'s row, the same way in every output of the item', async (t) => {
  const degrade = createDegrader(seededRandom('degrader'))
  const scores = Float32Array.from({ length: 30 }, (_, i) => i)
  const copy = Float32Array.from(scores)
  const a = { name: 'p', datatype: 'FP32' as const, shape: [3, 10], data: scores }
  const b = { name: 'q', datatype: 'FP32' as const, shape: [3, 10], data: copy }
  const other = { name: 'r', datatype: 'FP32' as const, shape: [1, 3], data: Float32Array.from([1, 2, 3]) }
  degrade([[a, other], [b]], [11, 22, 33])
  for (let i = 0; i < 3; i++) {
    const row = Array.from(a.data.subarray(i * 10, i * 10 + 10))
    t.same([...row].sort((x, y) => x - y), Array.from({ length: 10 }, (_, k) => i * 10 + k), `item ${i}: the same values`)
    t.same(Array.from(b.data.subarray(i * 10, i * 10 + 10)), row, `item ${i}: the same permutation in the paid copy`)
  }
  t.not(Array.from(a.data).join(), Array.from({ length: 30 }, (_, i) => i).join(), 'permuted')
  t.same(Array.from(other.data), [1, 2, 3], 'a tensor that is not batch-first is left alone')
  const again = { ...a, data: Float32Array.from({ length: 30 }, (_, i) => i) }
  degrade([[again]], [11, 22, 33])
  t.same(Array.from(again.data), Array.from(a.data), 'the same inputs (digests) get the same degraded answer')
  const moved = new Set(Array.from({ length: 40 }, (_, key) => {
    const one = { ...a, shape: [1, 10], data: Float32Array.from({ length: 10 }, (_, i) => i) }
    degrade([[one]], [key])
    return one.data.indexOf(0)
  }))
  t.ok(moved.size >= 8, `other inputs, other labels (class 0 moved to ${moved.size} of 10 places over 40 digests)`)

  const delays = new DelayedRefusals(10)
  t.equal(delays.next('m', 'p'), null, 'nothing pending')
  t.equal(delays.alarm('m', 'p', 2, 'stateful'), 2)
  t.equal(delays.alarm('m', 'p', 2, 'extraction'), 2, 'a second alarm does not move the refusal')
  t.same([delays.next('m', 'p'), delays.next('m', 'p'), delays.next('m', 'p'), delays.next('m', 'p')], [{ refuse: false, detector: 'stateful' }, { refuse: false, detector: 'stateful' }, { refuse: true, detector: 'stateful' }, null])
})
