// cnn.ts is what white-box attacks differentiate; its input gradient must be the true
// gradient of the served function, and training must be reproducible.
import t, { type Test } from 'tap'
import { loadMnist } from '../../models/mnist/data.ts'
import {
  argmax, crossEntropy, forward, inputGradient, loadWeights, lossInputGradient, parseParams, probGradToLogitGrad,
  serializeParams, type Activations, type Params,
} from '../../models/mnist/cnn.ts'
import { train } from '../../models/mnist/train.ts'

const params = loadWeights()
const { train: trainSplit, test } = loadMnist()

// The network is piecewise linear (ReLU, max pool), so a finite difference only estimates the
// gradient when the nudge leaves every ReLU on the same side and every pool on the same
// argmax. Background pixels sit on exact ties (equal pooled values), where the derivative is
// one-sided; those pixels are skipped rather than compared.
const pattern = (a: Activations): string =>
  [a.a1, a.a2, a.h].map((v) => Array.from(v, (x) => (x > 0 ? 1 : 0)).join('')).join('|') + [...a.arg1, ...a.arg2].join(',')

function checkGradient(
  t: Test, p: Params, x: Float32Array, objective: (a: Activations) => number, grad: Float32Array, what: string,
): void {
  const eps = 1e-3
  const base = pattern(forward(p, x))
  // Pixels with the largest gradient (the ones FGSM moves first), until 16 are comparable.
  const pixels = [...grad.keys()].sort((a, b) => Math.abs(grad[b]!) - Math.abs(grad[a]!)).slice(0, 100)
  let checked = 0
  for (const i of pixels) {
    if (checked === 16) break
    const plus = Float32Array.from(x)
    const minus = Float32Array.from(x)
    plus[i]! += eps
    minus[i]! -= eps
    const ap = forward(p, plus)
    const am = forward(p, minus)
    if (pattern(ap) !== base || pattern(am) !== base) continue
    const fd = (objective(ap) - objective(am)) / (plus[i]! - minus[i]!)
    const err = Math.abs(fd - grad[i]!) / Math.max(Math.abs(grad[i]!), 1e-2)
    if (err > 1e-2) t.fail(`${what}: pixel ${i}: analytic ${grad[i]}, finite difference ${fd}`)
    checked++
  }
  t.equal(checked, 16, `${what}: 16 of the top-100-gradient pixels match a central difference`)
}

t.test('input gradient of cross-entropy matches finite differences', async (t) => {
  for (const idx of [0, 700, 1400, 2100, 2800]) {
    const x = test.images[idx]!
    // A wrong label gives a large loss and large gradients (the case attacks care about), the
    // true label a small one.
    for (const label of [test.labels[idx]!, (test.labels[idx]! + 3) % 10]) {
      const g = lossInputGradient(params, x, label)
      t.equal(g.loss, crossEntropy(forward(params, x).probs, label), 'loss is the forward loss')
      checkGradient(t, params, x, (a) => crossEntropy(a.probs, label), g.grad, `digit ${idx}, CE label ${label}`)
    }
  }
})

t.test('input gradient of logit and probability objectives', async (t) => {
  const x = test.images[1234]!
  const y = test.labels[1234]!
  const other = (y + 5) % 10
  // Carlini-Wagner style margin on the logits: z[other] - z[y].
  const margin = inputGradient(params, x, (z) => {
    const d = new Float32Array(z.length)
    d[other] = 1
    d[y] = -1
    return d
  })
  checkGradient(t, params, x, (a) => a.logits[other]! - a.logits[y]!, margin.grad, 'logit margin')
  // A probability objective through the softmax Jacobian: p[other].
  const prob = inputGradient(params, x, (_z, p) => {
    const dp = new Float32Array(p.length)
    dp[other] = 1
    return probGradToLogitGrad(p, dp)
  })
  checkGradient(t, params, x, (a) => a.probs[other]! * 1e4, prob.grad.map((v) => v * 1e4), 'probability p[other] (x1e4)')
})

t.test('trained weights load and classify', async (t) => {
  t.equal(serializeParams(parseParams(serializeParams(params))), serializeParams(params), 'weights.json round-trips bit-exactly')
  let ok = 0
  for (let i = 0; i < test.images.length; i += 10) if (argmax(forward(params, test.images[i]!).probs) === test.labels[i]) ok++
  t.ok(ok / Math.ceil(test.images.length / 10) >= 0.95, `every 10th test digit: ${ok} correct`)
})

t.test('training is reproducible from the seed', async (t) => {
  const small = { images: trainSplit.images.filter((_, i) => i % 30 === 0), labels: trainSplit.labels.filter((_, i) => i % 30 === 0) }
  const a = serializeParams(train(small, { seed: 7, epochs: 1 }))
  const b = serializeParams(train(small, { seed: 7, epochs: 1 }))
  const c = serializeParams(train(small, { seed: 8, epochs: 1 }))
  t.equal(a, b, 'same seed -> same weights')
  t.not(a, c, 'another seed -> other weights')
})
