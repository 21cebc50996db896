// The privacy accountant persisted on local disk, so budgets survive a restart.
//
// Format: `<directory>/journal.jsonl`, append-only, one JSON object per line, each with a
// CRC-32 of the line's content:
//     {"journal":"bulwark-privacy","version":1,"crc":"<8 hex>"}              first line
//     {"t":<wall ms>,"k":"<key>","e":<micro-epsilon>,"r":<nano-rho>,"crc":"<8 hex>"}
// The crc covers the JSON text of the other fields in that order, without "crc".
//
// Crash safety. A charge is recorded in memory at once (so concurrent requests cannot
// overspend), then its line is appended; `charge` resolves only after that. With
// durability 'strict' (the default) the append is synced (O_DSYNC, or write then fdatasync
// where the platform lacks O_DSYNC), so no answer is released whose cost is not on disk.
// With 'relaxed' the append reaches the OS before `charge` resolves (a killed process
// loses nothing) and the file is synced every relaxedSyncIntervalMs: a power cut or kernel
// crash can forget the charges of that last interval, never corrupt the journal.
// Concurrent charges share one write (group commit), and the charges of one key in one
// write share one line: the summed cost at the latest of their times. Replayed after a
// restart, such a line frees its whole cost at that latest time, a little later than the
// charges it merges would have: never earlier, so never an overspend, and a busy caller
// costs one line per write instead of one per answer. A crash can leave only the tail
// torn; at open, invalid lines AT THE END are dropped (their answers were never released)
// and any invalid line FOLLOWED by a valid one stops the start: that is corruption, not a
// crash, and silently dropping a charge would overspend. After a failed write the accountant
// refuses every further charge (fail closed) until restarted.
//
// Reservations (charge ahead), with reserveFraction > 0 (the gateway's default). One write
// per answer, even grouped, costs a busy caller a synced write every few answers. Instead a
// caller's charge may be covered by a reservation: one journal line for the cost of n
// answers, stamped at the END of its lease (now + reserveLeaseMs), written and synced before
// the first answer it covers is released. Later answers of that caller within the lease draw
// on it in memory, with no write. Decisions (fits or 429, ε spent and left) come from the
// exact in-memory ledger of actual charges; the journal holds the reservations. Replayed
// after a crash, every actual charge is covered by a line of at least its cost stamped no
// earlier than it was made, so the rebuilt budget never shows less spent than was: the price
// of a crash is the unused rest of the reservations, counted as spent until they expire (and
// budgets freeing up to one lease later). n starts at 1, doubles while reservations run out
// within their lease, falls to what the last one served when it expired, and is capped at
// reserveFraction of the budget and at what the window has left.
//
// Size. Entries older than the retention period (the longest window) are dead. When the
// file holds more than `compactMinLines` lines and more than twice the live entries, it
// is rewritten: temp file, fsync, rename over the journal, fsync of the directory. Either
// the old or the new journal is complete at every instant. Only entries already on disk
// go into the rewrite; charges still waiting for their write are appended after it.
//
// One process per directory: two gateways sharing the directory would each miss the
// other's charges. Several replicas need a shared accountant (see accountant.ts).

import { constants } from 'node:fs'
import { mkdir, open, readFile, rename, rm, type FileHandle } from 'node:fs/promises'
import path from 'node:path'
import { crc32 } from 'node:zlib'
import type { Clock, Logger } from '../deps.ts'
import { silentLogger } from '../deps.ts'
import {
  Ledger,
  MAX_WINDOW_MS,
  checkBudget,
  checkCost,
  checkKey,
  costFits,
  type ChargeResult,
  type LedgerEntry,
  type PrivacyAccountant,
  type PrivacyBudget,
} from './accountant.ts'
import { EPSILON_UNITS, scaleCost, type PrivacyCost } from './mechanisms.ts'

export const JOURNAL_FILE = 'journal.jsonl'
const HEADER = { journal: 'bulwark-privacy', version: 1 }

export class PrivacyStateError extends Error {
  override name = 'PrivacyStateError'
}

