// The gateway's metrics, on OpenTelemetry. Every metric is declared up front (no lookup by
// name per request) as a Counter, Gauge or Histogram of this module, and bound to one
// MeterProvider per gateway when added: counters and gauges as asynchronous OTel instruments
// that read the values kept here (one Map update per increment, no SDK work on the hot path),
// histograms as OTel histograms with explicit buckets. Readers: the Prometheus exporter, read
// by the admin listener's /metrics (render()), and whatever else src/cli.ts passes in (an
// OTLP exporter when OTEL_METRICS_EXPORTER asks for one).
//
// Prometheus names are the ones given here (no unit suffix is added; counters end in _total),
// labels in sorted order, no per-scope labels, so scrape configs and dashboards keep working.
//
// Series are bounded twice. Label values come from configuration and code only: a value a
// caller sends (a model name in the URL) is mapped first (modelLabel: served names and
// `_unknown`). And each metric holds at most `maxSeriesPerMetric` label sets: past that, new
// ones fold into one overflow series, `otel_metric_overflow="true"`, the OpenTelemetry
// convention; the SDK's own cardinality limit (a view) is set to the same bound for whatever
// reaches it. The label maps here never shrink, and every scrape walks them: without the
// bound, invented label values would grow memory and scrape time for the life of the process.

import type { Attributes, Histogram as OtelHistogram, Meter } from '@opentelemetry/api'
import { PrometheusExporter, PrometheusSerializer } from '@opentelemetry/exporter-prometheus'
import { resourceFromAttributes } from '@opentelemetry/resources'
import { MeterProvider, type MetricReader } from '@opentelemetry/sdk-metrics'

export type Labels = Record<string, string>

/** The labels with their keys in sorted order (stable series identity and exposition order). */
function sortedLabels(labels: Labels): Attributes {
  const keys = Object.keys(labels)
  if (keys.length < 2) return labels
  keys.sort()
  const out: Attributes = {}
  // eslint-disable-next-line bulwark/object-injection -- read-only copy: k comes from Object.keys(labels), the object's own keys
  for (const k of keys) out[k] = labels[k]
  return out
}

function labelKey(labels: Labels): string {
  return JSON.stringify(sortedLabels(labels))
}

/** Label sets per metric when the configuration gives none (the OpenTelemetry SDK's own default). */
export const DEFAULT_MAX_SERIES = 2000

/** The series that label sets past a metric's bound are counted in (the OpenTelemetry SDK's overflow attribute). */
export const OVERFLOW_ATTRIBUTES: Attributes = Object.freeze({ 'otel.metric.overflow': true })
const OVERFLOW_KEY = JSON.stringify(OVERFLOW_ATTRIBUTES)

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

export abstract class Metric {
  readonly name: string
  readonly help: string
  /** Most label sets kept, the overflow series included (set by GatewayMetrics.add). */
  protected maxSeries = DEFAULT_MAX_SERIES
  constructor(name: string, help: string) {
    this.name = name
    this.help = help
  }
  /** Creates the OTel instrument on `meter` (GatewayMetrics.add calls it once), keeping at most `maxSeries` label sets. */
  bind(meter: Meter, maxSeries: number): void {
    this.maxSeries = maxSeries
    this.instrument(meter)
  }
  protected abstract instrument(meter: Meter): void
  /**
   * The key a label set is kept under: its own while there is room (one place is left for the
   * overflow series, as the SDK counts), else the overflow series'.
   */
  protected keyFor(labels: Labels, kept: ReadonlyMap<string, unknown>): string {
    const k = labelKey(labels)
    return kept.has(k) || kept.size < this.maxSeries - 1 ? k : OVERFLOW_KEY
  }
}

