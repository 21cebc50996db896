// A Clock the test moves by hand: wall time and monotonic time advance together.

import type { Clock } from '../../src/deps.ts'

export class FakeClock implements Clock {
  private wall: number
  private mono = 1_000

  constructor(startMs = Date.UTC(2030, 0, 1)) {
    this.wall = startMs
  }

  nowMs(): number {
    return this.wall
  }

  monotonicMs(): number {
    return this.mono
  }

  advance(ms: number): void {
    this.wall += ms
    this.mono += ms
  }
}
