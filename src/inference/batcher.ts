// Dynamic batcher, one per model. Requests wait in a bounded FIFO; whenever a worker is free
// the batcher takes the queued requests that share the head's shape (up to maxBatchSize
// items), concatenates them into one batch, runs it, and hands each request its slice of
// the outputs. While every worker is busy the queue fills, so batches form by themselves
// under load; maxQueueDelayMicros lets an idle worker wait a little for company.
//
// Bounds: a full queue refuses at once (503 queue_full with Retry-After), and each request's
// deadline is armed from submission, so nothing waits past it (504 deadline_exceeded).
//
// One request affects no other: its deadline, the backend's refusal of its content and its
// body's lifetime are its own. A batch runs to the latest deadline of its requests (a
// client's short `timeout` would otherwise cut the call short for everyone); a request whose
// deadline passes first gets its 504 alone, and when the call returns only the requests still
// within their deadlines are answered. A batch the backend refuses for its content
// (Backend.refusesContent: an upstream's 4xx) is retried apart until the refusal reaches only
// the requests at fault. A request's pooled body (buffer-pool.ts) is held from submission
// until the request is settled, so a client that goes away cannot have it reused under a
// batch that still copies or sends it.
//
// A submission is at most the model's maxBatchSize (InferenceService splits larger ones);
// one larger than this batcher's own maxBatchSize (batching configured smaller, or off) runs
// alone, as sent. Timers come from the injected clock.

import { BulwarkError } from '../errors.ts'
import type { Clock, Timer } from '../deps.ts'
import type { Context } from '@opentelemetry/api'
import type { Backend } from './backend.ts'
import type { ExecutionTimes } from '../oip/stats.ts'
import { batchBuffers, holdBodies, type BodyHold } from './buffer-pool.ts'
import { concatBatches, numericDatatypes, sliceBatch, type Datatype, type Tensor, type TensorData } from './tensor.ts'

export interface BatcherOptions {
  model: string
  backend: Backend
  /** Most items combined into one batch; 1 turns batching off (each request runs as sent). */
  maxBatchSize: number
  maxQueueDelayMicros: number
  maxQueueSize: number
  outputNames: readonly string[]
  clock: Clock
  /** Called with each batch's item count (for metrics). */
  onBatch?: (items: number) => void
  /** Called after each batch that ran, with its requests' queue time and its compute times (for the statistics extension). */
  onExecuted?: (times: ExecutionTimes) => void
}

interface Pending {
  inputs: Tensor[]
  items: number
  shapeKey: string
  enqueuedMs: number
  deadlineMs: number
  trace: Context | undefined
  timer: Timer
  /** The request's pooled body, held until it is settled. */
  body: BodyHold
  settled: boolean
  resolve: (outputs: Tensor[]) => void
  reject: (err: Error) => void
}

/** A refused batch of at most this many requests is retried one request per call; a larger one in halves. */
const ONE_BY_ONE = 4

/** Non-batch dimensions of every input: only requests with equal keys can share a batch. */
function shapeKey(inputs: Tensor[]): string {
  return inputs.map((t) => `${t.name}:${t.shape.slice(1).join('x')}`).join('|')
}

export class DynamicBatcher {
  private readonly opts: BatcherOptions
  private readonly queue: Pending[] = []
  private inFlight = 0
  private flushTimer: Timer | null = null
  private idleWaiters: (() => void)[] = []

  constructor(opts: BatcherOptions) {
    this.opts = opts
  }

  /** The largest batch this batcher forms (1 with batching off). */
  get maxBatchSize(): number {
    return this.opts.maxBatchSize
  }
  get queueDepth(): number {
    return this.queue.length
  }

  get maxQueueSize(): number {
    return this.opts.maxQueueSize
  }

  get running(): number {
    return this.inFlight
  }

  /** Runs `inputs` (batch dimension first) and resolves with this request's outputs. */
  submit(inputs: Tensor[], deadlineMs: number, trace?: Context): Promise<Tensor[]> {
    const { clock } = this.opts
    const now = clock.monotonicMs()
    if (deadlineMs <= now) {
      return Promise.reject(new BulwarkError('deadline_exceeded', 'the request deadline passed before inference started'))
    }
    if (this.queue.length >= this.opts.maxQueueSize) {
      return Promise.reject(
        new BulwarkError('queue_full', `model ${this.opts.model} is at capacity; retry after the Retry-After delay`, {
          reason: `queue holds ${this.queue.length} requests (maxQueueSize)`,
          headers: { 'retry-after': '1' },
        }),
      )
    }
    return new Promise((resolve, reject) => {
      const pending: Pending = {
        inputs,
        items: inputs[0]!.shape[0]!,
        shapeKey: shapeKey(inputs),
        enqueuedMs: now,
        deadlineMs,
        trace,
        body: holdBodies(inputs),
        settled: false,
        resolve,
        reject,
        // Deadlines alone do not keep the process up: whoever waits on the answer does.
        timer: clock.setTimeout(() => this.expire(pending), Math.max(0, deadlineMs - now), { keepAlive: false }),
      }
      this.queue.push(pending)
      this.schedule()
    })
  }

  private expire(p: Pending): void {
    const i = this.queue.indexOf(p)
    if (i >= 0) this.queue.splice(i, 1)
    this.settle(p, new BulwarkError('deadline_exceeded', 'the request deadline passed', {
      reason: i >= 0 ? 'deadline passed while queued' : 'deadline passed while running',
    }))
  }

