// The durable append-only log under the audit writer (src/audit/writer.ts) and the privacy
// journal (src/privacy/file-accountant.ts). It owns what the two share: the folder's lock,
// group commit, the sync policy, failing closed and probing for recovery, and the files
// (src/durable/files.ts: rotation, atomic rewrite, directory sync). What a line says, when a
// file rotates or is compacted, stays with the format, in the LogFormat it passes in.
//
// Group commit: submit() queues an item; one batch is committed at a time, by the format, as
// one append. Items that arrive while a batch is being written and synced go together into the
// next. A caller's promise resolves only once its batch is durable: synced (durability
// strict), or written to the OS (relaxed; then synced every relaxedSyncIntervalMs, so a power
// cut or kernel crash can lose that interval, a killed process nothing). Strict is a write
// then an fdatasync, for both logs: one more system call per batch than O_DSYNC would cost,
// for one code path whose sync a test can make fail. commitIntervalMs spaces the starts of
// two writes: each synced write costs the disk a journal commit, so under load fewer, larger
// writes cost less, at the price of that much latency.
//
// Failure: when a write or sync fails, the batch's callers and every caller after them are
// refused at once (fail closed) with the format's `unavailable` error, and the failure is
// logged once. With retryMs, a probe every retryMs commits the format's probe item: first the
// file is reopened and cut back to what was acknowledged, so a half-written batch never sits
// in the middle of the log. When the probe's batch is durable the log serves again, and says
// so once. Without retryMs the log stays closed until the process restarts.
//
// The folder: created (mode 0700) and locked (src/durable/lock.ts) before anything is read, so
// a second process on the same folder is refused before it touches a file.
//
// Timers and sleeps come from the injected Clock, so tests drive them with a fake one.

import type { Clock, Logger, Timer } from '../deps.ts'
import { LogFiles, type CurrentFile, type Durability, type LogWriter } from './files.ts'
import { nodeDurableFs, procfsLiveness, type DurableFs, type ProcessLiveness } from './fs.ts'
import { FolderLockedError, lockFolder, type FolderLock, type LockPurpose } from './lock.ts'

/** How a format (audit records, journal lines) turns batches into bytes. */
export interface LogFormat<T> {
  /** Once, after the folder is locked and before the first batch: reads what is there. */
  load(w: LogWriter): Promise<void>
  /** Commits one batch with at most one append. Throwing fails the batch and the log. */
  commit(items: readonly T[], w: LogWriter): Promise<void>
  /** Upkeep after a batch's callers are answered (compaction); throwing fails the log. */
  afterCommit?(w: LogWriter): Promise<void>
  /** With retryMs: the item a recovery probe commits; it must write, so that it tests the disk. */
  probe?(): T
  /** The error callers get while the log cannot be written (reason: for the operator). */
  unavailable(reason: string, cause: unknown): Error
}

export interface DurableLogOptions<T> {
  /** Absolute folder of the log's files; one process at a time. */
  directory: string
  /** What the log is, for messages and the lock's refusal. */
  purpose: LockPurpose
  durability: Durability
  relaxedSyncIntervalMs: number
  /** Shortest time from the start of one write to the start of the next; 0: none. */
  commitIntervalMs: number
  /** How often to probe after a failure; null: stay failed until the process restarts. */
  retryMs: number | null
  /** Logged once when a failure starts, and once when it ends. */
  messages: { failing: string; recovered?: string }
  clock: Clock
  log: Logger
  fs?: DurableFs | undefined
  liveness?: ProcessLiveness | undefined
  format: LogFormat<T>
}

export interface LogFailure {
  reason: string
  sinceMs: number
  cause: unknown
}

interface Ticket<T> {
  /** null: no item, only a place in a batch (start, or waiting for items already queued). */
  item: T | null
  resolve(): void
  reject(err: Error): void
}

const noop = () => {}

export function errnoOf(err: unknown): string {
  const e = err as NodeJS.ErrnoException
  return e?.code ? `${e.code}: ${e.message}` : String((err as Error)?.message ?? err)
}

