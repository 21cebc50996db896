// Version folders on disk (real temp folders): which numbered folders count as versions
// (a manifest inside, a numeric name), their order (by number, not by text), what each
// versionPolicy picks, and which manifest describes a model to its policy.

import t from 'tap'
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { modelManifestPath, selectVersions, versionFolders } from '../../src/inference/model-versions.ts'

const root = await mkdtemp(path.join(os.tmpdir(), 'bulwark-version-folders-'))
t.teardown(() => rm(root, { recursive: true, force: true }))
const file = async (rel: string) => {
  await mkdir(path.dirname(path.join(root, rel)), { recursive: true })
  await writeFile(path.join(root, rel), '{}')
}
for (const v of ['1', '2', '10']) await file(`m/${v}/manifest.json`)
await file('m/3/model.onnx') // no manifest: not a version
await file('m/latest/manifest.json') // not a number: not a version
await file('flat/manifest.json')
await file('flat/2/manifest.json') // a manifest at the top wins: one version

t.test('version folders: numeric, with a manifest, highest first by number', async (t) => {
  t.same(await versionFolders(path.join(root, 'm')), ['10', '2', '1'])
  t.equal(await versionFolders(path.join(root, 'flat')), null, 'a manifest at the top: today\'s layout, one version')
  t.same(await versionFolders(path.join(root, 'absent')), [], 'no folder: no version')
})

t.test('each versionPolicy picks its versions', async (t) => {
  const dir = path.join(root, 'm')
  const picked = (policy: Parameters<typeof selectVersions>[2]) => selectVersions(dir, ['10', '2', '1'], policy).map((w) => [w.version, w.manifestPath !== null])
  t.same(picked(undefined), [['10', true]], 'default: the highest')
  t.same(picked({ latest: 2 }), [['10', true], ['2', true]])
  t.same(picked('all'), [['10', true], ['2', true], ['1', true]])
  t.same(picked({ specific: [1, 5] }), [['5', false], ['1', true]], 'a listed version without a folder comes without a manifest')
  t.equal(selectVersions(dir, ['10'], { latest: 1 })[0]!.manifestPath, path.join(dir, '10', 'manifest.json'))
})

t.test('the manifest that describes a model to its policy', async (t) => {
  t.equal(await modelManifestPath(root, 'm'), path.join(root, 'm', '10', 'manifest.json'), 'the highest version folder\'s')
  t.equal(await modelManifestPath(root, 'flat'), path.join(root, 'flat', 'manifest.json'), 'the one at the top')
})