/** A monotonic count per label set. */
export class Counter extends Metric {
  private readonly values = new Map<string, { attributes: Attributes; value: number }>()
  inc(labels: Labels = {}, by = 1): void {
    const k = this.keyFor(labels, this.values)
    const v = this.values.get(k)
    if (v) v.value += by
    else this.values.set(k, { attributes: k === OVERFLOW_KEY ? OVERFLOW_ATTRIBUTES : sortedLabels(labels), value: by })
  }
  get(labels: Labels = {}): number {
    return this.values.get(labelKey(labels))?.value ?? 0
  }
  /** The count in the overflow series (label sets past the bound). */
  overflow(): number {
    return this.values.get(OVERFLOW_KEY)?.value ?? 0
  }
  /** Label sets held, the overflow series included. */
  get series(): number {
    return this.values.size
  }
  protected instrument(meter: Meter): void {
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
  protected instrument(meter: Meter): void {
    meter.createObservableGauge(this.name, { description: this.help }).addCallback((result) => {
      for (const [labels, value] of this.read()) result.observe(value, sortedLabels(labels))
    })
  }
}

/** A distribution over fixed buckets. */
export class Histogram extends Metric {
  private readonly buckets: number[]
  private readonly counts = new Map<string, number>()
  private otel: OtelHistogram | null = null
  constructor(name: string, help: string, buckets: number[]) {
    super(name, help)
    this.buckets = buckets
  }
  observe(labels: Labels, value: number): void {
    // The SDK's own limit applies per collection only, and its cumulative state (what
    // Prometheus reads) keeps every label set it was ever given: only bounded sets reach it.
    const k = this.keyFor(labels, this.counts)
    this.counts.set(k, (this.counts.get(k) ?? 0) + 1)
    this.otel?.record(value, k === OVERFLOW_KEY ? OVERFLOW_ATTRIBUTES : sortedLabels(labels))
  }
  /** Observations recorded for a label set (for tests). */
  count(labels: Labels): number {
    return this.counts.get(labelKey(labels)) ?? 0
  }
  /** Observations in the overflow series (label sets past the bound). */
  overflow(): number {
    return this.counts.get(OVERFLOW_KEY) ?? 0
  }
  /** Label sets held, the overflow series included. */
  get series(): number {
    return this.counts.size
  }
  protected instrument(meter: Meter): void {
    this.otel = meter.createHistogram(this.name, { description: this.help, advice: { explicitBucketBoundaries: this.buckets } })
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
}

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
  private readonly maxSeries: number

  constructor(queues: QueueReading, options: MetricsOptions = {}) {
    this.maxSeries = options.maxSeriesPerMetric ?? DEFAULT_MAX_SERIES
    // preventServerStart: the admin listener serves the exposition; the exporter only collects.
    this.prometheus = new PrometheusExporter({ preventServerStart: true, withoutScopeInfo: true })
    this.provider = new MeterProvider({
      resource: resourceFromAttributes(options.resource ?? { 'service.name': 'bulwark' }),
      readers: [this.prometheus, ...(options.readers ?? [])],
      // The same bound in the SDK, for every reader (Prometheus and OTLP): past it, new label
      // sets of an instrument go to its otel.metric.overflow series.
      views: [{ instrumentName: '*', aggregationCardinalityLimit: this.maxSeries }],
    })
    this.meter = this.provider.getMeter('bulwark')
    const queueDepth = new Gauge('bulwark_queue_depth', 'Requests waiting in each model queue.', function* () {
      for (const [model, depth] of queues.queueDepth()) yield [{ model }, depth] as [Labels, number]
    })
    for (const m of [this.requests, this.requestSeconds, this.stageSeconds, this.batchSize, queueDepth]) this.add(m)
  }

  add(...metrics: readonly Metric[]): void {
    for (const metric of metrics) metric.bind(this.meter, this.maxSeries)
  }

  /** The Prometheus text exposition (format 0.0.4) of every metric, as the admin /metrics serves it. */
  async render(): Promise<string> {
    const { resourceMetrics } = await this.prometheus.collect()
    return this.serializer.serialize(resourceMetrics)
  }

  /** Flushes and stops every reader (a last OTLP export). */
  async close(): Promise<void> {
    await this.provider.shutdown().catch(() => {})
  }
}
