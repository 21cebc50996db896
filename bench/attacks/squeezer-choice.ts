// The squeezers chosen honestly: on the calibration split only. For each candidate set, the
// threshold is the (1 - target) quantile of the benign calibration digits' scores, and
// detection is measured on FGSM and PGD examples made from calibration digits (those that
// fool the model). The set with the best worst-case detection wins. The evaluation then
// reports every figure on the disjoint held-out split, where nothing was tuned.
//
// Scores are computed here with models/mnist/cnn.ts (the weights model.onnx holds), as
// `bulwark calibrate` computes them with onnxruntime; the two agree to float precision.

import { argmax, forward, type Params } from '../../models/mnist/cnn.ts'
import { thresholdForRate } from '../../src/screening/calibration.ts'
import { squeezingScore } from '../../src/screening/feature-squeezing.ts'
import { parseSqueezer, type ItemLayout } from '../../src/screening/squeezers.ts'
import { fgsm, pgd } from './white-box.ts'

export const CANDIDATES: readonly (readonly string[])[] = [
  ['median-2x2'],
  ['bit-depth-1'],
  ['bit-depth-1', 'median-2x2'],
  ['bit-depth-1', 'bit-depth-1+median-2x2'],
]

export interface Candidate {
  squeezers: readonly string[]
  threshold: number
  /** Detection per attack on the calibration split's adversarial examples. */
  detection: Record<string, number>
  worst: number
}

export function chooseSqueezers(p: Params, images: readonly Float32Array[], labels: readonly number[], o: { targetFalsePositiveRate: number; attackDigits: number; pgdDigits: number; random: () => number }): { chosen: Candidate; candidates: Candidate[] } {
  const layout: ItemLayout = { channels: 1, height: 28, width: 28, lo: 0, hi: 1 }
  const names = [...new Set(CANDIDATES.flat())]
  const squeezers = new Map(names.map((n) => [n, parseSqueezer(n, layout)]))
  // Each image's probabilities, and those of each distinct squeezed variant, computed once.
  const view = (x: Float32Array) => ({ probs: forward(p, x).probs, variants: new Map(names.map((n) => [n, forward(p, squeezers.get(n)!(x)).probs])) })
  const benign = images.map(view)
  const correct = images.map((_, i) => i).filter((i) => argmax(benign[i]!.probs) === labels[i])
  const attackIdx = correct.slice(0, o.attackDigits)
  const adversarial: Record<string, ReturnType<typeof view>[]> = {}
  const keep = (name: string, xs: Float32Array[], idx: number[]) => {
    adversarial[name] = xs.map(view).filter((v, k) => argmax(v.probs) !== labels[idx[k]!])
  }
  const f = attackIdx.map((i) => fgsm(p, images[i]!, labels[i]!, [0.1, 0.2, 0.3]))
  for (const [k, eps] of [0.1, 0.2, 0.3].entries()) keep(`FGSM ${eps}`, f.map((e) => e[k]!), attackIdx)
  const pgdIdx = attackIdx.slice(0, o.pgdDigits)
  keep('PGD 0.3', pgdIdx.map((i) => pgd(p, images[i]!, labels[i]!, { eps: 0.3, steps: 40, alpha: 0.01, random: o.random })), pgdIdx)
  const candidates = CANDIDATES.map((set) => {
    const score = (v: ReturnType<typeof view>) => squeezingScore(v.probs, set.map((n) => v.variants.get(n)!))
    const threshold = thresholdForRate(benign.map(score), o.targetFalsePositiveRate).threshold
    const detection = Object.fromEntries(Object.entries(adversarial).map(([name, vs]) => [name, vs.filter((v) => score(v) > threshold).length / Math.max(1, vs.length)]))
    return { squeezers: set, threshold, detection, worst: Math.min(...Object.values(detection)) }
  })
  const chosen = candidates.reduce((a, b) => (b.worst > a.worst ? b : a))
  return { chosen, candidates }
}
