// The privacy accountant persisted on local disk, so budgets survive a restart.
//
// Format: `<directory>/journal.jsonl`, append-only, one JSON object per line, each with a
// CRC-32 of the line's content:
//     {"journal":"bulwark-privacy","version":2,"crc":"<8 hex>"}              first line
//     {"t":<ms>,"k":"<key>","e":<micro-epsilon>,"r":<nano-rho>,"w":<window ms>,"crc":"<8 hex>"}
//     {"clock":<ms>,"wall":<wall ms>,"crc":"<8 hex>"}
// The crc covers the JSON text of the other fields in that order, without "crc". An entry is
// a charge (or a reservation) at time t, made under a window of w ms. A clock line says what
// the journal's time and the wall clock read at one moment (see "Time"). Version 1 journals
// (entries without "w", no clock lines) are read and rewritten as version 2, their entries
// with "w":0, no window of their own: they count by the budget's window and are kept for the
// retention, as version 1 did. A gateway of version 1 refuses a version 2 journal rather than
// misread it. The codec, the replay and the reservation sizing are the pure functions at the
// top of this file.
//
// Time. Charges are stamped and freed by the journal's own time (a ChargeClock,
// accountant.ts): wall time that never runs faster than the monotonic clock while the
// gateway runs, so a wall clock stepping forward frees nothing early. Across a restart only
// the wall clock can say how long the gateway was down, so the journal records a clock line
// (its time and the wall clock's) every CLOCK_LINE_INTERVAL_MS, at every rewrite and at close,
// and at open resumes from the last one: its time then is the recorded time plus the wall
// clock's progress since, so a difference left by an earlier step is kept. If the wall clock
// is past the last record by more than the longest window of its charges plus one clock
// interval (the age a killed gateway's last clock line can have), it cannot tell a long
// downtime from a clock stepped forward: it holds, resuming from the recorded time as if no
// time had passed, and warns. Charges then stay charged rather than freed: after a real long
// downtime the callers that spent just before it wait up to one window more. A forward step
// smaller than that, made while the gateway was down, cannot be told from downtime and frees
// charges early by at most the step.
//
// Crash safety. A charge is recorded in memory at once (so concurrent requests cannot
// overspend), then its line is appended to a durable log (src/durable/log.ts); `charge`
// resolves only after that. With durability 'strict' (the default) the append is synced
// (write, then fdatasync), so no answer is released whose cost is not on disk. With
// 'relaxed' the append reaches the OS before `charge` resolves (a killed process loses
// nothing) and the file is synced every relaxedSyncIntervalMs: a power cut or kernel crash
// can forget the charges of that last interval, never corrupt the journal.
// Concurrent charges share one write (group commit), and the charges of one key in one
// write share one line: the summed cost at the latest of their times (and the longest of
// their windows, should they differ). Replayed after a restart, such a line frees its whole
// cost at that latest time, a little later than the charges it merges would have: never
// earlier, so never an overspend, and a busy caller costs one line per write instead of one
// per answer. A crash can leave only the tail torn; at open, invalid lines AT THE END are
// dropped (their answers were never released) and any invalid line FOLLOWED by a valid one
// stops the start: that is corruption, not a crash, and silently dropping a charge would
// overspend. After a failed write the accountant refuses every further charge (fail closed)
// until restarted.
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
// Size. An entry is dead once both its own window and the retention period (the longest
// window of the policies in use) have passed. When the file holds more than `compactMinLines`
// lines and more than twice the live entries, it is rewritten atomically (src/durable/files.ts):
// either the old or the new journal is complete at every instant. Only entries already on disk
// go into the rewrite; charges still waiting for their write are appended after it.
//
// One process per directory, enforced by the durable log's lock: two gateways sharing the
// directory would each miss the other's charges, so the second refuses to start. Several
// replicas need a shared accountant (see accountant.ts).
//
// Settings not given to open() take the gateway config's defaults (JournalConfig in
// src/config/schema.ts): one place for each default.

