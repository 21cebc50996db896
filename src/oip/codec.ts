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

/**
 * The shortest decimal that reads back as the same float32. JSON numbers are doubles, and
 * printing a float32 as a double shows its binary noise (0.12 becomes 0.11999999731779099),
 * which also hides the rounding that output protection applied.
 */
export function float32Text(v: number): string {
  if (!Number.isFinite(v)) throw new BulwarkError('internal', 'a model output is not finite', { reason: `output value ${v}` })
  for (let p = 1; p < 9; p++) {
    const s = v.toPrecision(p)
    if (Math.fround(Number(s)) === v) return String(Number(s))
  }
  return String(v)
}

/** The `data` array of a tensor as JSON text. */
function jsonData(t: Tensor): string {
  if (t.datatype === 'FP16') throw new BulwarkError('bad_request', 'FP16 outputs are only sent as binary data; request binary_data for this output')
  const parts = new Array<string>(t.data.length)
  if (t.datatype === 'FP32') for (let i = 0; i < t.data.length; i++) parts[i] = float32Text(t.data[i] as number)
  else if (t.datatype === 'BOOL') for (let i = 0; i < t.data.length; i++) parts[i] = t.data[i] ? 'true' : 'false'
  else for (let i = 0; i < t.data.length; i++) parts[i] = String(t.data[i])
  return `[${parts.join(',')}]`
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
    // The data array is appended as text (see float32Text); the rest goes through JSON.stringify.
    return `${JSON.stringify(base).slice(0, -1)},"data":${jsonData(t)}}`
  })
  const header: Record<string, unknown> = { model_name: result.modelName, model_version: result.modelVersion }
  if (request.id !== undefined) header.id = request.id
  if (Object.keys(result.parameters).length > 0) header.parameters = result.parameters
  const json = `${JSON.stringify(header).slice(0, -1)},"outputs":[${outputs.map((o) => (typeof o === 'string' ? o : JSON.stringify(o))).join(',')}]}`
  if (binaries.length === 0) return { contentType: 'application/json', payload: json }
  const head = Buffer.from(json, 'utf8')
  return {
    contentType: 'application/octet-stream',
    headerLength: head.byteLength,
    payload: Buffer.concat([head, ...binaries]),
  }
}
