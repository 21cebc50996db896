// Running a request's items together with their squeezed variants, as one batch on the
// model (the batcher may exceed the model's maxBatchSize for this one submission: with two
// squeezers a full batch of 64 runs as 192 items, which the ONNX session's dynamic batch
// dimension accepts). The originals' outputs become the request's result, so the model
// does not run a second time in model-inference.

import { allocate, type Tensor } from '../inference/tensor.ts'
import type { InferenceRequest, InferenceResult } from '../types.ts'

export interface InferenceRunner {
  infer(model: string, version: string | null, request: InferenceRequest, deadlineMs: number): Promise<InferenceResult>
}

export interface ScreenedIO {
  inputName: string
  outputName: string
  outputKind: 'probabilities' | 'logits'
}

export interface ModelRun {
  /** All outputs of the model for the original items. */
  outputs: Tensor[]
  modelName: string
  modelVersion: string
  /** Class probabilities per original item. */
  probabilities: Float32Array[]
  /** Per original item, the probabilities of each variant. */
  variantProbabilities: Float32Array[][]
}

/** The rows of a batch-first FP32 tensor, as views (no copy). */
export function rowsOf(t: Tensor): Float32Array[] {
  const n = t.shape[0]!
  const per = t.data.length / n
  const data = t.data as Float32Array
  return Array.from({ length: n }, (_, i) => data.subarray(i * per, (i + 1) * per))
}

export function softmaxInPlace(row: Float32Array): Float32Array {
  let max = -Infinity
  for (const v of row) max = Math.max(max, v)
  let sum = 0
  for (let i = 0; i < row.length; i++) sum += row[i] = Math.exp(row[i]! - max)
  for (let i = 0; i < row.length; i++) row[i]! /= sum
  return row
}

function sliceRows(t: Tensor, start: number, count: number): Tensor {
  const total = t.shape[0]!
  const per = t.data.length / total
  return { name: t.name, datatype: t.datatype, shape: [count, ...t.shape.slice(1)], data: t.data.subarray(start * per, (start + count) * per) }
}

/**
 * Runs the request's items and, after them, each item's variants (item 0's first, then item
 * 1's, ...). Inputs other than the screened one are repeated for each variant of an item.
 */
export async function runWithVariants(
  runner: InferenceRunner,
  target: { model: string; version: string | null },
  request: InferenceRequest,
  io: ScreenedIO,
  variants: readonly (readonly Float32Array[])[],
  deadlineMs: number,
): Promise<ModelRun> {
  const n = request.batchSize
  const perItem = variants[0]?.length ?? 0
  const total = n * (1 + perItem)
  const inputs: Tensor[] =
    perItem === 0
      ? request.inputs
      : request.inputs.map((t) => {
          const row = t.data.length / n
          const data = allocate(t.datatype, total * row)
          ;(data as Float32Array).set(t.data as Float32Array)
          let at = n * row
          for (let i = 0; i < n; i++) {
            for (let j = 0; j < perItem; j++) {
              const src = t.name === io.inputName ? variants[i]![j]! : t.data.subarray(i * row, (i + 1) * row)
              ;(data as Float32Array).set(src as Float32Array, at)
              at += row
            }
          }
          return { name: t.name, datatype: t.datatype, shape: [total, ...t.shape.slice(1)], data }
        })
  const run: InferenceRequest = { parameters: {}, inputs, outputs: [], binaryOutputs: false, batchSize: total }
  const result = await runner.infer(target.model, target.version, run, deadlineMs)
  const scores = result.outputs.find((t) => t.name === io.outputName)
  if (!scores) throw new Error(`the model returned no output "${io.outputName}"`)
  const classes = scores.data.length / total
  const row = (k: number) => {
    const r = Float32Array.from(scores.data.subarray(k * classes, (k + 1) * classes) as Float32Array)
    return io.outputKind === 'logits' ? softmaxInPlace(r) : r
  }
  return {
    outputs: result.outputs.map((t) => sliceRows(t, 0, n)),
    modelName: result.modelName,
    modelVersion: result.modelVersion,
    probabilities: Array.from({ length: n }, (_, i) => row(i)),
    variantProbabilities: Array.from({ length: n }, (_, i) => Array.from({ length: perItem }, (_, j) => row(n + i * perItem + j))),
  }
}
