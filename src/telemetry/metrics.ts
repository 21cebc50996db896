// The gateway's metrics, on OpenTelemetry. Every metric is declared up front (no lookup by
// name per request) as a Counter, Gauge or Histogram of this module, and bound to one
// MeterProvider per gateway when added. Counters and gauges are asynchronous OTel instruments
// that read the values kept here (one number update per increment, no SDK work on the hot
// path). Histograms keep their buckets, sum and count here too, as the SDK's explicit-bucket
// aggregation would (cumulative, the same additions in the same order, so the same bits), and
// render() puts them into the Prometheus exporter's collection where the SDK would have put
// them; the SDK's record path (attribute hashing, a context lookup, a clock read per value)
// was a few percent of a busy gateway's main thread. Only when another reader is configured
// (an OTLP exporter, which may ask for delta temporality) do histograms record into the SDK,
// which then serves every reader. Readers: the Prometheus exporter, read by the admin
// listener's /metrics (render()), and whatever else src/cli.ts passes in (an OTLP exporter
// when OTEL_METRICS_EXPORTER asks for one).
//
// Prometheus names are the ones given here (no unit suffix is added; counters end in _total),
// labels in sorted order, no per-scope labels, so scrape configs and dashboards keep working.
//
// Series are bounded twice. Label values come from configuration and code only: a value a
// caller sends (a model name in the URL) is mapped first (modelLabel: served names and
// `_unknown`). And each metric holds at most `maxSeriesPerMetric` label sets (SeriesIndex):
// past that, new ones fold into one overflow series, `otel_metric_overflow="true"`, the
// OpenTelemetry convention; the SDK's own cardinality limit (a view) is set to the same bound
// for whatever reaches it. The label maps here never shrink, and every scrape walks them:
// without the bound, invented label values would grow memory and scrape time for the life of
// the process.

import { ValueType, type Attributes, type HrTime, type Histogram as OtelHistogram, type Meter } from '@opentelemetry/api'
import { PrometheusExporter, PrometheusSerializer } from '@opentelemetry/exporter-prometheus'
import { resourceFromAttributes } from '@opentelemetry/resources'
import {
  AggregationTemporality,
  DataPointType,
  InstrumentType,
  MeterProvider,
  type HistogramMetricData,
  type MetricData,
  type MetricReader,
  type ResourceMetrics,
} from '@opentelemetry/sdk-metrics'
import { systemClock, type Clock } from '../deps.ts'
import { DEFAULT_MAX_SERIES, SeriesIndex, sortedLabels, type Labels } from './series.ts'

export { DEFAULT_MAX_SERIES, OVERFLOW_ATTRIBUTES, type Labels } from './series.ts'

/** The `model` label of a name that is not served (a made-up one in a URL, or none). */
export const UNKNOWN_MODEL = '_unknown'

/**
 * The `model` label for a name a request carries: itself when it is one of `served` (the
 * configuration's models.serve, or a predicate for the models served now, which a poll or the
 * repository API may change: their names are the operator's folders), else UNKNOWN_MODEL, so
 * callers cannot add label values.
 */
export function modelLabeler(served: Iterable<string> | ((name: string) => boolean)): (name: string) => string {
  if (typeof served === 'function') return (name) => (served(name) ? name : UNKNOWN_MODEL)
  const names = new Set(served)
  return (name) => (names.has(name) ? name : UNKNOWN_MODEL)
}

/** What GatewayMetrics.add gives each metric. */
export interface MetricBinding {
  /** Most label sets kept, the overflow series included. */
  maxSeries: number
  /** Whether histograms record into the SDK (another reader needs it) rather than keep their own buckets. */
  histogramsInSdk: boolean
  /** For the start time of a histogram's series. */
  clock: Pick<Clock, 'nowMs'>
}

/** Epoch milliseconds as OTel's [seconds, nanoseconds] (as the SDK's millisToHrTime does). */
function hrTimeOf(ms: number): HrTime {
  return [Math.trunc(ms / 1000), Math.round((ms % 1000) * 1e6)]
}

export abstract class Metric {
  readonly name: string
  readonly help: string
  constructor(name: string, help: string) {
    this.name = name
    this.help = help
  }
  /** Creates the OTel instrument on `meter` (GatewayMetrics.add calls it once). */
  abstract bind(meter: Meter, binding: MetricBinding): void
}

interface CounterSeries {
  readonly attributes: Attributes
  value: number
}

/** A monotonic count per label set. */
export class Counter extends Metric {
  private readonly values = new SeriesIndex<CounterSeries>((attributes) => ({ attributes, value: 0 }))
  inc(labels: Labels = {}, by = 1): void {
    this.values.get(labels).value += by
  }
  get(labels: Labels = {}): number {
    return this.values.find(labels)?.value ?? 0
  }
  /** The count in the overflow series (label sets past the bound). */
  overflow(): number {
    return this.values.overflow()?.value ?? 0
  }
  /** Label sets held, the overflow series included. */
  get series(): number {
    return this.values.size
  }
  bind(meter: Meter, binding: MetricBinding): void {
    this.values.maxSeries = binding.maxSeries
    meter.createObservableCounter(this.name, { description: this.help }).addCallback((result) => {
      for (const { attributes, value } of this.values.values()) result.observe(value, attributes)
    })
  }
}

