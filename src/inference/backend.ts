// The one entry point every inference backend implements: run this batch. The dynamic
// batcher sits above it; backends know nothing of HTTP or of requests.

import type { Tensor } from './tensor.ts'

export interface Backend {
  /** How many batches can run at once (worker count for local models). */
  readonly concurrency: number
  /** The execution provider actually in use, e.g. "cpu". */
  readonly executionProvider: string
  /** Runs one batch. Rejects with BulwarkError (worker_failed, ...) on failure. */
  execute(inputs: Tensor[], outputNames: readonly string[]): Promise<Tensor[]>
  close(): Promise<void>
}
