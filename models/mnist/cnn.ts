// A small MNIST CNN in plain TypeScript (Float32Array math), one image at a time:
//
//   input [1,28,28]
//   conv 3x3, 1->8,  no padding, stride 1 -> [8,26,26]  + ReLU
//   maxpool 2x2, stride 2                 -> [8,13,13]
//   conv 3x3, 8->16, no padding, stride 1 -> [16,11,11] + ReLU
//   maxpool 2x2, stride 2 (floor: the last row/column is dropped) -> [16,5,5]
//   flatten (channel-major, as ONNX Flatten on NCHW) -> [400]
//   dense 400->64 + ReLU -> dense 64->10 (logits) -> softmax
//
// Besides the forward pass it gives the weight gradients (for train.ts) and the gradient of an
// objective with respect to the INPUT image, so white-box attacks (FGSM, PGD, C&W) can run
// against exactly the weights that export-onnx.ts puts in model.onnx. Dense weights are stored
// [out, in], which is ONNX Gemm's B with transB=1.

import { readFileSync, writeFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

export const WEIGHTS_PATH = fileURLToPath(new URL('./weights.json', import.meta.url))

export const SHAPES = {
  conv1W: [8, 1, 3, 3],
  conv1B: [8],
  conv2W: [16, 8, 3, 3],
  conv2B: [16],
  fc1W: [64, 400],
  fc1B: [64],
  fc2W: [10, 64],
  fc2B: [10],
} as const

export type ParamName = keyof typeof SHAPES
export type Params = Record<ParamName, Float32Array>
export const PARAM_NAMES = Object.keys(SHAPES) as ParamName[]

const size = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1)

export function zeroParams(): Params {
  const p = {} as Params
  for (const name of PARAM_NAMES) p[name] = new Float32Array(size(SHAPES[name]))
  return p
}

/** He-normal weights, zero biases; `normal` is a seeded standard-normal source. */
export function initParams(normal: () => number): Params {
  const p = zeroParams()
  for (const name of ['conv1W', 'conv2W', 'fc1W', 'fc2W'] as const) {
    const shape = SHAPES[name]
    const fanIn = size(shape) / shape[0]
    const std = Math.sqrt(2 / fanIn)
    const w = p[name]
    for (let i = 0; i < w.length; i++) w[i] = normal() * std
  }
  return p
}

// ---- layers -------------------------------------------------------------------------------

/** Valid 3x3 convolution, stride 1: in [C,H,W] -> out [O,H-2,W-2]. */
function conv3x3(input: Float32Array, c: number, h: number, w: number, weight: Float32Array, bias: Float32Array, o: number): Float32Array {
  const oh = h - 2
  const ow = w - 2
  const out = new Float32Array(o * oh * ow)
  for (let oc = 0; oc < o; oc++) {
    const base = oc * oh * ow
    out.fill(bias[oc]!, base, base + oh * ow)
    for (let ic = 0; ic < c; ic++) {
      for (let ky = 0; ky < 3; ky++) {
        for (let kx = 0; kx < 3; kx++) {
          const k = weight[((oc * c + ic) * 3 + ky) * 3 + kx]!
          for (let y = 0; y < oh; y++) {
            const src = (ic * h + y + ky) * w + kx
            const dst = base + y * ow
            for (let x = 0; x < ow; x++) out[dst + x]! += k * input[src + x]!
          }
        }
      }
    }
  }
  return out
}

