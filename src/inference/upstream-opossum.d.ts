// The part of opossum 9's API that src/inference/upstream-backend.ts uses (opossum ships no
// type declarations).

declare module 'opossum' {
  import { EventEmitter } from 'node:events'

  namespace CircuitBreaker {
    interface Options {
      /** Per-call timeout in ms, or false for none (the upstream backend enforces its own). */
      timeout?: number | false
      errorThresholdPercentage?: number
      resetTimeout?: number
      rollingCountTimeout?: number
      rollingCountBuckets?: number
      rollingPercentilesEnabled?: boolean
      volumeThreshold?: number
      /** True: the error does not count as a failure. */
      errorFilter?: (err: unknown) => boolean
      enableSnapshots?: boolean
      name?: string
    }
    interface Stats {
      fires: number
      failures: number
      successes: number
      rejects: number
      timeouts: number
    }
  }

  class CircuitBreaker<TArgs extends unknown[] = unknown[], TResult = unknown> extends EventEmitter {
    constructor(action: (...args: TArgs) => Promise<TResult>, options?: CircuitBreaker.Options)
    fire(...args: TArgs): Promise<TResult>
    readonly opened: boolean
    readonly halfOpen: boolean
    readonly closed: boolean
    readonly pendingClose: boolean
    readonly stats: CircuitBreaker.Stats
    open(): void
    close(): void
    shutdown(): void
    static isOurError(err: unknown): boolean
  }

  export default CircuitBreaker
}
