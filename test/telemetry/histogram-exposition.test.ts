// Histograms keep their buckets, sum and count in this module (the SDK records them only when
// another reader is configured), and /metrics shows them as the SDK would: the exact text for
// a few observations (bucket edges inclusive, NaN and negative values as the SDK treats
// them, label sets written in any key order as one series); the same bytes, scrape after
// scrape, as when the SDK records them (an extra reader configured); the cumulative data
// point an OTel reader would get (start time, min, max); the overflow series taking label
// sets past the bound while kept series go on counting as themselves; and the metrics link
// observing every link that ran.

import t from 'tap'
import { MetricReader, AggregationTemporality } from '@opentelemetry/sdk-metrics'
import { FakeClock } from '../../kit/clock.ts'
import { createMetricsLink } from '../../src/stages/metrics.ts'
import { Counter, Gauge, GatewayMetrics, Histogram, type Labels } from '../../src/telemetry/metrics.ts'
import { fakeContext } from '../helpers/context.ts'

const noQueues = { *queueDepth(): Iterable<[string, number]> {} }

/** A reader that is never collected: its presence makes the histograms record into the SDK. */
class IdleReader extends MetricReader {
  protected async onForceFlush(): Promise<void> {}
  protected async onShutdown(): Promise<void> {}
}

/** The lines of one metric in the exposition, its # HELP and # TYPE included. */
const block = (text: string, name: string) => text.split('\n').filter((l) => l.startsWith(name) || l.startsWith(`# HELP ${name} `) || l.startsWith(`# TYPE ${name} `))

t.test('a histogram renders its buckets, sum and count as the Prometheus text expects', async (t) => {
  const metrics = new GatewayMetrics(noQueues)
  t.teardown(() => metrics.close())
  const h = new Histogram('test_latency_seconds', 'Latency by route.', [0.125, 0.5, 1])
  metrics.add(h)
  // 0.125 is on a bound (le is inclusive), 2 is past the last; the SDK drops a negative value
  // and counts NaN nowhere.
  for (const v of [0.0625, 0.125, 0.25, 2, Number.NaN, -1]) h.observe({ route: 'a', verb: 'get' }, v)
  h.observe({ verb: 'get', route: 'a' }, 0.5) // the same label set, keys in another order
  t.equal(h.series, 1, 'one series for both key orders')
  t.equal(h.count({ route: 'a', verb: 'get' }), 7, 'count() counts every call')
  t.same(block(await metrics.render(), 'test_latency_seconds'), [
    '# HELP test_latency_seconds Latency by route.',
    '# TYPE test_latency_seconds histogram',
    'test_latency_seconds_count{route="a",verb="get"} 5',
    'test_latency_seconds_sum{route="a",verb="get"} 2.9375',
    'test_latency_seconds_bucket{route="a",verb="get",le="0.125"} 2',
    'test_latency_seconds_bucket{route="a",verb="get",le="0.5"} 4',
    'test_latency_seconds_bucket{route="a",verb="get",le="1"} 4',
    'test_latency_seconds_bucket{route="a",verb="get",le="+Inf"} 5',
  ])
  h.observe({ route: 'a', verb: 'get' }, 1)
  h.observe({ route: 'b', verb: 'get' }, 0.25)
  t.same(block(await metrics.render(), 'test_latency_seconds'), [
    '# HELP test_latency_seconds Latency by route.',
    '# TYPE test_latency_seconds histogram',
    'test_latency_seconds_count{route="a",verb="get"} 6',
    'test_latency_seconds_sum{route="a",verb="get"} 3.9375',
    'test_latency_seconds_bucket{route="a",verb="get",le="0.125"} 2',
    'test_latency_seconds_bucket{route="a",verb="get",le="0.5"} 4',
    'test_latency_seconds_bucket{route="a",verb="get",le="1"} 5',
    'test_latency_seconds_bucket{route="a",verb="get",le="+Inf"} 6',
    'test_latency_seconds_count{route="b",verb="get"} 1',
    'test_latency_seconds_sum{route="b",verb="get"} 0.25',
    'test_latency_seconds_bucket{route="b",verb="get",le="0.125"} 0',
    'test_latency_seconds_bucket{route="b",verb="get",le="0.5"} 1',
    'test_latency_seconds_bucket{route="b",verb="get",le="1"} 1',
    'test_latency_seconds_bucket{route="b",verb="get",le="+Inf"} 1',
  ], 'cumulative over scrapes; a new series after the first')
})

/** The same observations, scrape by scrape, into one GatewayMetrics. */
async function scrapes(readers: MetricReader[]): Promise<string[]> {
  const metrics = new GatewayMetrics({ *queueDepth(): Iterable<[string, number]> { yield ['mnist', 2] } }, { readers, maxSeriesPerMetric: 50 })
  const odd = new Histogram('test_odd_seconds', 'Unsorted bounds with infinity.', [1, Infinity, 0.1, 0.5])
  const between = new Counter('test_between_total', 'A counter added between histograms.')
  const last = new Histogram('test_last_seconds', 'Added last, observed late.', [1])
  metrics.add(odd, between, new Gauge('test_gauge', 'A gauge.', () => [[{ k: 'v' }, 1]]), last)
  let seed = 11
  const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648
  const texts = [await metrics.render()]
  for (let round = 0; round < 4; round++) {
    for (let i = 0; i < 500; i++) {
      metrics.stageSeconds.observe({ stage: `link-${Math.floor(next() * 20)}` }, next() * 0.3)
      metrics.requestSeconds.observe({ model: i % 2 ? 'mnist' : 'ocr-cls' }, next() * 2)
      if (i % 7 === 0) odd.observe(i % 2 ? { b: 'x', a: String(i % 3) } : { a: String(i % 3), b: 'x' }, [Number.NaN, -1, 0, 0.1, 0.5, 1, 7][i % 7]!)
      if (i % 11 === 0) between.inc({ z: String(i % 30) })
    }
    if (round === 1) metrics.batchSize.observe({ model: 'mnist' }, Number.NaN)
    if (round === 2) last.observe({}, 0.3)
    texts.push(await metrics.render())
  }
  await metrics.close()
  return texts
}

