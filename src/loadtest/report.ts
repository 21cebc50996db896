// The bench report: one self-contained HTML page (inline CSS and SVG, no script, no network)
// with the run's table, the latency-throughput curve (p50 and p99 against achieved items/s),
// throughput per load level, a latency histogram per step, and, when the gateway's /metrics
// was read, each step's server time split by defence as a stacked bar.

import { GROUP_ORDER } from './breakdown.ts'
import { errorSummary, type BenchResult, type StepResult } from './output.ts'
import { barChart, esc, lineChart, stackedBars } from './svg.ts'

const GROUP_COLORS: Record<string, string> = {
  'front door': '#4e79a7',
  validation: '#f28e2b',
  screening: '#e15759',
  'queue + inference': '#76b7b2',
  privacy: '#59a14f',
  audit: '#edc948',
  answer: '#ff9da7',
  other: '#b07aa1',
  'outside the links': '#bab0ac',
}

const f = (v: number, digits = 2) => (Number.isFinite(v) ? v.toFixed(digits) : '-')

/** One table row, every cell escaped. */
const tr = (cells: string[], tag: 'th' | 'td') => `<tr>${cells.map((c) => `<${tag}>${esc(c)}</${tag}>`).join('')}</tr>`

function table(result: BenchResult): string {
  const mode = result.steps[0]?.mode ?? 'concurrency'
  const head = [mode, 'req/s', 'items/s', 'p50 ms', 'p90 ms', 'p95 ms', 'p99 ms', 'requests', 'stable', 'errors by code']
  const rows = result.steps.map((s) => [
    String(s.level), f(s.stats.rps, 1), f(s.stats.itemsPerSec, 1), f(s.stats.p50Ms), f(s.stats.p90Ms), f(s.stats.p95Ms), f(s.stats.p99Ms), String(s.stats.requests),
    s.cutShort ? 'cut short' : s.stable === null ? 'fixed' : s.stable ? 'yes' : 'no',
    errorSummary(s.stats.codes),
  ])
  return `<table>${tr(head, 'th')}${rows.map((r) => tr(r, 'td')).join('')}</table>`
}

function curves(result: BenchResult): string {
  const label = (s: StepResult) => `${s.mode === 'concurrency' ? 'c' : 'r'}${s.level}`
  const pts = (pick: (s: StepResult) => number) => result.steps.map((s) => ({ x: s.stats.itemsPerSec, y: pick(s), label: label(s) }))
  const latency = lineChart(
    [
      { name: 'p50', color: '#4e79a7', points: pts((s) => s.stats.p50Ms) },
      { name: 'p99', color: '#e15759', points: pts((s) => s.stats.p99Ms).map(({ x, y }) => ({ x, y })) },
    ],
    { xTitle: 'achieved items/s', yTitle: 'latency (ms)', title: 'latency against throughput' },
  )
  const levels = result.steps.map((s) => ({ x: s.level, y: s.stats.itemsPerSec }))
  const throughput = lineChart([{ name: 'items/s', color: '#59a14f', points: levels }, { name: 'req/s', color: '#f28e2b', dashed: true, points: result.steps.map((s) => ({ x: s.level, y: s.stats.rps })) }], {
    xTitle: result.steps[0]?.mode === 'rate' ? 'offered rate (requests/s)' : 'concurrency (clients)',
    yTitle: 'per second',
    title: 'throughput per load level',
  })
  return `<div class="row"><figure>${latency}<figcaption>Latency against achieved throughput, one point per step (c = concurrency, r = rate).</figcaption></figure><figure>${throughput}<figcaption>Throughput per load level.</figcaption></figure></div>`
}

function histograms(result: BenchResult): string {
  const figures = result.steps.map((s) => {
    const h = s.stats.histogram
    const chart = barChart(h.map((b) => String(b.leMs)), h.map((b) => b.count), { xTitle: 'latency, ms (bucket upper bound)', yTitle: 'answers', title: `latency histogram, ${s.mode} ${s.level}`, color: '#4e79a7' })
    return `<figure>${chart}<figcaption>${esc(`${s.mode} ${s.level}: ${s.stats.requests} answers, p50 ${f(s.stats.p50Ms)} ms, p99 ${f(s.stats.p99Ms)} ms`)}</figcaption></figure>`
  })
  return `<h2>Latency per step</h2><div class="row">${figures.join('')}</div>`
}