import path from 'node:path'
import { crc32 } from 'node:zlib'
import { Value } from '@sinclair/typebox/value'
import { JournalConfig } from '../config/schema.ts'
import type { Clock, Logger, Timer } from '../deps.ts'
import { silentLogger } from '../deps.ts'
import type { LogWriter } from '../durable/files.ts'
import type { DurableFs, ProcessLiveness } from '../durable/fs.ts'
import { replayLines } from '../durable/lines.ts'
import { DurableLog } from '../durable/log.ts'
import {
  ChargeClock,
  Ledger,
  MAX_WINDOW_MS,
  NO_COST,
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
const HEADER = { journal: 'bulwark-privacy', version: 2 }
/** Compact once the file has this many lines (and twice the live ones), unless told otherwise. */
const COMPACT_MIN_LINES = 4096
/** How often a running journal records a clock line (see "Time"). */
export const CLOCK_LINE_INTERVAL_MS = 60_000

export class PrivacyStateError extends Error {
  override name = 'PrivacyStateError'
}

export interface FileAccountantOptions extends Partial<JournalConfig> {
  /** Folder for the journal (created, mode 0700), e.g. `<state.directory>/privacy`. */
  directory: string
  clock: Clock
  /**
   * How long charges are kept at least: the longest window of the policies in use. Each
   * charge is also kept for the window it was made under, if longer. Default 7 days.
   */
  retentionMs?: number
  /** Compact once the file has this many lines (and twice the live ones). Default 4096. */
  compactMinLines?: number
  log?: Logger
  /** File-system calls; tests inject failures here. */
  fs?: DurableFs
  /** Whether another process still holds a stale lock (default: from /proc). */
  liveness?: ProcessLiveness
}

/** The journal settings of `options`, the schema's defaults for those not given. */
export function journalSettings(options: Partial<JournalConfig>): JournalConfig {
  const given = Object.fromEntries(Object.entries(options).filter(([k, v]) => v !== undefined && k in JournalConfig.properties))
  return Value.Default(JournalConfig, given) as JournalConfig
}

// --- the journal's format: pure ---

function crcHex(text: string): string {
  return crc32(text).toString(16).padStart(8, '0')
}

/** An entry line as entryLine writes it: t, the key (a JSON string's content), e, r, w, crc. */
const ENTRY_LINE = /^\{"t":(\d{1,16}),"k":"((?:[^"\\]|\\.)*)","e":(\d{1,16}),"r":(\d{1,16}),"w":(\d{1,16}),"crc":"[0-9a-f]{8}"\}$/

/** What sealLine puts in place of the closing brace, with the 8 hex digits' place held by zeros. */
const CRC_SUFFIX = Buffer.from(',"crc":"00000000"}')
const CLOSING_BRACE = Buffer.from('}')

/** `{...fields,"crc":"..."}` for the JSON text of `fields`. */
export function sealLine(fields: object): string {
  const body = JSON.stringify(fields)
  return `${body.slice(0, -1)},"crc":"${crcHex(body)}"}\n`
}

type EntryFields = Pick<LedgerEntry, 't' | 'e' | 'r' | 'w'>

function entryLine(key: string, e: EntryFields): string {
  return sealLine({ t: e.t, k: key, e: e.e, r: e.r, w: e.w })
}

/** What the journal's time and the wall clock read at one moment. */
export interface ClockReading {
  tau: number
  wall: number
}

/** A clock line (see "Time"). */
export function clockLine(reading: ClockReading): string {
  return sealLine({ clock: reading.tau, wall: reading.wall })
}

/** Charges of one key this close together may share a line (see "Crash safety" above). */
const MERGE_WINDOW_MS = 1000

/**
 * Journal lines for `entries` (each key's in time order): consecutive charges of a key
 * within MERGE_WINDOW_MS of the first of them become one line, their summed cost at the
 * latest of their times and the longest of their windows, so that the line frees no earlier
 * than any of them. Used for group-commit writes and for compaction alike.
 */