t.test('the exposition is byte for byte what the SDK renders when it records the histograms', async (t) => {
  const own = await scrapes([])
  const sdk = await scrapes([new IdleReader()])
  t.equal(own.length, 5)
  for (const [i, text] of own.entries()) t.equal(text, sdk[i], `scrape ${i}`)
  t.match(own[4], /test_odd_seconds_bucket\{a="0",b="x",le="0.1"\} \d+\n/, 'infinity dropped from the bounds, the rest sorted')
  t.match(own[4], /bulwark_batch_size_count\{model="mnist"\} 0\n/, 'a series given only NaN is shown, with nothing counted')
})

t.test('an OTel reader would get the cumulative data point: start time from the clock, min, max, sum, count', async (t) => {
  const clock = new FakeClock()
  const metrics = new GatewayMetrics(noQueues, { clock })
  t.teardown(() => metrics.close())
  const h = new Histogram('test_point_seconds', 'A data point.', [1, 2])
  metrics.add(h)
  t.equal(h.collect([1, 0]), undefined, 'nothing before a value')
  const start = clock.nowMs()
  h.observe({ k: 'v' }, 1.5)
  clock.advance(2500)
  h.observe({ k: 'v' }, 0.5)
  h.observe({ k: 'v' }, 3)
  const data = h.collect([9, 0])!
  t.equal(data.aggregationTemporality, AggregationTemporality.CUMULATIVE)
  t.has(data.descriptor, { name: 'test_point_seconds', description: 'A data point.', unit: '' })
  t.equal(data.dataPoints.length, 1)
  const [point] = data.dataPoints
  t.same(point!.attributes, { k: 'v' })
  t.same(point!.startTime, [Math.trunc(start / 1000), (start % 1000) * 1e6], 'the first value set the start')
  t.same(point!.endTime, [9, 0])
  t.same(point!.value, { min: 0.5, max: 3, sum: 5, count: 3, buckets: { boundaries: [1, 2], counts: [1, 1, 1] } })
})

t.test('past the bound, label sets go to the overflow series and kept ones go on counting as themselves', async (t) => {
  const metrics = new GatewayMetrics(noQueues, { maxSeriesPerMetric: 4 })
  t.teardown(() => metrics.close())
  const h = new Histogram('test_bounded_seconds', 'Bounded.', [1])
  metrics.add(h)
  for (const name of ['a', 'b', 'c', 'd', 'e']) h.observe({ name }, 0.5)
  await metrics.render()
  // The next scrape's values: the overflow series first, then new label sets, then all the kept ones.
  for (const name of ['d', 'f', 'g', 'a', 'b', 'c', 'c']) h.observe({ name }, 0.5)
  t.equal(h.series, 4, '3 label sets and the overflow series')
  t.equal(h.overflow(), 5)
  const counts = block(await metrics.render(), 'test_bounded_seconds_count')
  t.same(counts, [
    'test_bounded_seconds_count{name="a"} 2',
    'test_bounded_seconds_count{name="b"} 2',
    'test_bounded_seconds_count{name="c"} 3',
    'test_bounded_seconds_count{otel_metric_overflow="true"} 5',
  ], 'the exposition agrees with count() and overflow()')
  for (const name of ['a', 'b', 'c']) t.equal(h.count({ name }), Number(counts.find((l) => l.includes(`"${name}"`))!.split(' ')[1]))
})

t.test('the metrics link observes the time of every link that ran, once per request', async (t) => {
  const clock = new FakeClock()
  const metrics = new GatewayMetrics(noQueues)
  t.teardown(() => metrics.close())
  const link = createMetricsLink(metrics, clock, ['mnist'])
  for (let i = 0; i < 3; i++) {
    const ctx = fakeContext({ target: { model: 'mnist', verb: 'infer' }, startedMs: clock.monotonicMs() })
    ctx.response = { status: 200, bytesOut: 0 }
    ctx.stageMs = { 'jwt-auth': 0.25, 'model-inference': 4, 'audit-log': 1 }
    clock.advance(8)
    link.onDestroy!(ctx)
  }
  const stages: Labels[] = [{ stage: 'jwt-auth' }, { stage: 'model-inference' }, { stage: 'audit-log' }]
  for (const labels of stages) t.equal(metrics.stageSeconds.count(labels), 3, labels.stage!)
  const text = await metrics.render()
  t.match(text, /bulwark_stage_duration_seconds_sum\{stage="model-inference"\} 0.012\n/)
  t.match(text, /bulwark_stage_duration_seconds_bucket\{stage="jwt-auth",le="0.0005"\} 3\n/)
  t.match(text, /bulwark_request_duration_seconds_sum\{model="mnist"\} 0.024\n/)
})
