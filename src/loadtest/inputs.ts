// The requests the bench sends: generated from the model's metadata (GET /v2/models/NAME:
// each input's datatype and shape, the batch dimension set to --batch, values drawn from a
// seeded generator in --range, or the input's range where the metadata gives one), or read from OIP v2 JSON request files. Either way they are
// encoded once, as JSON or with the binary tensor extension, into a small pool of distinct
// bodies that the load rotates through (identical bodies would look like a replay to
// stateful screening and would measure a cache, not the gateway).

import { readdir, readFile, stat } from 'node:fs/promises'
import path from 'node:path'
import { float32Text, HEADER_LENGTH } from '../oip/codec.ts'
import { allocate, bytesPerElement, elementCount, isDatatype, tensorBytes, type Datatype, type TensorData } from '../inference/tensor.ts'
import type { LoadRequest } from './client.ts'

/** A problem with the inputs: the message says what to do. */
export class BenchInputError extends Error {}

export interface TensorSpec {
  name: string
  datatype: Datatype
  shape: number[]
  data: TensorData
}

/** Distinct bodies kept for rotation, and the memory they may take. */
const POOL_MAX = 64
const POOL_BYTES = 64 * 1024 * 1024

/** A deterministic generator (32-bit LCG): the same seed gives the same bodies on every run. */
function lcg(seed: number): () => number {
  let s = seed >>> 0
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0
    return s / 2 ** 32
  }
}

function fill(datatype: Datatype, count: number, next: () => number, [lo, hi]: [number, number]): TensorData {
  const data = allocate(datatype, count)
  if (datatype === 'FP16') throw new BenchInputError('FP16 inputs cannot be generated yet; give request files with --input')
  for (let i = 0; i < count; i++) {
    const u = next()
    if (datatype === 'BOOL') data[i] = u < 0.5 ? 0 : 1
    else if (datatype === 'FP32' || datatype === 'FP64') data[i] = lo + u * (hi - lo)
    else if (datatype === 'INT64' || datatype === 'UINT64') data[i] = BigInt(Math.floor(lo + u * (hi - lo + 1)))
    else data[i] = Math.floor(lo + u * (hi - lo + 1))
  }
  return data
}

export interface MetadataTensor {
  name: string
  datatype: string
  shape: number[]
  /** The values the model takes, where the metadata says (OIP metadata has no such field; a server may add one). */
  range?: [number, number]
}

/** A [low, high] pair, from `range` or `parameters.range` of a metadata tensor. */
function rangeOf(t: { range?: unknown; parameters?: { range?: unknown } }): [number, number] | undefined {
  const r = t.range ?? t.parameters?.range
  return Array.isArray(r) && r.length === 2 && r.every(Number.isFinite) && r[0] <= r[1] ? [r[0], r[1]] : undefined
}

/** The model's inputs from its metadata, checked for what generation needs. */
export function inputSpecs(metadata: unknown, model: string): MetadataTensor[] {
  const inputs = (metadata as { inputs?: unknown })?.inputs
  const ok = Array.isArray(inputs) && inputs.every((t: MetadataTensor) => typeof t?.name === 'string' && typeof t.datatype === 'string' && Array.isArray(t.shape) && t.shape.every(Number.isInteger))
  if (!ok || inputs.length === 0) throw new BenchInputError(`the metadata of ${model} (GET /v2/models/${model}) lists no usable inputs; give request files with --input`)
  return (inputs as MetadataTensor[]).map((t) => {
    const range = rangeOf(t)
    return { name: t.name, datatype: t.datatype, shape: t.shape, ...(range ? { range } : {}) }
  })
}

/**
 * `n` sets of tensors for the model's inputs, with the batch dimension set to `batch`; values
 * from `range` when given, else each input's own range from the metadata, else [0, 1].
 */
