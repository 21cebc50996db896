// The one entry point every inference backend implements: run this batch. The dynamic
// batcher sits above it; backends know nothing of HTTP or of requests.

import type { Context } from '@opentelemetry/api'
import type { Tensor } from './tensor.ts'

/** What the batcher knows about the requests in a batch, for backends that call out. */
export interface BatchCall {
  /**
   * The latest deadline of the batch's requests (monotonic ms): past it the call serves
   * nobody. Each request's own deadline is the batcher's to keep: a request whose deadline
   * passes first gets its 504 alone while the call goes on for the others.
   */
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
   * True when execute only reads its inputs, never transferring or keeping their buffers:
   * the batcher then hands a lone request's tensors over without copying. Such a backend
   * holds the pooled request bodies it reads (buffer-pool.ts holdBodies) for as long as it
   * may read them, which can outlast the request. (The ONNX backend transfers buffers to
   * its worker threads, so it gets fresh ones.)
   */
  readonly borrowsInputs?: boolean
  /** Runs one batch. Rejects with BulwarkError (worker_failed, ...) on failure. */
  execute(inputs: Tensor[], outputNames: readonly string[], call: BatchCall): Promise<Tensor[]>
  /**
   * Whether `err`, from execute, refuses the batch for what some of its items hold (an
   * upstream's 4xx about the request) rather than failing it: the batcher then retries the
   * batch's requests apart, so that only the one at fault gets the refusal. Absent: no
   * failure is one request's doing.
   */
  refusesContent?(err: unknown): boolean
  close(): Promise<void>
}
