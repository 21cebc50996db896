// The audit file format: one JSON object per line, hash-chained, with signed checkpoints.
// The writer and the verifier share this module, so what one writes the other reads.
//
// Every line starts `{"seq":N,"prev":"<hex>",` where seq counts lines from 1 across all
// files, and prev is the SHA-256 of the previous line's exact bytes (without its newline);
// the very first line has 64 zeros. The chain runs across rotated files: a file's first line
// points to the previous file's last line. Each file starts with a checkpoint (event
// "open"); more follow every N records or T ms, after a recovery and at shutdown:
//
//   {"seq":..,"prev":..,"type":"checkpoint","event":"open|interval|recovered|shutdown",
//    "at":"<ISO time>","file":"<this file's name>","since":<seq>,"head":"<hex>",
//    "marks":"<base64url>","key":"<key id>","sig":"<base64 Ed25519>"}
//
// `head` repeats `prev` inside the signature: someone who edits a record and re-hashes the
// rest of the chain must change the checkpoint's prev, and cannot change its signed head.
// `marks` holds the first 6 bytes of the hash of every line from seq `since` (the line after
// the previous checkpoint) to the line before the checkpoint: not needed to detect a change
// (head does that with the full hash), but it lets the verifier name the exact line that was
// changed, removed, inserted or moved. The newest checkpoint is also kept in
// `audit-head.json` beside the files, so cutting records off the end is noticed.

import { createHash, sign, verify, type KeyObject } from 'node:crypto'

// The writer and the verifier read lines the same way (a torn tail is what a crash leaves).
export { splitLines } from '../durable/lines.ts'

export const GENESIS = '0'.repeat(64)
export const HEAD_FILE = 'audit-head.json'
/** Bytes of each line hash kept in a checkpoint's marks. */
export const MARK_BYTES = 6
const SIGNING_CONTEXT = 'bulwark-audit-checkpoint-v1\n'

export type CheckpointEvent = 'open' | 'interval' | 'recovered' | 'shutdown'

export interface CheckpointFields {
  seq: number
  event: CheckpointEvent
  at: string
  file: string
  since: number
  head: string
  marks: string
  key: string
}

export interface CheckpointLine extends CheckpointFields {
  prev: string
  type: 'checkpoint'
  sig: string
}

export function sha256(bytes: Uint8Array | string): Buffer {
  return createHash('sha256').update(bytes).digest()
}

/** One chained line (without newline): `body` is a JSON object text without seq and prev. */
export function chainLine(seq: number, prev: string, body: string): string {
  return `{"seq":${seq},"prev":"${prev}",${body.slice(1)}`
}

function signedMessage(c: CheckpointFields): Buffer {
  return Buffer.from(SIGNING_CONTEXT + JSON.stringify([c.seq, c.event, c.at, c.file, c.since, c.head, c.marks, c.key]), 'utf8')
}

/** The body of a checkpoint line, signed. */
export function checkpointBody(c: CheckpointFields, privateKey: KeyObject): string {
  const sig = sign(null, signedMessage(c), privateKey).toString('base64')
  return JSON.stringify({ type: 'checkpoint', event: c.event, at: c.at, file: c.file, since: c.since, head: c.head, marks: c.marks, key: c.key, sig })
}

/** Whether the checkpoint's signature covers its stated fields. */
export function checkpointSignatureValid(c: CheckpointLine, publicKey: KeyObject): boolean {
  try {
    return verify(null, signedMessage(c), publicKey, Buffer.from(c.sig, 'base64'))
  } catch {
    return false
  }
}

export function encodeMarks(hashes: readonly Buffer[]): string {
  return Buffer.concat(hashes.map((h) => h.subarray(0, MARK_BYTES))).toString('base64url')
}

export function decodeMarks(marks: string): string[] {
  const bytes = Buffer.from(marks, 'base64url')
  const out: string[] = []
  for (let i = 0; i + MARK_BYTES <= bytes.length; i += MARK_BYTES) out.push(bytes.subarray(i, i + MARK_BYTES).toString('hex'))
  return out
}

export function markOf(hash: Buffer): string {
  return hash.subarray(0, MARK_BYTES).toString('hex')
}

// eslint-disable-next-line security/detect-unsafe-regex -- linear: no nested quantifier, and each `+` run is ended by a character its class lacks ('-' or '.'); only applied to file names in the audit folder
const FILE_RE = /^audit-(\d{12,})-[0-9TZ]+(?:-[0-9a-f]+)?\.jsonl$/

/** The audit file name for a file whose first line has `seq`; sorts in chain order. */
export function auditFileName(seq: number, nowMs: number, suffix = ''): string {
  const stamp = new Date(nowMs).toISOString().replace(/[-:.]/g, '')
  return `audit-${String(seq).padStart(12, '0')}-${stamp}${suffix ? `-${suffix}` : ''}.jsonl`
}

/** The first seq of an audit file from its name, or null if the name is not one. */
export function auditFileSeq(name: string): number | null {
  const m = FILE_RE.exec(name)
  return m ? Number(m[1]) : null
}

