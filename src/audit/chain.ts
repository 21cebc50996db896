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

/** Splits file bytes into complete lines and a torn tail (bytes after the last newline). */
export function splitLines(buf: Buffer): { lines: Buffer[]; torn: Buffer | null } {
  const lines: Buffer[] = []
  let start = 0
  for (;;) {
    const nl = buf.indexOf(0x0a, start)
    if (nl === -1) break
    lines.push(buf.subarray(start, nl))
    start = nl + 1
  }
  return { lines, torn: start < buf.length ? buf.subarray(start) : null }
}
