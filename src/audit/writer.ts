// The audit writer: one appender per audit directory, group commit, rotation, retention,
// signed checkpoints, fail closed.
//
// Group commit: append() queues a record; one batch is written at a time with one write and
// one fdatasync. Records that arrive while a batch is being synced go together into the
// next batch. Each caller's promise resolves only once its record is synced (durability
// strict) or written to the OS (relaxed; synced every relaxedSyncIntervalMs). The chain
// (seq, prev) is assigned when a batch is written, so a failed batch leaves no gap.
//
// Failure: when a write or sync fails, the batch's callers and every caller after them get
// `audit_unavailable` at once (fail closed) until a probe every retryMs manages to reopen the
// file, cut off whatever the failed batch left behind, and write a signed "recovered"
// checkpoint. The failure is logged once when it starts and once when it ends.
//
// Start: the chain continues from the last complete line in the directory (a torn line left
// by a crash stays where it is, the verifier reports it), in a new file.

import path from 'node:path'
import { BulwarkError } from '../errors.ts'
import type { Clock, Logger, RandomSource } from '../deps.ts'
import {
  auditFileName,
  chainLine,
  checkpointBody,
  encodeMarks,
  GENESIS,
  HEAD_FILE,
  sha256,
  sortAuditFiles,
  splitLines,
  type CheckpointEvent,
} from './chain.ts'
import { nodeAuditFs, type AuditFileHandle, type AuditFs } from './fs.ts'
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
  fs?: AuditFs
  /** Receives every committed line (with newline), e.g. standard output for a log shipper. */
  mirror?: { write(text: string): unknown } | null
}

type Item =
  | { kind: 'record'; body: string; resolve: () => void; reject: (err: Error) => void }
  | { kind: 'checkpoint'; event: CheckpointEvent; resolve: () => void; reject: (err: Error) => void }
  | { kind: 'sync'; resolve: () => void; reject: (err: Error) => void }

interface OpenFile {
  name: string
  path: string
  /** null after a failure, until a probe reopens it. */
  fh: AuditFileHandle | null
  /** Bytes acknowledged to callers; a failed batch is cut back to this on recovery. */
  size: number
  openedAtMs: number
  /** The file has no "open" checkpoint yet. */
  needsOpen: boolean
}

export interface AuditWriterStats {
  records: number
  checkpoints: number
  batches: number
  syncs: number
  failures: number
}

const noop = () => {}

function errnoOf(err: unknown): string {
  const e = err as NodeJS.ErrnoException
  return e?.code ? `${e.code}: ${e.message}` : String((err as Error)?.message ?? err)
}

export class AuditWriter {
  private readonly o: AuditWriterOptions
  private readonly fs: AuditFs
  // The committed chain: what is on disk and acknowledged.
  private seq = 0
  private head = GENESIS
  /** seq of the first line not yet covered by a checkpoint's marks. */
  private since = 1
  private marks: Buffer[] = []
  private recordsSinceCheckpoint = 0
  private chainLoaded = false
  private file: OpenFile | null = null
  /** Written in relaxed mode but not yet synced. */
  private dirty = false

  private queue: Item[] = []
  private draining = false
  private failure: { reason: string; sinceMs: number } | null = null
  private closing = false
  private closed = false
  private checkpointTimer: NodeJS.Timeout | undefined
  private syncTimer: NodeJS.Timeout | undefined
  private probeTimer: NodeJS.Timeout | undefined
  private warnedHead = false

  readonly stats: AuditWriterStats = { records: 0, checkpoints: 0, batches: 0, syncs: 0, failures: 0 }

  constructor(options: AuditWriterOptions) {
    this.o = options
    this.fs = options.fs ?? nodeAuditFs
  }

  /**
   * Opens the chain (continuing the directory's last one) and starts the timers. Never
   * rejects: when the directory cannot be written, the writer starts failed and keeps
   * probing, so the gateway starts, reports not ready and recovers by itself.
   */
  async start(): Promise<void> {
    this.checkpointTimer = setInterval(() => {
      if (!this.failure && !this.closing && this.recordsSinceCheckpoint > 0) this.enqueueInternal({ kind: 'checkpoint', event: 'interval' })
    }, this.o.checkpointEveryMs)
    this.checkpointTimer.unref()
    if (this.o.durability === 'relaxed') {
      this.syncTimer = setInterval(() => {
        if (this.dirty && !this.failure && !this.closing) this.enqueueInternal({ kind: 'sync' })
      }, this.o.relaxedSyncIntervalMs)
      this.syncTimer.unref()
    }
    // An empty batch: opens the chain and writes the new file's "open" checkpoint.
    await new Promise<void>((resolve) => {
      this.queue.push({ kind: 'sync', resolve, reject: () => resolve() })
      void this.drain()
    })
  }