  private settle(p: Pending, result: Tensor[] | Error): void {
    if (p.settled) return
    p.settled = true
    p.timer.cancel()
    p.body.release()
    if (result instanceof Error) p.reject(result)
    else p.resolve(result)
  }

  private schedule(): void {
    while (this.inFlight < this.opts.backend.concurrency && this.queue.length > 0) {
      const head = this.queue[0]!
      if (this.opts.maxBatchSize > 1 && this.opts.maxQueueDelayMicros > 0) {
        const waitedMs = this.opts.clock.monotonicMs() - head.enqueuedMs
        const remainingMs = this.opts.maxQueueDelayMicros / 1000 - waitedMs
        if (remainingMs > 0 && this.queuedItems(head.shapeKey) < this.opts.maxBatchSize) {
          if (!this.flushTimer) {
            this.flushTimer = this.opts.clock.setTimeout(() => {
              this.flushTimer = null
              this.schedule()
            }, remainingMs)
          }
          return
        }
      }
      this.runBatch(this.takeBatch())
    }
  }

  private queuedItems(key: string): number {
    let n = 0
    for (const p of this.queue) if (p.shapeKey === key) n += p.items
    return n
  }

  /** The head request and the following requests of the same shape, up to maxBatchSize items. */
  private takeBatch(): Pending[] {
    const head = this.queue.shift()!
    const batch = [head]
    let items = head.items
    for (let i = 0; i < this.queue.length && items < this.opts.maxBatchSize; ) {
      const p = this.queue[i]!
      if (p.shapeKey === head.shapeKey && items + p.items <= this.opts.maxBatchSize) {
        batch.push(p)
        items += p.items
        this.queue.splice(i, 1)
      } else i++
    }
    return batch
  }

  private runBatch(batch: Pending[]): void {
    this.inFlight++
    void this.call(batch).catch((err: Error) => {
      for (const p of batch) this.settle(p, err)
    }).finally(() => {
      this.inFlight--
      this.schedule()
      if (this.inFlight === 0 && this.queue.length === 0) for (const w of this.idleWaiters.splice(0)) w()
    })
  }

  /**
   * One backend call for the requests of `group` still waiting (one whose deadline passed has
   * its 504 already and is not sent again), run to the latest of their deadlines. A refusal
   * of the group's content sends its requests again apart: one by one when they are few,
   * else in two halves, each the same way, side by side in the batch's slot. Halving n
   * requests costs at most 2n - 2 further calls, each with fewer items; a lone request's
   * refusal is its own answer.
   */
  private async call(group: Pending[]): Promise<void> {
    const live = group.filter((p) => !p.settled)
    if (live.length === 0) return
    const { backend, clock } = this.opts
    const startedMs = clock.monotonicMs()
    // Concatenate along the batch dimension into pooled buffers that the backend may transfer
    // to its worker; the requests' own tensors stay intact for later stages (audit digests).
    // A backend that only borrows its inputs gets a lone request's tensors as they are.
    const lone = live.length === 1 && backend.borrowsInputs === true
    const inputs = lone ? live[0]!.inputs : concatBatches(live.map((p) => p.inputs), pooledData)
    this.opts.onBatch?.(live.reduce((n, p) => n + p.items, 0))
    let deadlineMs = -Infinity
    for (const p of live) deadlineMs = Math.max(deadlineMs, p.deadlineMs)
    let outputs: Tensor[]
    const inputDoneMs = clock.monotonicMs()
    try {
      outputs = await backend.execute(inputs, this.opts.outputNames, { deadlineMs, trace: live[0]!.trace })
    } catch (err) {
      if (live.length > 1 && backend.refusesContent?.(err) === true) {
        const half = live.length >> 1
        const parts = live.length <= ONE_BY_ONE ? live.map((p) => [p]) : [live.slice(0, half), live.slice(half)]
        await Promise.all(parts.map((part) => this.call(part)))
      } else for (const p of live) this.settle(p, err as Error)
      return
    }
    // A timer can fire late on a busy event loop: a request already past its deadline gets
    // its 504, as if its timer had fired before the answer came.
    const now = clock.monotonicMs()
    let item = 0
    let queueMs = 0
    for (const p of live) {
      queueMs += startedMs - p.enqueuedMs
      if (now >= p.deadlineMs) this.expire(p)
      else this.settle(p, sliceBatch(outputs, item, p.items))
      item += p.items
    }
    this.opts.onExecuted?.({ items: item, requests: live.length, queueMs, inputMs: inputDoneMs - startedMs, inferMs: now - inputDoneMs, outputMs: clock.monotonicMs() - now })
  }

  /** Resolves once nothing is queued or running (for graceful shutdown). */
  drain(): Promise<void> {
    if (this.inFlight === 0 && this.queue.length === 0) return Promise.resolve()
    return new Promise((resolve) => this.idleWaiters.push(resolve))
  }
}

/** `count` elements over a pooled buffer (buffer-pool.ts), which the backend may transfer whole. */
function pooledData(datatype: Datatype, count: number): TensorData {
  const { bytes, array: Ctor } = numericDatatypes[datatype]
  return new Ctor(batchBuffers.take(count * bytes), 0, count)
}

