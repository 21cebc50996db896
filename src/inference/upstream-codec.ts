// The Open Inference Protocol v2 as Bulwark speaks it to upstream model pods: requests with
// the binary tensor data extension (a JSON header, then each input's little-endian bytes as
// validation left them, never re-encoded as JSON), asking for binary outputs; and responses,
// read as binary outputs or, from servers that ignore binary_data, as JSON data. A response
// is checked against the model's manifest before anything reaches later stages: each
// expected output present once, with the manifest's datatype, its rank and fixed dimensions,
// the request's batch size, and exactly the bytes (or elements) its shape implies. A response
// that fails any check is a protocol error: the upstream is broken, not the request.

import { BulwarkError } from '../errors.ts'
import { HEADER_LENGTH } from '../oip/codec.ts'
import { decodeJsonData } from '../oip/json-data.ts'
import type { TensorSpec } from './manifest.ts'
import { allocate, bytesPerElement, elementCount, tensorBytes, viewBytes, type Tensor, type TensorData } from './tensor.ts'

export { HEADER_LENGTH }

/** A response that does not follow the protocol or the manifest: the upstream is broken (a breaker failure). */
export function problem(reason: string): BulwarkError {
  return new BulwarkError('upstream_unavailable', 'the upstream model sent an invalid response; retry later', { reason: `upstream response: ${reason}`, headers: { 'retry-after': '1' } })
}

/**
 * The request body: JSON header (inputs with binary_data_size, every wanted output as
 * binary, `timeout` in microseconds when given) followed by the inputs' bytes. Returns the
 * parts (header first) and the header's length.
 */
export function encodeUpstreamRequest(inputs: readonly Tensor[], outputNames: readonly string[], timeoutMicros: number | null): { parts: Uint8Array[]; headerLength: number } {
  const parameters: Record<string, unknown> = { binary_data_output: true }
  if (timeoutMicros !== null) parameters.timeout = Math.max(1, Math.floor(timeoutMicros))
  const header = {
    inputs: inputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape, parameters: { binary_data_size: t.data.byteLength } })),
    outputs: outputNames.map((name) => ({ name, parameters: { binary_data: true } })),
    parameters,
  }
  const head = Buffer.from(JSON.stringify(header), 'utf8')
  return { parts: [head, ...inputs.map((t) => tensorBytes(t.data))], headerLength: head.byteLength }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

/** The response's outputs named `wanted`, in that order, checked against their specs. Throws upstream_unavailable. */
export function decodeUpstreamResponse(body: Buffer, headerLength: string | undefined, wanted: readonly TensorSpec[], items: number): Tensor[] {
  let json: Buffer = body
  let binary: Buffer = Buffer.alloc(0)
  if (headerLength !== undefined) {
    const n = /^[0-9]{1,10}$/.test(headerLength) ? Number(headerLength) : NaN
    if (!(n >= 1 && n <= body.byteLength)) throw problem(`${HEADER_LENGTH} ${JSON.stringify(headerLength.slice(0, 16))} does not fit a body of ${body.byteLength} bytes`)
    json = body.subarray(0, n)
    binary = body.subarray(n)
  }
  let header: unknown
  try {
    header = JSON.parse(json.toString('utf8'))
  } catch {
    throw problem('the response is not JSON')
  }
  if (!isObject(header) || !Array.isArray(header.outputs)) throw problem('the response has no "outputs" array')
  // Binary outputs are laid out in the order the outputs appear in the header.
  const found = new Map<string, Tensor>()
  let offset = 0
  for (const raw of header.outputs as unknown[]) {
    if (!isObject(raw) || typeof raw.name !== 'string') throw problem('an output has no name')
    const params = isObject(raw.parameters) ? raw.parameters : {}
    const size = params.binary_data_size
    const spec = wanted.find((s) => s.name === raw.name)
    if (size !== undefined && (!Number.isSafeInteger(size) || (size as number) < 0)) throw problem(`output "${raw.name.slice(0, 64)}": bad binary_data_size`)
    if (!spec) {
      // An output we did not ask for: skip its bytes, keep nothing of it.
      if (typeof size === 'number') offset += size
      continue
    }
    if (found.has(spec.name)) throw problem(`output "${spec.name}" appears twice`)
    if (typeof size === 'number') {
      if (offset + size > binary.byteLength) throw problem(`output "${spec.name}": binary data runs past the end of the body`)
      found.set(spec.name, checkedOutput(raw, spec, items, binary.subarray(offset, offset + size)))
      offset += size
    } else {
      found.set(spec.name, checkedOutput(raw, spec, items, raw.data))
    }
  }
  if (offset !== binary.byteLength) throw problem(`${binary.byteLength - offset} bytes after the JSON header belong to no output`)
  return inOrder(found, wanted)
}

/** The outputs `wanted`, in that order; throws when one is missing. */
export function inOrder(found: ReadonlyMap<string, Tensor>, wanted: readonly TensorSpec[]): Tensor[] {
  return wanted.map((s) => {
    const t = found.get(s.name)
    if (!t) throw problem(`output "${s.name}" is missing`)
    return t
  })
}

/**
 * One output as a tensor, checked against its spec and the batch: the datatype, the rank and
 * fixed dimensions, the batch dimension, and its values, either raw little-endian bytes
 * (exactly as many as the shape implies) or a JSON-style data array. Throws upstream_unavailable.
 */
export function checkedOutput(raw: { datatype?: unknown; shape?: unknown }, spec: TensorSpec, items: number, values: Uint8Array | unknown): Tensor {
  if (raw.datatype !== spec.datatype) throw problem(`output "${spec.name}": datatype ${String(raw.datatype).slice(0, 16)}, the manifest says ${spec.datatype}`)
  const shape = raw.shape
  if (!Array.isArray(shape) || shape.length !== spec.shape.length || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw problem(`output "${spec.name}": shape does not have the manifest's ${spec.shape.length} dimensions`)
  }
  const dims = shape as number[]
  if (dims[0] !== items) throw problem(`output "${spec.name}": batch dimension ${dims[0]}, the request had ${items}`)
  for (let i = 1; i < dims.length; i++) {
    if (spec.shape[i] !== -1 && dims[i] !== spec.shape[i]) throw problem(`output "${spec.name}": dimension ${i} is ${dims[i]}, the manifest says ${spec.shape[i]}`)
  }
  const count = elementCount(dims)
  let data: TensorData
  if (values instanceof Uint8Array) {
    const want = count * bytesPerElement(spec.datatype)
    if (values.byteLength !== want) throw problem(`output "${spec.name}": ${values.byteLength} bytes of data, shape implies ${want}`)
    data = viewBytes(spec.datatype, values)
  } else {
    data = decodeJsonData(`output "${spec.name}"`, spec.datatype, values, count, (_problem, message) => problem(message))
  }
  return { name: spec.name, datatype: spec.datatype, shape: dims, data }
}

/** The error an upstream sent, as far as it can be read: its status, code and message (for logs). */
export function upstreamErrorOf(body: Buffer): { code: string | null; message: string } {
  try {
    const parsed = JSON.parse(body.subarray(0, 4096).toString('utf8')) as unknown
    if (isObject(parsed)) {
      return { code: typeof parsed.code === 'string' ? parsed.code.slice(0, 64) : null, message: typeof parsed.error === 'string' ? parsed.error.slice(0, 300) : '' }
    }
  } catch {}
  return { code: null, message: body.subarray(0, 300).toString('utf8') }
}

