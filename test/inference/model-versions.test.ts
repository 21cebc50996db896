// A model served at several versions (models/<name>/<n>/manifest.json: the mnist network
// copied into version folders 1 and 2), through a real gateway (mTLS, JWTs, the bundled mnist
// policy with its privacy budget and screening) and a real grpc-js client. Under versionPolicy
// `all`: metadata lists both versions; a request naming version 1 or 2 runs on it and a request
// naming none on 2 (REST and gRPC model_version); a version not served is 404 version_not_found
// naming the versions served; the audit records name the version that answered; the privacy
// budget is one per model and caller (a charge on version 1 shows in the balance on version 2);
// the configuration says the policy; statistics are kept per version, metrics per model. Under the default policy (latest 1) only version 2 is
// served. A version folder whose manifest names another version is not served, with the fix;
// a version declaring other inputs than the highest is not served beside it.
// The poll (asked for by the test) serves a version folder added and stops serving one removed.

import t from 'tap'
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import * as grpc from '@grpc/grpc-js'
import { mnistRequest, startGateway, type TestGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { inferenceServiceClient } from '../../src/transport/grpc.ts'
import { requestRecords, tempDir } from '../audit/helpers.ts'

const models = await mkdtemp(path.join(os.tmpdir(), 'bulwark-model-versions-'))
t.teardown(() => rm(models, { recursive: true, force: true }))
const mnistManifest = JSON.parse(await readFile(path.join(repoRoot, 'models', 'mnist', 'manifest.json'), 'utf8'))
/** <base>/mnist/<folder>/: the bundled network, its manifest saying `version`. */
async function versionFolder(folder: string, version = folder, base = models): Promise<void> {
  const dir = path.join(base, 'mnist', folder)
  await mkdir(dir, { recursive: true })
  await cp(path.join(repoRoot, 'models', 'mnist', 'model.onnx'), path.join(dir, 'model.onnx'))
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify({ ...mnistManifest, version }, null, 2))
}
await versionFolder('1')
await versionFolder('2')

const body = (await mnistRequest()) as { inputs: { data: number[] }[] }
let sent = 0
/** The digit, one pixel changed per request (screening's stateful detector keeps exact repeats once). */
const variant = () => {
  const b = structuredClone(body)
  b.inputs[0]!.data[++sent] = 0.5
  return b
}

const start = (versionPolicy: unknown, auditDir?: string, o: { directory?: string; poll?: boolean } = {}) =>
  startGateway({
    models: ['mnist'],
    config: { models: { directory: o.directory ?? models, serve: [{ name: 'mnist', versionPolicy }], poll: { enabled: o.poll ?? false, intervalMs: 3_600_000 } }, ...(auditDir ? { audit: { directory: auditDir, aggregation: { enabled: false } } } : {}) },
  })

const auditDir = tempDir('model-versions-audit')
const gw = await start('all', auditDir)
t.teardown(() => gw.close())

const infer = (gw: TestGateway, version: string | null) => gw.request(version === null ? '/v2/models/mnist/infer' : `/v2/models/mnist/versions/${version}/infer`, { body: variant() })

t.test('versionPolicy all: both versions served, each on request, the highest by default', async (t) => {
  const meta = await gw.request('/v2/models/mnist')
  t.equal(meta.status, 200)
  t.same(meta.body.versions, ['2', '1'], 'metadata lists the versions served, highest first')
  for (const [asked, answered] of [['1', '1'], ['2', '2'], [null, '2']] as const) {
    const res = await infer(gw, asked)
    t.equal(res.status, 200, `asked for ${asked ?? 'no version'}`)
    t.equal(res.body.model_version, answered, `asked for ${asked ?? 'no version'}: version ${answered} answered`)
  }
  const ready = await gw.request('/v2/models/mnist/versions/1/ready')
  t.same([ready.status, ready.body], [200, { name: 'mnist', ready: true }], 'version 1 is ready')
  t.same((await gw.request('/v2/models/mnist/versions/1/config')).body.version_policy, { all: {} }, 'the configuration says the policy')

  const missing = await infer(gw, '3')
  t.equal(missing.status, 404)
  t.equal(missing.body.code, 'version_not_found')
  t.match(missing.body.error, /not served at version "3"; versions served: "2", "1"/, 'the refusal names the versions served')
})

t.test('the audit records name the version that answered', async (t) => {
  await infer(gw, '1')
  await infer(gw, null)
  // The writer commits each record before the answer leaves (durability strict).
  const recs = requestRecords(auditDir).map((l) => l.rec).filter((r) => r.verb === 'infer' && r.status === 200)
  const last = recs.slice(-2)
  t.match(last[0], { path: '/v2/models/mnist/versions/1/infer', model: 'mnist', version: '1' })
  t.match(last[1], { path: '/v2/models/mnist/infer', model: 'mnist', version: '2' }, 'a request naming no version is recorded with the one served')
})

t.test('the privacy budget is one per model and caller, across versions', async (t) => {
  const one = await infer(gw, '1')
  const two = await infer(gw, '2')
  const p1 = one.body.parameters as Record<string, number>
  const p2 = two.body.parameters as Record<string, number>
  t.ok(p1.privacy_epsilon_cost! > 0, 'the answer on version 1 is charged')
  t.equal(p2.privacy_epsilon_left, p1.privacy_epsilon_left! - p2.privacy_epsilon_cost!, 'the balance on version 2 already holds the charge made on version 1')
})

