// Messages between the ONNX backend and its worker threads.

import type { Datatype } from './tensor.ts'

export interface WireTensor {
  name: string
  datatype: Datatype
  shape: number[]
  /** Exactly the tensor's bytes; transferred, not copied. */
  buffer: ArrayBuffer
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
  | { type: 'result'; id: number; outputs: WireTensor[] }
  | { type: 'failure'; id: number; message: string }
