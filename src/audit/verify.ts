// The audit verifier behind `bulwark audit verify PATH --key PUBLIC_KEY`. It walks the files
// in chain order and reports every line that was modified, inserted, deleted or moved, and
// records cut off the end, naming file and line; the first problem is the one to act on.
//
// What it can prove (see chain.ts for the format):
// - Any change to a line breaks the hash chain at the next line. Records covered by a
//   checkpoint are pinned by its signature: a consistent re-hash of the chain still fails,
//   because the signed head no longer matches, and the signed marks name the changed line.
// - Records cut off the end are caught by audit-head.json (the newest signed checkpoint),
//   when a folder is verified.
// - A torn last line (a write cut short by a crash) is reported and tolerated: no record is
//   acknowledged before its line is complete.
// - A folder pruned by retention (its oldest files removed whole) still proves what it keeps:
//   each file opens with a signed checkpoint, so the kept part verifies, with a warning that
//   says at which seq the kept chain starts.
// - Aggregate records (repeated refusals counted, src/audit/aggregate.ts) are chained lines like
//   request records, checked alike and counted apart.
// What it cannot: records after the last checkpoint are protected by the hash chain alone,
// so someone who can write the files could rewrite that tail consistently; keep
// checkpoint.everyMs short or ship the lines off the host (audit.mirror) to close that window.

import type { KeyObject } from 'node:crypto'
import { readdir, readFile, stat } from 'node:fs/promises'
import path from 'node:path'
import {
  checkpointSignatureValid,
  decodeMarks,
  GENESIS,
  HEAD_FILE,
  markOf,
  sha256,
  sortAuditFiles,
  splitLines,
  type CheckpointLine,
} from './chain.ts'
import { keyIdOf } from './keys.ts'

export type ProblemKind = 'modified' | 'inserted' | 'deleted' | 'reordered' | 'truncated' | 'malformed' | 'signature' | 'head'

export interface VerifyProblem {
  kind: ProblemKind
  /** File name (relative to the folder verified) and 1-based line. */
  file: string
  line: number
  /** The seq of the record concerned, where known. */
  seq: number | null
  message: string
}

export interface VerifyReport {
  ok: boolean
  files: string[]
  /** Request records (lines of type "request"). */
  records: number
  /** Aggregate records (lines of type "aggregate": repeated refusals counted, src/audit/aggregate.ts). */
  aggregates: number
  /** The refusals the aggregate records count, together. */
  aggregatedRefusals: number
  checkpoints: number
  firstSeq: number | null
  lastSeq: number | null
  /** In file order; problems[0] is the first thing that was tampered with. */
  problems: VerifyProblem[]
  warnings: string[]
  torn: { file: string; line: number; bytes: number }[]
  /** Lines after the last checkpoint: protected by the hash chain only. */
  unsignedTail: number
  lastCheckpoint: { file: string; line: number; seq: number } | null
  /** The last line is a shutdown checkpoint. */
  closedCleanly: boolean
}

interface Loc {
  file: string
  line: number
}

interface SegLine extends Loc {
  seq: number | null
  mark: string
}

const isHex64 = (v: unknown) => typeof v === 'string' && /^[0-9a-f]{64}$/.test(v)

function asCheckpoint(rec: Record<string, unknown>): CheckpointLine | null {
  const ok =
    rec.type === 'checkpoint' &&
    typeof rec.event === 'string' &&
    typeof rec.at === 'string' &&
    typeof rec.file === 'string' &&
    Number.isSafeInteger(rec.since) &&
    isHex64(rec.head) &&
    typeof rec.marks === 'string' &&
    typeof rec.key === 'string' &&
    typeof rec.sig === 'string'
  return ok ? (rec as unknown as CheckpointLine) : null
}

function parseLine(bytes: Buffer): Record<string, unknown> | null {
  try {
    const rec = JSON.parse(bytes.toString('utf8')) as unknown
    if (typeof rec !== 'object' || rec === null || Array.isArray(rec)) return null
    const r = rec as Record<string, unknown>
    if (!Number.isSafeInteger(r.seq) || !isHex64(r.prev)) return null
    if (r.type !== 'request' && r.type !== 'checkpoint' && r.type !== 'aggregate') return null
    if (r.type === 'aggregate' && !(Number.isSafeInteger(r.count) && (r.count as number) >= 1)) return null
    return r
  } catch {
    return null
  }
}