/** A value read when metrics are collected. */
export class Gauge extends Metric {
  private readonly read: () => Iterable<[Labels, number]>
  constructor(name: string, help: string, read: () => Iterable<[Labels, number]>) {
    super(name, help)
    this.read = read
  }
  // Gauges read sets the configuration bounds (models, endpoints, detectors); the SDK's limit caps them too.
  bind(meter: Meter): void {
    meter.createObservableGauge(this.name, { description: this.help }).addCallback((result) => {
      for (const [labels, value] of this.read()) result.observe(value, sortedLabels(labels))
    })
  }
}

/** One label set of a histogram: what the SDK's explicit-bucket aggregation keeps for it, cumulative. */
interface HistogramSeries {
  readonly attributes: Attributes
  /** observe() calls, values the SDK drops included (count()). */
  calls: number
  /** Set by the first value the SDK would have taken: from then on the series is exported. */
  startTime: HrTime | null
  /** Per bucket, the last one past the highest bound. */
  readonly counts: number[]
  count: number
  /**
   * The sum as of the last collection, and the sum of the values since: the SDK adds each
   * collection's partial sum to the total, and so does collect(), so the totals are the same
   * floating-point numbers.
   */
  sum: number
  pending: number
  min: number
  max: number
}

/** The bucket of `value`: the first bound not below it (the SDK's binarySearchUB), or the last bucket. */
function bucketOf(bounds: readonly number[], value: number): number {
  let lo = 0
  let hi = bounds.length - 1
  let found = bounds.length
  while (hi >= lo) {
    const mid = (lo + hi) >>> 1
    if (bounds[mid]! < value) lo = mid + 1
    else {
      found = mid
      hi = mid - 1
    }
  }
  return found
}

/** A distribution over fixed buckets. */
export class Histogram extends Metric {
  private readonly buckets: number[]
  /** The bounds as the SDK's aggregation keeps them: sorted, without infinities. */
  private readonly bounds: number[]
  private readonly index = new SeriesIndex<HistogramSeries>((attributes) => ({
    attributes,
    calls: 0,
    startTime: null,
    counts: new Array<number>(this.bounds.length + 1).fill(0),
    count: 0,
    sum: 0,
    pending: 0,
    min: Infinity,
    max: -Infinity,
  }))
  /** Series in the order the SDK would list them (first value taken). */
  private readonly shown: HistogramSeries[] = []
  private otel: OtelHistogram | null = null
  private clock: Pick<Clock, 'nowMs'> = systemClock
  constructor(name: string, help: string, buckets: number[]) {
    super(name, help)
    this.buckets = buckets
    this.bounds = [...buckets].sort((a, b) => a - b).filter((b) => Number.isFinite(b))
  }
  observe(labels: Labels, value: number): void {
    // The SDK's own limit applies per collection only, and its cumulative state (what
    // Prometheus reads) keeps every label set it was ever given: only bounded sets reach it.
    const s = this.index.get(labels)
    s.calls++
    if (this.otel) return this.otel.record(value, s.attributes)
    // As the SDK's histogram: not a number or negative, dropped; NaN shows the series but counts nothing.
    if (typeof value !== 'number' || value < 0) return
    if (s.startTime === null) {
      s.startTime = hrTimeOf(this.clock.nowMs())
      this.shown.push(s)
    }
    if (Number.isNaN(value)) return
    s.count++
    s.pending += value
    s.min = Math.min(value, s.min)
    s.max = Math.max(value, s.max)
    s.counts[bucketOf(this.bounds, value)]!++
  }
  /** Observations recorded for a label set (for tests). */
  count(labels: Labels): number {
    return this.index.find(labels)?.calls ?? 0
  }
  /** Observations in the overflow series (label sets past the bound). */
  overflow(): number {
    return this.index.overflow()?.calls ?? 0
  }
  /** Label sets held, the overflow series included. */
  get series(): number {
    return this.index.size
  }
  bind(meter: Meter, binding: MetricBinding): void {
    this.index.maxSeries = binding.maxSeries
    this.clock = binding.clock
    if (binding.histogramsInSdk) this.otel = meter.createHistogram(this.name, { description: this.help, advice: { explicitBucketBoundaries: this.buckets } })
  }
  /**
   * The cumulative data the SDK would collect now (undefined: it records into the SDK, or no
   * series yet). Each call is a collection: the sums since the last one are added in.
   */
  collect(endTime: HrTime): HistogramMetricData | undefined {
    if (this.otel || this.shown.length === 0) return undefined
    const descriptor = { name: this.name, description: this.help, unit: '', type: InstrumentType.HISTOGRAM, valueType: ValueType.DOUBLE, advice: { explicitBucketBoundaries: this.buckets } }
    return {
      descriptor,
      aggregationTemporality: AggregationTemporality.CUMULATIVE,
      dataPointType: DataPointType.HISTOGRAM,
      dataPoints: this.shown.map((s) => {
        s.sum += s.pending
        s.pending = 0
        const some = s.count > 0
        const value = { min: some ? s.min : undefined, max: some ? s.max : undefined, sum: s.sum, buckets: { boundaries: this.bounds, counts: [...s.counts] }, count: s.count }
        return { attributes: s.attributes, startTime: s.startTime!, endTime, value }
      }),
    }
  }
}

