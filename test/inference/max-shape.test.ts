// A manifest bounds each free dimension of an input (`maxShape`), and validation holds a
// request's shape to it before it reads a single element of data: a shape the model is never
// used with is refused with 400 even when the body carries all of its data, and a huge claim
// backed by one value is refused without the data being looked at. The manifest schema
// refuses a maxShape that does not fit its shape, and every bundled manifest bounds its free
// dimensions. The last test runs the real ocr-det model behind a real gateway.

import t from 'tap'
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { request } from 'undici'
import { startGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { HEADER_LENGTH, splitBody } from '../../src/oip/codec.ts'
import { maxShapeProblems, readManifest, type Manifest } from '../../src/inference/manifest.ts'
import { decodeInferRequest } from '../../src/stages/input-validation.ts'
import type { RawBody } from '../../src/types.ts'

const MODELS = path.join(repoRoot, 'models')
const detManifest = await readManifest(path.join(MODELS, 'ocr-det', 'manifest.json'))
const HUGE = [1, 3, 16384, 5461]

/** A JSON request whose `data` records whether validation ever read it. */
function watched(shape: number[], data: unknown = [0]): { body: RawBody; read: () => boolean } {
  let read = false
  const input = {
    name: 'x',
    datatype: 'FP32',
    shape,
    get data() {
      read = true
      return data
    },
  }
  return { body: { contentType: 'json', header: { inputs: [input] }, sizeBytes: 0 }, read: () => read }
}

function binary(shape: number[], payload: Buffer): RawBody {
  const head = Buffer.from(JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape, parameters: { binary_data_size: payload.byteLength } }] }))
  return splitBody(Buffer.concat([head, payload]), String(head.length))
}

function refusal(fn: () => unknown): { code: string; status: number; message: string } {
  try {
    fn()
  } catch (err) {
    const e = err as { code: string; status: number; message: string }
    return { code: e.code, status: e.status, message: e.message }
  }
  throw new Error('expected a refusal')
}

t.test('[1,3,16384,5461] with one value is refused with 400 shape_mismatch before its data is read', async (t) => {
  const req = watched(HUGE)
  const r = refusal(() => decodeInferRequest(req.body, detManifest))
  t.equal(r.code, 'shape_mismatch')
  t.equal(r.status, 400)
  t.match(r.message, /dimension 2 is 16384, over this model's limit of 1920/)
  t.notOk(req.read(), 'the data was never read, so nothing was allocated from the claim')

  // The same claim as binary: refused on the shape, before its byte count is compared.
  const b = refusal(() => decodeInferRequest(binary(HUGE, Buffer.alloc(4)), detManifest))
  t.equal(b.code, 'shape_mismatch')

  // Without maxShape the shape passes and only the count of the data refuses it (later, after reading it).
  const unbounded: Manifest = { ...detManifest, inputs: detManifest.inputs.map(({ maxShape: _, ...spec }) => spec) }
  const before = watched(HUGE)
  t.equal(refusal(() => decodeInferRequest(before.body, unbounded)).code, 'data_length_mismatch', 'without maxShape: the data decides')
  t.ok(before.read(), 'and it had to be read')
})

const toy: Manifest = {
  name: 'toy',
  version: '1',
  platform: 'onnxruntime_onnx',
  file: 'model.onnx',
  sha256: '0'.repeat(64),
  maxBatchSize: 4,
  inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 3, -1, -1], maxShape: [2, 3, 8, 6], range: [0, 1] }],
  outputs: [{ name: 'y', datatype: 'FP32', shape: [-1, 1] }],
}

t.test('a shape beyond maxShape is refused even when the body carries all of its data', async (t) => {
  for (const shape of [[1, 3, 9, 6], [1, 3, 8, 7]]) {
    const count = shape.reduce((a, b) => a * b, 1)
    const json = refusal(() => decodeInferRequest(watched(shape, new Array<number>(count).fill(0.5)).body, toy))
    t.equal(json.code, 'shape_mismatch', `JSON ${JSON.stringify(shape)} with all ${count} values`)
    const bin = refusal(() => decodeInferRequest(binary(shape, Buffer.from(new Float32Array(count).fill(0.5).buffer)), toy))
    t.equal(bin.code, 'shape_mismatch', `binary ${JSON.stringify(shape)} with all ${count * 4} bytes`)
  }
  // At the limit, and below it, the request is accepted.
  for (const shape of [[1, 3, 8, 6], [2, 3, 1, 1]]) {
    const count = shape.reduce((a, b) => a * b, 1)
    const ok = decodeInferRequest(watched(shape, new Array<number>(count).fill(0.5)).body, toy)
    t.same(ok.inputs[0]!.shape, shape, `${JSON.stringify(shape)} is accepted`)
  }
  // A batch limit in maxShape below maxBatchSize applies too.
  const batch = refusal(() => decodeInferRequest(watched([3, 3, 1, 1], new Array<number>(9).fill(0.5)).body, toy))
  t.equal(batch.code, 'batch_too_large')
})