/** The first line whose hash differs from what the checkpoint signed, classified. */
function localize(seg: SegLine[], signed: string[], since: number, at: Loc): VerifyProblem | null {
  const actual = seg.map((l) => l.mark)
  const n = Math.max(actual.length, signed.length)
  for (let j = 0; j < n; j++) {
    if (actual[j] === signed[j]) continue
    const line = seg[j]
    const expected = since + j
    if (!line) {
      return { kind: 'deleted', ...at, seq: expected, message: `record seq ${expected} was deleted: the checkpoint on this line signed it just before itself` }
    }
    const where = { file: line.file, line: line.line }
    if (j >= signed.length) {
      return { kind: 'inserted', ...where, seq: line.seq, message: `this line was inserted: the checkpoint at ${at.file}:${at.line} signed no record here` }
    }
    if (actual[j] === signed[j + 1] && actual[j + 1] === signed[j]) {
      return { kind: 'reordered', ...where, seq: line.seq, message: `this line and the next were swapped: the checkpoint at ${at.file}:${at.line} signed them the other way round` }
    }
    if (actual[j] === signed[j + 1] && actual.length < signed.length) {
      return { kind: 'deleted', ...where, seq: expected, message: `record seq ${expected} was deleted from just before this line (signed by the checkpoint at ${at.file}:${at.line})` }
    }
    if (actual[j + 1] === signed[j] && actual.length > signed.length) {
      return { kind: 'inserted', ...where, seq: line.seq, message: `this line was inserted: the checkpoint at ${at.file}:${at.line} signed no record here` }
    }
    if (signed.includes(actual[j]!)) {
      return { kind: 'reordered', ...where, seq: line.seq, message: `this line was moved: the checkpoint at ${at.file}:${at.line} signed it at another position` }
    }
    return { kind: 'modified', ...where, seq: line.seq ?? expected, message: `this record was modified after it was signed by the checkpoint at ${at.file}:${at.line}` }
  }
  return null
}

/**
 * The signed head file against the log: a head checkpoint past the log's end means records
 * were cut off the end; one inside it must be the very checkpoint the log holds.
 */
function checkHead(headLine: Buffer | null, keyById: ReadonlyMap<string, KeyObject>, report: VerifyReport, end: Loc, checkpointHashes: ReadonlyMap<number, string>): VerifyProblem | null {
  if (!headLine) {
    return { kind: 'head', file: HEAD_FILE, line: 0, seq: null, message: `${HEAD_FILE} is missing: records cut off the end could not be detected` }
  }
  const { lines } = splitLines(headLine)
  const rec = lines.length === 1 ? parseLine(lines[0]!) : null
  const cp = rec ? asCheckpoint(rec) : null
  const key = cp ? keyById.get(cp.key) : undefined
  if (!cp || !key || !checkpointSignatureValid(cp, key)) {
    return { kind: 'head', file: HEAD_FILE, line: 1, seq: null, message: `${HEAD_FILE} is not a checkpoint signed by the given key: it was altered` }
  }
  if (report.lastSeq === null || cp.seq > report.lastSeq) {
    const from = (report.lastSeq ?? 0) + 1
    return { kind: 'truncated', ...end, seq: from, message: `the log ends here, but ${HEAD_FILE} holds a signed checkpoint at seq ${cp.seq}: records seq ${from}..${cp.seq} were cut off` }
  }
  if (cp.seq >= (report.firstSeq ?? 0) && checkpointHashes.get(cp.seq) !== sha256(lines[0]!).toString('hex')) {
    return { kind: 'modified', ...end, seq: cp.seq, message: `the checkpoint at seq ${cp.seq} in the log differs from the one in ${HEAD_FILE}` }
  }
  return null
}

function emptyReport(): VerifyReport {
  return {
    ok: false,
    files: [],
    records: 0,
    aggregates: 0,
    aggregatedRefusals: 0,
    checkpoints: 0,
    firstSeq: null,
    lastSeq: null,
    problems: [],
    warnings: [],
    torn: [],
    unsignedTail: 0,
    lastCheckpoint: null,
    closedCleanly: false,
  }
}