/** Audit file names in chain order. */
export function sortAuditFiles(names: readonly string[]): string[] {
  return names
    .map((n) => ({ n, seq: auditFileSeq(n) }))
    .filter((e): e is { n: string; seq: number } => e.seq !== null)
    .sort((a, b) => a.seq - b.seq || (a.n < b.n ? -1 : a.n > b.n ? 1 : 0))
    .map((e) => e.n)
}

/** Where the chain stands: what the next line continues from. */
export interface ChainState {
  /** seq of the last line written (0: none yet). */
  seq: number
  /** SHA-256 (hex) of the last line. */
  head: string
  /** seq of the first line not yet covered by a checkpoint's marks. */
  since: number
  /** Hashes of the lines since the last checkpoint. */
  marks: Buffer[]
  recordsSinceCheckpoint: number
}

export const newChain = (): ChainState => ({ seq: 0, head: GENESIS, since: 1, marks: [], recordsSinceCheckpoint: 0 })

/** The seq of a chained line, or null when the line is not one. */
export function lineSeq(line: Buffer): number | null {
  try {
    const obj = JSON.parse(line.toString('utf8')) as { seq?: unknown }
    return Number.isSafeInteger(obj.seq) ? (obj.seq as number) : null
  } catch {
    return null
  }
}

export function isCheckpointLine(line: Buffer): boolean {
  // Cheap pre-check before parsing: every checkpoint line has this exact text.
  if (!line.includes('"type":"checkpoint"')) return false
  try {
    return (JSON.parse(line.toString('utf8')) as { type?: unknown }).type === 'checkpoint'
  } catch {
    return false
  }
}

/**
 * Where a chain continues after the complete `lines` of its newest file (at least one): from
 * the last line, with the lines since the file's last checkpoint still to be covered. null when
 * the last line is not a chained line (a damaged file: the writer must not guess past it).
 */
export function resumeChain(lines: readonly Buffer[]): ChainState | null {
  const last = lines[lines.length - 1]!
  const seq = lineSeq(last)
  if (seq === null) return null
  let j = lines.length - 1
  while (j >= 0 && !isCheckpointLine(lines[j]!)) j--
  const marks = lines.slice(j + 1).map((l) => sha256(l))
  return {
    seq,
    head: sha256(last).toString('hex'),
    since: j >= 0 ? lineSeq(lines[j]!)! + 1 : (lineSeq(lines[0]!) ?? seq),
    marks,
    recordsSinceCheckpoint: marks.length,
  }
}

export type ChainItem = { kind: 'record'; body: string } | { kind: 'checkpoint'; event: CheckpointEvent }

export interface ChainContext {
  /** ISO time for the checkpoints of this batch. */
  at: string
  /** The file the lines go to (named in checkpoints). */
  file: string
  /** The file has no "open" checkpoint yet: this batch starts with one. */
  opensFile: boolean
  checkpointEveryRecords: number
  key: { keyId: string; privateKey: KeyObject }
}

export interface ChainStep {
  state: ChainState
  /** The chained lines, without newlines. */
  lines: string[]
  records: number
  checkpoints: number
  /** The batch's last checkpoint line, for the head file. */
  lastCheckpoint: string | null
}

/**
 * One batch of the chain: each record and checkpoint as a line chained to the one before, a
 * checkpoint every checkpointEveryRecords records. A checkpoint asked for with nothing new to
 * cover ('interval' from a timer) is skipped; the others always write. Pure: `state` is not
 * changed, the caller adopts the returned one once the lines are on disk.
 */
export function chainBatch(state: ChainState, items: readonly ChainItem[], ctx: ChainContext): ChainStep {
  let { seq, head, since, recordsSinceCheckpoint } = state
  let marks = state.marks.slice()
  const lines: string[] = []
  let records = 0
  let checkpoints = 0
  let lastCheckpoint: string | null = null
  const add = (body: string) => {
    seq++
    const line = chainLine(seq, head, body)
    const h = sha256(line)
    lines.push(line)
    head = h.toString('hex')
    marks.push(h)
  }
  const addCheckpoint = (event: CheckpointEvent) => {
    const fields = { seq: seq + 1, event, at: ctx.at, file: ctx.file, since, head, marks: encodeMarks(marks), key: ctx.key.keyId }
    add(checkpointBody(fields, ctx.key.privateKey))
    lastCheckpoint = lines[lines.length - 1]!
    since = seq + 1
    marks = []
    recordsSinceCheckpoint = 0
    checkpoints++
  }
  if (ctx.opensFile) addCheckpoint('open')
  for (const item of items) {
    if (item.kind === 'record') {
      add(item.body)
      records++
      if (++recordsSinceCheckpoint >= ctx.checkpointEveryRecords) addCheckpoint('interval')
    } else if (item.event !== 'interval' || recordsSinceCheckpoint > 0) {
      addCheckpoint(item.event)
    }
  }
  return { state: { seq, head, since, marks, recordsSinceCheckpoint }, lines, records, checkpoints, lastCheckpoint }
}
