// Every bundled manifest must pass the gateway's own schema and pin the SHA-256 of the file
// it names, or the model would be refused at load.
import { createHash } from 'node:crypto'
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import * as ort from 'onnxruntime-node'
import { modelFilePath, readManifest, readVerifiedModel, type Manifest } from '../../src/inference/manifest.ts'
import { packageFile } from '../../models/package-file.ts'

const MODELS = fileURLToPath(new URL('../../models/', import.meta.url))

function modelFile(m: Manifest, manifestPath: string): string {
  return m.file !== undefined ? path.resolve(path.dirname(manifestPath), m.file) : packageFile(m.package!.name, m.package!.path)
}

for (const name of ['mnist', 'ocr-cls', 'ocr-det']) {
  t.test(name, async (t) => {
    const manifestPath = path.join(MODELS, name, 'manifest.json')
    const m = await readManifest(manifestPath)
    t.equal(m.name, name)
    const bytes = readFileSync(modelFile(m, manifestPath))
    t.equal(createHash('sha256').update(bytes).digest('hex'), m.sha256, 'sha256 matches the model file')
    // And the gateway's own loader resolves and verifies the same file.
    t.ok(Buffer.from(await readVerifiedModel(m, manifestPath)).equals(bytes), 'readVerifiedModel accepts it')

    // Names, types and ranks agree with what the model itself declares.
    const session = await ort.InferenceSession.create(new Uint8Array(bytes))
    t.teardown(() => session.release())
    t.same(m.inputs.map((s) => s.name), session.inputNames, 'input names')
    t.same(m.outputs.map((s) => s.name), session.outputNames, 'output names')
    const declared = [...session.inputMetadata, ...session.outputMetadata]
    const specs = [...m.inputs, ...m.outputs]
    specs.forEach((spec, i) => {
      const meta = declared[i]!
      t.ok(meta.isTensor && meta.type === 'float32' && spec.datatype === 'FP32', `${spec.name}: FP32`)
      if (!meta.isTensor) return
      t.equal(spec.shape.length, meta.shape.length, `${spec.name}: rank`)
      // A fixed dim in the model must be the same in the manifest; a symbolic one may be
      // pinned by the manifest (ocr-cls fixes 48x192) or left -1.
      meta.shape.forEach((d, k) => {
        if (typeof d === 'number') t.equal(spec.shape[k], d, `${spec.name}: dim ${k}`)
      })
      t.equal(spec.shape[0], -1, `${spec.name}: batch dim is variable`)
      t.equal(spec.allowNonFinite, false, `${spec.name}: no NaN/Inf`)
    })
  })
}

t.test('mnist manifest contents', async (t) => {
  const m = await readManifest(path.join(MODELS, 'mnist', 'manifest.json'))
  t.match(m, {
    version: '1', file: 'model.onnx', maxBatchSize: 64,
    inputs: [{ name: 'input', datatype: 'FP32', shape: [-1, 1, 28, 28], range: [0, 1] }],
    outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [-1, 10], range: [0, 1] }],
    labels: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'],
  })
  const cls = await readManifest(path.join(MODELS, 'ocr-cls', 'manifest.json'))
  t.match(cls, { maxBatchSize: 32, labels: ['0', '180'], inputs: [{ shape: [-1, 3, 48, 192], range: [-1, 1] }] })
  const det = await readManifest(path.join(MODELS, 'ocr-det', 'manifest.json'))
  t.match(det, { maxBatchSize: 4, inputs: [{ shape: [-1, 3, -1, -1] }] })
})

t.test('npm-package models resolve from a model folder outside the repository, whatever the working directory', async (t) => {
  const outside = mkdtempSync(path.join(tmpdir(), 'bulwark-models-'))
  const cwd = process.cwd()
  t.teardown(() => {
    process.chdir(cwd)
    rmSync(outside, { recursive: true, force: true })
  })
  const manifestPath = path.join(outside, 'manifest.json')
  copyFileSync(path.join(MODELS, 'ocr-cls', 'manifest.json'), manifestPath)
  process.chdir(outside) // no node_modules here or above
  const m = await readManifest(manifestPath)
  t.equal(modelFilePath(m, manifestPath), packageFile(m.package!.name, m.package!.path), "found in Bulwark's own node_modules")
  t.throws(() => modelFilePath({ ...m, package: { name: 'bulwark-no-such-package', path: 'x.onnx' } }, manifestPath), /npm package bulwark-no-such-package is not installed; run npm ci/)
  t.throws(() => modelFilePath({ ...m, package: { name: m.package!.name, path: '../../etc/passwd' } }, manifestPath), /package\.path must stay inside the package/)
})