export class DurableLog<T> {
  readonly #o: DurableLogOptions<T>
  readonly #files: LogFiles
  readonly #liveness: ProcessLiveness
  #lock: FolderLock | null = null
  #loaded = false
  #queue: Ticket<T>[] = []
  #running = false
  #drained: Promise<void> = Promise.resolve()
  #syncDue = false
  #lastWriteStart = -Infinity
  readonly #spacing = new AbortController()
  #failure: LogFailure | null = null
  #closing: Promise<void> | null = null
  #closed = false
  #syncTimer: Timer | null = null
  #probeTimer: Timer | null = null
  readonly stats = { batches: 0, failures: 0 }

  constructor(options: DurableLogOptions<T>) {
    this.#o = options
    this.#liveness = options.liveness ?? procfsLiveness
    this.#files = new LogFiles({
      directory: options.directory,
      fs: options.fs ?? nodeDurableFs,
      durability: options.durability,
      clock: options.clock,
      log: options.log,
      what: options.purpose.what,
    })
  }

  /** Why the log cannot be written now, or null. */
  get failure(): Readonly<LogFailure> | null {
    return this.#failure
  }

  get closed(): boolean {
    return this.#closed
  }

  get currentFile(): Readonly<CurrentFile> | null {
    return this.#files.current
  }

  /** fdatasync calls so far (every file of the log). */
  get syncs(): number {
    return this.#files.syncs
  }

  /**
   * Locks and loads the folder, then commits an empty batch (the format's chance to open its
   * file). Rejects with what went wrong. A log with retryMs is then failed and probing, so
   * its caller may start anyway and recover by itself; a held folder (FolderLockedError), or
   * a failure of a log without retryMs, is for the caller to refuse the start (and close).
   */
  async start(): Promise<void> {
    if (this.#o.durability === 'relaxed') {
      this.#syncTimer = this.#o.clock.setInterval(
        () => {
          if (!this.#files.dirty || this.#failure || this.#closing) return
          this.#syncDue = true
          this.#kick()
        },
        this.#o.relaxedSyncIntervalMs,
        { keepAlive: false },
      )
    }
    try {
      await this.#prepare()
    } catch (err) {
      // A log that probes starts failed and recovers by itself; a held folder, or a log that
      // cannot recover, is the caller's to refuse.
      if (this.#o.retryMs !== null && !(err instanceof FolderLockedError)) this.#fail(err, [])
      throw err
    }
    await this.#enqueue(null)
  }

  /** Queues `item`; resolves once it is durable, rejects with the format's `unavailable` error. */
  submit(item: T): Promise<void> {
    const refusal = this.#refusal()
    return refusal ? Promise.reject(refusal) : this.#enqueue(item)
  }

  /** Resolves once everything queued now is durable (its items' own promises may be elsewhere). */
  flushed(): Promise<void> {
    const refusal = this.#refusal()
    return refusal ? Promise.reject(refusal) : this.#enqueue(null)
  }

  /** Queues an item of the log's own (a timer's checkpoint) whose outcome no caller awaits. */
  post(item: T): void {
    if (this.#closing) return
    this.#queue.push({ item, resolve: noop, reject: noop })
    this.#kick()
  }

  /** Resolves when no batch is being committed (tests; close). */
  async whenIdle(): Promise<void> {
    while (this.#running) await this.#drained
  }

  /**
   * Commits `last` after everything queued (unless failed), syncs what relaxed durability left,
   * closes the file and releases the folder. Idempotent.
   */
  close(last?: T): Promise<void> {
    this.#closing ??= this.#close(last)
    return this.#closing
  }

  async #close(last: T | undefined): Promise<void> {
    this.#syncTimer?.cancel()
    this.#probeTimer?.cancel()
    this.#spacing.abort()
    if (last !== undefined && !this.#failure && this.#loaded) {
      await new Promise<void>((resolve) => {
        this.#queue.push({ item: last, resolve, reject: () => resolve() })
        this.#kick()
      })
    }
    await this.whenIdle()
    try {
      await this.#files.close()
    } catch (err) {
      this.#o.log.error({ err: errnoOf(err), directory: this.#o.directory }, `${this.#o.purpose.what}: the final sync or close failed`)
    }
    await this.#lock?.release().catch((err: unknown) => this.#o.log.warn({ err: errnoOf(err), directory: this.#o.directory }, `${this.#o.purpose.what}: cannot remove the folder's lock file`))
    this.#closed = true
  }

  #refusal(): Error | null {
    if (this.#closing) return this.#o.format.unavailable(`the ${this.#o.purpose.what} is closed (shutting down)`, undefined)
    if (this.#failure) return this.#o.format.unavailable(this.#failure.reason, this.#failure.cause)
    return null
  }

  #enqueue(item: T | null): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#queue.push({ item, resolve, reject })
      this.#kick()
    })
  }

  #kick(): void {
    if (this.#running) return
    this.#running = true
    this.#drained = this.#drain()
  }

  async #drain(): Promise<void> {
    try {
      while (this.#queue.length > 0 || this.#syncDue) {
        const wait = this.#queue.length > 0 ? this.#lastWriteStart + this.#o.commitIntervalMs - this.#o.clock.monotonicMs() : 0
        if (wait > 0 && !this.#spacing.signal.aborted) await this.#o.clock.sleep(wait, this.#spacing.signal).catch(noop)
        let batch: Ticket<T>[] = []
        try {
          if (this.#unprepared()) await this.#prepare()
          // Taken only now: what arrived during the wait and the preparation joins this batch.
          // With nothing to wait for, it is taken in the caller's own turn: a write starts at once.
          batch = this.#queue.splice(0)
          if (batch.length > 0) {
            const items = itemsOf(batch)
            if (items.length > 0) this.#lastWriteStart = this.#o.clock.monotonicMs()
            await this.#o.format.commit(items, this.#files)
            this.stats.batches++
          }
          if (this.#syncDue) {
            this.#syncDue = false
            await this.#files.sync()
          }
        } catch (err) {
          this.#fail(err, [...batch, ...this.#queue.splice(0)])
          continue
        }
        if (this.#failure && batch.length > 0) this.#recovered()
        for (const t of batch) t.resolve()
        await this.#upkeep()
      }
    } finally {
      this.#running = false
    }
  }

  #unprepared(): boolean {
    return !this.#lock || !this.#loaded || this.#files.lost
  }

  /** The folder locked and loaded, and the file reopened after a failure. */
  async #prepare(): Promise<void> {
    if (!this.#lock) {
      await this.#files.fs.mkdir(this.#o.directory)
      this.#lock = await lockFolder({
        directory: this.#o.directory,
        purpose: this.#o.purpose,
        fs: this.#files.fs,
        liveness: this.#liveness,
        clock: this.#o.clock,
        log: this.#o.log,
      })
    }
    if (!this.#loaded) {
      await this.#o.format.load(this.#files)
      this.#loaded = true
    }
    await this.#files.reopenIfLost()
  }

  async #upkeep(): Promise<void> {
    if (!this.#o.format.afterCommit || this.#failure) return
    try {
      await this.#o.format.afterCommit(this.#files)
    } catch (err) {
      this.#fail(err, this.#queue.splice(0))
    }
  }

  #fail(err: unknown, tickets: Ticket<T>[]): void {
    this.stats.failures++
    const reason = errnoOf(err)
    if (!this.#failure) {
      this.#failure = { reason, sinceMs: this.#o.clock.nowMs(), cause: err }
      this.#o.log.error({ err: reason, directory: this.#o.directory }, this.#o.messages.failing)
    } else {
      this.#failure.reason = reason
      this.#failure.cause = err
    }
    this.#syncDue = false
    this.#files.drop()
    const error = this.#o.format.unavailable(reason, err)
    for (const t of tickets) t.reject(error)
    const { retryMs, format } = this.#o
    if (retryMs !== null && format.probe && !this.#closing) {
      this.#probeTimer?.cancel()
      this.#probeTimer = this.#o.clock.setTimeout(() => this.post(format.probe!()), retryMs, { keepAlive: false })
    }
  }

  #recovered(): void {
    const failedForMs = this.#o.clock.nowMs() - this.#failure!.sinceMs
    this.#failure = null
    if (this.#o.messages.recovered) this.#o.log.info({ directory: this.#o.directory, failedForMs }, this.#o.messages.recovered)
  }
}

function itemsOf<T>(batch: readonly Ticket<T>[]): T[] {
  const items: T[] = []
  for (const t of batch) if (t.item !== null) items.push(t.item)
  return items
}
