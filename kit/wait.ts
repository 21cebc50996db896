// Waiting in tests without sleeping. A test waits for the thing itself (an event, a log line,
// a child's output, a request received, a response) or moves a FakeClock (kit/clock.ts). The
// helpers here turn "it happened" into a promise:
//
//   const changed = new Changes()      notify() where the thing happens (a sink, a handler);
//   await changed.until(check)         resolves with check()'s value once it is truthy,
//                                      re-checked at each notify(), never on a timer
//   await whenEmitted(em, evs, check)  the same, re-checked at each of an emitter's events
//   await within(promise, ms, what)    the promise, or a clear error if it has not settled in
//                                      ms: a bound for a failing run's report, never a delay
//                                      (it settles the moment the promise does)
//
// And the one polling helper, for a real process that emits nothing to wait on:
//
//   await eventually(check, { timeoutMs, everyMs, what })
//
// Each call of it waits on wall time: test/project/real-waits.test.ts counts it as a real
// wait, and it must say why on its line (`// real wait: <why>`). A wait with neither an event
// nor a fake clock to drive it has no deadline of its own beyond tap's per-file timeout.

import type { EventEmitter } from 'node:events'

type Check<T> = () => T | null | undefined | false | 0 | ''

/** Something that changes only at known moments: whoever changes it calls notify(). */
export class Changes {
  private readonly waiters = new Set<() => void>()

  /** Re-checks every pending until(). */
  notify(): void {
    for (const waiter of [...this.waiters]) waiter()
  }

  /** Resolves with check()'s value as soon as it is truthy: now, or at a later notify(). */
  until<T>(check: Check<T>): Promise<T> {
    return new Promise((resolve, reject) => {
      const waiter = () => {
        try {
          const value = check()
          if (!value) return
          this.waiters.delete(waiter)
          resolve(value)
        } catch (err) {
          this.waiters.delete(waiter)
          reject(err as Error)
        }
      }
      this.waiters.add(waiter)
      waiter()
    })
  }
}

/**
 * Resolves with check()'s value as soon as it is truthy: now, or when `emitter` emits one of
 * `events` (an ioredis client's 'ready'/'close'/'end', a breaker's transitions...).
 */
export function whenEmitted<T>(emitter: Pick<EventEmitter, 'on' | 'off'>, events: readonly string[], check: Check<T>): Promise<T> {
  const changes = new Changes()
  const notify = () => changes.notify()
  for (const e of events) emitter.on(e, notify)
  return changes.until(check).finally(() => {
    for (const e of events) emitter.off(e, notify)
  })
}

/** `promise`, or an error naming `what` if it has not settled within `ms` (the timer never delays a result). */
export function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)
    timer.unref()
  })
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer))
}

/**
 * Polls `check` every `everyMs` until it returns something truthy (resolved with it) or
 * `timeoutMs` pass (rejected, naming `what`). Only for a real process that offers no event to
 * wait on; each call is a real wait and must say why, on its line.
 */
export async function eventually<T>(check: () => T | Promise<T>, o: { timeoutMs: number; everyMs: number; what: string }): Promise<NonNullable<T>> {
  const end = performance.now() + o.timeoutMs
  for (;;) {
    const value = await check()
    if (value) return value as NonNullable<T>
    if (performance.now() > end) throw new Error(`${o.what}: not within ${o.timeoutMs} ms`)
    await new Promise((resolve) => setTimeout(resolve, o.everyMs))
  }
}
