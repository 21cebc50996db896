// A Triton model repository entry (`config.pbtxt` and `<version>/model.onnx`), read for
// `bulwark model import`. config.pbtxt is a ModelConfig in protobuf text format; this reads the
// fields a manifest needs (name, platform, max_batch_size, default_model_filename, each
// input's and output's name, data_type and dims) and ignores the rest (instance groups,
// dynamic batching, optimisation: Bulwark has its own settings for those).

import type { Datatype } from '../inference/tensor.ts'

/** A text-format message: each field name with its values, in order (a nested message is a Message). */
export type Message = Map<string, (string | number | Message)[]>

type Token = { kind: 'word' | 'string' | 'number' | 'punct'; text: string }

const isWordStart = (c: string) => /[A-Za-z_]/.test(c)
const isWord = (c: string) => /[A-Za-z0-9_.]/.test(c)
const isNumber = (c: string) => /[-+0-9.eE]/.test(c)

function tokenize(text: string): Token[] {
  const tokens: Token[] = []
  let at = 0
  const take = (ok: (c: string) => boolean) => {
    const from = at
    while (at < text.length && ok(text[at]!)) at++
    return text.slice(from, at)
  }
  while (at < text.length) {
    const c = text[at]!
    if (/\s/.test(c)) at++
    else if (c === '#') take((x) => x !== '\n')
    else if (c === '"' || c === "'") {
      let value = ''
      for (at++; at < text.length && text[at] !== c; at++) value += text[at] === '\\' ? text[++at] ?? '' : text[at]
      if (at >= text.length) throw new Error('config.pbtxt: a string is not closed')
      at++
      tokens.push({ kind: 'string', text: value })
    } else if (isWordStart(c)) tokens.push({ kind: 'word', text: take(isWord) })
    else if (/[-0-9.]/.test(c)) {
      const n = take(isNumber)
      if (!Number.isFinite(Number(n))) throw new Error(`config.pbtxt: ${JSON.stringify(n)} is not a number`)
      tokens.push({ kind: 'number', text: n })
    } else if ('{}[]:,;<>'.includes(c)) {
      tokens.push({ kind: 'punct', text: c })
      at++
    } else throw new Error(`config.pbtxt: unexpected ${JSON.stringify(c)} on line ${text.slice(0, at).split('\n').length}`)
  }
  return tokens
}

/** Parses protobuf text format into nested Messages (field order kept, repeated fields as several values). */
export function parseTextProto(text: string): Message {
  const tokens = tokenize(text)
  let i = 0
  const expect = (p: string) => {
    if (tokens[i]?.text !== p) throw new Error(`config.pbtxt: expected "${p}" near ${JSON.stringify(tokens[i]?.text ?? 'the end')}`)
    i++
  }
  const scalar = (): string | number => {
    const t = tokens[i++]
    if (!t || t.kind === 'punct') throw new Error(`config.pbtxt: expected a value near ${JSON.stringify(t?.text ?? 'the end')}`)
    return t.kind === 'number' ? Number(t.text) : t.text
  }
  const message = (close: string | null): Message => {
    const out: Message = new Map()
    while (i < tokens.length && tokens[i]!.text !== close) {
      const name = tokens[i++]!
      if (name.kind !== 'word') throw new Error(`config.pbtxt: expected a field name near ${JSON.stringify(name.text)}`)
      if (tokens[i]?.text === ':') i++
      const values = out.get(name.text) ?? []
      out.set(name.text, values)
      const value = (): string | number | Message => {
        const open = tokens[i]?.text
        if (open === '{' || open === '<') {
          i++
          const m = message(open === '{' ? '}' : '>')
          expect(open === '{' ? '}' : '>')
          return m
        }
        return scalar()
      }
      if (tokens[i]?.text === '[') {
        i++
        while (tokens[i]?.text !== ']') {
          values.push(value())
          if (tokens[i]?.text === ',') i++
        }
        expect(']')
      } else values.push(value())
      if (tokens[i]?.text === ',' || tokens[i]?.text === ';') i++
    }
    return out
  }
  return message(null)
}

export interface TritonTensor {
  name: string
  datatype: Datatype
  /** Triton's dims: without the batch dimension when max_batch_size > 0. */
  dims: number[]
}

export interface TritonConfig {
  name: string | null
  maxBatchSize: number
  defaultModelFilename: string
  inputs: TritonTensor[]
  outputs: TritonTensor[]
}

const TYPES: Record<string, Datatype> = {
  TYPE_BOOL: 'BOOL', TYPE_UINT8: 'UINT8', TYPE_UINT16: 'UINT16', TYPE_UINT32: 'UINT32', TYPE_UINT64: 'UINT64',
  TYPE_INT8: 'INT8', TYPE_INT16: 'INT16', TYPE_INT32: 'INT32', TYPE_INT64: 'INT64',
  TYPE_FP16: 'FP16', TYPE_FP32: 'FP32', TYPE_FP64: 'FP64',
}