export function journalText(entries: Iterable<readonly [string, EntryFields]>): string {
  const open = new Map<string, { first: number } & EntryFields>()
  let text = ''
  for (const [key, entry] of entries) {
    const m = open.get(key)
    if (m && entry.t - m.first < MERGE_WINDOW_MS) {
      m.t = Math.max(m.t, entry.t)
      m.w = Math.max(m.w, entry.w)
      m.e += entry.e
      m.r += entry.r
      continue
    }
    if (m) text += entryLine(key, m)
    open.set(key, { first: entry.t, t: entry.t, e: entry.e, r: entry.r, w: entry.w })
  }
  for (const [key, m] of open) text += entryLine(key, m)
  return text
}

/** A whole journal file: the header, a clock line when given, and `entries`. */
export function journalFileText(entries: Iterable<readonly [string, EntryFields]>, clock?: ClockReading): string {
  return sealLine(HEADER) + (clock ? clockLine(clock) : '') + journalText(entries)
}

export type JournalLine =
  | { kind: 'header'; version: unknown }
  /** format: 1 for a line without a window (entry.w 0), 2 for one with. */
  | { kind: 'entry'; key: string; entry: LedgerEntry; format: 1 | 2 }
  | { kind: 'clock'; reading: ClockReading }

const ASCII = (text: string) => Uint8Array.from(text, (c) => c.charCodeAt(0))
const [T_OPEN, K_OPEN, E_OPEN, R_OPEN, W_OPEN] = ['{"t":', ',"k":"', '","e":', ',"r":', ',"w":'].map(ASCII) as [Uint8Array, Uint8Array, Uint8Array, Uint8Array, Uint8Array]

/**
 * An entry line in entryLine's form with a printable-ASCII key, read from its bytes up to
 * `cut` (where its CRC suffix starts, checked already): what ENTRY_LINE would read from it,
 * or null for any other line (the pattern and the general parse then decide). One string
 * (the key) per line instead of the line's text and the pattern's captures: a journal of a
 * million charges is replayed at every start.
 */
function entryFromBytes(bytes: Buffer, cut: number): JournalLine | null {
  let at = 0
  /** Steps over `literal` if it is next. */
  const skip = (literal: Uint8Array): boolean => {
    if (at + literal.length > cut) return false
    for (let i = 0; i < literal.length; i++) if (bytes[at + i] !== literal[i]) return false
    at += literal.length
    return true
  }
  /** Reads the 1 to 16 digits next, as ENTRY_LINE's \d{1,16}; -1 when there are none, more, or the value is past 2^53. */
  const integer = (): number => {
    const start = at
    let value = 0
    while (at < cut && at - start <= 16 && bytes[at]! >= 0x30 && bytes[at]! <= 0x39) value = value * 10 + (bytes[at++]! - 0x30)
    return at === start || at - start > 16 || !Number.isSafeInteger(value) ? -1 : value
  }
  if (!skip(T_OPEN)) return null
  const t = integer()
  if (t < 0 || !skip(K_OPEN)) return null
  const keyStart = at
  while (at < cut && bytes[at] !== 0x22) {
    const c = bytes[at]!
    if (c < 0x20 || c > 0x7e || c === 0x5c) return null // escapes and non-ASCII: the pattern's path
    at++
  }
  const keyEnd = at
  if (!skip(E_OPEN)) return null // from the key's closing quote
  const e = integer()
  if (e < 0 || !skip(R_OPEN)) return null
  const r = integer()
  if (r < 0 || !skip(W_OPEN)) return null
  const w = integer()
  if (w < 0 || at !== cut) return null
  return { kind: 'entry', key: bytes.toString('latin1', keyStart, keyEnd), entry: { t, e, r, w, durable: true }, format: 2 }
}

