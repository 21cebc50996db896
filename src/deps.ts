// The only module that touches ambient time and randomness. Everything else receives a
// Clock and a RandomSource, so tests can fake time and seed randomness without patching
// globals (the counter-example: stores that call Date.now() and force tests to patch timers).

import { randomBytes, randomFillSync, randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'

/** A pending timer; cancel() is idempotent and harmless after the timer fired. */
export interface Timer {
  cancel(): void
}

export interface TimerOptions {
  /** Whether the timer alone keeps the process alive (default true, as Node's own timers). */
  keepAlive?: boolean
}

export interface Clock {
  /** Wall-clock time in milliseconds since the epoch: for records and token checks. */
  nowMs(): number
  /** Monotonic time in milliseconds with sub-millisecond precision: for durations and deadlines. */
  monotonicMs(): number
  /** Calls `fn` once, `ms` of monotonic time from now. */
  setTimeout(fn: () => void, ms: number, options?: TimerOptions): Timer
  /** Calls `fn` every `ms` of monotonic time until cancelled. */
  setInterval(fn: () => void, ms: number, options?: TimerOptions): Timer
  /** Resolves after `ms` of monotonic time; rejects with the signal's reason if it aborts first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>
}

export interface RandomSource {
  /** `n` uniformly random bytes. */
  bytes(n: number): Uint8Array
  /** A random 128-bit identifier in UUID form. */
  uuid(): string
}

function nodeTimer(handle: NodeJS.Timeout, options: TimerOptions | undefined, clear: (h: NodeJS.Timeout) => void): Timer {
  if (options?.keepAlive === false) handle.unref()
  return { cancel: () => clear(handle) }
}

export const systemClock: Clock = {
  nowMs: () => Date.now(),
  monotonicMs: () => performance.now(),
  setTimeout: (fn, ms, options) => nodeTimer(setTimeout(fn, ms), options, clearTimeout),
  setInterval: (fn, ms, options) => nodeTimer(setInterval(fn, ms), options, clearInterval),
  sleep: (ms, signal) => sleepFor(systemClock, ms, signal),
}

/** sleep() on top of a clock's setTimeout: one definition for the real clock and the fake one. */
export function sleepFor(clock: Pick<Clock, 'setTimeout'>, ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const onAbort = () => {
      timer.cancel()
      reject(signal!.reason)
    }
    const timer = clock.setTimeout(() => {
      signal?.removeEventListener('abort', onAbort)
      resolve()
    }, ms)
    signal?.addEventListener('abort', onAbort, { once: true })
  })
}

/**
 * The operating system's CSPRNG, read 64 KiB at a time: one getrandom call per pool rather
 * than per request (output privacy draws a few hundred bytes per answer). Every byte is
 * handed out once and only once, as a copy.
 */
const POOL_BYTES = 64 * 1024
let pool = new Uint8Array(0)
let poolPos = 0

export const cryptoRandom: RandomSource = {
  bytes(n) {
    if (n > POOL_BYTES / 4) return new Uint8Array(randomBytes(n))
    if (poolPos + n > pool.length) {
      pool = randomFillSync(new Uint8Array(POOL_BYTES))
      poolPos = 0
    }
    const out = pool.slice(poolPos, poolPos + n)
    poolPos += n
    return out
  },
  uuid: () => randomUUID(),
}

/** A pino-compatible subset, so fastify's logger or a test's memory sink can be passed. */
export interface Logger {
  info(obj: object, msg?: string): void
  warn(obj: object, msg?: string): void
  error(obj: object, msg?: string): void
}

export const silentLogger: Logger = { info() {}, warn() {}, error() {} }

export interface Deps {
  clock: Clock
  random: RandomSource
}

export const realDeps: Deps = { clock: systemClock, random: cryptoRandom }

/** A uniformly random 32-bit unsigned integer from a RandomSource. */
export function randomUint32(random: RandomSource): number {
  const b = random.bytes(4)
  return ((b[0]! << 24) | (b[1]! << 16) | (b[2]! << 8) | b[3]!) >>> 0
}

/** A uniformly random double in [0, 1) with 53 random bits. */
export function randomUnit(random: RandomSource): number {
  const b = random.bytes(7)
  let hi = 0
  for (let i = 0; i < 7; i++) hi = hi * 256 + b[i]!
  // 56 random bits; keep the top 53.
  return Math.floor(hi / 8) / 2 ** 53
}