t.test('the manifest schema refuses a maxShape that does not fit the shape', async (t) => {
  const input = (shape: number[], maxShape: number[]) => ({ maxBatchSize: 4, inputs: [{ name: 'x', datatype: 'FP32' as const, shape, maxShape }] })
  t.same(maxShapeProblems(input([-1, 3, -1, -1], [-1, 3, 64, 64])), [], 'a well-formed one')
  t.same(maxShapeProblems(input([-1, 3, -1, -1], [4, 3, 64, 64])), [], 'a batch limit up to maxBatchSize')
  t.match(maxShapeProblems(input([-1, 3, -1, -1], [-1, 3, 64])), [/has 3 dimensions, shape \[-1,3,-1,-1\] has 4/])
  t.match(maxShapeProblems(input([-1, 3, -1, -1], [-1, 4, 64, 64])), [/maxShape\/1: dimension 1 is fixed at 3/])
  t.match(maxShapeProblems(input([-1, 3, -1, -1], [-1, 3, -1, 64])), [/maxShape\/2: dimension 2 is free in shape; give its largest size/])
  t.match(maxShapeProblems(input([-1, 3, -1, -1], [-1, 3, 64, 0])), [/maxShape\/3: dimension 3 is free/])
  t.match(maxShapeProblems(input([-1, 3, -1, -1], [5, 3, 64, 64])), [/maxShape\/0: the batch limit 5 must be -1 \(maxBatchSize applies\) or 1\.\.4/])

  const dir = mkdtempSync(path.join(os.tmpdir(), 'bulwark-maxshape-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'manifest.json')
  const det = JSON.parse(JSON.stringify(detManifest)) as Manifest
  det.inputs[0]!.maxShape = [-1, 3, 1920]
  writeFileSync(file, JSON.stringify(det))
  await t.rejects(readManifest(file), /invalid manifest:\n {2}\/inputs\/0\/maxShape: has 3 dimensions/, 'readManifest names the field and the fix')
})

t.test('every bundled manifest bounds each free dimension of its inputs', async (t) => {
  const names = readdirSync(MODELS, { withFileTypes: true }).filter((d) => d.isDirectory() && readdirSync(path.join(MODELS, d.name)).includes('manifest.json')).map((d) => d.name)
  t.ok(names.includes('ocr-det'), `the bundled models: ${names.join(', ')}`)
  for (const name of names) {
    const m = await readManifest(path.join(MODELS, name, 'manifest.json'))
    for (const spec of m.inputs) {
      spec.shape.forEach((d, i) => {
        if (i === 0 || d !== -1) return
        const limit = spec.maxShape?.[i]
        t.ok(limit !== undefined && limit >= 1, `${name} input ${spec.name}: free dimension ${i} is bounded (${limit})`)
      })
    }
  }
  // ocr-det's bound admits its real use: PaddleOCR's default (longer side 960), the bench's
  // 640 x 640 and a Full HD frame padded to multiples of 32.
  for (const shape of [[1, 3, 960, 960], [4, 3, 640, 640], [1, 3, 1088, 1920], [1, 3, 1920, 1088]]) {
    const req = watched(shape, [])
    t.equal(refusal(() => decodeInferRequest(req.body, detManifest)).code, 'data_length_mismatch', `${JSON.stringify(shape)} passes the shape checks`)
    t.ok(req.read())
  }
})

t.test('through a real gateway and the real ocr-det model: 400 shape_mismatch, and a real image still runs', async (t) => {
  const gw = await startGateway({ models: ['ocr-det'], frontDoor: false })
  t.teardown(() => gw.close())
  const send = async (shape: number[], payload: Buffer) => {
    const head = Buffer.from(JSON.stringify({ inputs: [{ name: 'x', datatype: 'FP32', shape, parameters: { binary_data_size: payload.byteLength } }] }))
    const res = await request(`${gw.url}/v2/models/ocr-det/infer`, {
      method: 'POST',
      headers: { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.length) },
      body: Buffer.concat([head, payload]),
    })
    const text = await res.body.text()
    return { status: res.statusCode, text }
  }
  const huge = await send(HUGE, Buffer.alloc(4))
  t.equal(huge.status, 400)
  t.equal((JSON.parse(huge.text) as { code: string }).code, 'shape_mismatch')
  // Backed by all of its data and within the body limit, a long strip past the limit is still refused.
  const strip = [1, 3, 32, 1952]
  const stripRes = await send(strip, Buffer.from(new Float32Array(3 * 32 * 1952).buffer))
  t.equal(stripRes.status, 400, 'a 32 x 1952 strip with all its data')
  t.equal((JSON.parse(stripRes.text) as { code: string }).code, 'shape_mismatch')
  const ok = await send([1, 3, 64, 64], Buffer.from(new Float32Array(3 * 64 * 64).buffer))
  t.equal(ok.status, 200, 'a 64 x 64 image runs on the model')
})