/** One line (without its newline), or null when it is damaged or not a journal line. */
export function parseJournalLine(line: string | Buffer): JournalLine | null {
  // sealLine's form: the fields' JSON text with `,"crc":"<8 hex>"}` in place of its closing
  // brace. The CRC is checked on the bytes themselves, before anything is parsed.
  const bytes = typeof line === 'string' ? Buffer.from(line, 'utf8') : line
  const cut = bytes.length - CRC_SUFFIX.length
  if (cut < 1 || bytes.compare(CRC_SUFFIX, 0, 8, cut, cut + 8) !== 0 || bytes.compare(CRC_SUFFIX, 16, 18, cut + 16) !== 0) return null
  if (crc32(CLOSING_BRACE, crc32(bytes.subarray(0, cut))) !== Number.parseInt(bytes.toString('latin1', cut + 8, cut + 16), 16)) return null
  // Entry lines are nearly all of a journal, and all in entryLine's one form: read them
  // straight from the bytes when the key is plain ASCII, else with one pattern, without a
  // general JSON parse. Anything else takes the general path below.
  const fast = entryFromBytes(bytes, cut)
  if (fast) return fast
  const text = bytes.toString('utf8')
  const m = ENTRY_LINE.exec(text)
  if (m) {
    const t = Number(m[1])
    const e = Number(m[3])
    const r = Number(m[4])
    const w = Number(m[5])
    const key = m[2]!.includes('\\') ? (JSON.parse(`"${m[2]}"`) as string) : m[2]!
    if (Number.isSafeInteger(t) && Number.isSafeInteger(e) && Number.isSafeInteger(r) && Number.isSafeInteger(w)) return { kind: 'entry', key, entry: { t, e, r, w, durable: true }, format: 2 }
  }
  let rest: Record<string, unknown>
  try {
    rest = JSON.parse(text) as Record<string, unknown>
  } catch {
    return null
  }
  if (!rest || typeof rest !== 'object' || Array.isArray(rest)) return null
  if (rest.journal === HEADER.journal) return { kind: 'header', version: rest.version }
  const okInt = (v: unknown) => Number.isSafeInteger(v) && (v as number) >= 0
  const fields = Object.keys(rest).length - 1 // without crc
  if ('clock' in rest) {
    if (!okInt(rest.clock) || !okInt(rest.wall) || fields !== 2) return null
    return { kind: 'clock', reading: { tau: rest.clock as number, wall: rest.wall as number } }
  }
  const { t, k, e, r, w } = rest
  if (typeof k !== 'string' || !okInt(t) || !okInt(e) || !okInt(r)) return null
  const legacy = fields === 4 && !('w' in rest)
  if (!legacy && (fields !== 5 || !okInt(w))) return null
  return { kind: 'entry', key: k, entry: { t: t as number, e: e as number, r: r as number, w: legacy ? 0 : (w as number), durable: true }, format: legacy ? 1 : 2 }
}

/** Whether a line of this kind belongs in a journal of `version` (version 1 had no windows, no clock lines). */
function belongsIn(value: JournalLine, version: number): boolean {
  if (value.kind === 'header') return true
  if (value.kind === 'clock') return version === 2
  return value.format === version
}

export type JournalReplay =
  | {
      ok: true
      /** Of the header; 0 for an empty file. */
      version: number
      entries: { key: string; entry: LedgerEntry }[]
      /** The last clock line, if any. */
      clock: ClockReading | null
      /** Intact lines, header included. */
      lines: number
      /** Bytes of the intact lines: where the next append goes. */
      intactBytes: number
      /** Damaged lines at the end, dropped: a crash's torn tail. */
      droppedLines: number
    }
  | { ok: false; problem: string }