/** Backward of conv3x3: adds weight/bias gradients (if given) and returns dInput (if wanted). */
function conv3x3Backward(
  input: Float32Array, c: number, h: number, w: number, weight: Float32Array, o: number,
  dOut: Float32Array, dWeight: Float32Array | null, dBias: Float32Array | null, wantInput: boolean,
): Float32Array | null {
  const oh = h - 2
  const ow = w - 2
  const dIn = wantInput ? new Float32Array(c * h * w) : null
  for (let oc = 0; oc < o; oc++) {
    const base = oc * oh * ow
    if (dBias) {
      let s = 0
      for (let i = 0; i < oh * ow; i++) s += dOut[base + i]!
      dBias[oc]! += s
    }
    for (let ic = 0; ic < c; ic++) {
      for (let ky = 0; ky < 3; ky++) {
        for (let kx = 0; kx < 3; kx++) {
          const wi = ((oc * c + ic) * 3 + ky) * 3 + kx
          const k = weight[wi]!
          let s = 0
          for (let y = 0; y < oh; y++) {
            const src = (ic * h + y + ky) * w + kx
            const dst = base + y * ow
            for (let x = 0; x < ow; x++) {
              const g = dOut[dst + x]!
              s += g * input[src + x]!
              if (dIn) dIn[src + x]! += g * k
            }
          }
          if (dWeight) dWeight[wi]! += s
        }
      }
    }
  }
  return dIn
}

function reluInPlace(a: Float32Array): void {
  for (let i = 0; i < a.length; i++) if (!(a[i]! > 0)) a[i] = 0
}

/** 2x2 max pool, stride 2, floor mode; also returns the argmax (first maximum) per output. */
function maxPool2(input: Float32Array, c: number, h: number, w: number): { out: Float32Array; arg: Int32Array } {
  const oh = h >> 1
  const ow = w >> 1
  const out = new Float32Array(c * oh * ow)
  const arg = new Int32Array(c * oh * ow)
  for (let ch = 0; ch < c; ch++) {
    for (let y = 0; y < oh; y++) {
      for (let x = 0; x < ow; x++) {
        const i0 = (ch * h + 2 * y) * w + 2 * x
        let best = i0
        if (input[i0 + 1]! > input[best]!) best = i0 + 1
        if (input[i0 + w]! > input[best]!) best = i0 + w
        if (input[i0 + w + 1]! > input[best]!) best = i0 + w + 1
        const o = (ch * oh + y) * ow + x
        out[o] = input[best]!
        arg[o] = best
      }
    }
  }
  return { out, arg }
}

/** y = W x + b with W [out, in]. */
function dense(x: Float32Array, weight: Float32Array, bias: Float32Array, outN: number): Float32Array {
  const inN = x.length
  const y = new Float32Array(outN)
  for (let o = 0; o < outN; o++) {
    let s = bias[o]!
    const row = o * inN
    for (let i = 0; i < inN; i++) s += weight[row + i]! * x[i]!
    y[o] = s
  }
  return y
}

function denseBackward(x: Float32Array, weight: Float32Array, dy: Float32Array, dWeight: Float32Array | null, dBias: Float32Array | null): Float32Array {
  const inN = x.length
  const dx = new Float32Array(inN)
  for (let o = 0; o < dy.length; o++) {
    const g = dy[o]!
    if (g === 0) continue
    if (dBias) dBias[o]! += g
    const row = o * inN
    for (let i = 0; i < inN; i++) {
      dx[i]! += g * weight[row + i]!
      if (dWeight) dWeight[row + i]! += g * x[i]!
    }
  }
  return dx
}

export function softmax(logits: Float32Array): Float32Array {
  let max = -Infinity
  for (const v of logits) max = Math.max(max, v)
  const out = new Float32Array(logits.length)
  let sum = 0
  for (let i = 0; i < logits.length; i++) sum += out[i] = Math.exp(logits[i]! - max)
  for (let i = 0; i < out.length; i++) out[i]! /= sum
  return out
}

// ---- network ------------------------------------------------------------------------------

/** Everything the backward pass needs from one forward pass. */
export interface Activations {
  input: Float32Array
  a1: Float32Array // [8,26,26] after ReLU
  p1: Float32Array // [8,13,13]
  arg1: Int32Array
  a2: Float32Array // [16,11,11] after ReLU
  p2: Float32Array // [16,5,5] = flattened [400]
  arg2: Int32Array
  h: Float32Array // [64] after ReLU
  logits: Float32Array // [10]
  probs: Float32Array // [10]
}