  /** Why the audit log cannot be written now, or null when it can (for /readyz). */
  get problem(): string | null {
    if (this.closed) return 'audit log closed'
    return this.failure ? `audit log cannot be written since ${new Date(this.failure.sinceMs).toISOString()}: ${this.failure.reason}` : null
  }

  /** The file being written, for operators and tests. */
  get currentFile(): string | null {
    return this.file?.path ?? null
  }

  /**
   * Appends one record. `body` is a JSON object text (without seq and prev). Resolves when
   * the record is durable; rejects with audit_unavailable when it cannot be.
   */
  append(body: string): Promise<void> {
    if (this.failure || this.closing) return Promise.reject(this.unavailable())
    return new Promise((resolve, reject) => {
      this.queue.push({ kind: 'record', body, resolve, reject })
      void this.drain()
    })
  }

  /** Writes a signed checkpoint now (e.g. before handing the files to someone). */
  checkpoint(): Promise<void> {
    if (this.failure || this.closing) return Promise.reject(this.unavailable())
    return new Promise((resolve, reject) => {
      this.queue.push({ kind: 'checkpoint', event: 'interval', resolve, reject })
      void this.drain()
    })
  }

  /** Writes the shutdown checkpoint after everything queued, then closes the file. */
  async close(): Promise<void> {
    if (this.closing) return
    this.closing = true
    clearInterval(this.checkpointTimer)
    clearInterval(this.syncTimer)
    clearTimeout(this.probeTimer)
    if (!this.failure) {
      await new Promise<void>((resolve) => {
        this.queue.push({ kind: 'checkpoint', event: 'shutdown', resolve, reject: () => resolve() })
        void this.drain()
      })
    }
    while (this.draining) await new Promise((r) => setImmediate(r))
    const fh = this.file?.fh
    if (this.file) this.file.fh = null
    await fh?.close().catch(noop)
    this.closed = true
  }

  private unavailable(cause?: unknown): BulwarkError {
    const reason = this.closing ? 'the audit log is closed (shutting down)' : (this.failure?.reason ?? errnoOf(cause))
    return new BulwarkError('audit_unavailable', 'the audit log cannot be written, so the request is refused; retry later', {
      reason,
      headers: { 'retry-after': String(Math.max(1, Math.ceil(this.o.retryMs / 1000))) },
      cause,
    })
  }

  private enqueueInternal(item: { kind: 'checkpoint'; event: CheckpointEvent } | { kind: 'sync' }): void {
    this.queue.push({ ...item, resolve: noop, reject: noop } as Item)
    void this.drain()
  }

  private async drain(): Promise<void> {
    if (this.draining) return
    this.draining = true
    try {
      while (this.queue.length > 0) {
        const batch = this.queue.splice(0)
        try {
          await this.commit(batch)
          if (this.failure) this.recovered()
          for (const item of batch) item.resolve()
        } catch (err) {
          this.fail(err)
          const error = this.unavailable(err)
          for (const item of [...batch, ...this.queue.splice(0)]) item.reject(error)
        }
      }
    } finally {
      this.draining = false
    }
  }

  private fail(err: unknown): void {
    this.stats.failures++
    const reason = errnoOf(err)
    if (!this.failure) {
      this.failure = { reason, sinceMs: this.o.clock.nowMs() }
      this.o.log.error(
        { err: reason, directory: this.o.directory },
        'audit log cannot be written: every request is refused (503 audit_unavailable) until it can',
      )
    } else {
      this.failure.reason = reason
    }
    const fh = this.file?.fh
    if (this.file) this.file.fh = null
    fh?.close().catch(noop)
    if (!this.closing) {
      clearTimeout(this.probeTimer)
      this.probeTimer = setTimeout(() => this.enqueueInternal({ kind: 'checkpoint', event: 'recovered' }), this.o.retryMs)
      this.probeTimer.unref()
    }
  }

  private recovered(): void {
    const failedForMs = this.o.clock.nowMs() - this.failure!.sinceMs
    this.failure = null
    this.o.log.info({ directory: this.o.directory, failedForMs }, 'audit log writable again: serving requests')
  }

