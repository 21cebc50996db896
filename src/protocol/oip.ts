// Open Inference Protocol v2 wire formats (KServe/Triton): the JSON body, and the binary
// tensor data extension where a JSON header of `Inference-Header-Content-Length` bytes is
// followed by raw little-endian tensor bytes. This module only splits and encodes bytes;
// tensor validation against the model is the input-validation stage's job.

import { BulwarkError } from '../errors.ts'
import type { InferenceRequest, InferenceResult, RawBody } from '../types.ts'
import { tensorBytes, type Tensor } from '../inference/tensor.ts'

export const HEADER_LENGTH = 'inference-header-content-length'

function parseJson(bytes: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'))
  } catch (err) {
    throw new BulwarkError('invalid_json', `${what} is not valid JSON: ${(err as Error).message}`, { cause: err })
  }
}

/**
 * Splits a request body. `headerLength` is the Inference-Header-Content-Length header,
 * when the client sent one; without it the whole body is JSON.
 */
export function splitBody(body: Buffer, headerLength: string | undefined): RawBody {
  if (headerLength === undefined) {
    if (body.byteLength === 0) throw new BulwarkError('invalid_json', 'the request body is empty; send an OIP v2 inference request')
    return { contentType: 'json', header: parseJson(body, 'the request body'), sizeBytes: body.byteLength }
  }
  if (!/^[0-9]{1,10}$/.test(headerLength)) {
    throw new BulwarkError('invalid_binary_header', `${HEADER_LENGTH} must be a non-negative integer, got ${JSON.stringify(headerLength.slice(0, 32))}`)
  }
  const n = Number(headerLength)
  if (n === 0 || n > body.byteLength) {
    throw new BulwarkError(
      'invalid_binary_header',
      `${HEADER_LENGTH} is ${n} but the body has ${body.byteLength} bytes; it must be the length of the JSON header (1..body length)`,
    )
  }
  return {
    contentType: 'binary',
    header: parseJson(body.subarray(0, n), `the JSON header (first ${HEADER_LENGTH} bytes)`),
    binary: body.subarray(n),
    sizeBytes: body.byteLength,
  }
}

/** JSON-safe flat data array of a tensor (BigInt 64-bit values become numbers). */
function jsonData(t: Tensor): number[] {
  const out = new Array<number>(t.data.length)
  if (t.datatype === 'FP16') throw new BulwarkError('bad_request', 'FP16 outputs are only sent as binary data; request binary_data for this output')
  for (let i = 0; i < t.data.length; i++) out[i] = Number(t.data[i])
  return out
}

export interface EncodedResponse {
  contentType: string
  /** Set when the body carries binary outputs. */
  headerLength?: number
  payload: Buffer | string
}

/** Encodes an inference result as JSON, or JSON header + binary outputs where asked for. */
export function encodeInferResponse(result: InferenceResult, request: InferenceRequest): EncodedResponse {
  const wantsBinary = (name: string) => request.outputs.find((o) => o.name === name)?.binary ?? request.binaryOutputs
  const binaries: Uint8Array[] = []
  const outputs = result.outputs.map((t) => {
    const base = { name: t.name, datatype: t.datatype, shape: t.shape }
    if (wantsBinary(t.name)) {
      const bytes = tensorBytes(t.data)
      binaries.push(bytes)
      return { ...base, parameters: { binary_data_size: bytes.byteLength } }
    }
    return { ...base, data: jsonData(t) }
  })
  const header: Record<string, unknown> = { model_name: result.modelName, model_version: result.modelVersion }
  if (request.id !== undefined) header.id = request.id
  if (Object.keys(result.parameters).length > 0) header.parameters = result.parameters
  header.outputs = outputs
  const json = JSON.stringify(header)
  if (binaries.length === 0) return { contentType: 'application/json', payload: json }
  const head = Buffer.from(json, 'utf8')
  return {
    contentType: 'application/octet-stream',
    headerLength: head.byteLength,
    payload: Buffer.concat([head, ...binaries]),
  }
}
