// Prometheus metrics, declared up front (no lookup by name per request), rendered in the
// text exposition format on the admin listener.

type Labels = Record<string, string>

function labelKey(labels: Labels): string {
  const keys = Object.keys(labels).sort()
  // eslint-disable-next-line bulwark/object-injection -- read-only: k comes from Object.keys(labels), the object's own keys
  return keys.map((k) => `${k}="${String(labels[k]).replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',')
}

abstract class Metric {
  readonly name: string
  readonly help: string
  abstract readonly type: string
  constructor(name: string, help: string) {
    this.name = name
    this.help = help
  }
  abstract lines(): string[]
  render(): string {
    return [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} ${this.type}`, ...this.lines()].join('\n')
  }
}

export class Counter extends Metric {
  readonly type = 'counter'
  private readonly values = new Map<string, number>()
  inc(labels: Labels = {}, by = 1): void {
    const k = labelKey(labels)
    this.values.set(k, (this.values.get(k) ?? 0) + by)
  }
  get(labels: Labels = {}): number {
    return this.values.get(labelKey(labels)) ?? 0
  }
  lines(): string[] {
    return [...this.values].map(([k, v]) => `${this.name}${k ? `{${k}}` : ''} ${v}`)
  }
}

export class Gauge extends Metric {
  readonly type = 'gauge'
  private readonly read: () => Iterable<[Labels, number]>
  constructor(name: string, help: string, read: () => Iterable<[Labels, number]>) {
    super(name, help)
    this.read = read
  }
  lines(): string[] {
    return [...this.read()].map(([l, v]) => {
      const k = labelKey(l)
      return `${this.name}${k ? `{${k}}` : ''} ${v}`
    })
  }
}

export class Histogram extends Metric {
  readonly type = 'histogram'
  private readonly buckets: number[]
  private readonly series = new Map<string, { counts: number[]; sum: number; count: number }>()
  constructor(name: string, help: string, buckets: number[]) {
    super(name, help)
    this.buckets = buckets
  }
  observe(labels: Labels, value: number): void {
    const k = labelKey(labels)
    let s = this.series.get(k)
    if (!s) this.series.set(k, (s = { counts: new Array(this.buckets.length).fill(0), sum: 0, count: 0 }))
    for (let i = 0; i < this.buckets.length; i++) if (value <= this.buckets[i]!) s.counts[i]!++
    s.sum += value
    s.count++
  }
  count(labels: Labels): number {
    return this.series.get(labelKey(labels))?.count ?? 0
  }
  lines(): string[] {
    const out: string[] = []
    for (const [k, s] of this.series) {
      const sep = k ? `${k},` : ''
      this.buckets.forEach((b, i) => out.push(`${this.name}_bucket{${sep}le="${b}"} ${s.counts[i]}`))
      out.push(`${this.name}_bucket{${sep}le="+Inf"} ${s.count}`)
      out.push(`${this.name}_sum${k ? `{${k}}` : ''} ${s.sum}`)
      out.push(`${this.name}_count${k ? `{${k}}` : ''} ${s.count}`)
    }
    return out
  }
}

const LATENCY_BUCKETS_S = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]

export interface QueueReading {
  queueDepth(): Iterable<[string, number]>
}

/** Every metric the gateway exports. */
export class GatewayMetrics {
  readonly requests = new Counter('bulwark_requests_total', 'Requests answered, by model, verb, status and error code.')
  readonly requestSeconds = new Histogram('bulwark_request_duration_seconds', 'Time from request arrival to response, by model.', LATENCY_BUCKETS_S)
  readonly stageSeconds = new Histogram('bulwark_stage_duration_seconds', 'Time spent in each pipeline stage.', LATENCY_BUCKETS_S)
  readonly batchSize = new Histogram('bulwark_batch_size', 'Items per batch run on the model.', BATCH_BUCKETS)
  private readonly all: Metric[]

  constructor(queues: QueueReading) {
    const queueDepth = new Gauge('bulwark_queue_depth', 'Requests waiting in each model queue.', function* () {
      for (const [model, depth] of queues.queueDepth()) yield [{ model }, depth] as [Labels, number]
    })
    this.all = [this.requests, this.requestSeconds, this.stageSeconds, this.batchSize, queueDepth]
  }

  add(metric: Metric): void {
    this.all.push(metric)
  }

  render(): string {
    return this.all.map((m) => m.render()).join('\n') + '\n'
  }
}
