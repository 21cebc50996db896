// The JSON form of a tensor's `data` (the protocol allows it flat or nested, row-major) as a
// typed array: one decoder for the requests the gateway receives and the responses an
// upstream model pod sends. The elements are counted against the shape before anything is
// allocated, so a small body cannot make the gateway allocate what its shape claims.

import { allocate, type Datatype, type TensorData } from '../inference/tensor.ts'

/** What is wrong with the data: its length disagrees with the shape, or its form or an element is wrong. */
export type JsonDataProblem = 'length' | 'format'

/** How each caller turns a problem into its own refusal (400 for a client, 502-like for an upstream). */
export type JsonDataFail = (problem: JsonDataProblem, message: string) => Error

const MAX_DEPTH = 32

/** Calls `leaf` on every non-array element, depth first; throws `tooDeep()` past MAX_DEPTH levels. */
function walk(data: unknown[], leaf: (v: unknown) => void, tooDeep: () => Error): void {
  const stack: { arr: unknown[]; i: number }[] = [{ arr: data, i: 0 }]
  while (stack.length > 0) {
    const top = stack[stack.length - 1]!
    if (top.i === top.arr.length) {
      stack.pop()
      continue
    }
    const v = top.arr[top.i++]
    if (Array.isArray(v)) {
      if (stack.length > MAX_DEPTH) throw tooDeep()
      stack.push({ arr: v, i: 0 })
    } else {
      leaf(v)
    }
  }
}

/**
 * `data` as a typed array of `count` elements of `datatype`, every element's type checked.
 * `what` names the tensor in messages (`input "x"`, `output "y"`).
 */
export function decodeJsonData(what: string, datatype: Datatype, data: unknown, count: number, fail: JsonDataFail): TensorData {
  if (!Array.isArray(data)) throw fail('format', `${what}: "data" must be an array (flat or nested)`)
  if (datatype === 'FP16') throw fail('format', `${what}: send FP16 tensors as binary data`)
  const tooDeep = () => fail('format', `${what}: "data" is nested more than ${MAX_DEPTH} levels deep`)
  // Count first: the allocation below is sized by the shape, which the data must back.
  let n = 0
  walk(data, () => {
    if (++n > count) throw fail('length', `${what}: "data" has more than the ${count} elements its shape implies`)
  }, tooDeep)
  if (n !== count) throw fail('length', `${what}: "data" has ${n} elements but shape implies ${count}`)

  const out = allocate(datatype, count)
  const isBig = datatype === 'INT64' || datatype === 'UINT64'
  const isBool = datatype === 'BOOL'
  let i = 0
  walk(data, (v) => {
    if (isBool) {
      if (typeof v !== 'boolean') throw fail('format', `${what}: element ${i} must be true or false for BOOL`)
      out[i++] = v ? 1 : 0
    } else if (typeof v !== 'number') {
      throw fail('format', `${what}: element ${i} is ${v === null ? 'null' : typeof v}; ${datatype} data must be numbers`)
    } else if (isBig) {
      if (!Number.isSafeInteger(v)) throw fail('format', `${what}: element ${i} (${v}) is not an integer in the safe range`)
      ;(out as BigInt64Array)[i++] = BigInt(v)
    } else {
      ;(out as Float32Array)[i++] = v
    }
  }, tooDeep)
  return out
}
