// The series of every metric are bounded: counters and histograms keep at most
// maxSeriesPerMetric label sets and fold the rest into the overflow series
// (otel_metric_overflow="true") without losing a count; the OpenTelemetry SDK caps what
// reaches it the same way (a gauge read from an unbounded set); and the metrics link labels a
// request by a served model name or `_unknown`, never by a name the caller made up.

import t from 'tap'
import { FakeClock } from '../../kit/clock.ts'
import { BulwarkError, type ErrorCode } from '../../src/errors.ts'
import { createMetricsLink } from '../../src/stages/metrics.ts'
import { Counter, Gauge, GatewayMetrics, Histogram, modelLabeler, UNKNOWN_MODEL, type Labels } from '../../src/telemetry/metrics.ts'
import { fakeContext } from '../helpers/context.ts'

const noQueues = { *queueDepth(): Iterable<[string, number]> {} }

/** The sample lines of one metric in the exposition (no # HELP / # TYPE). */
const samples = (text: string, name: string) => text.split('\n').filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))

t.test('a counter keeps at most maxSeriesPerMetric label sets and counts the rest in the overflow series', async (t) => {
  const metrics = new GatewayMetrics(noQueues, { maxSeriesPerMetric: 10 })
  t.teardown(() => metrics.close())
  const c = new Counter('test_invented_total', 'Counts by an invented label.')
  metrics.add(c)
  for (let i = 0; i < 50; i++) c.inc({ name: `made-up-${i}` })
  c.inc({ name: 'made-up-0' }, 2) // a label set kept before the bound still counts as itself
  t.equal(c.series, 10, '9 label sets and the overflow series')
  t.equal(c.get({ name: 'made-up-0' }), 3)
  t.equal(c.get({ name: 'made-up-8' }), 1, 'the ninth label set is kept')
  t.equal(c.get({ name: 'made-up-9' }), 0, 'the tenth is not')
  t.equal(c.overflow(), 41, 'the other 41 are counted in the overflow series')

  const text = await metrics.render()
  const lines = samples(text, 'test_invented_total')
  t.equal(lines.length, 10, 'the exposition has 10 series')
  t.ok(lines.includes('test_invented_total{otel_metric_overflow="true"} 41'), 'among them the overflow series')
  t.notOk(text.includes('made-up-9"'), 'a label value past the bound is not exported')
  const total = lines.reduce((sum, l) => sum + Number(l.split(' ').at(-1)), 0)
  t.equal(total, 52, 'no count is lost')
})

t.test('a histogram keeps at most maxSeriesPerMetric label sets, in its own count and in the SDK', async (t) => {
  const metrics = new GatewayMetrics(noQueues, { maxSeriesPerMetric: 10 })
  t.teardown(() => metrics.close())
  const h = new Histogram('test_invented_seconds', 'Durations by an invented label.', [0.1, 1])
  metrics.add(h)
  // Two scrapes apart: the SDK's own limit is per collection, and its cumulative state would
  // keep both rounds' label sets.
  for (let i = 0; i < 30; i++) h.observe({ name: `first-${i}` }, 0.5)
  await metrics.render()
  for (let i = 0; i < 30; i++) h.observe({ name: `second-${i}` }, 0.5)
  t.equal(h.series, 10)
  t.equal(h.overflow(), 51)
  const text = await metrics.render()
  const counts = samples(text, 'test_invented_seconds_count')
  t.equal(counts.length, 10, 'the exposition has 10 series')
  t.ok(counts.includes('test_invented_seconds_count{otel_metric_overflow="true"} 51'))
  t.notOk(text.includes('second-'), 'no label set of the second round is exported')
})

t.test("the SDK's cardinality limit caps what reaches it too (a gauge read from an unbounded set)", async (t) => {
  const metrics = new GatewayMetrics(noQueues, { maxSeriesPerMetric: 10 })
  t.teardown(() => metrics.close())
  metrics.add(
    new Gauge('test_invented_gauge', 'Values by an invented label.', function* () {
      for (let i = 0; i < 50; i++) yield [{ name: `g-${i}` }, 1] as [Labels, number]
    }),
  )
  const lines = samples(await metrics.render(), 'test_invented_gauge')
  t.equal(lines.length, 10, '9 label sets and the overflow series')
  t.ok(lines.some((l) => l.startsWith('test_invented_gauge{otel_metric_overflow="true"}')))
})

t.test('the default bound is 2000 label sets per metric', async (t) => {
  const metrics = new GatewayMetrics(noQueues)
  t.teardown(() => metrics.close())
  const c = new Counter('test_default_total', 'Default bound.')
  metrics.add(c)
  for (let i = 0; i < 2500; i++) c.inc({ name: String(i) })
  t.equal(c.series, 2000)
  t.equal(c.overflow(), 501)
})

t.test('modelLabeler: a served name is its own label; any other is _unknown', async (t) => {
  const label = modelLabeler(['mnist', 'ocr-cls'])
  t.equal(label('mnist'), 'mnist')
  t.equal(label('ocr-cls'), 'ocr-cls')
  for (const name of ['ghost', '', 'MNIST', 'mnist ', '__proto__', 'x'.repeat(128)]) t.equal(label(name), UNKNOWN_MODEL, JSON.stringify(name.slice(0, 20)))
})

t.test('the metrics link labels requests by served model, HTTP status and catalogue code only', async (t) => {
  const clock = new FakeClock()
  const metrics = new GatewayMetrics(noQueues)
  t.teardown(() => metrics.close())
  const link = createMetricsLink(metrics, clock, ['mnist'])
  const end = (model: string, status: number, code: ErrorCode | null, verb: 'infer' | 'metadata' = 'infer') => {
    const ctx = fakeContext({ target: { model, verb }, startedMs: clock.monotonicMs() })
    ctx.response = { status, bytesOut: 0 }
    if (code) ctx.error = new BulwarkError(code, 'refused')
    ctx.stageMs = { 'jwt-auth': 1 }
    link.onDestroy!(ctx)
  }
  end('invented-1', 401, 'unauthenticated')
  end('invented-2', 401, 'unauthenticated')
  end('invented-3', 403, 'forbidden', 'metadata')
  end('mnist', 200, null)
  t.equal(metrics.requests.get({ model: UNKNOWN_MODEL, verb: 'infer', status: '401', code: 'unauthenticated' }), 2, 'made-up names on a 401 count as _unknown')
  t.equal(metrics.requests.get({ model: UNKNOWN_MODEL, verb: 'metadata', status: '403', code: 'forbidden' }), 1)
  t.equal(metrics.requests.get({ model: 'mnist', verb: 'infer', status: '200', code: 'ok' }), 1, 'a served model is its own label')
  t.equal(metrics.requestSeconds.count({ model: UNKNOWN_MODEL }), 3)
  t.equal(metrics.requestSeconds.count({ model: 'invented-1' }), 0)
  t.equal(metrics.requests.series, 3, 'three label sets, not one per made-up name')

  // A status outside HTTP's range, or a code outside the catalogue, cannot add values either.
  const odd = fakeContext({ target: { model: 'mnist' } })
  odd.response = { status: 1234, bytesOut: 0 }
  odd.error = Object.assign(new BulwarkError('internal', 'x'), { code: 'made_up_code' }) as BulwarkError
  link.onDestroy!(odd)
  t.equal(metrics.requests.get({ model: 'mnist', verb: 'infer', status: 'other', code: 'internal' }), 1)
  t.notOk((await metrics.render()).includes('made_up_code'))
})
