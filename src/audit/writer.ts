// The audit writer: the hash chain (src/audit/chain.ts) on a durable log (src/durable/log.ts),
// with rotation, retention, signed checkpoints and the head file.
//
// The durable log gives it group commit (each caller's promise resolves once its record is
// synced, or written to the OS with durability relaxed), failing closed with
// `audit_unavailable`, a probe every retryMs that commits a signed "recovered" checkpoint once
// the disk takes writes again, and the folder's lock: a second gateway on the same audit folder
// refuses to start instead of forking the chain. The chain (seq, prev) is assigned when a batch
// is written, so a failed batch leaves no gap.
//
// Start: the chain continues from the last complete line in the folder (a torn line left by a
// crash stays where it is, the verifier reports it), in a new file, which opens with a
// checkpoint. A new file also starts when the current one would grow past maxFileBytes or is
// older than maxFileAgeMs; retention then removes the oldest files past its limits.

import path from 'node:path'
import { BulwarkError } from '../errors.ts'
import type { Clock, Logger, RandomSource, Timer } from '../deps.ts'
import { DurableLog, errnoOf } from '../durable/log.ts'
import type { LogWriter } from '../durable/files.ts'
import type { ProcessLiveness } from '../durable/fs.ts'
import { FolderLockedError } from '../durable/lock.ts'
import { auditFileName, chainBatch, HEAD_FILE, newChain, resumeChain, sortAuditFiles, splitLines, type ChainItem, type ChainState } from './chain.ts'
import type { AuditFs } from './fs.ts'
import type { SigningKey } from './keys.ts'

export interface AuditWriterOptions {
  /** Absolute folder of the audit files. */
  directory: string
  durability: 'strict' | 'relaxed'
  relaxedSyncIntervalMs: number
  maxFileBytes: number
  /** 0 = never rotate by age. */
  maxFileAgeMs: number
  /** 0 = no limit. */
  retentionMaxTotalBytes: number
  /** 0 = no limit. */
  retentionMaxAgeMs: number
  checkpointEveryRecords: number
  checkpointEveryMs: number
  retryMs: number
  key: SigningKey
  clock: Clock
  random: RandomSource
  log: Logger
  /** File-system calls; tests inject failures here. */
  fs?: AuditFs | undefined
  /** Whether another process still holds a stale lock (default: from /proc). */
  liveness?: ProcessLiveness | undefined
  /** Receives every committed line (with newline), e.g. standard output for a log shipper. */
  mirror?: { write(text: string): unknown } | null | undefined
}

export interface AuditWriterStats {
  records: number
  checkpoints: number
  batches: number
  syncs: number
  failures: number
}

/** What a batch estimates per record, beyond its body, for rotation: seq, prev and punctuation. */
const LINE_OVERHEAD_BYTES = 100

export class AuditWriter {
  readonly #o: AuditWriterOptions
  readonly #log: DurableLog<ChainItem>
  /** The committed chain: what is on disk and acknowledged. */
  #chain: ChainState = newChain()
  /** The current file has no "open" checkpoint yet. */
  #needsOpen = false
  #checkpointTimer: Timer | null = null
  #warnedHead = false
  #records = 0
  #checkpoints = 0