/** Counts a record line: a request, or an aggregate with the refusals it stands for. */
function countRecord(report: VerifyReport, rec: Record<string, unknown>): void {
  if (rec.type !== 'aggregate') {
    report.records++
    return
  }
  report.aggregates++
  report.aggregatedRefusals += rec.count as number
}

/**
 * Verifies an audit file, or every audit file in a folder (plus its audit-head.json), with
 * the given public keys (a checkpoint names the key that signed it).
 */
export async function verifyAuditLog(target: string, keys: readonly KeyObject[]): Promise<VerifyReport> {
  const keyById = new Map(keys.map((k) => [keyIdOf(k), k]))
  const report = emptyReport()
  const note = (p: VerifyProblem) => report.problems.push(p)

  const isDir = (await stat(target)).isDirectory()
  const dir = isDir ? target : path.dirname(target)
  const names = isDir ? sortAuditFiles(await readdir(target)) : [path.basename(target)]
  // The head first: a checkpoint written while we read the files must not look like a cut.
  let headLine: Buffer | null = null
  if (isDir) headLine = await readFile(path.join(dir, HEAD_FILE)).catch(() => null)
  if (names.length === 0) {
    note({ kind: 'truncated', file: target, line: 0, seq: null, message: 'no audit files (audit-*.jsonl) here' })
    return report
  }
  report.files = names

  let prevHash: string | null = null
  let prevLoc: Loc | null = null
  let expectSeq: number | null = null
  let seg: SegLine[] = []
  let lastCp: (Loc & { seq: number }) | null = null
  let pending: VerifyProblem | null = null
  let lastLoc: Loc | null = null
  let lastWasShutdown = false
  const checkpointHashes = new Map<number, string>()

  const checkCheckpoint = (cp: CheckpointLine, at: Loc) => {
    const key = keyById.get(cp.key)
    if (!key) {
      if (pending) note(pending)
      note({ kind: 'signature', ...at, seq: cp.seq, message: `checkpoint signed with key ${cp.key}, which is not among the keys given (${[...keyById.keys()].join(', ') || 'none'})` })
      return
    }
    if (!checkpointSignatureValid(cp, key)) {
      if (pending) note(pending)
      note({ kind: 'signature', ...at, seq: cp.seq, message: 'checkpoint signature does not verify: the checkpoint was altered or forged' })
      return
    }
    // The signature holds, so the checkpoint's stated fields are the ones the gateway wrote.
    if (lastCp !== null && cp.since === lastCp.seq + 1) {
      const found = localize(seg, decodeMarks(cp.marks), cp.since, at)
      if (found) return note(found)
    }
    if (cp.head !== cp.prev) {
      return note(pending ?? { kind: 'modified', ...at, seq: cp.seq, message: 'records before this checkpoint were changed after it was signed (its signed head does not match the chain)' })
    }
    if (pending) return note(pending)
    if (lastCp !== null && cp.since !== lastCp.seq + 1) {
      note({ kind: 'deleted', ...at, seq: cp.seq, message: `this checkpoint follows seq ${cp.since - 1}, but the checkpoint before it is seq ${lastCp.seq}: a checkpoint was deleted` })
    }
  }

  for (let fi = 0; fi < names.length; fi++) {
    const name = names[fi]!
    const { lines, torn } = splitLines(await readFile(isDir ? path.join(dir, name) : target))
    if (lines.length === 0 && !torn) report.warnings.push(`${name}: empty file`)
    for (let i = 0; i < lines.length; i++) {
      const bytes = lines[i]!
      const at: Loc = { file: name, line: i + 1 }
      const h = sha256(bytes)
      const hex = h.toString('hex')
      const rec = parseLine(bytes)
      const cp = rec?.type === 'checkpoint' ? asCheckpoint(rec) : null
      if (!rec || (rec.type === 'checkpoint' && !cp)) {
        pending ??= { kind: 'malformed', ...at, seq: null, message: 'not a valid audit record: the line was modified or inserted' }
        seg.push({ ...at, seq: null, mark: markOf(h) })
        prevHash = hex
        prevLoc = at
        expectSeq = null
        lastLoc = at
        lastWasShutdown = false
        continue
      }
      const seq = rec.seq as number
      if (i === 0 && !(cp && cp.event === 'open')) {
        pending ??= { kind: 'deleted', ...at, seq, message: 'the file does not start with its "open" checkpoint: lines were removed from its start' }
      } else if (i === 0 && cp!.file !== name) {
        pending ??= { kind: 'modified', ...at, seq, message: `the file was renamed or replaced: its open checkpoint names ${cp!.file}` }
      }
      if (expectSeq !== null && seq !== expectSeq) {
        pending ??=
          seq > expectSeq
            ? { kind: 'deleted', ...at, seq: expectSeq, message: `records seq ${expectSeq}..${seq - 1} are missing before this line` }
            : { kind: 'reordered', ...at, seq, message: `seq ${seq} where seq ${expectSeq} belongs: this line was inserted or moved (or two gateways wrote to this folder)` }
      } else if (prevHash !== null && rec.prev !== prevHash) {
        pending ??= {
          kind: 'modified',
          ...(prevLoc ?? at),
          seq: seq - 1,
          message: `this line no longer hashes to the "prev" of the line after it: it was modified after it was written`,
        }
      } else if (prevHash === null && !(seq === 1 && rec.prev === GENESIS)) {
        report.warnings.push(`the chain starts at seq ${seq} in ${name}: earlier files were removed by retention or are not part of this check`)
      }
      prevHash = hex
      prevLoc = at
      expectSeq = seq + 1
      report.firstSeq ??= seq
      report.lastSeq = seq
      lastLoc = at
      if (cp) {
        report.checkpoints++
        checkpointHashes.set(seq, hex)
        checkCheckpoint(cp, at)
        lastCp = { ...at, seq }
        seg = []
        pending = null
        lastWasShutdown = cp.event === 'shutdown'
      } else {
        countRecord(report, rec)
        seg.push({ ...at, seq, mark: markOf(h) })
        lastWasShutdown = false
      }
    }
    if (torn) {
      report.torn.push({ file: name, line: lines.length + 1, bytes: torn.length })
      report.warnings.push(`${name}:${lines.length + 1}: torn last line (${torn.length} bytes without a newline), a write cut short by a crash; no record on it was acknowledged; tolerated`)
    }
  }
  if (pending) note(pending)
  report.unsignedTail = seg.length
  report.lastCheckpoint = lastCp
  report.closedCleanly = lastWasShutdown

  if (isDir) {
    const problem = checkHead(headLine, keyById, report, lastLoc ?? { file: names[names.length - 1]!, line: 0 }, checkpointHashes)
    if (problem) note(problem)
  }
  if (!report.closedCleanly && report.problems.length === 0) {
    report.warnings.push(
      `the log does not end with a shutdown checkpoint: the gateway is running or was stopped without closing it; ${report.unsignedTail} record(s) after the last checkpoint are protected by the hash chain only`,
    )
  }
  report.ok = report.problems.length === 0
  return report
}