  /** Makes sure a file is open: continues the directory's chain, reopens after a failure. */
  private async ensureOpen(nowMs: number): Promise<OpenFile> {
    if (!this.chainLoaded) {
      await this.fs.mkdir(this.o.directory)
      await this.loadChain()
      this.chainLoaded = true
    }
    if (this.file && !this.file.fh) {
      // After a failure: cut off what the failed batch may have left, then go on in the same file.
      const st = await this.fs.stat(this.file.path).catch(() => null)
      if (st && st.size >= this.file.size) {
        const fh = await this.fs.open(this.file.path, 'a', 0o600)
        try {
          await fh.truncate(this.file.size)
          await fh.datasync()
        } catch (err) {
          await fh.close().catch(noop)
          throw err
        }
        this.file.fh = fh
      } else {
        this.o.log.error({ file: this.file.path }, 'audit file vanished or shrank while the log could not be written; continuing in a new file')
        this.file = null
      }
    }
    if (!this.file) await this.createFile(nowMs)
    return this.file!
  }

  /** Continues the chain from the last complete line of the newest file that has one. */
  private async loadChain(): Promise<void> {
    const names = sortAuditFiles(await this.fs.readdir(this.o.directory))
    for (let i = names.length - 1; i >= 0; i--) {
      const file = path.join(this.o.directory, names[i]!)
      const { lines } = splitLines(await this.fs.readFile(file))
      if (lines.length === 0) continue
      const last = lines[lines.length - 1]!
      const seq = parseSeq(last)
      if (seq === null) {
        throw new Error(
          `cannot continue the audit chain: the last line of ${file} is not an audit record; ` +
            `run \`bulwark audit verify ${this.o.directory}\` and move the damaged file out of the folder`,
        )
      }
      this.seq = seq
      this.head = sha256(last).toString('hex')
      let j = lines.length - 1
      while (j >= 0 && !isCheckpoint(lines[j]!)) j--
      const covered = j >= 0 ? parseSeq(lines[j]!)! + 1 : parseSeq(lines[0]!) ?? seq
      this.since = covered
      this.marks = lines.slice(j + 1).map((l) => sha256(l))
      this.recordsSinceCheckpoint = this.marks.length
      return
    }
  }

  private async createFile(nowMs: number): Promise<void> {
    let name = auditFileName(this.seq + 1, nowMs)
    let fh: AuditFileHandle
    try {
      fh = await this.fs.open(path.join(this.o.directory, name), 'wx', 0o600)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      // Another writer's file of the same start: keep ours apart (the verifier reports the fork).
      name = auditFileName(this.seq + 1, nowMs, Buffer.from(this.o.random.bytes(4)).toString('hex'))
      fh = await this.fs.open(path.join(this.o.directory, name), 'wx', 0o600)
    }
    this.file = { name, path: path.join(this.o.directory, name), fh, size: 0, openedAtMs: nowMs, needsOpen: true }
    await this.fs.syncDir(this.o.directory)
    await this.applyRetention(nowMs)
  }

  private async rotate(nowMs: number): Promise<void> {
    const old = this.file!
    if (this.dirty) {
      await old.fh!.datasync()
      this.dirty = false
    }
    this.file = null
    await old.fh!.close()
    await this.createFile(nowMs)
  }

  /** Deletes the oldest files past the size and age limits; never the file being written. */
  private async applyRetention(nowMs: number): Promise<void> {
    const { retentionMaxTotalBytes: maxBytes, retentionMaxAgeMs: maxAge } = this.o
    if (maxBytes === 0 && maxAge === 0) return
    try {
      const names = sortAuditFiles(await this.fs.readdir(this.o.directory)).filter((n) => n !== this.file?.name)
      const files = await Promise.all(names.map(async (n) => ({ n, st: await this.fs.stat(path.join(this.o.directory, n)) })))
      let total = files.reduce((s, f) => s + f.st.size, this.file?.size ?? 0)
      for (const f of files) {
        const tooOld = maxAge > 0 && nowMs - f.st.mtimeMs > maxAge
        const tooBig = maxBytes > 0 && total > maxBytes
        if (!tooOld && !tooBig) break
        await this.fs.unlink(path.join(this.o.directory, f.n))
        total -= f.st.size
        this.o.log.info({ file: f.n, reason: tooOld ? 'retention.maxAgeMs' : 'retention.maxTotalBytes' }, 'audit file removed by retention')
      }
    } catch (err) {
      this.o.log.warn({ err: errnoOf(err), directory: this.o.directory }, 'audit retention could not remove old files')
    }
  }

