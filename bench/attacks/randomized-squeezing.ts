// `node bench/attacks/randomized-squeezing.ts [LO HI N]`: would randomised squeezing stop the
// adaptive attack? An offline measurement (no gateway; models/mnist/cnn.ts, the weights
// model.onnx holds) of the bundled squeezers with the 1-bit cutoff drawn per request from
// U[LO, HI] instead of 0.5 (default 0.3 0.7): the threshold at 4% on the calibration split,
// the false-positive rate on the held-out split, and BPDA (bpda.ts; each step sees a fresh
// draw, so its gradients average over the randomness) at L2 3.0 on N held-out digits (default
// 40). Success is the chance that one submission passes a fresh draw, and that one of 10
// does: a 422 costs the attacker only that query, so it can resubmit. Seeded.

import { argmax, forward, loadWeights } from '../../models/mnist/cnn.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { mulberry32 } from '../../models/mnist/train.ts'
import { thresholdForRate } from '../../src/screening/calibration.ts'
import { squeezingScore } from '../../src/screening/feature-squeezing.ts'
import { median } from '../../src/screening/squeezers.ts'
import { bpda, softBitDepthBackward } from './bpda.ts'

const [lo, hi, n] = [Number(process.argv[2] ?? 0.3), Number(process.argv[3] ?? 0.7), Number(process.argv[4] ?? 40)]
const weights = loadWeights()
const { calibration, test } = loadMnist()
const random = mulberry32(5)
const median2 = median(2, 2, { channels: 1, height: 28, width: 28, lo: 0, hi: 1 })
/** The bundled pair, bit-depth-1 and bit-depth-1+median-2x2, with a fresh cutoff per call. */
const squeeze = (x: Float32Array) => {
  const cut = lo + (hi - lo) * random()
  const bits = x.map((v) => (v >= cut ? 1 : 0))
  return [bits, median2(bits)]
}
const score = (x: Float32Array) => squeezingScore(forward(weights, x).probs, squeeze(x).map((v) => forward(weights, v).probs))
const threshold = thresholdForRate(calibration.images.map(score), 0.04).threshold
const fp = test.images.filter((x) => score(x) > threshold).length / test.images.length
let once = 0
let tenTimes = 0
let tried = 0
for (let k = 0; tried < n && k < test.images.length; k++) {
  const i = (k * 37) % test.images.length
  const x = test.images[i]!
  const y = test.labels[i]!
  if (argmax(forward(weights, x).logits) !== y) continue
  tried++
  const r = bpda(weights, x, y, { norm: 'l2', eps: 3, steps: 100, alpha: 0.1, squeeze, threshold, slack: 0.8, c: 1, kappa: 2, backward: softBitDepthBackward(0.2) })
  if (!r.image) continue
  let pass = 0
  for (let d = 0; d < 50; d++) if (score(r.image) <= threshold) pass++
  once += pass / 50
  tenTimes += 1 - (1 - pass / 50) ** 10
}
console.log(`1-bit cutoff U[${lo}, ${hi}]: threshold ${threshold.toFixed(4)} (4% of the calibration split), held-out false positives ${(100 * fp).toFixed(1)}%`)
console.log(`BPDA at L2 3.0 on ${tried} held-out digits: one submission passes ${((100 * once) / tried).toFixed(0)}%, one of 10 passes ${((100 * tenTimes) / tried).toFixed(0)}%`)
