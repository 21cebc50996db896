// The load generator: a closed loop (N clients, each sending its next request as soon as the
// last one is answered) or an open loop (requests due at a fixed rate, sent whatever the
// answers' latency, and timed from when they were due, so a slow server cannot hide its
// queue: no coordinated omission). Either runs until stopped and hands every answer to a
// Recorder; src/loadtest/measure.ts decides when a measurement starts and ends.
//
// Bounded by count as well as time: `budget.take()` must grant every request, and when it
// refuses, the generator stops issuing and says so (`exhausted`).

import type { Clock } from '../deps.ts'
import type { LoadClient, LoadRequest } from './client.ts'

/** The answers of one measurement window. */
export interface Window {
  startMs: number
  endMs: number
  latenciesMs: number[]
  items: number
  codes: Record<string, number>
  /** Answers by HTTP status ('0' when none came). */
  statuses: Record<string, number>
}

/** Collects answers into the current window; cut() closes it and opens the next. */
export class Recorder {
  private readonly clock: Clock
  private window: Window
  constructor(clock: Clock) {
    this.clock = clock
    this.window = this.fresh()
  }
  private fresh(): Window {
    return { startMs: this.clock.monotonicMs(), endMs: 0, latenciesMs: [], items: 0, codes: Object.create(null) as Record<string, number>, statuses: Object.create(null) as Record<string, number> }
  }
  record(latencyMs: number, code: string, items: number, status: number): void {
    const w = this.window
    w.latenciesMs.push(latencyMs)
    // eslint-disable-next-line bulwark/object-injection -- a null-prototype tally; codes are the gateway's [a-z0-9_] codes or client error names, sanitised in client.ts
    w.codes[code] = (w.codes[code] ?? 0) + 1
    w.statuses[status] = (w.statuses[status] ?? 0) + 1
    if (code === 'ok') w.items += items
  }
  /** Answers so far in the open window. */
  get count(): number {
    return this.window.latenciesMs.length
  }
  cut(): Window {
    const done = this.window
    done.endMs = this.clock.monotonicMs()
    this.window = this.fresh()
    return done
  }
}

/** The run's bounds on requests, shared by every step. */
export class RequestBudget {
  private left: number
  constructor(maxRequests: number) {
    this.left = maxRequests
  }
  take(): boolean {
    if (this.left <= 0) return false
    this.left--
    return true
  }
  get remaining(): number {
    return this.left
  }
}

export interface LoadSession {
  /** Resolves when the budget refused a request (the run's request bound is reached). */
  readonly exhausted: Promise<void>
  /** Requests sent so far. */
  readonly sent: () => number
  /** Stops issuing and resolves when every request in flight is answered. */
  stop(): Promise<void>
}

interface Common {
  client: LoadClient
  clock: Clock
  /** The request to send as the i-th of the step. */
  next: (i: number) => LoadRequest
  recorder: Recorder
  budget: RequestBudget
}

function exhaustion(): { promise: Promise<void>; fire: () => void } {
  let fire = () => {}
  const promise = new Promise<void>((resolve) => (fire = resolve))
  return { promise, fire }
}

export function startClosedLoop(o: Common & { concurrency: number }): LoadSession {
  let stopping = false
  let sent = 0
  const out = exhaustion()
  const worker = async () => {
    while (!stopping) {
      if (!o.budget.take()) return out.fire()
      const r = o.next(sent++)
      const t0 = o.clock.monotonicMs()
      const { code, status } = await o.client.send(r)
      o.recorder.record(o.clock.monotonicMs() - t0, code, r.items ?? 1, status)
    }
  }
  const workers = Array.from({ length: o.concurrency }, worker)
  return {
    exhausted: out.promise,
    sent: () => sent,
    async stop() {
      stopping = true
      await Promise.all(workers)
    },
  }
}

/**
 * Requests due every 1/rate seconds from the start, sent in bursts of whatever is due each
 * time the timer fires (timers are coarser than the interval at high rates). At most
 * `maxInFlight` wait for answers; a request due past that is not sent and is counted as
 * `not_sent_backlog`, so a stalled target cannot make the bench hold unbounded memory.
 */
export function startOpenLoop(o: Common & { ratePerSec: number; maxInFlight: number }): LoadSession {
  let stopping = false
  let sent = 0
  let inFlight = 0
  const pending = new Set<Promise<void>>()
  const out = exhaustion()
  const intervalMs = 1000 / o.ratePerSec
  const start = o.clock.monotonicMs()
  const fire = (i: number, dueMs: number) => {
    const r = o.next(i)
    if (inFlight >= o.maxInFlight) return o.recorder.record(o.clock.monotonicMs() - dueMs, 'not_sent_backlog', r.items ?? 1, 0)
    inFlight++
    const p: Promise<void> = o.client.send(r).then(({ code, status }) => {
      inFlight--
      pending.delete(p)
      o.recorder.record(o.clock.monotonicMs() - dueMs, code, r.items ?? 1, status)
    })
    pending.add(p)
  }
  const loop = (async () => {
    while (!stopping) {
      const now = o.clock.monotonicMs()
      while (!stopping && start + sent * intervalMs <= now) {
        if (!o.budget.take()) return out.fire()
        fire(sent, start + sent * intervalMs)
        sent++
      }
      await o.clock.sleep(Math.max(0, start + sent * intervalMs - o.clock.monotonicMs()))
    }
  })()
  return {
    exhausted: out.promise,
    sent: () => sent,
    async stop() {
      stopping = true
      await loop
      await Promise.all([...pending])
    },
  }
}