  /** Writes one batch: rotation if due, the lines, checkpoints where due, one sync. */
  private async commit(batch: Item[]): Promise<void> {
    const nowMs = this.o.clock.nowMs()
    let file = await this.ensureOpen(nowMs)
    const estimate = batch.reduce((n, it) => n + (it.kind === 'record' ? it.body.length + 100 : 0), 0)
    const ageDue = this.o.maxFileAgeMs > 0 && nowMs - file.openedAtMs >= this.o.maxFileAgeMs
    // Only a batch with records starts a new file: a lone checkpoint belongs at the end of this one.
    if (estimate > 0 && !file.needsOpen && file.size > 0 && (file.size + estimate > this.o.maxFileBytes || ageDue)) {
      await this.rotate(nowMs)
      file = this.file!
    }

    // Chain the batch on a working copy; it becomes the committed state only once on disk.
    let seq = this.seq
    let head = this.head
    let since = this.since
    let marks = this.marks.slice()
    let recordsSince = this.recordsSinceCheckpoint
    let needSync = this.o.durability === 'strict' || (this.dirty && batch.some((it) => it.kind === 'sync'))
    let lastCheckpoint: string | null = null
    let records = 0
    let checkpoints = 0
    const lines: string[] = []
    const add = (body: string) => {
      seq++
      const line = chainLine(seq, head, body)
      const h = sha256(line)
      lines.push(line)
      head = h.toString('hex')
      marks.push(h)
    }
    const addCheckpoint = (event: CheckpointEvent) => {
      const at = new Date(nowMs).toISOString()
      const fields = { seq: seq + 1, event, at, file: file.name, since, head, marks: encodeMarks(marks), key: this.o.key.keyId }
      add(checkpointBody(fields, this.o.key.privateKey))
      lastCheckpoint = lines[lines.length - 1]!
      since = seq + 1
      marks = []
      recordsSince = 0
      checkpoints++
      needSync = true
    }

    if (file.needsOpen) addCheckpoint('open')
    for (const item of batch) {
      if (item.kind === 'record') {
        add(item.body)
        records++
        if (++recordsSince >= this.o.checkpointEveryRecords) addCheckpoint('interval')
      } else if (item.kind === 'checkpoint') {
        // A timer's checkpoint with nothing new to cover is skipped; the others always write.
        if (item.event !== 'interval' || recordsSince > 0) addCheckpoint(item.event)
      } else if (this.dirty) {
        needSync = true
      }
    }

    let bytes = 0
    if (lines.length > 0) {
      const buf = Buffer.from(lines.join('\n') + '\n', 'utf8')
      let off = 0
      while (off < buf.length) {
        const { bytesWritten } = await file.fh!.write(buf, off, buf.length - off)
        if (bytesWritten <= 0) throw new Error('write returned no progress')
        off += bytesWritten
      }
      bytes = buf.length
    }
    if (needSync && (lines.length > 0 || this.dirty)) {
      await file.fh!.datasync()
      this.stats.syncs++
    }

    // On disk: commit.
    file.size += bytes
    file.needsOpen = false
    this.seq = seq
    this.head = head
    this.since = since
    this.marks = marks
    this.recordsSinceCheckpoint = recordsSince
    this.dirty = !needSync && (this.dirty || bytes > 0)
    this.stats.batches++
    this.stats.records += records
    this.stats.checkpoints += checkpoints
    // One write per line: a log shipper never sees half a record between two log lines.
    if (this.o.mirror) for (const line of lines) this.o.mirror.write(line + '\n')
    if (lastCheckpoint !== null) await this.writeHead(lastCheckpoint)
  }

  /** Keeps the newest checkpoint beside the files, so a log cut short is noticed. */
  private async writeHead(line: string): Promise<void> {
    try {
      await this.fs.replaceFile(path.join(this.o.directory, HEAD_FILE), line + '\n', 0o600)
      await this.fs.syncDir(this.o.directory)
      this.warnedHead = false
    } catch (err) {
      if (!this.warnedHead) this.o.log.warn({ err: errnoOf(err) }, `cannot update ${HEAD_FILE}; the records themselves are safe`)
      this.warnedHead = true
    }
  }
}

function parseSeq(line: Buffer): number | null {
  try {
    const obj = JSON.parse(line.toString('utf8')) as { seq?: unknown }
    return Number.isSafeInteger(obj.seq) ? (obj.seq as number) : null
  } catch {
    return null
  }
}

function isCheckpoint(line: Buffer): boolean {
  // Cheap pre-check before parsing: every checkpoint line has this exact text.
  if (!line.includes('"type":"checkpoint"')) return false
  try {
    return (JSON.parse(line.toString('utf8')) as { type?: unknown }).type === 'checkpoint'
  } catch {
    return false
  }
}
