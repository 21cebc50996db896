// Translation between the gRPC messages of inference.GRPCInferenceService (proto/) and what
// the chain reads and writes. A ModelInferRequest becomes the body the REST transport would
// have read for the same request (src/oip/codec.ts): a JSON header, and the raw input bytes
// behind it as in the binary tensor data extension, so the body-read and validation links
// check it exactly as they check a REST body. An answer goes back as raw_output_contents when
// the request sent raw inputs or asked for binary outputs (as Triton answers), else as typed
// contents. Messages are plain objects as @grpc/proto-loader decodes them (keepCase, int64 as
// numbers, enums as names).

import { BulwarkError } from '../errors.ts'
import type { IncomingBody, InferenceRequest, InferenceResult } from '../types.ts'
import { tensorBytes, type Datatype, type Tensor } from '../inference/tensor.ts'

/** An InferParameter: exactly one of its fields is set (proto-loader `oneofs: true` names it). */
export interface InferParameter {
  bool_param?: boolean
  int64_param?: number
  string_param?: string
  double_param?: number
  uint64_param?: number
  parameter_choice?: string
}

export type TensorContents = Partial<Record<ContentsField, unknown[]>>

type ContentsField = 'bool_contents' | 'int_contents' | 'int64_contents' | 'uint_contents' | 'uint64_contents' | 'fp32_contents' | 'fp64_contents' | 'bytes_contents'

export interface InferRequestMessage {
  model_name: string
  model_version: string
  id: string
  parameters: Record<string, InferParameter>
  inputs: { name: string; datatype: string; shape: number[]; parameters: Record<string, InferParameter>; contents: TensorContents | null }[]
  outputs: { name: string; parameters: Record<string, InferParameter> }[]
  raw_input_contents: Buffer[]
}

export interface InferResponseMessage {
  model_name: string
  model_version: string
  id: string
  parameters: Record<string, InferParameter>
  outputs: { name: string; datatype: string; shape: number[]; parameters: Record<string, InferParameter>; contents?: TensorContents }[]
  raw_output_contents: Buffer[]
}

/** The typed-contents field that carries each datatype (grpc_predict_v2.proto). */
const contentsField: Record<Datatype, ContentsField | null> = {
  BOOL: 'bool_contents',
  UINT8: 'uint_contents',
  UINT16: 'uint_contents',
  UINT32: 'uint_contents',
  UINT64: 'uint64_contents',
  INT8: 'int_contents',
  INT16: 'int_contents',
  INT32: 'int_contents',
  INT64: 'int64_contents',
  // No typed field carries half floats: raw bytes only.
  FP16: null,
  FP32: 'fp32_contents',
  FP64: 'fp64_contents',
}

const bad = (message: string) => new BulwarkError('bad_request', message)

/** A parameter's value, whichever of its fields is set. */
function parameterValue(p: InferParameter): unknown {
  switch (p.parameter_choice) {
    case 'bool_param':
      return p.bool_param
    case 'int64_param':
      return p.int64_param
    case 'string_param':
      return p.string_param
    case 'double_param':
      return p.double_param
    case 'uint64_param':
      return p.uint64_param
    default:
      return undefined
  }
}

// Built with Object.fromEntries: a caller's key ("__proto__" included) becomes an own property, never a prototype.
function parameters(map: Record<string, InferParameter> | undefined): Record<string, unknown> {
  return Object.fromEntries(Object.entries(map ?? {}).map(([k, v]) => [k, parameterValue(v)]))
}

function toParameter(v: unknown): InferParameter {
  if (typeof v === 'boolean') return { bool_param: v }
  if (typeof v === 'number') return Number.isSafeInteger(v) ? { int64_param: v } : { double_param: v }
  if (typeof v === 'string') return { string_param: v }
  return { string_param: JSON.stringify(v) }
}

/** Values as InferParameters: whole numbers as int64, other numbers as double, objects as their JSON. */
export function toParameters(values: Readonly<Record<string, unknown>>): Record<string, InferParameter> {
  return Object.fromEntries(Object.entries(values).map(([k, v]) => [k, toParameter(v)]))
}