/** The report as text for the command line. */
export function formatReport(report: VerifyReport, target: string): string {
  const out: string[] = []
  for (const w of report.warnings) out.push(`warning: ${w}`)
  if (report.ok) {
    const last = report.lastCheckpoint
    const aggregates = report.aggregates > 0 ? `, ${report.aggregates} aggregate records (${report.aggregatedRefusals} repeated refusals)` : ''
    out.push(
      `ok: ${report.records} records${aggregates} and ${report.checkpoints} checkpoints in ${report.files.length} file(s), seq ${report.firstSeq}..${report.lastSeq}` +
        (last ? `; last checkpoint ${last.file}:${last.line} (seq ${last.seq})` : ''),
    )
  } else {
    const p = report.problems[0]!
    out.push(`TAMPERED: ${p.file}:${p.line}${p.seq !== null ? ` (seq ${p.seq})` : ''}: ${p.kind}: ${p.message}`)
    if (report.problems.length > 1) {
      out.push(`${report.problems.length - 1} further problem(s):`)
      for (const q of report.problems.slice(1, 20)) out.push(`  ${q.file}:${q.line}${q.seq !== null ? ` (seq ${q.seq})` : ''}: ${q.kind}: ${q.message}`)
    }
    out.push(`${target}: the audit log does not verify`)
  }
  return out.join('\n')
}