export function generateTensors(inputs: MetadataTensor[], o: { batch: number; seed: number; range?: [number, number] | undefined; n: number }): TensorSpec[][] {
  const shapes = inputs.map((t) => {
    if (!isDatatype(t.datatype)) throw new BenchInputError(`input ${t.name} has datatype ${t.datatype}, which the bench cannot generate; give request files with --input`)
    const shape = t.shape.map((d, i) => {
      if (d >= 0) return d
      if (i === 0) return o.batch
      throw new BenchInputError(`input ${t.name} has a variable dimension ${i} (shape ${JSON.stringify(t.shape)}); give request files with --input`)
    })
    if (t.shape[0] !== -1 && o.batch !== 1) throw new BenchInputError(`input ${t.name} has a fixed first dimension (shape ${JSON.stringify(t.shape)}), so the model takes no batch; drop --batch`)
    return { name: t.name, datatype: t.datatype, shape, range: o.range ?? t.range ?? ([0, 1] as [number, number]) }
  })
  const next = lcg(o.seed)
  return Array.from({ length: o.n }, () => shapes.map(({ range, ...s }) => ({ ...s, data: fill(s.datatype, elementCount(s.shape), next, range) })))
}

function jsonValues(t: TensorSpec): string {
  const out = new Array<string>(t.data.length)
  for (let i = 0; i < t.data.length; i++) {
    const v = t.data[i]!
    out[i] = t.datatype === 'BOOL' ? (v ? 'true' : 'false') : t.datatype === 'FP32' ? float32Text(v as number) : String(v)
  }
  return `[${out.join(',')}]`
}

/** One request body for a set of tensors, JSON or binary (outputs asked for in binary too). */
export function encodeRequest(model: string, version: string | undefined, tensors: TensorSpec[], binary: boolean): LoadRequest {
  const urlPath = `/v2/models/${encodeURIComponent(model)}${version !== undefined ? `/versions/${encodeURIComponent(version)}` : ''}/infer`
  const items = tensors[0]?.shape[0] ?? 1
  if (!binary) {
    const inputs = tensors.map((t) => `${JSON.stringify({ name: t.name, datatype: t.datatype, shape: t.shape }).slice(0, -1)},"data":${jsonValues(t)}}`)
    return { method: 'POST', path: urlPath, headers: { 'content-type': 'application/json' }, body: `{"inputs":[${inputs.join(',')}]}`, items }
  }
  const head = Buffer.from(JSON.stringify({
    inputs: tensors.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape, parameters: { binary_data_size: t.data.byteLength } })),
    parameters: { binary_data_output: true },
  }))
  const body = Buffer.concat([head, ...tensors.map((t) => tensorBytes(t.data))])
  return { method: 'POST', path: urlPath, headers: { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.length) }, body, items }
}

/** How many distinct generated bodies to keep, given one body's size. */
export function poolSize(bytesPerRequest: number): number {
  return Math.max(1, Math.min(POOL_MAX, Math.floor(POOL_BYTES / Math.max(1, bytesPerRequest))))
}

/** Tensors of an OIP v2 JSON request file (inputs with a data array), for re-encoding. */
function tensorsOfFile(file: string, parsed: unknown): TensorSpec[] {
  const inputs = (parsed as { inputs?: unknown })?.inputs
  if (!Array.isArray(inputs) || inputs.length === 0) throw new BenchInputError(`${file} is not an OIP v2 inference request: it has no "inputs" array`)
  return inputs.map((t: { name?: unknown; datatype?: unknown; shape?: unknown; data?: unknown }, i) => {
    const shape = t.shape
    if (typeof t.name !== 'string' || !isDatatype(t.datatype) || t.datatype === 'FP16' || !Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0) || !Array.isArray(t.data)) {
      throw new BenchInputError(`${file}: inputs[${i}] needs a name, a numeric datatype, a shape of whole numbers and a flat data array`)
    }
    const flat = (t.data as unknown[]).flat(Infinity)
    if (flat.length !== elementCount(shape as number[])) throw new BenchInputError(`${file}: inputs[${i}] has ${flat.length} values for shape ${JSON.stringify(shape)}`)
    const data = allocate(t.datatype, flat.length)
    const big = t.datatype === 'INT64' || t.datatype === 'UINT64'
    flat.forEach((v, k) => (data[k] = big ? BigInt(v as number) : typeof v === 'boolean' ? Number(v) : (v as number)))
    return { name: t.name, datatype: t.datatype, shape: shape as number[], data }
  })
}

