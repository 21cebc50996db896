// models/mnist/model.onnx is what the gateway serves; it must run in onnxruntime-node, be
// accurate on the held-out digits, and compute the same function as cnn.ts.
import { readFileSync } from 'node:fs'
import t from 'tap'
import * as ort from 'onnxruntime-node'
import { loadWeights } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { buildOnnx, checkOnnx, INPUT_NAME, ONNX_PATH, OUTPUT_NAME } from '../../models/mnist/export-onnx.ts'

const bytes = new Uint8Array(readFileSync(ONNX_PATH))
const params = loadWeights()
const { test } = loadMnist()

t.test('declares input [batch,1,28,28] and output probabilities [batch,10]', async (t) => {
  const session = await ort.InferenceSession.create(bytes)
  t.teardown(() => session.release())
  t.same(session.inputNames, [INPUT_NAME])
  t.same(session.outputNames, [OUTPUT_NAME])
  t.match(session.inputMetadata[0], { type: 'float32', shape: ['batch', 1, 28, 28] })
  t.match(session.outputMetadata[0], { type: 'float32', shape: ['batch', 10] })
  // Any batch size works and rows are probability distributions.
  const x = new Float32Array(3 * 784).map((_, i) => (i % 7) / 7)
  const out = (await session.run({ [INPUT_NAME]: new ort.Tensor('float32', x, [3, 1, 28, 28]) }))[OUTPUT_NAME]!
  t.same(out.dims, [3, 10])
  const p = out.data as Float32Array
  for (let r = 0; r < 3; r++) t.ok(Math.abs(p.subarray(r * 10, r * 10 + 10).reduce((a, b) => a + b, 0) - 1) < 1e-5, `row ${r} sums to 1`)
})

t.test('held-out accuracy and agreement with the TypeScript forward pass', async (t) => {
  const check = await checkOnnx(bytes, params, test)
  t.equal(check.digits, test.images.length, `all ${check.digits} test digits`)
  t.ok(check.ortAccuracy >= 0.95, `ORT accuracy ${(100 * check.ortAccuracy).toFixed(2)}% >= 95%`)
  t.equal(check.ortAccuracy, check.tsAccuracy, 'ORT and TS accuracy are equal')
  t.ok(check.maxAbsDiff < 1e-4, `max |ORT - TS| = ${check.maxAbsDiff.toExponential(2)} < 1e-4`)
})

t.test('model.onnx is exactly the export of weights.json', async (t) => {
  t.ok(Buffer.from(buildOnnx(params)).equals(bytes), 'rebuilding from weights.json gives the same bytes')
})