/** Reads a journal file's bytes back: the charges, or why the journal must not be used. */
export function replayJournal(bytes: Buffer): JournalReplay {
  if (bytes.length === 0) return { ok: true, version: 0, entries: [], clock: null, lines: 0, intactBytes: 0, droppedLines: 0 }
  // The journal is only ever created by renaming a synced file that starts with the
  // header, so a crash cannot tear the header: a bad first line is a foreign or damaged file.
  const nl = bytes.indexOf(0x0a)
  const header = parseJournalLine(bytes.subarray(0, nl < 0 ? bytes.length : nl))
  if (header?.kind !== 'header') {
    return {
      ok: false,
      problem: 'the first line is not a Bulwark privacy journal header; refusing to start. Move the file aside to reset every budget (this forgets what callers have spent).',
    }
  }
  if (header.version !== 1 && header.version !== HEADER.version) {
    return { ok: false, problem: `journal version ${JSON.stringify(header.version)} is not supported (this gateway reads versions 1 and ${HEADER.version})` }
  }
  const version = header.version
  const replay = replayLines(bytes, (line) => {
    const value = parseJournalLine(line)
    return value && belongsIn(value, version) ? value : null
  })
  if (!replay.ok) {
    return {
      ok: false,
      problem:
        `line ${replay.firstBad + 1} is damaged but later lines are intact: the journal is corrupt, not torn by a crash. ` +
        `Refusing to start, since dropping recorded charges would overspend privacy budgets. Restore the file from a backup, ` +
        `or move it aside to reset every budget (this forgets what callers have spent).`,
    }
  }
  const entries: { key: string; entry: LedgerEntry }[] = []
  let clock: ClockReading | null = null
  for (const { index, value } of replay.values) {
    if (value.kind === 'entry') entries.push({ key: value.key, entry: value.entry })
    else if (value.kind === 'clock') clock = value.reading
    else if (index !== 0) return { ok: false, problem: `line ${index + 1}: a journal header in the middle of the file; the journal is corrupt` }
  }
  return { ok: true, version, entries, clock, lines: replay.values.length, intactBytes: replay.intactBytes, droppedLines: replay.droppedLines }
}

function countLines(text: string): number {
  let n = 0
  for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) n++
  return n
}

/** One key's current reservation: what is left of it, and how it was sized and used. */
export interface Reserve {
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

/**
 * How many answers a new reservation covers: twice the last one while reservations run out
 * within their lease, what the last one served once one expired, 1 for a new caller; at most
 * `reserveFraction` of the budget and what the window has left (`epsilonLeft` after this
 * answer), so a reservation never reaches past the budget.
 */
export function reservationSize(
  last: Pick<Reserve, 'until' | 'size' | 'served'> | undefined,
  now: number,
  cost: PrivacyCost,
  budget: PrivacyBudget,
  epsilonLeft: number,
  reserveFraction: number,
): number {
  const wanted = !last ? 1 : now <= last.until ? last.size * 2 : last.served
  const cap = { ...budget, epsilonMicros: Math.floor(budget.epsilonMicros * reserveFraction) }
  let n = Math.max(1, Math.floor(wanted))
  if (cost.epsilonMicros > 0) {
    // This answer plus what is left after it; rounded down, so never past the budget.
    const left = Math.floor(epsilonLeft * EPSILON_UNITS + 1e-6)
    n = Math.min(n, Math.floor(cap.epsilonMicros / cost.epsilonMicros), 1 + Math.floor(left / cost.epsilonMicros))
  }
  // zCDP parts compose by a formula: halve until the n answers fit in the cap.
  while (n > 1 && !costFits(scaleCost(cost, n), cap)) n = Math.floor(n / 2)
  return Math.max(1, n)
}

// --- the accountant ---

/** What a write carries: a charge (or reservation), or a request for a clock line. */
type Item = { key: string; entry: LedgerEntry } | typeof CLOCK_ITEM
const CLOCK_ITEM = { clock: true } as const

export class FileAccountant implements PrivacyAccountant {
  /** Actual charges: every decision. */
  readonly #ledger: Ledger
  /** What the journal holds: the same object as #ledger without reservations. */
  readonly #journal: Ledger
  readonly #reserves = new Map<string, Reserve>()
  #sweepReservesAt = 1024
  readonly #settings: JournalConfig
  readonly #clock: Clock
  /** The journal's time (see "Time"); set again when the journal is read at open. */
  #time: ChargeClock
  #clockTimer: Timer | null = null
  readonly #log: Logger
  readonly #file: string
  readonly #compactMinLines: number
  readonly #durable: DurableLog<Item>
  #linesInFile = 0
  #rewroteAtOpen = false
  #compactAt: number
  #closed = false

