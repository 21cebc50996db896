// Writes the trained CNN (cnn.ts weights) as models/mnist/model.onnx with onnx-proto, then loads
// it back in onnxruntime-node and checks it against the TypeScript forward pass, so the served
// model and the white-box gradients in cnn.ts are provably the same function.
//
// Run on its own: `npx node models/mnist/export-onnx.ts` (reads weights.json).

import { writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import onnxProto from 'onnx-proto'
import type { onnx as O } from 'onnx-proto'
import * as ort from 'onnxruntime-node'
import { forward, loadWeights, PARAM_NAMES, SHAPES, type Params } from './cnn.ts'
import { loadMnist, PIXELS, type Split } from './data.ts'

const { onnx } = onnxProto

export const ONNX_PATH = fileURLToPath(new URL('./model.onnx', import.meta.url))
export const INPUT_NAME = 'input'
export const OUTPUT_NAME = 'probabilities'
const FLOAT = onnx.TensorProto.DataType.FLOAT

function floatTensor(name: string, dims: readonly number[], values: Float32Array): O.ITensorProto {
  // raw_data is little-endian float32; copy so a big-endian host would still write LE.
  const raw = new Uint8Array(values.length * 4)
  const view = new DataView(raw.buffer)
  for (let i = 0; i < values.length; i++) view.setFloat32(i * 4, values[i]!, true)
  return { name, dims: [...dims], dataType: FLOAT, rawData: raw }
}

function valueInfo(name: string, dims: (number | string)[]): O.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: FLOAT,
        shape: { dim: dims.map((d) => (typeof d === 'string' ? { dimParam: d } : { dimValue: d })) },
      },
    },
  }
}

const ints = (name: string, values: number[]): O.IAttributeProto => ({ name, type: onnx.AttributeProto.AttributeType.INTS, ints: values })
const int = (name: string, value: number): O.IAttributeProto => ({ name, type: onnx.AttributeProto.AttributeType.INT, i: value })

function node(opType: string, input: string[], output: string, attribute: O.IAttributeProto[] = []): O.INodeProto {
  return { opType, input, output: [output], name: output, attribute }
}

/** Serialises the CNN as an opset-13 ONNX model: [batch,1,28,28] -> softmax [batch,10]. */
export function buildOnnx(p: Params): Uint8Array {
  const conv = [ints('kernel_shape', [3, 3]), ints('strides', [1, 1]), ints('pads', [0, 0, 0, 0])]
  const pool = [ints('kernel_shape', [2, 2]), ints('strides', [2, 2])]
  const nodes = [
    node('Conv', [INPUT_NAME, 'conv1W', 'conv1B'], 'conv1', conv),
    node('Relu', ['conv1'], 'relu1'),
    node('MaxPool', ['relu1'], 'pool1', pool),
    node('Conv', ['pool1', 'conv2W', 'conv2B'], 'conv2', conv),
    node('Relu', ['conv2'], 'relu2'),
    node('MaxPool', ['relu2'], 'pool2', pool),
    node('Flatten', ['pool2'], 'flat', [int('axis', 1)]),
    node('Gemm', ['flat', 'fc1W', 'fc1B'], 'fc1', [int('transB', 1)]),
    node('Relu', ['fc1'], 'relu3'),
    node('Gemm', ['relu3', 'fc2W', 'fc2B'], 'logits', [int('transB', 1)]),
    node('Softmax', ['logits'], OUTPUT_NAME, [int('axis', 1)]),
  ]
  const model: O.IModelProto = {
    irVersion: 8,
    opsetImport: [{ domain: '', version: 13 }],
    producerName: 'bulwark models/mnist/export-onnx.ts',
    producerVersion: '1',
    modelVersion: 1,
    docString: 'Small MNIST CNN bundled with Bulwark; input pixels in [0,1], output softmax probabilities.',
    graph: {
      name: 'mnist_cnn',
      node: nodes,
      initializer: PARAM_NAMES.map((name) => floatTensor(name, SHAPES[name], p[name])),
      input: [valueInfo(INPUT_NAME, ['batch', 1, 28, 28])],
      output: [valueInfo(OUTPUT_NAME, ['batch', 10])],
    },
  }
  return onnx.ModelProto.encode(onnx.ModelProto.create(model)).finish()
}

export interface OnnxCheck {
  digits: number
  maxAbsDiff: number
  tsAccuracy: number
  ortAccuracy: number
}

const argmaxAt = (a: Float32Array, off: number, n: number): number => {
  let best = 0
  for (let i = 1; i < n; i++) if (a[off + i]! > a[off + best]!) best = i
  return best
}

/** Runs the ONNX bytes in onnxruntime-node on `split` and compares with the TS forward pass. */
export async function checkOnnx(bytes: Uint8Array, p: Params, split: Split): Promise<OnnxCheck> {
  const session = await ort.InferenceSession.create(bytes)
  try {
    const n = split.images.length
    const batch = new Float32Array(n * PIXELS)
    split.images.forEach((img, i) => batch.set(img, i * PIXELS))
    const result = await session.run({ [INPUT_NAME]: new ort.Tensor('float32', batch, [n, 1, 28, 28]) })
    const out = result[OUTPUT_NAME]!.data as Float32Array
    let maxAbsDiff = 0
    let tsOk = 0
    let ortOk = 0
    for (let i = 0; i < n; i++) {
      const probs = forward(p, split.images[i]!).probs
      for (let k = 0; k < 10; k++) maxAbsDiff = Math.max(maxAbsDiff, Math.abs(probs[k]! - out[i * 10 + k]!))
      if (argmaxAt(probs, 0, 10) === split.labels[i]) tsOk++
      if (argmaxAt(out, i * 10, 10) === split.labels[i]) ortOk++
    }
    return { digits: n, maxAbsDiff, tsAccuracy: tsOk / n, ortAccuracy: ortOk / n }
  } finally {
    await session.release()
  }
}

/** Builds, writes and checks model.onnx; throws if ORT and TS disagree. */
export async function exportOnnx(p: Params, test: Split, file = ONNX_PATH): Promise<OnnxCheck> {
  const bytes = buildOnnx(p)
  writeFileSync(file, bytes)
  const check = await checkOnnx(bytes, p, test)
  if (!(check.maxAbsDiff < 1e-4)) throw new Error(`model.onnx: ORT and TS probabilities differ by ${check.maxAbsDiff}`)
  if (check.ortAccuracy !== check.tsAccuracy) throw new Error(`model.onnx: ORT accuracy ${check.ortAccuracy} != TS accuracy ${check.tsAccuracy}`)
  return check
}

if (import.meta.main) {
  const check = await exportOnnx(loadWeights(), loadMnist().test)
  console.log(
    `model.onnx on ${check.digits} test digits: ORT accuracy ${(100 * check.ortAccuracy).toFixed(2)}%, ` +
      `TS accuracy ${(100 * check.tsAccuracy).toFixed(2)}%, max |ORT - TS| ${check.maxAbsDiff.toExponential(2)}`,
  )
}
