// The model folder polled (models.poll), under a steady load of real requests (mTLS, JWTs, the
// mnist network copied into a folder of its own). A changed manifest is loaded beside the
// version served: requests that start after the poll get the new version, and the old one
// closes after its last request. A new folder is loaded and served. A removed folder is served
// no more: requests that start after the poll get 404 model_not_found. Not one request fails
// in any other way. The policies are compiled again when a model changes. And a folder that
// cannot be loaded keeps the version served. The polls are asked for by the test (the
// interval is an hour), so nothing waits on time.

import t from 'tap'
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { writeFileAtomic } from '../../src/dev/pki.ts'
import { mnistRequest, startGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { Changes } from '../../kit/wait.ts'

const DEV = 'spiffe://bulwark.local/ns/default/sa/dev'
const body = await mnistRequest()
const policy = (model: string) => ({
  model,
  allow: [{ verbs: ['infer', 'metadata'], workloads: [DEV], scopes: [`${model}:infer`] }],
  rateLimit: { requestsPerWindow: 1_000_000, windowMs: 1000 },
  output: { outputs: ['probabilities'] },
})

const models = await mkdtemp(path.join(os.tmpdir(), 'bulwark-model-poll-'))
t.teardown(() => rm(models, { recursive: true, force: true }))
const mnistManifest = JSON.parse(await readFile(path.join(repoRoot, 'models', 'mnist', 'manifest.json'), 'utf8'))
/** models/<name>/: the mnist network under another name, at `version`. */
async function modelFolder(name: string, version: string): Promise<void> {
  await mkdir(path.join(models, name), { recursive: true })
  await cp(path.join(repoRoot, 'models', 'mnist', 'model.onnx'), path.join(models, name, 'model.onnx'))
  await writeFileAtomic(path.join(models, name, 'manifest.json'), JSON.stringify({ ...mnistManifest, name, version }, null, 2))
}
await modelFolder('digits', '1')

const gw = await startGateway({
  policies: { digits: policy('digits'), more: policy('more') },
  config: { models: { directory: models, serve: [{ name: 'digits' }], poll: { enabled: true, intervalMs: 3_600_000 } } },
})
t.teardown(() => gw.close())
const poller = gw.gateway.modelPoll!
const closed = (version: string, since: number) => gw.logged((l) => l.msg === 'model version closed: its last request is done' && l.version === version, since)

interface Sent {
  startMs: number
  endMs: number
  status: number
  version: string | undefined
  code: string | undefined
}

t.test('a version swap and a removal under load: nothing in flight fails', async (t) => {
  const token = await gw.token({ scopes: ['digits:infer'] })
  const sent: Sent[] = []
  const progress = new Changes()
  let running = true
  const loop = async () => {
    while (running) {
      const startMs = performance.now()
      const res = await gw.request('/v2/models/digits/infer', { body, token })
      sent.push({ startMs, endMs: performance.now(), status: res.status, version: res.body?.model_version, code: res.body?.code })
      progress.notify()
    }
  }
  const startedAfter = (ms: number) => sent.filter((s) => s.startMs > ms).length
  const loops = [loop(), loop(), loop()]
  await progress.until(() => sent.length >= 10)

  // A new version: the manifest changes.
  let since = gw.logs.length
  const editMs = performance.now()
  await writeFileAtomic(path.join(models, 'digits', 'manifest.json'), JSON.stringify({ ...mnistManifest, name: 'digits', version: '2' }, null, 2))
  await poller.poll()
  const swapMs = performance.now()
  await progress.until(() => startedAfter(swapMs) >= 10)
  await closed('1', since)
  t.pass('version 1 closed after its last request')

  // The folder removed.
  since = gw.logs.length
  await rm(path.join(models, 'digits'), { recursive: true })
  await poller.poll()
  const removedMs = performance.now()
  await progress.until(() => startedAfter(removedMs) >= 10)
  running = false
  await Promise.all(loops)
  await closed('2', since)

  t.same(sent.filter((s) => s.endMs < editMs && (s.status !== 200 || s.version !== '1')), [], 'version 1 answered until the edit')
  const onTwo = sent.filter((s) => s.startMs > swapMs && s.endMs < removedMs)
  t.ok(onTwo.length >= 10)
  t.same(onTwo.filter((s) => s.status !== 200 || s.version !== '2'), [], `the ${onTwo.length} requests that started after the swap ran on version 2`)
  const gone = sent.filter((s) => s.startMs > removedMs)
  t.same(gone.filter((s) => s.status !== 404 || s.code !== 'model_not_found'), [], `the ${gone.length} requests that started after the removal get 404 model_not_found`)
  t.same(sent.filter((s) => s.status !== 200 && !(s.status === 404 && s.code === 'model_not_found')), [], `of ${sent.length} requests, none failed in any other way`)
  t.same(sent.filter((s) => s.status === 404 && s.startMs < editMs), [], 'and none was refused before the removal')
})

t.test('a new folder is loaded and served; a folder that cannot be loaded keeps the version served', async (t) => {
  const before = gw.logs.length
  await modelFolder('more', '1')
  await poller.poll()
  await gw.logged((l) => l.msg === 'policies compiled again for the models served' && l.why === 'model more changed', before)
  t.pass('the policies are compiled again against the models served')
  const token = await gw.token({ scopes: ['more:infer'] })
  const res = await gw.request('/v2/models/more/infer', { body, token })
  t.equal(res.status, 200, 'the new model is served')
  t.match(await gw.gateway.metrics.render(), /bulwark_requests_total\{code="ok",model="more",status="200",verb="infer"\} 1/, 'and counted under its own name')
  t.equal(res.body.model_version, '1')

  // A manifest that pins another digest: the new version is not loaded, the old one serves.
  const since = gw.logs.length
  await writeFile(path.join(models, 'more', 'manifest.json'), JSON.stringify({ ...mnistManifest, name: 'more', version: '2', sha256: '0'.repeat(64) }))
  await poller.poll()
  const line = await gw.logged((l) => l.msg === 'changed model folder cannot be served; the version served stays', since)
  t.match(line.problem, /SHA-256/, 'the log says why')
  const still = await gw.request('/v2/models/more/infer', { body, token })
  t.equal(still.status, 200)
  t.equal(still.body.model_version, '1', 'version 1 still serves')
  await poller.poll()
  t.equal(gw.logs.filter((l) => l.msg === 'changed model folder cannot be served; the version served stays').length, 1, 'the same bad folder is not retried at each poll')
  t.match(await gw.gateway.metrics.render(), /bulwark_model_polls_total\{action="failed",model="more"\} 1/)
})