function breakdown(result: BenchResult): string {
  const steps = result.steps.filter((s) => s.breakdown)
  if (steps.length === 0) return '<h2>Where the time goes</h2><p>Not measured: run with <code>--metrics http://ADMIN/metrics</code> (the gateway\'s admin listener) for the per-defence breakdown.</p>'
  const groups = GROUP_ORDER.filter((g) => steps.some((s) => s.breakdown!.groups.some((x) => x.group === g)))
  const layers = groups.map((g) => ({ name: g, color: GROUP_COLORS[g] ?? '#999', values: steps.map((s) => s.breakdown!.groups.find((x) => x.group === g)?.perRequestMs ?? 0) })) // eslint-disable-line bulwark/object-injection -- g is one of GROUP_ORDER's constants
  const chart = stackedBars(steps.map((s) => `${s.mode === 'concurrency' ? 'c' : 'r'}${s.level}`), layers, { xTitle: 'step', yTitle: 'server ms per request', title: 'server time per request by defence' })
  const head = ['step', 'server ms', ...groups]
  const rows = steps.map((s) => [`${s.mode} ${s.level}`, f(s.breakdown!.serverMeanMs), ...groups.map((g) => {
    const x = s.breakdown!.groups.find((y) => y.group === g)
    return x ? `${f(x.perRequestMs)} (${Math.round(x.share * 100)}%)` : '-'
  })])
  const links = steps.map((s) => `<details><summary>${esc(`${s.mode} ${s.level}: every link`)}</summary><table>${tr(['link', 'defence', 'observations', 'mean ms', 'ms per request', 'share'], 'th')}${s.breakdown!.links.map((l) => tr([l.link, l.group, String(l.count), f(l.meanMs, 3), f(l.perRequestMs, 3), `${(l.share * 100).toFixed(1)}%`], 'td')).join('')}</table></details>`)
  return `<h2>Where the time goes</h2><p>From the gateway's own histograms (<code>bulwark_stage_duration_seconds</code> by link, <code>bulwark_request_duration_seconds</code> by model), diffed over each step's measurement. "answer" is the transport encoding the answer and writing it to the socket; "outside the links" is the server time nothing timed accounts for (routing between the framework's hooks, waiting for the event loop). Link times count every request the gateway served in the step, also other clients'.</p><div class="row"><figure>${chart}<figcaption>Mean server time per request, split by defence.</figcaption></figure></div><table>${tr(head, 'th')}${rows.map((r) => tr(r, 'td')).join('')}</table>${links.join('')}`
}

const CSS = `body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}table{border-collapse:collapse;margin:8px 0 16px}th,td{border:1px solid #ddd;padding:3px 8px;text-align:right;font-size:13px}th{background:#f4f4f4}td:last-child,th:last-child{text-align:left}.row{display:flex;flex-wrap:wrap;gap:16px}figure{margin:0}figcaption{font-size:12px;color:#555;max-width:560px}code{background:#f4f4f4;padding:0 3px}.meta{color:#555;font-size:13px}`

/** The whole page. `generatedAt` is shown as given (an ISO time from the caller's clock). */
export function renderReport(result: BenchResult, generatedAt = ''): string {
  const meta = `${result.protocol.toUpperCase()} ${result.target}, model ${result.model}, ${result.encoding} tensors, ${result.batch} item(s) per request, ${result.callers ?? 1} caller(s)${generatedAt ? `, ${generatedAt}` : ''}`
  const stopped = result.stoppedEarly ? `<p><strong>The run stopped early:</strong> ${esc(result.stoppedEarly)}.</p>` : ''
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(`Bulwark bench: ${result.model}`)}</title><style>${CSS}</style></head>
<body><h1>${esc(`Bulwark bench: ${result.model}`)}</h1><p class="meta">${esc(meta)}</p><p class="meta"><code>${esc(result.command.join(' '))}</code></p>${stopped}
${table(result)}
<h2>Throughput and latency</h2>${curves(result)}
${breakdown(result)}
${histograms(result)}
</body></html>
`
}
