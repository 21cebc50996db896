// A manifest's preferredBatchSize: the largest batch the batcher forms by default, for models
// whose cost per item rises past it. batching.maxBatchSize overrides it, batching off ignores
// it, it may not exceed maxBatchSize, and the model configuration (Triton's /config) names it
// as dynamic_batching.preferred_batch_size. The bundled ocr-cls manifest sets it, and a
// registry serving the real model builds its batcher to it.
import t from 'tap'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { batchLimit, maxShapeProblems, readManifest, type Manifest } from '../../src/inference/manifest.ts'
import { ModelRegistry } from '../../src/inference/registry.ts'
import { buildConfig } from '../../src/config/load.ts'
import { modelConfig } from '../../src/oip/model-config.ts'
import { systemClock } from '../../src/deps.ts'
import { repoRoot } from '../../kit/paths.ts'

const ocrManifest = JSON.parse(readFileSync(path.join(repoRoot, 'models/ocr-cls/manifest.json'), 'utf8')) as Manifest

t.test('batchLimit: the configured size, else the preferred one, else maxBatchSize; 1 with batching off', async (t) => {
  const manifest = { maxBatchSize: 32, preferredBatchSize: 4 }
  t.equal(batchLimit({ enabled: true, maxBatchSize: 0 }, manifest), 4, 'the default: the preferred size')
  t.equal(batchLimit({ enabled: true, maxBatchSize: 16 }, manifest), 16, 'configured: the operator\'s size')
  t.equal(batchLimit({ enabled: true, maxBatchSize: 64 }, manifest), 32, 'never past maxBatchSize')
  t.equal(batchLimit({ enabled: false, maxBatchSize: 0 }, manifest), 1, 'batching off')
  t.equal(batchLimit({ enabled: true, maxBatchSize: 0 }, { maxBatchSize: 32 }), 32, 'no preferred size: maxBatchSize')
})

t.test('a preferredBatchSize past maxBatchSize is refused with the fix', async (t) => {
  t.same(maxShapeProblems({ maxBatchSize: 8, preferredBatchSize: 8, inputs: [] }), [])
  t.match(maxShapeProblems({ maxBatchSize: 8, preferredBatchSize: 9, inputs: [] }), [/\/preferredBatchSize: 9 is larger than maxBatchSize 8; give at most 8, or remove it/])
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bulwark-preferred-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'manifest.json')
  writeFileSync(file, JSON.stringify({ ...ocrManifest, preferredBatchSize: 64 }))
  await t.rejects(readManifest(file), /invalid manifest:\n {2}\/preferredBatchSize: 64 is larger than maxBatchSize 32/)
})

t.test('the model configuration names the batcher\'s size as preferred_batch_size when it is below maxBatchSize', async (t) => {
  const settings = (maxBatchSize: number) => ({ workers: 2, batching: { enabled: true, maxBatchSize, maxQueueDelayMicros: 500, maxQueueSize: 256 } })
  const config = (maxBatchSize: number, manifest: Manifest = ocrManifest) =>
    modelConfig({ name: 'ocr-cls', manifest, settings: settings(maxBatchSize), upstream: undefined, folderVersion: undefined } as unknown as Parameters<typeof modelConfig>[0])
  t.same(config(0).dynamic_batching?.preferred_batch_size, [4], 'the manifest\'s preferred size')
  t.same(config(8).dynamic_batching?.preferred_batch_size, [8], 'the configured size')
  t.same(config(32).dynamic_batching?.preferred_batch_size, [], 'at maxBatchSize: none preferred')
  t.equal(config(0).max_batch_size, 32, 'max_batch_size stays what the model accepts')
})

t.test('a registry serving the real ocr-cls builds its batcher to the manifest\'s preferred size, or the configured one', async (t) => {
  t.equal(ocrManifest.preferredBatchSize, 4, 'the bundled manifest sets it')
  const serve = (batching: Record<string, unknown>) => {
    const config = buildConfig({ models: { serve: [{ name: 'ocr-cls', workers: 1, batching }] } }, 'test')
    return new ModelRegistry(config.models, repoRoot, { clock: systemClock, log: { info() {}, warn() {}, error() {} } })
  }
  const byDefault = serve({})
  const configured = serve({ maxBatchSize: 16 })
  t.teardown(async () => {
    await byDefault.close()
    await configured.close()
  })
  await Promise.all([byDefault.load(), configured.load()])
  t.equal(byDefault.ready('ocr-cls', null).batcher!.maxBatchSize, 4)
  t.equal(configured.ready('ocr-cls', null).batcher!.maxBatchSize, 16)
})