/** Forward pass of one 28x28 image (784 floats, row-major). */
export function forward(p: Params, input: Float32Array): Activations {
  if (input.length !== 784) throw new Error(`forward: expected 784 pixels, got ${input.length}`)
  const a1 = conv3x3(input, 1, 28, 28, p.conv1W, p.conv1B, 8)
  reluInPlace(a1)
  const { out: p1, arg: arg1 } = maxPool2(a1, 8, 26, 26)
  const a2 = conv3x3(p1, 8, 13, 13, p.conv2W, p.conv2B, 16)
  reluInPlace(a2)
  const { out: p2, arg: arg2 } = maxPool2(a2, 16, 11, 11)
  const h = dense(p2, p.fc1W, p.fc1B, 64)
  reluInPlace(h)
  const logits = dense(h, p.fc2W, p.fc2B, 10)
  return { input, a1, p1, arg1, a2, p2, arg2, h, logits, probs: softmax(logits) }
}

/** Route gradients through a ReLU (zero where the activation was clipped). */
function reluBackward(act: Float32Array, d: Float32Array): void {
  for (let i = 0; i < d.length; i++) if (!(act[i]! > 0)) d[i] = 0
}

function poolBackward(arg: Int32Array, dOut: Float32Array, inLength: number): Float32Array {
  const dIn = new Float32Array(inLength)
  for (let i = 0; i < dOut.length; i++) dIn[arg[i]!]! += dOut[i]!
  return dIn
}

/**
 * Backward pass from dObjective/dLogits. Adds weight gradients into `grads` when given, and
 * returns dObjective/dInput (784 floats) when `wantInput` is true (else null).
 */
export function backward(p: Params, act: Activations, dLogits: Float32Array, grads: Params | null, wantInput = true): Float32Array | null {
  const dh = denseBackward(act.h, p.fc2W, dLogits, grads?.fc2W ?? null, grads?.fc2B ?? null)
  reluBackward(act.h, dh)
  const dp2 = denseBackward(act.p2, p.fc1W, dh, grads?.fc1W ?? null, grads?.fc1B ?? null)
  const da2 = poolBackward(act.arg2, dp2, act.a2.length)
  reluBackward(act.a2, da2)
  const dp1 = conv3x3Backward(act.p1, 8, 13, 13, p.conv2W, 16, da2, grads?.conv2W ?? null, grads?.conv2B ?? null, true)!
  const da1 = poolBackward(act.arg1, dp1, act.a1.length)
  reluBackward(act.a1, da1)
  return conv3x3Backward(act.input, 1, 28, 28, p.conv1W, 8, da1, grads?.conv1W ?? null, grads?.conv1B ?? null, wantInput)
}

/** Cross-entropy of the softmax for `label`: -log p[label]. */
export function crossEntropy(probs: Float32Array, label: number): number {
  return -Math.log(Math.max(probs[label]!, 1e-30))
}

/** d(cross-entropy)/dLogits = softmax - onehot(label). */
export function crossEntropyLogitGrad(probs: Float32Array, label: number): Float32Array {
  const d = Float32Array.from(probs)
  d[label]! -= 1
  return d
}

/**
 * Converts dObjective/dProbabilities into dObjective/dLogits through the softmax Jacobian:
 * dz_i = p_i (dp_i - sum_j p_j dp_j). Lets attacks target probabilities as well as logits.
 */
export function probGradToLogitGrad(probs: Float32Array, dProbs: Float32Array): Float32Array {
  let dot = 0
  for (let j = 0; j < probs.length; j++) dot += probs[j]! * dProbs[j]!
  const d = new Float32Array(probs.length)
  for (let i = 0; i < probs.length; i++) d[i] = probs[i]! * (dProbs[i]! - dot)
  return d
}

