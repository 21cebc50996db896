// Triton's model repository extension on the admin listener (models.repositoryApi), with real
// tokens and the mnist network copied into folders of its own: no token is 401, a token without
// the scope 403; the index lists the folders, loaded or not; load serves a new folder, and a
// changed one as a new version; unload serves it no more (404 model_not_found); a folder that
// cannot be loaded is refused with the reason and the version served stays. The same answers
// come through the admin listener's own thread. The start refuses the API without auth, or
// together with polling.

import t from 'tap'
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { request } from 'undici'
import { mnistRequest, startGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'

const DEV = 'spiffe://bulwark.local/ns/default/sa/dev'
const body = await mnistRequest()
const policy = (model: string) => ({ model, allow: [{ verbs: ['infer'], workloads: [DEV], scopes: [`${model}:infer`] }], output: { outputs: ['probabilities'] } })
const models = await mkdtemp(path.join(os.tmpdir(), 'bulwark-repository-'))
t.teardown(() => rm(models, { recursive: true, force: true }))
const mnistManifest = JSON.parse(await readFile(path.join(repoRoot, 'models', 'mnist', 'manifest.json'), 'utf8'))
async function modelFolder(name: string, manifest: Record<string, unknown>): Promise<void> {
  await mkdir(path.join(models, name), { recursive: true })
  await cp(path.join(repoRoot, 'models', 'mnist', 'model.onnx'), path.join(models, name, 'model.onnx'))
  await writeFile(path.join(models, name, 'manifest.json'), JSON.stringify({ ...mnistManifest, name, ...manifest }))
}
await modelFolder('digits', { version: '1' })

const gw = await startGateway({
  policies: { digits: policy('digits'), more: policy('more') },
  config: { models: { directory: models, serve: [{ name: 'digits' }], repositoryApi: { enabled: true } } },
})
t.teardown(() => gw.close())
const operator = `Bearer ${await gw.token({ sub: 'operator', scopes: ['bulwark:models'] })}`
const caller = `Bearer ${await gw.token({ sub: 'app', scopes: ['digits:infer', 'more:infer'] })}`

/** POST to the repository API at `base` (the in-process admin routes by default). */
async function repo(urlPath: string, authorization: string | null, base = gw.adminUrl, data = '{}'): Promise<{ status: number; body: any }> {
  const res = await request(`${base}${urlPath}`, { method: 'POST', headers: { 'content-type': 'application/json', ...(authorization ? { authorization } : {}) }, body: data })
  return { status: res.statusCode, body: await res.body.json() }
}
const infer = (model: string) => gw.request(`/v2/models/${model}/infer`, { body, token: caller.slice('Bearer '.length) })

t.test('the token is the check: none is 401, one without the scope 403', async (t) => {
  t.match(await repo('/v2/repository/index', null), { status: 401, body: { code: 'unauthenticated' } })
  t.match(await repo('/v2/repository/index', caller), { status: 403, body: { code: 'forbidden' } })
  t.match(await repo('/v2/repository/models/digits/unload', caller), { status: 403 }, 'nor may it unload')
  t.equal((await infer('digits')).status, 200, 'and the model still serves')
})

t.test('index, load a new folder, load a new version, unload; a bad folder keeps what is served', async (t) => {
  await modelFolder('more', { version: '1' })
  t.same((await repo('/v2/repository/index', operator)).body, [
    { name: 'digits', version: '1', state: 'READY', reason: '' },
    { name: 'more', state: 'UNAVAILABLE', reason: 'unloaded' },
  ], 'every folder, loaded or not')
  t.same((await repo('/v2/repository/index', operator, gw.adminUrl, '{"ready":true}')).body.map((m: { name: string }) => m.name), ['digits'], '{"ready": true}: the ready ones')

  t.equal((await infer('more')).status, 404, 'a folder not loaded is not served')
  t.same(await repo('/v2/repository/models/more/load', operator), { status: 200, body: {} })
  t.equal((await infer('more')).status, 200, 'loaded: served')

  await writeFile(path.join(models, 'digits', 'manifest.json'), JSON.stringify({ ...mnistManifest, name: 'digits', version: '2' }))
  t.same(await repo('/v2/repository/models/digits/load', operator), { status: 200, body: {} })
  t.equal((await infer('digits')).body.model_version, '2', 'a changed folder loads as the new version')

  await writeFile(path.join(models, 'digits', 'manifest.json'), JSON.stringify({ ...mnistManifest, name: 'digits', version: '3', sha256: '0'.repeat(64) }))
  const bad = await repo('/v2/repository/models/digits/load', operator)
  t.equal(bad.status, 400)
  t.match(bad.body, { code: 'bad_request', error: /failed to load "digits": .*SHA-256/ }, 'the reason comes back')
  t.equal((await infer('digits')).body.model_version, '2', 'version 2 still serves')

  t.same(await repo('/v2/repository/models/more/unload', operator), { status: 200, body: {} })
  t.match((await infer('more')).body, { code: 'model_not_found' }, 'unloaded: not served')
  t.match(await repo('/v2/repository/models/more/unload', operator), { status: 404, body: { code: 'model_not_found' } }, 'unloading it again: 404')
  t.ok(gw.logs.some((l) => l.msg === 'model unloaded through the repository API; requests already validated finish on it' && l.subject === 'operator'), 'the log names who did it')
})

t.test('through the admin listener\'s own thread', async (t) => {
  const address = await gw.gateway.serveAdmin({ host: '127.0.0.1', port: 0 })
  const base = `http://127.0.0.1:${address.port}`
  t.match(await repo('/v2/repository/index', null, base), { status: 401, body: { code: 'unauthenticated' } })
  const index = await repo('/v2/repository/index', operator, base)
  t.equal(index.status, 200)
  t.match(index.body, [{ name: 'digits', state: 'READY' }, { name: 'more', state: 'UNAVAILABLE' }])
  t.same(await repo('/v2/repository/models/more/load', operator, base), { status: 200, body: {} })
  t.equal((await infer('more')).status, 200)
})

t.test('the start refuses the API without auth, or with polling', async (t) => {
  await t.rejects(startGateway({ config: { models: { directory: models, serve: [], repositoryApi: { enabled: true }, poll: { enabled: true } } } }), /poll and explicit control exclude each other/)
  await t.rejects(startGateway({ frontDoor: false, config: { models: { directory: models, serve: [], repositoryApi: { enabled: true } } } }), /the repository API checks a bearer token, and auth is off/)
})
