// Messages between the ONNX backend and its worker threads.

import type { Datatype } from './tensor.ts'

export interface WireTensor {
  name: string
  datatype: Datatype
  shape: number[]
  /** The tensor's bytes, from offset 0; transferred, not copied. */
  buffer: ArrayBuffer
  /** Bytes of the tensor when the buffer is larger (a pooled batch buffer); else all of it. */
  byteLength?: number
}

export interface WorkerInit {
  model: Uint8Array
  intraOpThreads: number
  executionProviders: string[]
  /** Nice value for the worker and its ONNX Runtime threads (0 = unchanged). */
  niceness: number
  /** Whether ONNX Runtime's intra-op threads busy-wait for work. */
  spinning: boolean
}

export interface WorkerRequest {
  id: number
  inputs: WireTensor[]
  outputs: string[]
}

export type WorkerResponse =
  | { type: 'ready'; provider: string; notes: string[]; inputNames: readonly string[]; outputNames: readonly string[] }
  | { type: 'load-failed'; message: string }
  /** `recycle`: the request's input buffers, handed back for reuse (buffer-pool.ts). */
  | { type: 'result'; id: number; outputs: WireTensor[]; recycle?: ArrayBuffer[] }
  | { type: 'failure'; id: number; message: string; recycle?: ArrayBuffer[] }