export interface InputGradient {
  logits: Float32Array
  probs: Float32Array
  /** dObjective/dInput, 784 floats, same layout as the image. */
  grad: Float32Array
}

/**
 * Gradient w.r.t. the input image of an arbitrary objective of the logits/probabilities:
 * `dLogits` returns dObjective/dLogits (use probGradToLogitGrad for probability objectives).
 */
export function inputGradient(p: Params, input: Float32Array, dLogits: (logits: Float32Array, probs: Float32Array) => Float32Array): InputGradient {
  const act = forward(p, input)
  const grad = backward(p, act, dLogits(act.logits, act.probs), null, true)!
  return { logits: act.logits, probs: act.probs, grad }
}

/** Cross-entropy loss for `label` and its gradient w.r.t. the input (what FGSM/PGD ascend). */
export function lossInputGradient(p: Params, input: Float32Array, label: number): InputGradient & { loss: number } {
  const r = inputGradient(p, input, (_z, probs) => crossEntropyLogitGrad(probs, label))
  return { ...r, loss: crossEntropy(r.probs, label) }
}

export function argmax(v: ArrayLike<number>): number {
  let best = 0
  for (let i = 1; i < v.length; i++) if (v[i]! > v[best]!) best = i
  return best
}

export function predict(p: Params, input: Float32Array): number {
  return argmax(forward(p, input).logits)
}

export function accuracy(p: Params, images: Float32Array[], labels: number[]): number {
  let ok = 0
  for (let i = 0; i < images.length; i++) if (predict(p, images[i]!) === labels[i]) ok++
  return ok / images.length
}

// ---- weights on disk ----------------------------------------------------------------------
// weights.json: each tensor as base64 of its float32 little-endian bytes, so the values are
// bit-exact (decimal JSON numbers would round-trip too, but at three times the size).

interface WeightsFile {
  format: 'bulwark-mnist-cnn-v1'
  tensors: Record<string, { shape: number[]; float32le: string }>
}

function toBase64(a: Float32Array): string {
  const bytes = new Uint8Array(a.length * 4)
  const view = new DataView(bytes.buffer)
  for (let i = 0; i < a.length; i++) view.setFloat32(i * 4, a[i]!, true)
  return Buffer.from(bytes).toString('base64')
}

function fromBase64(s: string): Float32Array {
  const bytes = Buffer.from(s, 'base64')
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const out = new Float32Array(bytes.byteLength / 4)
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(i * 4, true)
  return out
}

export function serializeParams(p: Params): string {
  const file: WeightsFile = { format: 'bulwark-mnist-cnn-v1', tensors: {} }
  for (const name of PARAM_NAMES) file.tensors[name] = { shape: [...SHAPES[name]], float32le: toBase64(p[name]) }
  return JSON.stringify(file, null, 1) + '\n'
}

export function parseParams(text: string): Params {
  const file = JSON.parse(text) as WeightsFile
  if (file.format !== 'bulwark-mnist-cnn-v1') throw new Error(`weights: unknown format ${String(file.format)}`)
  const p = {} as Params
  for (const name of PARAM_NAMES) {
    const t = file.tensors[name]
    if (!t) throw new Error(`weights: missing tensor ${name}`)
    const data = fromBase64(t.float32le)
    if (t.shape.join(',') !== SHAPES[name].join(',') || data.length !== size(SHAPES[name])) {
      throw new Error(`weights: ${name} has shape [${t.shape}] / ${data.length} values, expected [${SHAPES[name]}]`)
    }
    p[name] = data
  }
  return p
}

export function saveWeights(p: Params, file = WEIGHTS_PATH): void {
  writeFileSync(file, serializeParams(p))
}

/** The trained weights (models/mnist/weights.json, written by `npm run models:build`). */
export function loadWeights(file = WEIGHTS_PATH): Params {
  return parseParams(readFileSync(file, 'utf8'))
}