const one = (m: Message, field: string): string | number | Message | undefined => m.get(field)?.[0]

function tensors(config: Message, field: 'input' | 'output'): TritonTensor[] {
  return (config.get(field) ?? []).map((v, k) => {
    if (!(v instanceof Map)) throw new Error(`config.pbtxt: ${field} ${k} is not a message`)
    const name = one(v, 'name')
    const type = String(one(v, 'data_type') ?? '')
    const datatype = Object.hasOwn(TYPES, type) ? TYPES[type as keyof typeof TYPES] : undefined
    if (typeof name !== 'string') throw new Error(`config.pbtxt: ${field} ${k} has no name`)
    if (!datatype) throw new Error(`config.pbtxt: ${field} "${name}" has data_type ${type || 'none'}, which Bulwark cannot serve (supported: ${Object.keys(TYPES).join(', ')})`)
    const dims = (v.get('dims') ?? []).map(Number)
    if (dims.some((d) => !Number.isInteger(d) || d < -1 || d === 0)) throw new Error(`config.pbtxt: ${field} "${name}" has dims ${JSON.stringify(dims)}; each is -1 or a positive size`)
    return { name, datatype, dims }
  })
}

/** The fields of config.pbtxt a manifest needs; throws an Error naming what is wrong. */
export function readTritonConfig(text: string): TritonConfig {
  const config = parseTextProto(text)
  const platform = one(config, 'platform') ?? one(config, 'backend')
  if (platform !== undefined && platform !== 'onnxruntime_onnx' && platform !== 'onnxruntime') {
    throw new Error(`config.pbtxt: platform/backend "${String(platform)}" is not ONNX Runtime; Bulwark serves ONNX models only`)
  }
  const name = one(config, 'name')
  const maxBatch = Number(one(config, 'max_batch_size') ?? 0)
  if (!Number.isInteger(maxBatch) || maxBatch < 0) throw new Error(`config.pbtxt: max_batch_size ${String(one(config, 'max_batch_size'))} is not a whole number`)
  return {
    name: typeof name === 'string' ? name : null,
    maxBatchSize: maxBatch,
    defaultModelFilename: String(one(config, 'default_model_filename') ?? 'model.onnx'),
    inputs: tensors(config, 'input'),
    outputs: tensors(config, 'output'),
  }
}

interface GraphLike {
  inputs: { name: string; datatype: Datatype; shape: number[] }[]
  outputs: { name: string; datatype: Datatype; shape: number[] }[]
}

/**
 * The graph as config.pbtxt describes it: each tensor it lists must be in the graph with the
 * same data type and rank (the batch dimension first when max_batch_size > 0); a dimension the
 * graph leaves free and the config fixes is fixed. Throws an Error naming each disagreement.
 */
export function refineGraph<G extends GraphLike>(graph: G, config: TritonConfig): G {
  const problems: string[] = []
  const refine = (side: 'input' | 'output', values: G['inputs'], listed: TritonTensor[]) =>
    values.map((v) => {
      const t = listed.find((l) => l.name === v.name)
      if (!t) return v
      const full = config.maxBatchSize > 0 ? [-1, ...t.dims] : t.dims
      if (t.datatype !== v.datatype) problems.push(`${side} "${v.name}": config.pbtxt says ${t.datatype}, the ONNX graph ${v.datatype}`)
      if (full.length !== v.shape.length) {
        problems.push(`${side} "${v.name}": config.pbtxt gives ${full.length} dimensions ${JSON.stringify(full)} (with the batch), the ONNX graph ${v.shape.length} ${JSON.stringify(v.shape)}`)
        return v
      }
      const shape = v.shape.map((g, d) => {
        const c = full[d]!
        if (g > 0 && c > 0 && g !== c) problems.push(`${side} "${v.name}" dimension ${d}: config.pbtxt says ${c}, the ONNX graph ${g}`)
        return g > 0 ? g : c
      })
      return { ...v, shape }
    })
  for (const [side, listed, values] of [['input', config.inputs, graph.inputs], ['output', config.outputs, graph.outputs]] as const) {
    for (const t of listed) if (!values.some((v) => v.name === t.name)) problems.push(`config.pbtxt lists ${side} "${t.name}", which the ONNX graph does not have (it has ${values.map((v) => `"${v.name}"`).join(', ')})`)
  }
  const refined = { ...graph, inputs: refine('input', graph.inputs, config.inputs), outputs: refine('output', graph.outputs, config.outputs) }
  if (problems.length > 0) throw new Error(problems.join('\n'))
  return refined
}