const LATENCY_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]

export interface QueueReading {
  queueDepth(): Iterable<[string, number]>
}

export interface MetricsOptions {
  /** Further readers (e.g. an OTLP exporter); the Prometheus reader is always there. */
  readers?: MetricReader[]
  /** Resource attributes (target_info in Prometheus); default service.name=bulwark. */
  resource?: Record<string, string>
  /** Most label sets per metric, the overflow series included (telemetry.maxSeriesPerMetric); default DEFAULT_MAX_SERIES. */
  maxSeriesPerMetric?: number
  /** For the start time of histogram series; default the system clock. */
  clock?: Pick<Clock, 'nowMs'>
}

const METER_NAME = 'bulwark'

/** Every metric the gateway exports. */
export class GatewayMetrics {
  readonly requests = new Counter('bulwark_requests_total', 'Requests answered, by model, verb, status and error code.')
  readonly requestSeconds = new Histogram('bulwark_request_duration_seconds', 'Time from request arrival to response, by model.', LATENCY_BUCKETS_S)
  readonly stageSeconds = new Histogram('bulwark_stage_duration_seconds', 'Time spent in each pipeline stage.', LATENCY_BUCKETS_S)
  readonly batchSize = new Histogram('bulwark_batch_size', 'Items per batch run on the model.', BATCH_BUCKETS)
  private readonly provider: MeterProvider
  private readonly meter: Meter
  private readonly prometheus: PrometheusExporter
  private readonly serializer = new PrometheusSerializer(undefined, false, undefined, false, true)
  private readonly binding: MetricBinding
  /** Every metric, in the order added: the order the SDK lists them in. */
  private readonly added: Metric[] = []

  constructor(queues: QueueReading, options: MetricsOptions = {}) {
    const readers = options.readers ?? []
    this.binding = { maxSeries: options.maxSeriesPerMetric ?? DEFAULT_MAX_SERIES, histogramsInSdk: readers.length > 0, clock: options.clock ?? systemClock }
    // preventServerStart: the admin listener serves the exposition; the exporter only collects.
    this.prometheus = new PrometheusExporter({ preventServerStart: true, withoutScopeInfo: true })
    this.provider = new MeterProvider({
      resource: resourceFromAttributes(options.resource ?? { 'service.name': 'bulwark' }),
      readers: [this.prometheus, ...readers],
      // The same bound in the SDK, for every reader (Prometheus and OTLP): past it, new label
      // sets of an instrument go to its otel.metric.overflow series.
      views: [{ instrumentName: '*', aggregationCardinalityLimit: this.binding.maxSeries }],
    })
    this.meter = this.provider.getMeter(METER_NAME)
    const queueDepth = new Gauge('bulwark_queue_depth', 'Requests waiting in each model queue.', function* () {
      for (const [model, depth] of queues.queueDepth()) yield [{ model }, depth] as [Labels, number]
    })
    for (const m of [this.requests, this.requestSeconds, this.stageSeconds, this.batchSize, queueDepth]) this.add(m)
  }

  add(...metrics: readonly Metric[]): void {
    for (const metric of metrics) {
      metric.bind(this.meter, this.binding)
      this.added.push(metric)
    }
  }

  /** The Prometheus text exposition (format 0.0.4) of every metric, as the admin /metrics serves it. */
  async render(): Promise<string> {
    const { resourceMetrics } = await this.prometheus.collect()
    return this.serializer.serialize(this.binding.histogramsInSdk ? resourceMetrics : this.withHistograms(resourceMetrics))
  }

  /**
   * The SDK's collection with the histograms kept here put in, each where the SDK would have
   * listed it had it recorded them: the meter's metrics in the order added, those with data.
   */
  private withHistograms(collected: ResourceMetrics): ResourceMetrics {
    const endTime = hrTimeOf(this.binding.clock.nowMs())
    const scope = collected.scopeMetrics.find((s) => s.scope.name === METER_NAME)
    const fromSdk = new Map(scope?.metrics.map((m) => [m.descriptor.name, m]))
    const metrics: MetricData[] = []
    for (const metric of this.added) {
      const data = metric instanceof Histogram ? metric.collect(endTime) : fromSdk.get(metric.name)
      if (data === undefined) continue
      metrics.push(data)
      fromSdk.delete(metric.name)
    }
    metrics.push(...fromSdk.values())
    if (metrics.length === 0) return collected
    const merged = { scope: scope?.scope ?? { name: METER_NAME }, metrics }
    const scopeMetrics = scope ? collected.scopeMetrics.map((s) => (s === scope ? merged : s)) : [...collected.scopeMetrics, merged]
    return { ...collected, scopeMetrics }
  }

  /** Flushes and stops every reader (a last OTLP export). */
  async close(): Promise<void> {
    await this.provider.shutdown().catch(() => {})
  }
}
