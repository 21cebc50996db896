// Tensor datatypes as the Open Inference Protocol v2 names them, with the typed array and
// element size each one maps to. BYTES (variable-length strings) is not supported by the
// bundled models and is refused by validation with a clear message.

export const numericDatatypes = {
  BOOL: { bytes: 1, array: Uint8Array, ort: 'bool' },
  UINT8: { bytes: 1, array: Uint8Array, ort: 'uint8' },
  UINT16: { bytes: 2, array: Uint16Array, ort: 'uint16' },
  UINT32: { bytes: 4, array: Uint32Array, ort: 'uint32' },
  UINT64: { bytes: 8, array: BigUint64Array, ort: 'uint64' },
  INT8: { bytes: 1, array: Int8Array, ort: 'int8' },
  INT16: { bytes: 2, array: Int16Array, ort: 'int16' },
  INT32: { bytes: 4, array: Int32Array, ort: 'int32' },
  INT64: { bytes: 8, array: BigInt64Array, ort: 'int64' },
  FP16: { bytes: 2, array: Uint16Array, ort: 'float16' },
  FP32: { bytes: 4, array: Float32Array, ort: 'float32' },
  FP64: { bytes: 8, array: Float64Array, ort: 'float64' },
} as const

export type Datatype = keyof typeof numericDatatypes
export const datatypes = Object.keys(numericDatatypes) as Datatype[]

export type TensorData =
  | Uint8Array
  | Uint16Array
  | Uint32Array
  | BigUint64Array
  | Int8Array
  | Int16Array
  | Int32Array
  | BigInt64Array
  | Float32Array
  | Float64Array

export interface Tensor {
  name: string
  datatype: Datatype
  /** Concrete shape; the first dimension is the batch. */
  shape: number[]
  data: TensorData
}

export function isDatatype(value: unknown): value is Datatype {
  return typeof value === 'string' && Object.hasOwn(numericDatatypes, value)
}

export function elementCount(shape: readonly number[]): number {
  let n = 1
  for (const d of shape) n *= d
  return n
}

export function bytesPerElement(datatype: Datatype): number {
  return numericDatatypes[datatype].bytes
}

/** A typed array of `count` elements of `datatype` over a fresh buffer. */
export function allocate(datatype: Datatype, count: number): TensorData {
  const Ctor = numericDatatypes[datatype].array
  return new Ctor(count)
}

/**
 * A typed-array view of little-endian bytes. Copies only when the bytes are not aligned for
 * the element size (a view must start at a multiple of it) or the host is big-endian.
 */
export function viewBytes(datatype: Datatype, bytes: Uint8Array): TensorData {
  const { bytes: size, array: Ctor } = numericDatatypes[datatype]
  const count = bytes.byteLength / size
  if (bytes.byteOffset % size === 0) return new Ctor(bytes.buffer as ArrayBuffer, bytes.byteOffset, count)
  const copy = new Uint8Array(bytes.byteLength)
  copy.set(bytes)
  return new Ctor(copy.buffer, 0, count)
}

/** The little-endian bytes of a tensor's data, without copying. */
export function tensorBytes(data: TensorData): Uint8Array {
  return new Uint8Array(data.buffer, data.byteOffset, data.byteLength)
}

/** Items per row of a batch-first tensor's data (0 for an empty batch). */
function rowLength(t: Tensor): number {
  const items = t.shape[0]!
  return items === 0 ? 0 : t.data.length / items
}

/** Rows [start, start + count) of each batch-first tensor, as views of their data (no copy). */
export function sliceBatch(tensors: readonly Tensor[], start: number, count: number): Tensor[] {
  return tensors.map((t) => {
    const per = rowLength(t)
    return { name: t.name, datatype: t.datatype, shape: [count, ...t.shape.slice(1)], data: t.data.subarray(start * per, (start + count) * per) }
  })
}

/**
 * Batches of the same tensors (the k-th tensor of each batch alike but for the batch
 * dimension) joined in order along that dimension, copied into storage from `alloc` (fresh
 * arrays unless given: the batcher passes its pooled buffers).
 */
export function concatBatches(batches: readonly (readonly Tensor[])[], alloc: (datatype: Datatype, count: number) => TensorData = allocate): Tensor[] {
  return batches[0]!.map((first, k) => {
    let items = 0
    let total = 0
    for (const b of batches) {
      items += b[k]!.shape[0]!
      total += b[k]!.data.length
    }
    const data = alloc(first.datatype, total)
    let offset = 0
    for (const b of batches) {
      const src = b[k]!.data
      // One datatype per k: the cast only satisfies the typed-array union.
      ;(data as Float32Array).set(src as Float32Array, offset)
      offset += src.length
    }
    return { name: first.name, datatype: first.datatype, shape: [items, ...first.shape.slice(1)], data }
  })
}