t.test('gRPC model_version picks the version', async (t) => {
  const port = await gw.gateway.grpc!.listen('127.0.0.1', 0)
  const [ca, cert, key] = await Promise.all([gw.pki.files.ca, gw.pki.files.clientCert, gw.pki.files.clientKey].map((f) => readFile(f)))
  const Service = inferenceServiceClient()
  const client = new Service(`127.0.0.1:${port}`, grpc.credentials.createSsl(ca!, key!, cert!)) as any
  t.teardown(() => client.close())
  const call = async (version: string): Promise<any> => {
    const md = new grpc.Metadata()
    md.set('authorization', `Bearer ${await gw.token()}`)
    const request = { model_name: 'mnist', model_version: version, inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], contents: { fp32_contents: variant().inputs[0]!.data } }] }
    return new Promise((resolve, reject) => client.ModelInfer(request, md, { deadline: Date.now() + 20_000 }, (err: grpc.ServiceError | null, res: unknown) => (err ? reject(err) : resolve(res))))
  }
  t.equal((await call('1')).model_version, '1', 'model_version 1 runs on version 1')
  t.equal((await call('')).model_version, '2', 'no model_version runs on the highest')
  const err = (await call('3').then(() => null, (e: grpc.ServiceError) => e))!
  t.equal(err?.code, grpc.status.NOT_FOUND)
  t.match(err?.details, /versions served: "2", "1"/)
})

t.test('statistics are kept per version', async (t) => {
  // Answered so far: version 1 four times (REST three, gRPC one), version 2 five; the versions
  // not served (3) count nowhere.
  const all = (await gw.request('/v2/models/mnist/stats')).body.model_stats
  t.same(all.map((s: { version: string }) => s.version), ['2', '1'], 'a request naming no version gets every version')
  const one = (await gw.request('/v2/models/mnist/versions/1/stats')).body.model_stats
  t.equal(one.length, 1)
  t.match(one[0], { name: 'mnist', version: '1', inference_stats: { success: { count: 4 }, fail: { count: 0 } } })
  t.match(all[0], { version: '2', inference_stats: { success: { count: 5 }, fail: { count: 0 } } })
  const metrics = await gw.gateway.metrics.render()
  t.same(metrics.match(/^bulwark_queue_depth\{[^}]*\} \d+$/gm), ['bulwark_queue_depth{model="mnist"} 0'], 'metrics keep one queue series per model, its versions together')
})

t.test('the default policy (latest 1) serves the highest version only', async (t) => {
  const latest = await start(undefined)
  t.teardown(() => latest.close())
  t.same((await latest.request('/v2/models/mnist')).body.versions, ['2'])
  t.equal((await infer(latest, null)).body.model_version, '2')
  const old = await infer(latest, '1')
  t.equal(old.status, 404)
  t.match(old.body.error, /not served at version "1"; versions served: "2"/)
})

t.test('a version folder whose manifest names another version is not served, and says how to fix it', async (t) => {
  await versionFolder('3', '7')
  t.teardown(() => rm(path.join(models, 'mnist', '3'), { recursive: true }))
  const wrong = await start({ specific: [3, 1] })
  t.teardown(() => wrong.close())
  const line = wrong.logsWith('model not served').find((l) => l.version === '3')
  t.match(line?.err, /says version "7" but lies in the folder of version 3; set "version": "3"/)
  t.same((await wrong.request('/v2/models/mnist')).body.versions, ['1'], 'the other version listed is served')
  t.equal((await infer(wrong, null)).body.model_version, '1', 'and answers requests naming none')
  const three = await infer(wrong, '3')
  t.equal(three.status, 503, 'the version that failed is not ready')
  t.equal(three.body.code, 'model_not_ready')
})

t.test('versions that declare other inputs than the highest are not served beside it (one policy covers them all)', async (t) => {
  const dir = path.join(models, 'mnist', '4')
  await versionFolder('4')
  t.teardown(() => rm(dir, { recursive: true }))
  const manifest = JSON.parse(await readFile(path.join(dir, 'manifest.json'), 'utf8'))
  manifest.inputs[0].range = [0, 255]
  await writeFile(path.join(dir, 'manifest.json'), JSON.stringify(manifest))
  const mixed = await start({ specific: [4, 1] })
  t.teardown(() => mixed.close())
  t.same((await mixed.request('/v2/models/mnist')).body.versions, ['4'], 'only the highest is served')
  const line = mixed.logsWith('model not served').find((l) => l.version === '1')
  t.match(line?.err, /version 1 declares other inputs or outputs than version 4/, 'the log says why')
  t.equal((await infer(mixed, '1')).body.code, 'model_not_ready')
})

t.test('the poll serves a version folder added and no longer one removed', async (t) => {
  const polled = await mkdtemp(path.join(os.tmpdir(), 'bulwark-model-versions-poll-'))
  t.teardown(() => rm(polled, { recursive: true, force: true }))
  await versionFolder('1', '1', polled)
  await versionFolder('2', '2', polled)
  const live = await start('all', undefined, { directory: polled, poll: true })
  t.teardown(() => live.close())
  await versionFolder('3', '3', polled)
  await live.gateway.modelPoll!.poll()
  t.same((await live.request('/v2/models/mnist')).body.versions, ['3', '2', '1'], 'version 3 added')
  t.equal((await infer(live, null)).body.model_version, '3', 'and requests naming none get it')
  await rm(path.join(polled, 'mnist', '1'), { recursive: true })
  await live.gateway.modelPoll!.poll()
  t.same((await live.request('/v2/models/mnist')).body.versions, ['3', '2'], 'version 1 removed')
  const gone = await infer(live, '1')
  t.equal(gone.status, 404)
  t.match(gone.body.error, /versions served: "3", "2"/)
  t.equal((await infer(live, '2')).body.model_version, '2', 'version 2 still serves')
})
