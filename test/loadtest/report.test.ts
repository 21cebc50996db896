// The HTML report: well formed (every tag closed in order, text escaped, nothing loaded from
// elsewhere) even for a model name full of markup; a latency-throughput curve with p50 and
// p99 points per step, a throughput chart, one latency histogram per step, and a stacked
// bar per step with one segment per defence that took time; without a breakdown, the page
// says how to get one. The checker itself refuses broken pages. Where Debian's chromium is
// installed, a real headless browser parses the page into the same charts and screenshots it.

import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import type { Breakdown } from '../../src/loadtest/breakdown.ts'
import type { BenchResult, StepResult } from '../../src/loadtest/output.ts'
import { renderReport } from '../../src/loadtest/report.ts'
import { summarise } from '../../src/loadtest/stats.ts'
import { wellFormedProblems } from './well-formed.ts'

const breakdown = (serverMeanMs: number): Breakdown => ({
  requests: 100,
  serverMeanMs,
  links: [{ link: 'jwt-auth', group: 'front door', count: 100, meanMs: 0.2, perRequestMs: 0.2, share: 0.2 / serverMeanMs }],
  groups: [
    { group: 'front door', perRequestMs: 0.2, share: 0.2 / serverMeanMs },
    { group: 'queue + inference', perRequestMs: serverMeanMs - 0.5, share: (serverMeanMs - 0.5) / serverMeanMs },
    { group: 'audit', perRequestMs: 0.3, share: 0.3 / serverMeanMs },
  ],
})

function step(level: number, latencyMs: number, withBreakdown: boolean): StepResult {
  const latenciesMs = Array.from({ length: 50 }, (_, i) => latencyMs * (0.5 + i / 50))
  const stats = summarise([{ startMs: 0, endMs: 500, latenciesMs, items: 50, codes: { ok: 48, rate_limited: 2 }, statuses: { 200: 48, 429: 2 } }])
  return { mode: 'concurrency', level, stats, stable: true, cutShort: null, breakdown: withBreakdown ? breakdown(latencyMs) : null }
}

const result = (withBreakdown: boolean): BenchResult => ({
  command: ['bulwark', 'bench', '--model', 'm', '--token', '<redacted>'],
  target: 'https://127.0.0.1:8443',
  model: '<script>alert("x")</script> & co',
  protocol: 'rest',
  encoding: 'json',
  batch: 1,
  callers: 4,
  steps: [step(1, 2, withBreakdown), step(4, 5, withBreakdown), step(16, 19, withBreakdown)],
  stoppedEarly: null,
})

const count = (text: string, re: RegExp) => [...text.matchAll(re)].length

t.test('a report with the breakdown: well formed, every chart there', async (t) => {
  const html = renderReport(result(true), '2026-12-03T10:00:00.000Z')
  t.same(wellFormedProblems(html), [], 'well formed, self-contained')
  t.notMatch(html, /<script>alert/, 'the model name is escaped')
  t.match(html, /&lt;script&gt;alert\(&quot;x&quot;\)&lt;\/script&gt; &amp; co/)
  t.equal(count(html, /<svg /g), 2 + 1 + 3, 'two curves, the breakdown, a histogram per step')
  const [latency] = html.match(/<svg [^>]*aria-label="latency against throughput"[^]*?<\/svg>/)!
  t.equal(count(latency, /<circle /g), 6, 'p50 and p99 points for three steps')
  t.equal(count(latency, /<polyline /g), 2, 'a p50 line and a p99 line')
  const [bars] = html.match(/<svg [^>]*aria-label="server time per request by defence"[^]*?<\/svg>/)!
  t.equal(count(bars, /<rect x=/g), 3 * 3, 'three segments (front door, inference, audit) for each of three steps')
  t.match(bars, /<title>c16: queue \+ inference 18\.5<\/title>/, 'each segment says what it is')
  t.match(html, /rate_limited 2/, 'errors by code in the table')
  t.match(html, /2026-12-03T10:00:00\.000Z/)
  t.match(html, /1 item\(s\) per request, 4 caller\(s\)/, 'how many identities the load was spread over')
  t.match(html, /<code>bulwark bench --model m --token &lt;redacted&gt;<\/code>/, 'the command line that made it')
})

t.test('without a breakdown the page says how to get one', async (t) => {
  const html = renderReport(result(false))
  t.same(wellFormedProblems(html), [])
  t.match(html, /Not measured: run with <code>--metrics http:\/\/ADMIN\/metrics<\/code>/)
  t.equal(count(html, /<svg /g), 2 + 3)
})

t.test('the checker refuses broken pages', async (t) => {
  t.match(wellFormedProblems('<!DOCTYPE html><html><svg><g></svg></html>'), [/<\/svg> closes <g>/])
  t.match(wellFormedProblems('<html><p>a < b</p></html>'), [/stray < or >/])
  t.match(wellFormedProblems('<html><p>R&D</p></html>'), [/a bare &/])
  t.match(wellFormedProblems('<html><img src="https://cdn.example/x.png"/></html>'), [/a script or a src\/href attribute/, /loads from elsewhere/])
  t.match(wellFormedProblems('<html><p></html>'), [/<\/html> closes <p>/, /never closed: html/])
})

const chromium = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p))

t.test('a real headless browser renders it', { skip: chromium ? false : 'Debian\'s chromium is not installed' }, async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-report-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'report.html')
  const html = renderReport(result(true))
  await writeFile(file, html)
  const run = promisify(execFile)
  // Root in a container has no user namespace for chromium's sandbox; the page has no script anyway.
  const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--window-size=1200,1600']
  const { stdout: dom } = await run(chromium!, [...flags, '--dump-dom', `file://${file}`], { timeout: 60_000, maxBuffer: 16 << 20 })
  t.equal(count(dom, /<svg /g), count(html, /<svg /g), 'the browser parsed every chart')
  t.equal(count(dom, /<rect /g), count(html, /<rect /g), 'and every bar and legend swatch in them')
  const png = path.join(dir, 'report.png')
  await run(chromium!, [...flags, `--screenshot=${png}`, `file://${file}`], { timeout: 60_000 })
  const image = await readFile(png)
  t.same([...image.subarray(1, 4)].map((c) => String.fromCharCode(c)).join(''), 'PNG', 'a PNG')
  t.same([image.readUInt32BE(16), image.readUInt32BE(20)], [1200, 1600], 'of the window\'s size')
})
