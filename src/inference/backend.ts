// The one entry point every inference backend implements: run this batch. The dynamic
// batcher sits above it; backends know nothing of HTTP or of requests.

import type { Context } from '@opentelemetry/api'
import type { Tensor } from './tensor.ts'

/** What the batcher knows about the requests in a batch, for backends that call out. */
export interface BatchCall {
  /** The earliest deadline of the batch's requests (monotonic ms): nothing may run past it. */
  deadlineMs: number
  /** Trace context of the first request's inference stage, for propagation (src/telemetry/tracing.ts). */
  trace?: Context | undefined
}

export interface Backend {
  /** How many batches can run at once (worker count for local models). */
  readonly concurrency: number
  /** The execution provider actually in use, e.g. "cpu". */
  readonly executionProvider: string
  /**
   * True when execute only reads its inputs during the call, never transferring or keeping
   * their buffers: the batcher then hands a lone request's tensors over without copying.
   * (The ONNX backend transfers buffers to its worker threads, so it gets fresh ones.)
   */
  readonly borrowsInputs?: boolean
  /** Runs one batch. Rejects with BulwarkError (worker_failed, ...) on failure. */
  execute(inputs: Tensor[], outputNames: readonly string[], call: BatchCall): Promise<Tensor[]>
  close(): Promise<void>
}
