// A request's items together with their squeezed variants, as one batch for the model
// (screen-variants builds it, the inference link runs it, splitting it over the model's
// maxBatchSize if it must; screen-output reads the scores and keeps the originals' rows).

import { allocate, sliceBatch, type Tensor } from '../inference/tensor.ts'
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

/**
 * The request's items and, after them, each item's variants (item 0's first, then item 1's,
 * ...), as one batch. Inputs other than the screened one are repeated for each variant of an
 * item. The batch asks for every output: the screened one is needed whatever the caller asked.
 */
export function withVariants(request: InferenceRequest, io: ScreenedIO, variants: readonly (readonly Float32Array[])[]): InferenceRequest {
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
  return { parameters: {}, inputs, outputs: [], binaryOutputs: false, batchSize: total }
}

/** Class probabilities of the originals and of each original's variants, from a batch withVariants made. */
export function scoresOf(result: InferenceResult, io: ScreenedIO, originals: number, perItem: number): Pick<ModelRun, 'probabilities' | 'variantProbabilities'> {
  const total = originals * (1 + perItem)
  const scores = result.outputs.find((t) => t.name === io.outputName)
  if (!scores) throw new Error(`the model returned no output "${io.outputName}"`)
  const classes = scores.data.length / total
  const row = (k: number) => {
    const r = Float32Array.from(scores.data.subarray(k * classes, (k + 1) * classes) as Float32Array)
    return io.outputKind === 'logits' ? softmaxInPlace(r) : r
  }
  return {
    probabilities: Array.from({ length: originals }, (_, i) => row(i)),
    variantProbabilities: Array.from({ length: originals }, (_, i) => Array.from({ length: perItem }, (_, j) => row(originals + i * perItem + j))),
  }
}

/** The originals' rows of each output, limited to the outputs the caller asked for (all when `wanted` is empty). */
export function originalsOnly(result: InferenceResult, originals: number, wanted: readonly { name: string }[]): InferenceResult {
  const names = wanted.length > 0 ? new Set(wanted.map((o) => o.name)) : null
  const outputs = result.outputs.filter((t) => !names || names.has(t.name))
  return { ...result, outputs: sliceBatch(outputs, 0, originals) }
}

/** Runs the items with their variants and reads the scores: for calibration, outside the request path. */
export async function runWithVariants(
  runner: InferenceRunner,
  target: { model: string; version: string | null },
  request: InferenceRequest,
  io: ScreenedIO,
  variants: readonly (readonly Float32Array[])[],
  deadlineMs: number,
): Promise<ModelRun> {
  const n = request.batchSize
  const result = await runner.infer(target.model, target.version, withVariants(request, io, variants), deadlineMs)
  return {
    outputs: originalsOnly(result, n, []).outputs,
    modelName: result.modelName,
    modelVersion: result.modelVersion,
    ...scoresOf(result, io, n, variants[0]?.length ?? 0),
  }
}

/**
 * Zeroes the rows of `items` in every batch-first tensor of `batch` rows (in place): a
 * withheld item's answer. Tensors whose first dimension is not the batch are left alone.
 */
export function withholdRows(tensors: readonly Tensor[], items: Iterable<number>, batch: number): void {
  const rows = [...items]
  for (const t of tensors) {
    if (t.shape[0] !== batch || batch === 0) continue
    const per = t.data.length / batch
    const zero = t.data instanceof BigInt64Array || t.data instanceof BigUint64Array ? 0n : 0
    for (const i of rows) (t.data.fill as (v: number | bigint, start: number, end: number) => unknown)(zero, i * per, (i + 1) * per)
  }
}
