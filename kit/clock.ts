// A Clock the test moves by hand. Wall time and monotonic time advance together, and the
// clock's timers fire when the time they wait for is reached, in order of due time (then of
// creation), so a test of a batcher, a retry or a group commit runs without real sleeps.

import { sleepFor, type Clock, type Timer } from '../src/deps.ts'

interface Pending {
  due: number
  seq: number
  every: number | null
  fn: () => void
  cancelled: boolean
}

export class FakeClock implements Clock {
  private wall: number
  private mono: number
  private seq = 0
  private timers: Pending[] = []
  private timerWatchers: { ms: number; resolve: () => void }[] = []

  constructor(startMs = Date.UTC(2030, 0, 1), startMonoMs = 1_000) {
    this.wall = startMs
    this.mono = startMonoMs
  }

  nowMs(): number {
    return this.wall
  }

  monotonicMs(): number {
    return this.mono
  }

  setTimeout(fn: () => void, ms: number): Timer {
    return this.schedule(fn, ms, null)
  }

  setInterval(fn: () => void, ms: number): Timer {
    return this.schedule(fn, ms, Math.max(1, ms))
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return sleepFor(this, ms, signal)
  }

  /**
   * Resolves once a timer of `ms` is pending (at once if one is): for a test that must not
   * move time before the code under test has started waiting on it.
   */
  timerSet(ms: number): Promise<void> {
    if (this.timers.some((t) => !t.cancelled && t.every === null && t.due - this.mono === ms)) return Promise.resolve()
    return new Promise((resolve) => this.timerWatchers.push({ ms, resolve }))
  }

  /** Timers not yet fired or cancelled. */
  get pendingTimers(): number {
    return this.timers.filter((t) => !t.cancelled).length
  }

  /** Sets the wall clock alone (a clock step, as NTP makes); monotonic time and timers stay. */
  setWall(ms: number): void {
    this.wall = ms
  }

  /**
   * Moves time forward by `ms`, firing each timer due on the way at its due time. Synchronous:
   * what a timer's callback awaits has not run yet when this returns (use `tick`).
   */
  advance(ms: number): void {
    const end = this.mono + ms
    for (let next = this.nextDue(end); next; next = this.nextDue(end)) this.fire(next)
    this.moveTo(end)
  }

  /**
   * Moves time forward by `ms` like `advance`, letting promise chains and I/O callbacks run
   * (one macrotask turn) after each timer fires and at the end, so work a timer starts (a
   * flush, a retry) gets as far as it can before the next one is due.
   */
  async tick(ms = 0): Promise<void> {
    const end = this.mono + ms
    await settle()
    for (let next = this.nextDue(end); next; next = this.nextDue(end)) {
      this.fire(next)
      await settle()
    }
    this.moveTo(end)
    await settle()
  }

  private schedule(fn: () => void, ms: number, every: number | null): Timer {
    const t: Pending = { due: this.mono + Math.max(0, ms), seq: this.seq++, every, fn, cancelled: false }
    this.timers.push(t)
    for (const w of this.timerWatchers.filter((w) => w.ms === ms)) w.resolve()
    this.timerWatchers = this.timerWatchers.filter((w) => w.ms !== ms)
    return { cancel: () => (t.cancelled = true) }
  }

  private nextDue(end: number): Pending | undefined {
    this.timers = this.timers.filter((t) => !t.cancelled)
    let best: Pending | undefined
    for (const t of this.timers) if (t.due <= end && (!best || t.due < best.due || (t.due === best.due && t.seq < best.seq))) best = t
    return best
  }

  private fire(t: Pending): void {
    this.moveTo(t.due)
    if (t.every === null) t.cancelled = true
    else {
      t.due += t.every
      t.seq = this.seq++
    }
    t.fn()
  }

  private moveTo(mono: number): void {
    if (mono <= this.mono) return
    this.wall += mono - this.mono
    this.mono = mono
  }
}

/** One macrotask turn: pending promise reactions and ready I/O callbacks run. */
function settle(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve))
}
