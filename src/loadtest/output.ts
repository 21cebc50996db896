// The bench's results, as a table for the terminal (perf_analyzer's layout: one row per
// load level), as CSV (one row per step, fixed columns, for a spreadsheet) and as JSON
// (everything, for a script).

import { GROUP_ORDER, type Breakdown } from './breakdown.ts'
import type { StepStats } from './stats.ts'

export interface StepResult {
  /** 'concurrency' (closed loop) or 'rate' (open loop, requests/s offered). */
  mode: 'concurrency' | 'rate'
  level: number
  stats: StepStats
  stable: boolean | null
  cutShort: string | null
  /** From the gateway's /metrics, when --metrics was given and the step saw timed requests. */
  breakdown: Breakdown | null
}

export interface BenchResult {
  /** The command line that produced it, the token flags' values redacted. */
  command: string[]
  target: string
  model: string
  protocol: string
  /** 'typed': gRPC typed contents; 'binary': REST's binary tensor extension or gRPC's raw_input_contents. */
  encoding: 'json' | 'binary' | 'typed'
  /** Identities the requests were spread over, in turn (--callers, or the lines of --token-file). */
  callers?: number
  batch: number
  steps: StepResult[]
  /** Why the run stopped before its last step, or null. */
  stoppedEarly: string | null
}

const ms = (v: number) => (Number.isFinite(v) ? (v < 10 ? v.toFixed(2) : v < 100 ? v.toFixed(1) : v.toFixed(0)) : '-')
const rate = (v: number) => (v < 100 ? v.toFixed(1) : v.toFixed(0))

/** Errors of a step as "code count" pairs, most frequent first; '-' when none. */
export function errorSummary(codes: Record<string, number>): string {
  const errors = Object.entries(codes).filter(([c]) => c !== 'ok').sort((a, b) => b[1] - a[1])
  return errors.length === 0 ? '-' : errors.map(([c, n]) => `${c} ${n}`).join(', ')
}

function pad(rows: string[][], rightAlign: (col: number) => boolean): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)))
  return rows.map((r) => r.map((cell, c) => (rightAlign(c) ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!))).join('  ').trimEnd()).join('\n')
}

export function formatTable(result: BenchResult): string {
  const head = [result.steps[0]?.mode ?? 'concurrency', 'req/s', 'items/s', 'p50 ms', 'p90 ms', 'p95 ms', 'p99 ms', 'requests', 'stable', 'errors']
  const rows = result.steps.map((s) => [
    String(s.level),
    rate(s.stats.rps),
    rate(s.stats.itemsPerSec),
    ms(s.stats.p50Ms),
    ms(s.stats.p90Ms),
    ms(s.stats.p95Ms),
    ms(s.stats.p99Ms),
    String(s.stats.requests),
    s.cutShort ? 'cut short' : s.stable === null ? 'fixed' : s.stable ? 'yes' : 'no',
    errorSummary(s.stats.codes),
  ])
  let text = pad([head, ...rows], (c) => c < 8) + '\n'
  const withBreakdown = result.steps.filter((s) => s.breakdown)
  if (withBreakdown.length > 0) {
    const groups = GROUP_ORDER.filter((g) => withBreakdown.some((s) => s.breakdown!.groups.some((x) => x.group === g)))
    // The gateway's own count over the step, next to the client's: a second opinion on throughput.
    const bhead = [head[0]!, 'server req/s', 'server ms', ...groups]
    const brows = withBreakdown.map((s) => {
      const b = s.breakdown!
      return [String(s.level), rate(b.requests / Math.max(1e-9, s.stats.seconds)), ms(b.serverMeanMs), ...groups.map((g) => {
        const x = b.groups.find((y) => y.group === g)
        return x ? `${ms(x.perRequestMs)} (${Math.round(x.share * 100)}%)` : '-'
      })]
    })
    text += `\nwhere the time goes on the server (mean ms per request, share of server time):\n${pad([bhead, ...brows], () => true)}\n`
  }
  for (const s of result.steps) if (s.cutShort) text += `step ${s.level} was cut short: ${s.cutShort}\n`
  if (result.stoppedEarly) text += `the run stopped early: ${result.stoppedEarly}\n`
  return text
}

const CSV_STATS = ['requests', 'ok', 'items', 'seconds', 'rps', 'itemsPerSec', 'meanMs', 'p50Ms', 'p90Ms', 'p95Ms', 'p99Ms', 'maxMs'] as const

function csvCell(v: string | number | boolean | null): string {
  if (v === null) return ''
  const s = typeof v === 'number' ? (Number.isFinite(v) ? String(Number(v.toPrecision(6))) : '') : String(v)
  return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s
}

export function formatCsv(result: BenchResult): string {
  const groups = GROUP_ORDER.map((g) => `${g.replace(/[^a-z]+/g, '_').replace(/_$/, '')}_ms`)
  const head = ['mode', 'level', ...CSV_STATS, 'stable', 'cut_short', 'errors', 'server_mean_ms', ...groups]
  const rows = result.steps.map((s) => [
    s.mode,
    s.level,
    ...CSV_STATS.map((k) => s.stats[k]),
    s.stable,
    s.cutShort,
    errorSummary(s.stats.codes) === '-' ? '' : Object.entries(s.stats.codes).filter(([c]) => c !== 'ok').map(([c, n]) => `${c}=${n}`).join(' '),
    s.breakdown?.serverMeanMs ?? null,
    ...GROUP_ORDER.map((g) => (s.breakdown ? (s.breakdown.groups.find((x) => x.group === g)?.perRequestMs ?? 0) : null)),
  ])
  return [head, ...rows].map((r) => r.map(csvCell).join(',')).join('\n') + '\n'
}

export function formatJson(result: BenchResult): string {
  return JSON.stringify(result, (_k, v: unknown) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n'
}

const SECRET_FLAGS = new Set(['--token', '--token-command'])

/** argv with the values of --token and --token-command (which may print a secret inline) replaced. */
export function redactArgv(argv: readonly string[]): string[] {
  return argv.map((a, i) => {
    const eq = a.indexOf('=')
    if (eq > 0 && SECRET_FLAGS.has(a.slice(0, eq))) return `${a.slice(0, eq)}=<redacted>`
    return i > 0 && SECRET_FLAGS.has(argv[i - 1]!) ? '<redacted>' : a
  })
}