export interface FileAccountantOptions {
  /** Folder for the journal (created, mode 0700), e.g. `<state.directory>/privacy`. */
  directory: string
  clock: Clock
  /** How long charges are kept: at least the longest policy window. Default 7 days. */
  retentionMs?: number
  /** Compact once the file has this many lines (and twice the live ones). Default 4096. */
  compactMinLines?: number
  /** 'strict' (default): synced before `charge` resolves; 'relaxed': see the top of this file. */
  durability?: 'strict' | 'relaxed'
  /** With 'relaxed': how often the journal is synced. Default 200 ms. */
  relaxedSyncIntervalMs?: number
  /**
   * Shortest time from the start of one write to the start of the next; charges made
   * meanwhile wait and share it. Default 0 (write as soon as the last one is done).
   */
  commitIntervalMs?: number
  /** Reservations (see the top of this file): at most this fraction of a budget per line. Default 0: none. */
  reserveFraction?: number
  /** How long a reservation may be drawn on. Default 1000 ms. */
  reserveLeaseMs?: number
  log?: Logger
}

/** One key's current reservation: what is left of it, and how it was sized and used. */
interface Reserve {
  e: number
  r: number
  /** Its journal stamp: answers after this time need a new reservation. */
  until: number
  /** Answers it was sized for, and answers it has covered. */
  size: number
  served: number
  /** Until its line is durable: the write that answers drawing on it wait for. */
  written: Promise<void> | null
}

function crcHex(text: string): string {
  return crc32(text).toString(16).padStart(8, '0')
}

/** `{...fields,"crc":"..."}` for the JSON text of `fields`. */
function sealLine(fields: object): string {
  const body = JSON.stringify(fields)
  return `${body.slice(0, -1)},"crc":"${crcHex(body)}"}\n`
}

function entryLine(key: string, e: Pick<LedgerEntry, 't' | 'e' | 'r'>): string {
  return sealLine({ t: e.t, k: key, e: e.e, r: e.r })
}

/** Appends that are durable when write() returns, where the platform has O_DSYNC. */
const DSYNC_APPEND = constants.O_DSYNC ? constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_DSYNC : null

function openForAppend(file: string, strict: boolean): Promise<FileHandle> {
  return open(file, strict ? (DSYNC_APPEND ?? 'a') : 'a', 0o600)
}

/** Charges of one key this close together may share a line (see "Crash safety" above). */
const MERGE_WINDOW_MS = 1000

/**
 * Journal lines for `entries` (each key's in time order): consecutive charges of a key
 * within MERGE_WINDOW_MS of the first of them become one line, their summed cost at the
 * latest of their times. Used for group-commit writes and for compaction alike.
 */
function journalText(entries: Iterable<readonly [string, Pick<LedgerEntry, 't' | 'e' | 'r'>]>): string {
  const open = new Map<string, { first: number; t: number; e: number; r: number }>()
  let text = ''
  for (const [key, entry] of entries) {
    const m = open.get(key)
    if (m && entry.t - m.first < MERGE_WINDOW_MS) {
      m.t = Math.max(m.t, entry.t)
      m.e += entry.e
      m.r += entry.r
      continue
    }
    if (m) text += entryLine(key, m)
    open.set(key, { first: entry.t, t: entry.t, e: entry.e, r: entry.r })
  }
  for (const [key, m] of open) text += entryLine(key, m)
  return text
}

type Parsed = { kind: 'header'; version: unknown } | { kind: 'entry'; key: string; entry: LedgerEntry } | null

function parseLine(line: string): Parsed {
  let obj: Record<string, unknown>
  try {
    obj = JSON.parse(line) as Record<string, unknown>
  } catch {
    return null
  }
  if (!obj || typeof obj !== 'object' || Array.isArray(obj) || typeof obj.crc !== 'string') return null
  const { crc, ...rest } = obj
  if (crcHex(JSON.stringify(rest)) !== crc) return null
  if (rest.journal === HEADER.journal) return { kind: 'header', version: rest.version }
  const { t, k, e, r } = rest
  const okInt = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0
  if (typeof k !== 'string' || !okInt(t) || !okInt(e) || !okInt(r) || Object.keys(rest).length !== 4) return null
  return { kind: 'entry', key: k, entry: { t: t as number, e: e as number, r: r as number, durable: true } }
}

interface Waiter {
  resolve(): void
  reject(err: unknown): void
}