  constructor(options: AuditWriterOptions) {
    this.#o = options
    this.#log = new DurableLog<ChainItem>({
      directory: options.directory,
      purpose: { what: 'audit log', setting: 'audit.directory', risk: 'two writers would fork the hash chain' },
      durability: options.durability,
      relaxedSyncIntervalMs: options.relaxedSyncIntervalMs,
      commitIntervalMs: 0,
      retryMs: options.retryMs,
      messages: {
        failing: 'audit log cannot be written: every request is refused (503 audit_unavailable) until it can',
        recovered: 'audit log writable again: serving requests',
      },
      clock: options.clock,
      log: options.log,
      fs: options.fs,
      liveness: options.liveness,
      format: {
        load: (w) => this.#load(w),
        commit: (items, w) => this.#commit(items, w),
        probe: () => ({ kind: 'checkpoint', event: 'recovered' }),
        unavailable: (reason, cause) => this.#unavailable(reason, cause),
      },
    })
  }

  get stats(): AuditWriterStats {
    return { records: this.#records, checkpoints: this.#checkpoints, batches: this.#log.stats.batches, syncs: this.#log.syncs, failures: this.#log.stats.failures }
  }

  /**
   * Opens the chain (continuing the folder's last one) and starts the timers. When the folder
   * cannot be written the writer starts failed and keeps probing, so the gateway starts,
   * reports not ready and recovers by itself. Rejects only when another process holds the
   * folder (FolderLockedError): two writers would fork the chain.
   */
  async start(): Promise<void> {
    this.#checkpointTimer = this.#o.clock.setInterval(
      () => {
        if (!this.#log.failure && this.#chain.recordsSinceCheckpoint > 0) this.#log.post({ kind: 'checkpoint', event: 'interval' })
      },
      this.#o.checkpointEveryMs,
      { keepAlive: false },
    )
    try {
      await this.#log.start()
    } catch (err) {
      if (!(err instanceof FolderLockedError)) return
      this.#checkpointTimer.cancel()
      await this.#log.close()
      throw err
    }
  }

  /** Why the audit log cannot be written now, or null when it can (for /readyz). */
  get problem(): string | null {
    if (this.#log.closed) return 'audit log closed'
    const f = this.#log.failure
    return f ? `audit log cannot be written since ${new Date(f.sinceMs).toISOString()}: ${f.reason}` : null
  }

  /** The folder of the audit files (absolute). */
  get directory(): string {
    return this.#o.directory
  }

  /** The file being written, for operators and tests. */
  get currentFile(): string | null {
    return this.#log.currentFile?.path ?? null
  }

  /**
   * Appends one record. `body` is a JSON object text (without seq and prev). Resolves when
   * the record is durable; rejects with audit_unavailable when it cannot be.
   */
  append(body: string): Promise<void> {
    return this.#log.submit({ kind: 'record', body })
  }

  /** Writes a signed checkpoint now (e.g. before handing the files to someone). */
  checkpoint(): Promise<void> {
    return this.#log.submit({ kind: 'checkpoint', event: 'interval' })
  }

  /** Resolves when no batch is being written (tests). */
  whenIdle(): Promise<void> {
    return this.#log.whenIdle()
  }

  /** Writes the shutdown checkpoint after everything queued, closes the file, releases the folder. */
  async close(): Promise<void> {
    this.#checkpointTimer?.cancel()
    await this.#log.close({ kind: 'checkpoint', event: 'shutdown' })
  }

  #unavailable(reason: string, cause: unknown): BulwarkError {
    return new BulwarkError('audit_unavailable', 'the audit log cannot be written, so the request is refused; retry later', {
      reason,
      headers: { 'retry-after': String(Math.max(1, Math.ceil(this.#o.retryMs / 1000))) },
      cause,
    })
  }

  /** Continues the chain from the last complete line of the newest file that has one. */
  async #load(w: LogWriter): Promise<void> {
    const names = sortAuditFiles(await w.fs.readdir(this.#o.directory))
    for (let i = names.length - 1; i >= 0; i--) {
      const file = path.join(this.#o.directory, names[i]!)
      const { lines } = splitLines(await w.fs.readFile(file))
      if (lines.length === 0) continue
      const resumed = resumeChain(lines)
      if (!resumed) {
        throw new Error(
          `cannot continue the audit chain: the last line of ${file} is not an audit record; ` +
            `run \`bulwark audit verify ${this.#o.directory}\` and move the damaged file out of the folder`,
        )
      }
      this.#chain = resumed
      return
    }
  }

  /** Writes one batch: a new file if none is open or rotation is due, the chained lines, the head. */
  async #commit(items: readonly ChainItem[], w: LogWriter): Promise<void> {
    const nowMs = this.#o.clock.nowMs()
    if (!w.current) await this.#newFile(w, nowMs)
    const cur = w.current!
    const estimate = items.reduce((n, it) => n + (it.kind === 'record' ? it.body.length + LINE_OVERHEAD_BYTES : 0), 0)
    const ageDue = this.#o.maxFileAgeMs > 0 && nowMs - cur.openedAtMs >= this.#o.maxFileAgeMs
    // Only a batch with records starts a new file: a lone checkpoint belongs at the end of this one.
    if (estimate > 0 && !this.#needsOpen && cur.size > 0 && (cur.size + estimate > this.#o.maxFileBytes || ageDue)) await this.#newFile(w, nowMs)

    const step = chainBatch(this.#chain, items, {
      at: new Date(nowMs).toISOString(),
      file: w.current!.name,
      opensFile: this.#needsOpen,
      checkpointEveryRecords: this.#o.checkpointEveryRecords,
      key: this.#o.key,
    })
    // A checkpoint is synced even when records are not (relaxed): it is what the verifier trusts.
    if (step.lines.length > 0) await w.append(Buffer.from(step.lines.join('\n') + '\n', 'utf8'), step.checkpoints > 0)

    // On disk: adopt the new chain.
    this.#chain = step.state
    this.#needsOpen = false
    this.#records += step.records
    this.#checkpoints += step.checkpoints
    // One write per line: a log shipper never sees half a record between two log lines.
    if (this.#o.mirror) for (const line of step.lines) this.#o.mirror.write(line + '\n')
    if (step.lastCheckpoint !== null) await this.#writeHead(w, step.lastCheckpoint)
  }

  async #newFile(w: LogWriter, nowMs: number): Promise<void> {
    try {
      await w.create(auditFileName(this.#chain.seq + 1, nowMs))
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      // A file of the same start (a clock stepped back): keep ours apart; the verifier reports the fork.
      await w.create(auditFileName(this.#chain.seq + 1, nowMs, Buffer.from(this.#o.random.bytes(4)).toString('hex')))
    }
    this.#needsOpen = true
    await this.#applyRetention(w, nowMs)
  }

  /** Deletes the oldest files past the size and age limits; never the file being written. */
  async #applyRetention(w: LogWriter, nowMs: number): Promise<void> {
    const { retentionMaxTotalBytes: maxBytes, retentionMaxAgeMs: maxAge, directory } = this.#o
    if (maxBytes === 0 && maxAge === 0) return
    try {
      const names = sortAuditFiles(await w.fs.readdir(directory)).filter((n) => n !== w.current?.name)
      const files = await Promise.all(names.map(async (n) => ({ n, st: await w.fs.stat(path.join(directory, n)) })))
      let total = files.reduce((s, f) => s + f.st.size, w.current?.size ?? 0)
      for (const f of files) {
        const tooOld = maxAge > 0 && nowMs - f.st.mtimeMs > maxAge
        const tooBig = maxBytes > 0 && total > maxBytes
        if (!tooOld && !tooBig) break
        await w.fs.unlink(path.join(directory, f.n))
        total -= f.st.size
        this.#o.log.info({ file: f.n, reason: tooOld ? 'retention.maxAgeMs' : 'retention.maxTotalBytes' }, 'audit file removed by retention')
      }
    } catch (err) {
      this.#o.log.warn({ err: errnoOf(err), directory }, 'audit retention could not remove old files')
    }
  }

  /** Keeps the newest checkpoint beside the files, so a log cut short is noticed. */
  async #writeHead(w: LogWriter, line: string): Promise<void> {
    try {
      await w.replaceSideFile(HEAD_FILE, Buffer.from(line + '\n', 'utf8'))
      this.#warnedHead = false
    } catch (err) {
      if (!this.#warnedHead) this.#o.log.warn({ err: errnoOf(err) }, `cannot update ${HEAD_FILE}; the records themselves are safe`)
      this.#warnedHead = true
    }
  }
}