/** A raw tensor file: the bytes of the model's one input, little-endian, the batch read from the length. */
function tensorOfRaw(file: string, bytes: Buffer, inputs: MetadataTensor[] | undefined): TensorSpec[] {
  const only = inputs?.length === 1 ? inputs[0]! : null
  if (!only || !isDatatype(only.datatype) || only.datatype === 'FP16') {
    throw new BenchInputError(`${file}: a raw tensor file needs a model with one numeric input (this one has ${inputs?.length ?? 'no'} inputs); give OIP v2 JSON request files instead`)
  }
  const inner = only.shape.slice(1)
  const per = bytesPerElement(only.datatype) * elementCount(inner)
  if (only.shape[0] !== -1 || inner.some((d) => d < 0) || per === 0 || bytes.byteLength === 0 || bytes.byteLength % per !== 0) {
    throw new BenchInputError(`${file} has ${bytes.byteLength} bytes; input ${only.name} (${only.datatype}, shape ${JSON.stringify(only.shape)}) takes whole items of ${per} bytes after a variable batch dimension`)
  }
  const data = allocate(only.datatype, bytes.byteLength / bytesPerElement(only.datatype))
  new Uint8Array(data.buffer).set(bytes)
  return [{ name: only.name, datatype: only.datatype, shape: [bytes.byteLength / per, ...inner], data }]
}

const RAW = /\.(bin|raw)$/

/** The files --input names: itself, or a folder's .json, .bin and .raw files in name order. */
export async function inputFiles(where: string): Promise<string[]> {
  let files: string[]
  try {
    files = (await stat(where)).isDirectory() ? (await readdir(where)).filter((f) => f.endsWith('.json') || RAW.test(f)).sort().map((f) => path.join(where, f)) : [where]
  } catch (err) {
    throw new BenchInputError(`cannot read --input ${where}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
  if (files.length === 0) throw new BenchInputError(`--input ${where} is a folder with no request files (.json) or raw tensors (.bin, .raw) in it`)
  return files.slice(0, 10_000)
}

/** Whether any of the files is a raw tensor (which needs the model's metadata to be read). */
export const hasRawTensors = (files: string[]) => files.some((f) => RAW.test(f))

/**
 * The requests of --input's files: OIP v2 JSON requests, sent as written (re-encoded with
 * --binary), and raw tensors of the model's one input (`inputs`: its metadata). `encode`,
 * where given (another protocol), encodes every file's tensors.
 */
export async function readRequestFiles(files: string[], o: { model: string; version: string | undefined; binary: boolean; inputs?: MetadataTensor[]; encode?: (tensors: TensorSpec[]) => LoadRequest }): Promise<LoadRequest[]> {
  const requests: LoadRequest[] = []
  const encode = o.encode ?? ((tensors: TensorSpec[]) => encodeRequest(o.model, o.version, tensors, o.binary))
  for (const file of files) {
    if (RAW.test(file)) {
      requests.push(encode(tensorOfRaw(file, await readFile(file), o.inputs)))
      continue
    }
    const text = await readFile(file, 'utf8')
    let parsed: unknown
    try {
      parsed = JSON.parse(text)
    } catch (err) {
      throw new BenchInputError(`${file} is not a JSON request: ${(err as Error).message}`)
    }
    const tensors = tensorsOfFile(file, parsed)
    // As JSON over REST the file goes as it is (its outputs and parameters too); --binary, or gRPC, re-encodes its tensors.
    const encoded = encode(tensors)
    requests.push(o.binary || o.encode ? encoded : { ...encoded, body: text })
  }
  return requests
}
