// A small load generator on undici: closed loop (N clients each sending back to back) or
// open loop (a fixed request rate). Bounded by time and count, loopback targets only, and
// it stops by itself. Latency is measured per request from send to last byte.

import { performance } from 'node:perf_hooks'
import { Pool, type Dispatcher } from 'undici'
import type { LoadRequest } from '../kit/payloads.ts'

export interface LoadResult {
  requests: number
  ok: number
  errors: number
  statuses: Record<string, number>
  seconds: number
  rps: number
  itemsPerSec: number
  p50: number
  p90: number
  p99: number
  max: number
}

export interface LoadOptions {
  origin: string
  /** Extra undici connect options (TLS client certificates). */
  connect?: Record<string, unknown>
  durationMs: number
  maxRequests?: number
  warmupMs?: number
  next: (i: number) => LoadRequest
}

function assertLoopback(origin: string): void {
  const host = new URL(origin).hostname
  if (host !== '127.0.0.1' && host !== 'localhost' && host !== '[::1]') throw new Error(`load tests target loopback only, not ${host}`)
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}

function summarise(latencies: number[], statuses: Record<string, number>, items: number, seconds: number, errors: number): LoadResult {
  latencies.sort((a, b) => a - b)
  const ok = Object.entries(statuses).filter(([s]) => s.startsWith('2')).reduce((n, [, c]) => n + c, 0)
  return {
    requests: latencies.length,
    ok,
    errors,
    statuses,
    seconds,
    rps: latencies.length / seconds,
    itemsPerSec: items / seconds,
    p50: percentile(latencies, 50),
    p90: percentile(latencies, 90),
    p99: percentile(latencies, 99),
    max: latencies[latencies.length - 1] ?? NaN,
  }
}

async function send(pool: Dispatcher, r: LoadRequest): Promise<number> {
  const res = await pool.request({ method: r.method, path: r.path, headers: r.headers, body: r.body })
  await res.body.dump({ limit: Infinity })
  return res.statusCode
}

/** N clients, each sending its next request as soon as the last one is answered. */
export async function closedLoop(opts: LoadOptions & { concurrency: number }): Promise<LoadResult> {
  assertLoopback(opts.origin)
  const pool = new Pool(opts.origin, { connections: opts.concurrency, pipelining: 1, connect: opts.connect, keepAliveTimeout: 60_000 })
  try {
    if (opts.warmupMs) {
      const until = performance.now() + opts.warmupMs
      await Promise.all(Array.from({ length: opts.concurrency }, async (_, c) => {
        while (performance.now() < until) await send(pool, opts.next(c)).catch(() => 0)
      }))
    }
    const latencies: number[] = []
    const statuses: Record<string, number> = {}
    let items = 0
    let errors = 0
    let issued = 0
    const start = performance.now()
    const end = start + opts.durationMs
    const max = opts.maxRequests ?? Infinity
    await Promise.all(Array.from({ length: opts.concurrency }, async () => {
      while (performance.now() < end && issued < max) {
        const r = opts.next(issued++)
        const t0 = performance.now()
        try {
          const status = await send(pool, r)
          statuses[status] = (statuses[status] ?? 0) + 1
          if (status < 300) items += r.items ?? 1
        } catch {
          errors++
          statuses.error = (statuses.error ?? 0) + 1
        }
        latencies.push(performance.now() - t0)
      }
    }))
    return summarise(latencies, statuses, items, (performance.now() - start) / 1000, errors)
  } finally {
    await pool.close()
  }
}

/** Requests at a fixed rate, whatever the answers' latency (no coordinated omission). */
export async function openLoop(opts: LoadOptions & { ratePerSec: number; connections: number }): Promise<LoadResult> {
  assertLoopback(opts.origin)
  const pool = new Pool(opts.origin, { connections: opts.connections, pipelining: 1, connect: opts.connect, keepAliveTimeout: 60_000 })
  try {
    if (opts.warmupMs) {
      const until = performance.now() + opts.warmupMs
      while (performance.now() < until) await send(pool, opts.next(0)).catch(() => 0)
    }
    const latencies: number[] = []
    const statuses: Record<string, number> = {}
    let items = 0
    let errors = 0
    const intervalMs = 1000 / opts.ratePerSec
    const total = Math.min(opts.maxRequests ?? Infinity, Math.floor(opts.durationMs / intervalMs))
    const start = performance.now()
    const inflight: Promise<void>[] = []
    for (let i = 0; i < total; i++) {
      const due = start + i * intervalMs
      const wait = due - performance.now()
      if (wait > 1) await new Promise((r) => setTimeout(r, wait))
      const r = opts.next(i)
      inflight.push(send(pool, r).then(
        (status) => {
          statuses[status] = (statuses[status] ?? 0) + 1
          if (status < 300) items += r.items ?? 1
          // Latency from when the request was due, so a stalled sender counts against the server.
          latencies.push(performance.now() - due)
        },
        () => {
          errors++
          statuses.error = (statuses.error ?? 0) + 1
          latencies.push(performance.now() - due)
        },
      ))
    }
    await Promise.all(inflight)
    return summarise(latencies, statuses, items, (performance.now() - start) / 1000, errors)
  } finally {
    await pool.close()
  }
}
