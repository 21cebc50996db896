// Per-model inference statistics in the shape of Triton's statistics extension
// (`GET /v2/models[/{name}[/versions/{v}]]/stats`, gRPC ModelStatistics), so Triton's clients
// and perf_analyzer read them as they read Triton's own.
//
// Two sources feed them: the batcher, once per model execution (items run, requests in the
// batch, their time queued, and the batch's input, infer and output times), and the
// model-stats link, once per inference request when its exchange ends (success or failure,
// with its whole time in the gateway). As in Triton, inference_count counts items (batch
// elements, screening's squeezed variants included), execution_count counts model runs, and
// each request of a batch is charged that batch's compute times. Durations are kept in
// nanoseconds as integers; counts only grow (they reset with the process).

import type { Clock } from '../deps.ts'

/** Triton's StatisticDuration: how many, and their total time. */
export interface Duration {
  count: number
  ns: number
}

/** What one model execution (one batch) reports. */
export interface ExecutionTimes {
  /** Items (batch elements) in the execution. */
  items: number
  /** Requests whose items made up the batch. */
  requests: number
  /** Time the batch's requests waited in the queue, summed over them (ms). */
  queueMs: number
  /** Concatenating the requests' inputs (ms). */
  inputMs: number
  /** The backend's run of the batch (ms). */
  inferMs: number
  /** Slicing the outputs back into each request's answer (ms). */
  outputMs: number
}

interface Counters {
  lastInferenceMs: number
  inferenceCount: number
  executionCount: number
  success: Duration
  fail: Duration
  queue: Duration
  computeInput: Duration
  computeInfer: Duration
  computeOutput: Duration
  /** Per batch size: executions and their compute times (Triton's batch_stats). */
  batches: Map<number, { input: Duration; infer: Duration; output: Duration }>
}

/** One model's statistics as Triton's JSON and gRPC carry them. */
export interface ModelStatisticsView {
  name: string
  version: string
  last_inference: number
  inference_count: number
  execution_count: number
  inference_stats: Record<'success' | 'fail' | 'queue' | 'compute_input' | 'compute_infer' | 'compute_output' | 'cache_hit' | 'cache_miss', Duration>
  batch_stats: { batch_size: number; compute_input: Duration; compute_infer: Duration; compute_output: Duration }[]
}

const nsOf = (ms: number) => Math.max(0, Math.round(ms * 1e6))
const zero = (): Duration => ({ count: 0, ns: 0 })
const add = (d: Duration, count: number, ms: number) => {
  d.count += count
  d.ns += nsOf(ms)
}
const copy = (d: Duration): Duration => ({ count: d.count, ns: d.ns })

/** Batch sizes tracked apart; larger ones (never above a model's maxBatchSize of 4096) share one row. */
const MAX_BATCH_ROWS = 4096

const counters = (): Counters => ({
  lastInferenceMs: 0,
  inferenceCount: 0,
  executionCount: 0,
  success: zero(),
  fail: zero(),
  queue: zero(),
  computeInput: zero(),
  computeInfer: zero(),
  computeOutput: zero(),
  batches: new Map(),
})

/** Counters per model version, as Triton keeps them. */
const keyOf = (model: string, version: string) => `${model}\n${version}`

export class ModelStatistics {
  private readonly models = new Map<string, Counters>()
  private readonly clock: Clock
  private readonly served: (name: string, version: string | null) => string | null

  /**
   * `served`: the version of a model this gateway holds that a name and version (null: none
   * named) count under, or null (the registry's statsVersion); nothing else is ever counted,
   * so a caller's made-up model names and versions create no state.
   */
  constructor(served: (name: string, version: string | null) => string | null, clock: Clock) {
    this.served = served
    this.clock = clock
  }

  /** The counters of a served model version, made on first use; undefined for anything else. */
  private of(model: string, asked: string | null): Counters | undefined {
    const version = this.served(model, asked)
    if (version === null) return undefined
    const key = keyOf(model, version)
    let c = this.models.get(key)
    if (c === undefined) this.models.set(key, (c = counters()))
    return c
  }

  /** One model execution (from the batcher of `version`). */
  executed(model: string, t: ExecutionTimes, version: string | null = null): void {
    const c = this.of(model, version)
    if (!c) return
    c.executionCount++
    c.inferenceCount += t.items
    c.lastInferenceMs = this.clock.nowMs()
    add(c.queue, t.requests, t.queueMs)
    add(c.computeInput, t.requests, t.inputMs * t.requests)
    add(c.computeInfer, t.requests, t.inferMs * t.requests)
    add(c.computeOutput, t.requests, t.outputMs * t.requests)
    const size = Math.min(t.items, MAX_BATCH_ROWS)
    let row = c.batches.get(size)
    if (!row) c.batches.set(size, (row = { input: zero(), infer: zero(), output: zero() }))
    add(row.input, 1, t.inputMs)
    add(row.infer, 1, t.inferMs)
    add(row.output, 1, t.outputMs)
  }

  /** One inference request ended (from the model-stats link): answered, or refused or failed; `version`: the one that answered, else the one asked for. */
  finished(model: string, ok: boolean, ms: number, version: string | null = null): void {
    const c = this.of(model, version)
    if (!c) return
    add(ok ? c.success : c.fail, 1, ms)
  }

  /** The statistics of `model` at `version` (a version the registry holds), as Triton's statistics extension shows them. */
  view(model: string, version: string): ModelStatisticsView {
    const c = this.models.get(keyOf(model, version)) ?? counters()
    return {
      name: model,
      version,
      last_inference: c.lastInferenceMs,
      inference_count: c.inferenceCount,
      execution_count: c.executionCount,
      inference_stats: {
        success: copy(c.success),
        fail: copy(c.fail),
        queue: copy(c.queue),
        compute_input: copy(c.computeInput),
        compute_infer: copy(c.computeInfer),
        compute_output: copy(c.computeOutput),
        // No response cache: both stay zero, present because clients expect them.
        cache_hit: zero(),
        cache_miss: zero(),
      },
      batch_stats: [...c.batches.entries()]
        .sort(([a], [b]) => a - b)
        .map(([size, row]) => ({ batch_size: size, compute_input: copy(row.input), compute_infer: copy(row.infer), compute_output: copy(row.output) })),
    }
  }
}