  private constructor(options: FileAccountantOptions, settings: JournalConfig) {
    const retentionMs = options.retentionMs ?? MAX_WINDOW_MS
    const dir = path.resolve(options.directory)
    this.#settings = settings
    this.#journal = new Ledger(retentionMs)
    // With reservations, decisions start from the replayed lines too (conservative: they hold
    // at least what was charged), but in a ledger of their own: the journal's keeps lines.
    this.#ledger = settings.reserveFraction > 0 ? new Ledger(retentionMs) : this.#journal
    this.#clock = options.clock
    this.#time = new ChargeClock(options.clock)
    this.#log = options.log ?? silentLogger
    this.#file = path.join(dir, JOURNAL_FILE)
    this.#compactMinLines = options.compactMinLines ?? COMPACT_MIN_LINES
    this.#compactAt = this.#compactMinLines
    this.#durable = new DurableLog<Item>({
      directory: dir,
      purpose: { what: 'privacy journal', setting: 'state.directory', risk: "two gateways would each miss the other's charges and overspend privacy budgets" },
      durability: settings.durability,
      relaxedSyncIntervalMs: settings.relaxedSyncIntervalMs,
      commitIntervalMs: settings.commitIntervalMs,
      // After a failed write the file may end in a partial line: refuse until a restart,
      // whose replay drops a torn tail.
      retryMs: null,
      messages: { failing: 'privacy journal write failed; refusing further charges until the gateway restarts' },
      clock: options.clock,
      log: this.#log,
      fs: options.fs,
      liveness: options.liveness,
      format: {
        load: (w) => this.#load(w),
        commit: (items, w) => this.#commit(items, w),
        afterCommit: (w) => this.#afterCommit(w),
        unavailable: (reason, cause) =>
          new PrivacyStateError(`privacy journal ${this.#file} cannot be written (${reason}); refusing charges until restart`, { cause }),
      },
    })
  }

  /** Opens (or creates) the journal, locking its folder, replays it, and compacts it. */
  static async open(options: FileAccountantOptions): Promise<FileAccountant> {
    const settings = journalSettings(options)
    if (!(settings.reserveFraction >= 0 && settings.reserveFraction <= 1)) throw new RangeError('reserveFraction must lie in [0, 1]')
    const acct = new FileAccountant(options, settings)
    try {
      await acct.#durable.start()
      // A clock line now, so that the journal says when this run started (a rewrite at open has one).
      if (!acct.#rewroteAtOpen) await acct.#durable.submit(CLOCK_ITEM)
    } catch (err) {
      await acct.#durable.close()
      throw err
    }
    // While the gateway runs, now and then, so that the last one is never older than that
    // (after a failure the journal stays closed until a restart: no line then).
    acct.#clockTimer = options.clock.setInterval(() => acct.#durable.failure === null && acct.#durable.post(CLOCK_ITEM), CLOCK_LINE_INTERVAL_MS, { keepAlive: false })
    return acct
  }

  async charge(key: string, cost: PrivacyCost, budget: PrivacyBudget): Promise<ChargeResult> {
    this.#usable()
    checkKey(key)
    checkCost(cost)
    checkBudget(budget, this.#ledger.retentionMs)
    const now = this.#time.nowMs()
    const { result, entry, merged } = this.#ledger.charge(key, cost, budget, now)
    if (!entry) return result
    if (this.#settings.reserveFraction > 0) {
      const written = this.#cover(key, cost, budget, now, result)
      if (written) await written
      return result
    }
    // A merged charge rides in an entry that is queued and not yet taken by a write (the
    // Ledger merges only into pending entries): wait for that write.
    await (merged ? this.#durable.flushed() : this.#durable.submit({ key, entry }))
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
    const n = reservationSize(old, now, cost, budget, result.epsilonLeft, this.#settings.reserveFraction)
    // Stamped at the lease's end, never before the key's previous stamp (a clock stepping back).
    const until = Math.max(now + this.#settings.reserveLeaseMs, old?.until ?? 0)
    const reserved = scaleCost(cost, n)
    const entry: LedgerEntry = { t: until, e: reserved.epsilonMicros, r: reserved.rhoNanos, w: budget.windowMs, durable: false }
    this.#journal.add(key, entry)
    const written = this.#durable.submit({ key, entry })
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

  /** Forgets reservations whose lease is over (their lines stay in the journal). */
  #sweepReserves(now: number): void {
    for (const [key, r] of this.#reserves) if (r.until < now && r.written === null) this.#reserves.delete(key)
    this.#sweepReservesAt = Math.max(1024, 2 * this.#reserves.size)
  }

  async balance(key: string, budget: PrivacyBudget, ifCharged: PrivacyCost = NO_COST): Promise<ChargeResult> {
    this.#usable()
    checkKey(key)
    checkCost(ifCharged)
    checkBudget(budget, this.#ledger.retentionMs)
    return this.#ledger.charge(key, ifCharged, budget, this.#time.nowMs(), false).result
  }

  /** Writes what is queued, syncs what relaxed durability left, closes the file and releases the folder. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    this.#clockTimer?.cancel()
    await this.#durable.close(CLOCK_ITEM)
  }

  /** Resolves when no write is in progress (tests). */
  whenIdle(): Promise<void> {
    return this.#durable.whenIdle()
  }

  /** Lines in the journal file now (header included); for tests and metrics. */
  get journalLines(): number {
    return this.#linesInFile
  }

  #usable(): void {
    if (this.#closed) throw new Error('privacy accountant is closed')
    const failure = this.#durable.failure
    if (failure) {
      throw new PrivacyStateError(`privacy journal ${this.#file} failed earlier (${failure.reason}); refusing charges until restart`, { cause: failure.cause })
    }
  }

  /** Replays the journal into the ledgers and starts from a clean file: live entries only, no torn tail. */
  async #load(w: LogWriter): Promise<void> {
    await w.fs.unlink(`${this.#file}.tmp`).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'ENOENT') throw err
    })
    let bytes: Buffer = Buffer.alloc(0)
    try {
      bytes = await w.fs.readFile(this.#file)
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
        throw new PrivacyStateError(`${this.#file}: cannot read the privacy journal: ${(err as Error).message}`, { cause: err })
      }
    }
    const replay = replayJournal(bytes)
    if (!replay.ok) throw new PrivacyStateError(`${this.#file}: ${replay.problem}`)
    for (const { key, entry } of replay.entries) this.#journal.add(key, entry)
    if (replay.droppedLines > 0) {
      this.#log.warn({ file: this.#file, droppedLines: replay.droppedLines }, 'privacy journal: dropped a torn tail left by a crash (those answers were never released)')
    }
    const dropped = this.#resumeTime(replay)
    if (replay.lines === 0 || replay.droppedLines > 0 || dropped > 0 || replay.version !== HEADER.version) {
      const text = journalFileText(this.#durableEntries(), this.#reading())
      await w.rewrite(JOURNAL_FILE, Buffer.from(text, 'utf8'))
      this.#linesInFile = countLines(text)
      this.#rewroteAtOpen = true
    } else {
      await w.continueFile(JOURNAL_FILE, replay.intactBytes)
      this.#linesInFile = replay.lines
    }
    if (this.#ledger !== this.#journal) for (const [key, e] of this.#journal.entries()) this.#ledger.add(key, { ...e })
  }

  /**
   * Sets the journal's time from its last clock line (see "Time") and drops the entries dead
   * by then; returns how many it dropped. A journal of version 1 has no clock line: its
   * latest entry stands for one, as the latest time it is known to have seen.
   */
  #resumeTime(replay: Extract<JournalReplay, { ok: true }>): number {
    const wall = this.#clock.nowMs()
    let longest = this.#journal.retentionMs
    let latest = -Infinity
    for (const { entry } of replay.entries) {
      longest = Math.max(longest, entry.w)
      latest = Math.max(latest, entry.t)
    }
    const last = replay.clock ?? (replay.entries.length > 0 ? { tau: latest, wall: latest } : null)
    const gap = last ? wall - last.wall : 0
    const limit = longest + CLOCK_LINE_INTERVAL_MS
    const held = last !== null && gap > limit
    const start = !last ? wall : held ? last.tau : Math.min(wall, last.tau + Math.max(0, gap))
    const onStep = (behindMs: number) =>
      this.#log.warn({ file: this.#file, behindMs }, 'privacy journal: the wall clock stepped forward; charges go on counting by elapsed time, not by the wall clock')
    this.#time = new ChargeClock(this.#clock, start, onStep)
    const dropped = this.#journal.prune(this.#time.nowMs())
    // With nothing left to free early, the journal may as well start over at the wall clock.
    if (this.#journal.size === 0) this.#time = new ChargeClock(this.#clock, wall, onStep)
    else if (held) {
      this.#log.warn(
        { file: this.#file, gapMs: gap, limitMs: limit, lastRecord: new Date(last.wall).toISOString() },
        'privacy journal: the wall clock is past the last record by more than the longest window plus one clock interval: ' +
          'either the gateway was down that long or the clock stepped forward. Holding: its charges count on as if no time had passed since the last record, and free as the gateway runs',
      )
    }
    return dropped
  }

  /** The journal's time and the wall clock's, now. */
  #reading(): ClockReading {
    return { tau: this.#time.nowMs(), wall: this.#clock.nowMs() }
  }

  /** One write for the batch: its charges, those of one key merged (see "Crash safety"). */
  async #commit(items: readonly Item[], w: LogWriter): Promise<void> {
    const charges = items.filter((b): b is Exclude<Item, typeof CLOCK_ITEM> => b !== CLOCK_ITEM)
    // From here on these entries are being written: later charges must not merge into them.
    for (const b of charges) b.entry.pending = false
    let text = journalText(charges.map((b) => [b.key, b.entry] as const))
    // One clock line, however many were asked for: the time is read as it is written.
    if (charges.length < items.length) text += clockLine(this.#reading())
    if (text.length === 0) return
    await w.append(Buffer.from(text, 'utf8'))
    for (const b of charges) b.entry.durable = true
    this.#linesInFile += countLines(text)
  }

  async #afterCommit(w: LogWriter): Promise<void> {
    if (this.#linesInFile <= this.#compactAt) return
    // With reservations no charge is ever evaluated against the journal's ledger, so its dead
    // entries leave it only here: count the live ones first.
    this.#journal.prune(this.#time.nowMs())
    if (this.#linesInFile > 2 * this.#journal.size + 1) await this.#compact(w)
    // Mostly live: look again once as many lines again have been written.
    else this.#compactAt = this.#linesInFile + this.#journal.size
  }

  /** Rewrites the journal with its live, durable entries. */
  async #compact(w: LogWriter): Promise<void> {
    const now = this.#time.nowMs()
    this.#journal.prune(now)
    if (this.#ledger !== this.#journal) this.#ledger.prune(now)
    let renamed = false
    const text = journalFileText(this.#durableEntries(), this.#reading())
    try {
      await w.rewrite(JOURNAL_FILE, Buffer.from(text, 'utf8'), () => {
        renamed = true
      })
      this.#linesInFile = countLines(text)
      this.#compactAt = this.#compactMinLines
    } catch (err) {
      // Replaced, but no handle on the new journal: appends would go to the unlinked old
      // file. The durable log fails closed.
      if (renamed) throw err
      // The old journal is intact: keep appending to it, try again when it has doubled.
      this.#compactAt = this.#linesInFile * 2
      this.#log.warn({ file: this.#file, err }, 'privacy journal compaction failed; will retry later')
    }
  }

  *#durableEntries(): Generator<readonly [string, LedgerEntry]> {
    for (const e of this.#journal.entries()) if (e[1].durable) yield e
  }
}
