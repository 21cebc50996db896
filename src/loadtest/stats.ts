// The figures of one step, from its measurement windows: throughput, latency percentiles
// (nearest rank over every answer, no sampling), errors by code, and a latency histogram on
// log-spaced buckets for the report. Also the stability test perf_analyzer uses.

import type { Window } from './generator.ts'

export interface LatencyBucket {
  /** Upper bound of the bucket, milliseconds. */
  leMs: number
  count: number
}

export interface StepStats {
  requests: number
  /** 2xx answers. */
  ok: number
  /** Items in 2xx answers (requests × batch). */
  items: number
  seconds: number
  rps: number
  itemsPerSec: number
  meanMs: number
  p50Ms: number
  p90Ms: number
  p95Ms: number
  p99Ms: number
  maxMs: number
  /** Answers by code: 'ok', the gateway's stable error codes, client-side failures. */
  codes: Record<string, number>
  /** Answers by HTTP status ('0': no answer came). */
  statuses: Record<string, number>
  histogram: LatencyBucket[]
}

/** Nearest-rank percentile of an ascending array; NaN when empty. */
export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!
}

/** Bucket bounds from 0.1 ms to 100 s, eight per decade. */
const BUCKETS_MS = Array.from({ length: 49 }, (_, i) => Number((0.1 * 10 ** (i / 8)).toPrecision(2)))

function histogram(sorted: Float64Array): LatencyBucket[] {
  const out = BUCKETS_MS.map((leMs) => ({ leMs, count: 0 }))
  let b = 0
  for (const v of sorted) {
    while (b < out.length - 1 && v > out[b]!.leMs) b++
    out[b]!.count++
  }
  // Only the span that holds answers, so the report's chart is not mostly empty.
  const first = out.findIndex((x) => x.count > 0)
  const last = out.length - 1 - [...out].reverse().findIndex((x) => x.count > 0)
  return first < 0 ? [] : out.slice(first, last + 1)
}

/** Per-key sums of several tallies. */
function tally(parts: Record<string, number>[]): Record<string, number> {
  const out: Record<string, number> = {}
  for (const part of parts) for (const [k, c] of Object.entries(part)) out[k] = (out[k] ?? 0) + c // eslint-disable-line bulwark/object-injection -- k is a key of a tally built in generator.ts
  return out
}

export function summarise(windows: readonly Window[]): StepStats {
  const n = windows.reduce((s, w) => s + w.latenciesMs.length, 0)
  const sorted = new Float64Array(n)
  let k = 0
  for (const w of windows) for (const v of w.latenciesMs) sorted[k++] = v
  sorted.sort()
  const codes = tally(windows.map((w) => w.codes))
  const statuses = tally(windows.map((w) => w.statuses))
  const items = windows.reduce((s, w) => s + w.items, 0)
  const seconds = windows.reduce((s, w) => s + (w.endMs - w.startMs), 0) / 1000
  const sum = sorted.reduce((s, v) => s + v, 0)
  return {
    requests: n,
    ok: codes.ok ?? 0,
    items,
    seconds,
    rps: seconds > 0 ? n / seconds : 0,
    itemsPerSec: seconds > 0 ? items / seconds : 0,
    meanMs: n > 0 ? sum / n : NaN,
    p50Ms: percentile(sorted, 50),
    p90Ms: percentile(sorted, 90),
    p95Ms: percentile(sorted, 95),
    p99Ms: percentile(sorted, 99),
    maxMs: n > 0 ? sorted[n - 1]! : NaN,
    codes,
    statuses,
    histogram: histogram(sorted),
  }
}

/**
 * perf_analyzer's stability: the last three windows' throughput and mean latency each lie
 * within ±percent of their own average (and every window has answers).
 */
export function stable(windows: readonly Window[], percent: number): boolean {
  if (windows.length < 3) return false
  const last = windows.slice(-3).map((w) => summarise([w]))
  if (last.some((s) => s.requests === 0)) return false
  const within = (xs: number[]) => {
    const mean = xs.reduce((a, b) => a + b, 0) / xs.length
    return xs.every((x) => Math.abs(x - mean) <= (percent / 100) * mean)
  }
  return within(last.map((s) => s.rps)) && within(last.map((s) => s.meanMs))
}