export class FileAccountant implements PrivacyAccountant {
  /** Actual charges: every decision. */
  readonly #ledger: Ledger
  /** What the journal holds: the same object as #ledger without reservations. */
  readonly #journal: Ledger
  readonly #reserves = new Map<string, Reserve>()
  #sweepReservesAt = 1024
  readonly #reserveFraction: number
  readonly #reserveLeaseMs: number
  readonly #clock: Clock
  readonly #log: Logger
  readonly #file: string
  readonly #dir: string
  readonly #compactMinLines: number
  readonly #commitIntervalMs: number
  readonly #strict: boolean
  /** Relaxed: written since the last sync; the timer that syncs. */
  #unsynced = false
  #syncDue = false
  readonly #syncTimer: NodeJS.Timeout | null
  #lastWriteStart = -Infinity
  #fh: FileHandle
  #linesInFile: number
  #queue: { key: string; entry: LedgerEntry }[] = []
  #waiters: Waiter[] = []
  #flushing: Promise<void> | null = null
  #failed: Error | null = null
  #closed = false
  #compactAt: number

  private constructor(init: {
    ledger: Ledger
    journal: Ledger
    reserveFraction: number
    reserveLeaseMs: number
    clock: Clock
    log: Logger
    dir: string
    fh: FileHandle
    linesInFile: number
    compactMinLines: number
    commitIntervalMs: number
    strict: boolean
    relaxedSyncIntervalMs: number
  }) {
    this.#ledger = init.ledger
    this.#journal = init.journal
    this.#reserveFraction = init.reserveFraction
    this.#reserveLeaseMs = init.reserveLeaseMs
    this.#clock = init.clock
    this.#log = init.log
    this.#dir = init.dir
    this.#file = path.join(init.dir, JOURNAL_FILE)
    this.#fh = init.fh
    this.#linesInFile = init.linesInFile
    this.#compactMinLines = init.compactMinLines
    this.#compactAt = init.compactMinLines
    this.#commitIntervalMs = init.commitIntervalMs
    this.#strict = init.strict
    this.#syncTimer = init.strict
      ? null
      : setInterval(() => {
          if (!this.#unsynced || this.#closed) return
          this.#syncDue = true
          this.#kick()
        }, init.relaxedSyncIntervalMs).unref()
  }

  /** Opens (or creates) the journal, replays it, and compacts it. */
  static async open(options: FileAccountantOptions): Promise<FileAccountant> {
    const retentionMs = options.retentionMs ?? MAX_WINDOW_MS
    const log = options.log ?? silentLogger
    const dir = path.resolve(options.directory)
    const file = path.join(dir, JOURNAL_FILE)
    await mkdir(dir, { recursive: true, mode: 0o700 })
    await rm(`${file}.tmp`, { force: true })

    const ledger = new Ledger(retentionMs)
    let text = ''
    try {
      text = await readFile(file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new PrivacyStateError(`${file}: cannot read the privacy journal: ${(err as Error).message}`, { cause: err })
      }
    }
    const lines = text.split('\n')
    // The journal is only ever created by renaming a synced file that starts with the
    // header, so a crash cannot tear the header: a bad first line is a foreign or damaged file.
    if (text.length > 0 && parseLine(lines[0]!)?.kind !== 'header') {
      throw new PrivacyStateError(
        `${file}: the first line is not a Bulwark privacy journal header; refusing to start. Move the file aside to reset every budget (this forgets what callers have spent).`,
      )
    }
    // The text after the last newline is a line that was not finished: torn by a crash.
    const unfinished = lines.pop() ?? ''
    let torn = unfinished.length > 0 ? 1 : 0
    let firstBad = -1
    let lineCount = 0
    for (let i = 0; i < lines.length; i++) {
      const parsed = parseLine(lines[i]!)
      if (parsed === null) {
        if (firstBad < 0) firstBad = i
        continue
      }
      if (firstBad >= 0) {
        throw new PrivacyStateError(
          `${file}: line ${firstBad + 1} is damaged but later lines are intact: the journal is corrupt, not torn by a crash. ` +
            `Refusing to start, since dropping recorded charges would overspend privacy budgets. Restore the file from a backup, ` +
            `or move it aside to reset every budget (this forgets what callers have spent).`,
        )
      }
      if (parsed.kind === 'header') {
        if (i !== 0) throw new PrivacyStateError(`${file}: line ${i + 1}: a journal header in the middle of the file; the journal is corrupt`)
        if (parsed.version !== HEADER.version) {
          throw new PrivacyStateError(`${file}: journal version ${JSON.stringify(parsed.version)} is not supported (this gateway reads version ${HEADER.version})`)
        }
        lineCount++
        continue
      }
      ledger.add(parsed.key, parsed.entry)
      lineCount++
    }
    if (firstBad >= 0) torn += lines.length - firstBad
    if (torn > 0) log.warn({ file, droppedLines: torn }, 'privacy journal: dropped a torn tail left by a crash (those answers were never released)')

    const now = options.clock.nowMs()
    const dropped = ledger.prune(now)
    const tmp = `${file}.tmp`
    // Start from a clean file: the live entries only, no torn tail.
    const needRewrite = lineCount === 0 || torn > 0 || dropped > 0
    const linesInFile = needRewrite ? await writeJournal(tmp, file, dir, ledger) : lineCount
    const strict = (options.durability ?? 'strict') === 'strict'
    const fh = await openForAppend(file, strict)
    const reserveFraction = options.reserveFraction ?? 0
    if (!(reserveFraction >= 0 && reserveFraction <= 1)) throw new RangeError('reserveFraction must lie in [0, 1]')
    // With reservations, decisions start from the replayed lines too (conservative: they hold
    // at least what was charged), but in a ledger of their own: the journal's keeps lines.
    const live = reserveFraction > 0 ? new Ledger(retentionMs) : ledger
    if (live !== ledger) for (const [key, e] of ledger.entries()) live.add(key, { ...e })
    return new FileAccountant({
      ledger: live,
      journal: ledger,
      reserveFraction,
      reserveLeaseMs: options.reserveLeaseMs ?? 1000,
      clock: options.clock,
      log,
      dir,
      fh,
      linesInFile,
      compactMinLines: options.compactMinLines ?? 4096,
      commitIntervalMs: options.commitIntervalMs ?? 0,
      strict,
      relaxedSyncIntervalMs: options.relaxedSyncIntervalMs ?? 200,
    })
  }

  async charge(key: string, cost: PrivacyCost, budget: PrivacyBudget): Promise<ChargeResult> {
    this.#usable()
    checkKey(key)
    checkCost(cost)
    checkBudget(budget, this.#ledger.retentionMs)
    const now = this.#clock.nowMs()
    const { result, entry, merged } = this.#ledger.charge(key, cost, budget, now)
    if (!entry) return result
    if (this.#reserveFraction > 0) {
      const written = this.#cover(key, cost, budget, now, result)
      if (written) await written
      return result
    }
    // A merged charge rides in an entry that is queued and not yet taken by a write (the
    // Ledger merges only into pending entries): wait for that write.
    await (merged ? this.#awaitQueued() : this.#persist(key, entry))
    return result
  }

  /**
   * Covers an accepted charge by the key's reservation, or by a new one: returns the write
   * to wait for, if its line is not durable yet.
   */
  #cover(key: string, cost: PrivacyCost, budget: PrivacyBudget, now: number, result: ChargeResult): Promise<void> | null {
    const old = this.#reserves.get(key)
    if (old && now <= old.until && cost.epsilonMicros <= old.e && cost.rhoNanos <= old.r) {
      old.e -= cost.epsilonMicros
      old.r -= cost.rhoNanos
      old.served++
      return old.written
    }
    if (this.#reserves.size >= this.#sweepReservesAt) this.#sweepReserves(now)
    const n = this.#reserveSize(!old ? 1 : now <= old.until ? old.size * 2 : old.served, cost, budget, result)
    // Stamped at the lease's end, never before the key's previous stamp (a clock stepping back).
    const until = Math.max(now + this.#reserveLeaseMs, old?.until ?? 0)
    const reserved = scaleCost(cost, n)
    const entry: LedgerEntry = { t: until, e: reserved.epsilonMicros, r: reserved.rhoNanos, durable: false }
    this.#journal.add(key, entry)
    const written = this.#persist(key, entry)
    const reserve: Reserve = { e: entry.e - cost.epsilonMicros, r: entry.r - cost.rhoNanos, until, size: n, served: 1, written }
    this.#reserves.set(key, reserve)
    written.then(
      () => {
        reserve.written = null
      },
      () => {
        if (this.#reserves.get(key) === reserve) this.#reserves.delete(key)
      },
    )
    return written
  }

  /** `wanted` answers' worth, at most reserveFraction of the budget and what the window has left. */
  #reserveSize(wanted: number, cost: PrivacyCost, budget: PrivacyBudget, result: ChargeResult): number {
    const cap = { ...budget, epsilonMicros: Math.floor(budget.epsilonMicros * this.#reserveFraction) }
    let n = Math.max(1, Math.floor(wanted))
    if (cost.epsilonMicros > 0) {
      // This answer plus what is left after it; rounded down, so never past the budget.
      const left = Math.floor(result.epsilonLeft * EPSILON_UNITS + 1e-6)
      n = Math.min(n, Math.floor(cap.epsilonMicros / cost.epsilonMicros), 1 + Math.floor(left / cost.epsilonMicros))
    }
    // zCDP parts compose by a formula: halve until the n answers fit in the cap.
    while (n > 1 && !costFits(scaleCost(cost, n), cap)) n = Math.floor(n / 2)
    return Math.max(1, n)
  }

  /** Forgets reservations whose lease is over (their lines stay in the journal). */
  #sweepReserves(now: number): void {
    for (const [key, r] of this.#reserves) if (r.until < now && r.written === null) this.#reserves.delete(key)
    this.#sweepReservesAt = Math.max(1024, 2 * this.#reserves.size)
  }

  async balance(key: string, budget: PrivacyBudget): Promise<ChargeResult> {
    this.#usable()
    checkKey(key)
    checkBudget(budget, this.#ledger.retentionMs)
    return this.#ledger.charge(key, { epsilonMicros: 0, rhoNanos: 0 }, budget, this.#clock.nowMs(), false).result
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    if (this.#syncTimer) clearInterval(this.#syncTimer)
    while (this.#flushing) await this.#flushing.catch(() => {})
    // Relaxed: what was written since the last sync goes to disk now, on a clean shutdown.
    if (this.#unsynced && !this.#failed) await this.#fh.datasync().catch((err: unknown) => this.#log.error({ file: this.#file, err }, 'privacy journal: final sync failed'))
    await this.#fh.close()
  }

  /** Lines in the journal file now (header included); for tests and metrics. */
  get journalLines(): number {
    return this.#linesInFile
  }

  #usable(): void {
    if (this.#closed) throw new Error('privacy accountant is closed')
    if (this.#failed) {
      throw new PrivacyStateError(`privacy journal ${this.#file} failed earlier (${this.#failed.message}); refusing charges until restart`, {
        cause: this.#failed,
      })
    }
  }

  #persist(key: string, entry: LedgerEntry): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#queue.push({ key, entry })
      this.#waiters.push({ resolve, reject })
      this.#kick()
    })
  }

  #awaitQueued(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#waiters.push({ resolve, reject })
    })
  }

  /** Starts the write loop unless it is running; it takes whatever is queued or due. */
  #kick(): void {
    this.#flushing ??= this.#flushLoop().finally(() => {
      this.#flushing = null
    })
  }

  async #flushLoop(): Promise<void> {
    while (this.#queue.length > 0 || this.#syncDue) {
      if (this.#queue.length === 0) {
        // Relaxed: the periodic sync, in this loop so it never races a write or a compaction.
        this.#syncDue = false
        this.#unsynced = false
        try {
          if (!this.#failed) await this.#fh.datasync()
        } catch (err) {
          this.#fail(err, [])
          return
        }
        continue
      }
      // Each synced write costs the kernel far more than the bytes it carries (a journal
      // commit on the disk); spacing writes at least commitIntervalMs apart bounds how many
      // a busy gateway makes per second, at the price of that much latency under load.
      // After a pause the first charge is written at once.
      const wait = this.#lastWriteStart + this.#commitIntervalMs - this.#clock.monotonicMs()
      if (wait > 0 && !this.#closed) await new Promise((r) => setTimeout(r, wait))
      this.#lastWriteStart = this.#clock.monotonicMs()
      const batch = this.#queue.splice(0)
      const waiters = this.#waiters.splice(0)
      // From here on these entries are being written: later charges must not merge into them.
      for (const b of batch) b.entry.pending = false
      try {
        if (this.#failed) throw this.#failed
        const text = journalText(batch.map((b) => [b.key, b.entry] as const))
        await writeAll(this.#fh, Buffer.from(text, 'utf8'))
        if (this.#strict && DSYNC_APPEND === null) await this.#fh.datasync()
        this.#unsynced ||= !this.#strict
        this.#linesInFile += countLines(text)
      } catch (err) {
        this.#fail(err, waiters)
        return
      }
      for (const b of batch) b.entry.durable = true
      for (const w of waiters) w.resolve()
      if (this.#linesInFile > this.#compactAt && this.#linesInFile > 2 * this.#journal.size + 1) await this.#compact()
    }
  }

  /**
   * After a failed write or sync the file may end in a partial line, or hold lines the disk
   * never got; appending more would put a damaged line in the middle. Refuse every charge
   * from here on (fail closed); a restart drops a torn tail.
   */
  #fail(err: unknown, waiters: Waiter[]): void {
    this.#failed ??= err instanceof Error ? err : new Error(String(err))
    this.#log.error({ file: this.#file, err }, 'privacy journal write failed; refusing further charges')
    for (const w of [...waiters, ...this.#waiters.splice(0)]) w.reject(this.#failed)
    this.#queue.length = 0
  }

  async #compact(): Promise<void> {
    const tmp = `${this.#file}.tmp`
    const now = this.#clock.nowMs()
    this.#journal.prune(now)
    if (this.#ledger !== this.#journal) this.#ledger.prune(now)
    let renamed = false
    try {
      const written = await writeJournal(tmp, this.#file, this.#dir, this.#journal, () => {
        renamed = true
      })
      const fh = await openForAppend(this.#file, this.#strict)
      const old = this.#fh
      this.#fh = fh
      this.#unsynced = false // the rewrite was synced before the rename
      this.#linesInFile = written
      this.#compactAt = this.#compactMinLines
      await old.close().catch(() => {})
    } catch (err) {
      if (renamed) {
        // The journal was replaced but we hold no handle on the new one: appends would go
        // to the unlinked old file. Fail closed.
        this.#failed ??= err instanceof Error ? err : new Error(String(err))
        this.#log.error({ file: this.#file, err }, 'privacy journal compaction failed after rename; refusing further charges')
        return
      }
      // The old journal is intact: keep appending to it, try again when it has doubled.
      await rm(tmp, { force: true }).catch(() => {})
      this.#compactAt = this.#linesInFile * 2
      this.#log.warn({ file: this.#file, err }, 'privacy journal compaction failed; will retry later')
    }
  }
}

function countLines(text: string): number {
  let n = 0
  for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) n++
  return n
}

async function writeAll(fh: FileHandle, buf: Buffer): Promise<void> {
  let off = 0
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off)
    off += bytesWritten
  }
}

/**
 * Writes the header and the ledger's durable entries to `tmp`, syncs it, renames it over
 * `file`, and syncs the folder so the rename itself survives a crash. Returns the line count.
 */
async function writeJournal(tmp: string, file: string, dir: string, ledger: Ledger, onRenamed?: () => void): Promise<number> {
  const durable = function* () {
    for (const e of ledger.entries()) if (e[1].durable) yield e
  }
  const text = sealLine(HEADER) + journalText(durable())
  const fh = await open(tmp, 'w', 0o600)
  try {
    await writeAll(fh, Buffer.from(text, 'utf8'))
    await fh.sync()
  } finally {
    await fh.close()
  }
  await rename(tmp, file)
  onRenamed?.()
  await syncDirectory(dir)
  return countLines(text)
}

async function syncDirectory(dir: string): Promise<void> {
  let fh: FileHandle | undefined
  try {
    fh = await open(dir, 'r')
    await fh.sync()
  } catch (err) {
    // Some platforms cannot fsync a directory (EISDIR, EPERM on Windows); the rename is
    // still atomic there, only its durability across power loss is weaker.
    const code = (err as NodeJS.ErrnoException).code
    if (code !== 'EISDIR' && code !== 'EPERM' && code !== 'EINVAL') throw err
  } finally {
    await fh?.close()
  }
}
