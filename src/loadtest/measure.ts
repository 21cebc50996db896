// One step's measurement over a running load: a warm-up whose answers are dropped, then
// either one window of a fixed duration, or windows until the last three are stable (as
// perf_analyzer does) or `maxWindows` have passed. At every window boundary `atBoundary`
// runs (the metrics scrape), so the caller can diff what the gateway saw over exactly the
// windows that were kept. The run's deadline and request bound cut a step short. The step
// ends with the load stopped and every answer in.

import type { Clock } from '../deps.ts'
import type { LoadSession, Recorder, Window } from './generator.ts'
import { stable } from './stats.ts'

export interface StepPlan {
  warmupMs: number
  /** One fixed window; absent: windows of windowMs until stable. */
  durationMs?: number
  windowMs: number
  stabilityPercent: number
  maxWindows: number
}

export interface Measurement<T> {
  /** The windows the step's figures come from. */
  windows: Window[]
  /** What atBoundary returned at the start of the first kept window and at the end of the last. */
  before: T
  after: T
  /** null with a fixed duration; else whether the last three windows agreed. */
  stable: boolean | null
  /** Why the step ended early (the run's time or request bound), or null. */
  cutShort: string | null
}

type Wake = 'time' | 'deadline' | 'exhausted'

async function wait(clock: Clock, ms: number, deadlineMs: number, session: LoadSession): Promise<Wake> {
  const now = clock.monotonicMs()
  const until = Math.min(now + ms, deadlineMs)
  const abort = new AbortController()
  const slept = clock.sleep(Math.max(0, until - now), abort.signal).then(
    (): Wake => (until >= deadlineMs ? 'deadline' : 'time'),
    (): Wake => 'time',
  )
  const woke = await Promise.race([slept, session.exhausted.then((): Wake => 'exhausted')])
  abort.abort()
  return woke
}

const CUT: Record<Exclude<Wake, 'time'>, string> = {
  deadline: 'the run reached --max-duration',
  exhausted: 'the run reached --max-requests',
}

/** Adds `tail`'s answers to `w` and extends it to `tail`'s end. */
function absorb(w: Window, tail: Window): void {
  for (const v of tail.latenciesMs) w.latenciesMs.push(v)
  w.items += tail.items
  for (const [k, n] of Object.entries(tail.codes)) w.codes[k] = (w.codes[k] ?? 0) + n // eslint-disable-line bulwark/object-injection -- k is a key of a tally built in generator.ts
  for (const [k, n] of Object.entries(tail.statuses)) w.statuses[k] = (w.statuses[k] ?? 0) + n // eslint-disable-line bulwark/object-injection -- as above
  w.endMs = tail.endMs
}

export async function measureStep<T>(o: {
  clock: Clock
  session: LoadSession
  recorder: Recorder
  plan: StepPlan
  deadlineMs: number
  atBoundary: () => Promise<T>
}): Promise<Measurement<T>> {
  const { clock, session, recorder, plan } = o
  let woke: Wake = 'time'
  if (plan.warmupMs > 0) woke = await wait(clock, plan.warmupMs, o.deadlineMs, session)
  recorder.cut()
  const boundaries: T[] = [await o.atBoundary()]
  const windows: Window[] = []
  const target = plan.durationMs === undefined ? plan.maxWindows : 1
  while (woke === 'time' && windows.length < target) {
    woke = await wait(clock, plan.durationMs ?? plan.windowMs, o.deadlineMs, session)
    windows.push(recorder.cut())
    boundaries.push(await o.atBoundary())
    if (plan.durationMs === undefined && stable(windows, plan.stabilityPercent)) break
  }
  const isStable = plan.durationMs === undefined ? stable(windows, plan.stabilityPercent) : null
  // The requests still in flight belong to the last window: stop sending, wait for their
  // answers and count them there (the slowest answers are the ones still out; leaving them
  // out would flatter the tail, in an open loop most of all).
  await session.stop()
  if (windows.length > 0) {
    absorb(windows[windows.length - 1]!, recorder.cut())
    boundaries[boundaries.length - 1] = await o.atBoundary()
  }
  const keep = plan.durationMs === undefined ? Math.min(3, windows.length) : windows.length
  return {
    windows: windows.slice(windows.length - keep),
    before: boundaries[boundaries.length - 1 - keep]!,
    after: boundaries[boundaries.length - 1]!,
    stable: isStable,
    cutShort: woke === 'time' ? null : CUT[woke],
  }
}