/** The contents of a typed input as a JSON data array, from the field its datatype uses. */
function typedData(input: InferRequestMessage['inputs'][number]): unknown[] {
  const field = Object.hasOwn(contentsField, input.datatype) ? contentsField[input.datatype as Datatype] : null
  const contents = input.contents ?? {}
  const given = (Object.keys(contents) as ContentsField[]).filter((k) => (contents[k]?.length ?? 0) > 0)
  if (given.length === 0) return []
  if (field === null || given.length > 1 || given[0] !== field) {
    const want = field === null ? 'raw_input_contents' : `contents.${field}`
    throw bad(`input "${input.name.slice(0, 64)}" of datatype ${input.datatype.slice(0, 16)} must be sent in ${want}, not in ${given.map((g) => `contents.${g}`).join(', ')}`)
  }
  return contents[field]!
}

/**
 * The request as the body the REST transport would read: a JSON header and, for raw inputs,
 * their bytes behind it, placed so that they start at an 8-byte boundary (typed arrays can
 * then view them without a copy).
 */
export function inferBody(m: InferRequestMessage): IncomingBody {
  const raw = m.raw_input_contents ?? []
  if (raw.length > 0 && raw.length !== m.inputs.length) {
    throw bad(`raw_input_contents has ${raw.length} entries for ${m.inputs.length} inputs; send one per input, in the order of inputs, or use contents`)
  }
  const wantsBinary = raw.length > 0 || m.outputs.some((o) => parameterValue(o.parameters?.binary_data ?? {}) === true)
  const header: Record<string, unknown> = {
    ...(m.id ? { id: m.id } : {}),
    parameters: { ...parameters(m.parameters), binary_data_output: wantsBinary },
    inputs: m.inputs.map((input, i) => {
      const base = { name: input.name, datatype: input.datatype, shape: input.shape, ...(Object.keys(input.parameters ?? {}).length ? { parameters: parameters(input.parameters) } : {}) }
      if (raw.length === 0) return { ...base, data: typedData(input) }
      if (typedData(input).length > 0) throw bad(`input "${input.name.slice(0, 64)}" has both contents and raw_input_contents; send one`)
      return { ...base, parameters: { ...base.parameters, binary_data_size: raw[i]!.byteLength } }
    }),
    ...(m.outputs.length > 0 ? { outputs: m.outputs.map((o) => ({ name: o.name, parameters: { ...parameters(o.parameters), binary_data: wantsBinary } })) } : {}),
  }
  const head = Buffer.from(JSON.stringify(header), 'utf8')
  if (raw.length === 0) return { bytes: head, headerLength: undefined }
  let total = head.byteLength
  for (const r of raw) total += r.byteLength
  const pad = (8 - (head.byteLength % 8)) % 8
  const bytes = Buffer.allocUnsafeSlow(pad + total).subarray(pad)
  let at = head.copy(bytes, 0)
  for (const r of raw) at += r.copy(bytes, at)
  return { bytes, headerLength: String(head.byteLength) }
}

/** A tensor's typed contents (numbers as the proto's fields take them): an answer's outputs, and the bench's typed inputs. */
export function typedContents(t: Tensor): TensorContents {
  const field = contentsField[t.datatype]
  if (field === null) throw bad(`output "${t.name}" is ${t.datatype}, sent as raw bytes only; ask for binary_data on this output`)
  const values: unknown[] = new Array(t.data.length)
  for (let i = 0; i < t.data.length; i++) {
    const v = t.data[i]!
    values[i] = typeof v === 'bigint' ? Number(v) : t.datatype === 'BOOL' ? v !== 0 : v
  }
  return { [field]: values }
}

/** The answer as a ModelInferResponse: raw bytes where the request asked for binary outputs, else typed contents. */
export function inferResponse(result: InferenceResult, request: InferenceRequest, id: string): InferResponseMessage {
  const wantsBinary = (name: string) => request.outputs.find((o) => o.name === name)?.binary ?? request.binaryOutputs
  const raw: Buffer[] = []
  const outputs = result.outputs.map((t) => {
    const base = { name: t.name, datatype: t.datatype, shape: t.shape, parameters: {} }
    if (!wantsBinary(t.name)) return { ...base, contents: typedContents(t) }
    const bytes = tensorBytes(t.data)
    raw.push(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength))
    return base
  })
  return { model_name: result.modelName, model_version: result.modelVersion, id, parameters: toParameters(result.parameters), outputs, raw_output_contents: raw }
}
