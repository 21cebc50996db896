// `node bench/attacks/bpda-strength.ts [STEPS TARGETS N TEMP]`: does the L-infinity 0.3 BPDA
// result (bpda.ts, as eval:screening runs it: 100 steps, the runner-up class, stand-in
// temperature 0.2) hold against a stronger run? Offline (models/mnist/cnn.ts, the weights
// model.onnx holds), on N correctly classified held-out digits (default 40): up to STEPS steps
// (default 300) aimed at each of the TARGETS most likely wrong classes in turn (default 3),
// with the 1-bit stand-in at temperature TEMP (default 0.2). Prints the digits on which some
// run found an example that the bundled squeezers at their threshold pass.

import { readFileSync } from 'node:fs'
import path from 'node:path'
import { argmax, forward, loadWeights } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { repoRoot } from '../../kit/paths.ts'
import type { CalibrationFile } from '../../src/screening/calibration.ts'
import { parseSqueezers } from '../../src/screening/squeezers.ts'
import { bpda, softBitDepthBackward } from './bpda.ts'

const [steps, targets, n, temp] = [Number(process.argv[2] ?? 300), Number(process.argv[3] ?? 3), Number(process.argv[4] ?? 40), Number(process.argv[5] ?? 0.2)]
const weights = loadWeights()
const { test } = loadMnist()
const calibration = JSON.parse(readFileSync(path.join(repoRoot, 'policies/mnist.screening.json'), 'utf8')) as CalibrationFile
const fs = calibration.featureSqueezing!
const squeeze = parseSqueezers(fs.squeezers, { channels: 1, height: 28, width: 28, lo: 0, hi: 1 })
let found = 0
let tried = 0
for (let k = 0; tried < n && k < test.images.length; k++) {
  const i = (k * 29) % test.images.length
  const x = test.images[i]!
  const y = test.labels[i]!
  const z = forward(weights, x).logits
  if (argmax(z) !== y) continue
  tried++
  const order = [...Array(10).keys()].filter((c) => c !== y).sort((a, b) => z[b]! - z[a]!).slice(0, targets)
  for (const target of order) {
    const r = bpda(weights, x, y, { norm: 'linf', eps: 0.3, steps, alpha: 0.01, squeeze, threshold: fs.threshold, slack: 0.8, c: 1, kappa: 2, backward: softBitDepthBackward(temp), target })
    if (r.image) {
      found++
      break
    }
  }
}
console.log(`BPDA L-inf 0.3, ${steps} steps, ${targets} target classes, stand-in temperature ${temp}: passes squeezing on ${found} of ${tried} held-out digits`)
