// The bench's load generator: `bulwark bench`'s own (src/loadtest/), so the internal bench
// and the operators' tool send, time and count the same way. Closed loop (N clients each
// sending back to back) or open loop (a fixed request rate, latency from when each request
// was due). Bounded by time and count, loopback targets only, and it stops by itself.

import { systemClock } from '../src/deps.ts'
import { restClient, type LoadClient } from '../src/loadtest/client.ts'
import { RequestBudget, Recorder, startClosedLoop, startOpenLoop, type LoadSession } from '../src/loadtest/generator.ts'
import { measureStep } from '../src/loadtest/measure.ts'
import { percentile as nearestRank, summarise } from '../src/loadtest/stats.ts'
import { isLoopback } from '../src/loadtest/target.ts'
import type { LoadRequest } from '../src/loadtest/client.ts'

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
  /** Another protocol's client (the gRPC one, src/transport/grpc-client.ts) for `connections`; default: REST to `origin`. */
  client?: (connections: number) => LoadClient
}

function assertLoopback(origin: string): void {
  if (!isLoopback(new URL(origin))) throw new Error(`load tests target loopback only, not ${new URL(origin).hostname}`)
}

export const percentile = nearestRank

type Start = (client: LoadClient, recorder: Recorder, budget: RequestBudget) => LoadSession

/**
 * A warm-up whose answers are dropped (its requests do not count against maxRequests), then
 * one measurement of durationMs, or until maxRequests have been answered.
 */
async function run(opts: LoadOptions, connections: number, start: Start): Promise<LoadResult> {
  assertLoopback(opts.origin)
  const client = opts.client ? opts.client(connections) : restClient({ origin: opts.origin, connections, readCodes: false, ...(opts.connect ? { tls: opts.connect } : {}) })
  try {
    if (opts.warmupMs) {
      const warm = start(client, new Recorder(systemClock), new RequestBudget(Infinity))
      await systemClock.sleep(opts.warmupMs)
      await warm.stop()
    }
    const recorder = new Recorder(systemClock)
    const session = start(client, recorder, new RequestBudget(opts.maxRequests ?? Infinity))
    const m = await measureStep({
      clock: systemClock,
      session,
      recorder,
      plan: { warmupMs: 0, durationMs: opts.durationMs, windowMs: opts.durationMs, stabilityPercent: 100, maxWindows: 3 },
      deadlineMs: Infinity,
      atBoundary: () => Promise.resolve(null),
    })
    const s = summarise(m.windows)
    const statuses = Object.fromEntries(Object.entries(s.statuses).map(([k, v]) => [k === '0' ? 'error' : k, v]))
    return { requests: s.requests, ok: s.ok, errors: statuses.error ?? 0, statuses, seconds: s.seconds, rps: s.rps, itemsPerSec: s.itemsPerSec, p50: s.p50Ms, p90: s.p90Ms, p99: s.p99Ms, max: s.maxMs }
  } finally {
    await client.close()
  }
}

/** N clients, each sending its next request as soon as the last one is answered. */
export function closedLoop(opts: LoadOptions & { concurrency: number }): Promise<LoadResult> {
  return run(opts, opts.concurrency, (client, recorder, budget) => startClosedLoop({ client, clock: systemClock, recorder, budget, next: opts.next, concurrency: opts.concurrency }))
}

/** Requests at a fixed rate, whatever the answers' latency (no coordinated omission). */
export function openLoop(opts: LoadOptions & { ratePerSec: number; connections: number }): Promise<LoadResult> {
  return run(opts, opts.connections, (client, recorder, budget) => startOpenLoop({ client, clock: systemClock, recorder, budget, next: opts.next, ratePerSec: opts.ratePerSec, maxInFlight: Number.MAX_SAFE_INTEGER }))
}
