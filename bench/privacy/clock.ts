// The real clock with an offset the evaluation moves forward to simulate hours (the budget
// windows, the screening cool-down). Both wall and monotonic time move: the privacy journal
// frees charges by elapsed (monotonic) time, so a wall clock moved alone would free nothing.
// Timers stay real; nothing is in flight when the offset moves.

import { systemClock, type Clock } from '../../src/deps.ts'

export class SkewedClock implements Clock {
  offsetMs = 0
  nowMs(): number {
    return systemClock.nowMs() + this.offsetMs
  }
  monotonicMs(): number {
    return systemClock.monotonicMs() + this.offsetMs
  }
  setTimeout: Clock['setTimeout'] = (fn, ms, o) => systemClock.setTimeout(fn, ms, o)
  setInterval: Clock['setInterval'] = (fn, ms, o) => systemClock.setInterval(fn, ms, o)
  sleep: Clock['sleep'] = (ms, signal) => systemClock.sleep(ms, signal)
  advance(ms: number): void {
    this.offsetMs += ms
  }
}
