// Request bodies for the bench and for tests that load a gateway: ocr-cls images as JSON or
// binary tensors, in the load generator's request shape.

import { HEADER_LENGTH } from '../src/oip/codec.ts'
import type { LoadRequest } from '../src/loadtest/client.ts'

/** One request of the load generator (src/loadtest/, which bench/load.ts and `bulwark bench` share). */
export type { LoadRequest }

/** A deterministic pseudo-image in the ocr-cls input range [-1, 1]. */
export function ocrImage(batch: number, seed = 1): Float32Array {
  const data = new Float32Array(batch * 3 * 48 * 192)
  let s = seed >>> 0
  for (let i = 0; i < data.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    data[i] = (s / 2 ** 32) * 2 - 1
  }
  return data
}

export function jsonRequest(model: string, name: string, shape: number[], data: Float32Array, headers: Record<string, string> = {}): LoadRequest {
  const body = JSON.stringify({ inputs: [{ name, datatype: 'FP32', shape, data: Array.from(data) }] })
  return { method: 'POST', path: `/v2/models/${model}/infer`, headers: { 'content-type': 'application/json', ...headers }, body, items: shape[0]! }
}

/** Binary tensor request (OIP binary data extension), asking for binary outputs too. */
export function binaryRequest(model: string, name: string, shape: number[], data: Float32Array, headers: Record<string, string> = {}): LoadRequest {
  const head = Buffer.from(JSON.stringify({
    inputs: [{ name, datatype: 'FP32', shape, parameters: { binary_data_size: data.byteLength } }],
    parameters: { binary_data_output: true },
  }))
  const body = Buffer.concat([head, Buffer.from(data.buffer, data.byteOffset, data.byteLength)])
  return {
    method: 'POST',
    path: `/v2/models/${model}/infer`,
    headers: { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.length), ...headers },
    body,
    items: shape[0]!,
  }
}
