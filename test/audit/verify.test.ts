// Tampering with an audit log, and `bulwark audit verify` naming the first line touched.
// One real log (three files, checkpoints every 5 records, closed cleanly) is copied for each
// case and changed the way an intruder with write access to the folder would change it.

import t from 'tap'
import { cpSync, readdirSync, readFileSync, truncateSync, writeFileSync, statSync, unlinkSync, appendFileSync } from 'node:fs'
import { spawnSync } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { generateSigningKey, publicKeyPath, writeSigningKey } from '../../src/audit/keys.ts'
import { HEAD_FILE, sha256, sortAuditFiles } from '../../src/audit/chain.ts'
import { verifyAuditLog, type VerifyReport } from '../../src/audit/verify.ts'
import { cryptoRandom } from '../../src/deps.ts'
import { body, publicKeys, startWriter, tempDir, testKey } from './helpers.ts'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

// --- the log under test ---
const original = tempDir('tamper-src')
{
  const w = await startWriter(original, { checkpointEveryRecords: 5, maxFileBytes: 4096 })
  for (let i = 0; i < 34; i++) await w.append(body(i, { status: i % 3 === 0 ? 403 : 200, pad: 'p'.repeat(150) }))
  await w.close()
}
const files = sortAuditFiles(readdirSync(original))

/** A fresh copy of the log to tamper with. */
function copy(): string {
  const dir = tempDir('tamper')
  cpSync(original, dir, { recursive: true })
  return dir
}

const read = (dir: string, file: string) => readFileSync(path.join(dir, file), 'utf8').split('\n').slice(0, -1)
const write = (dir: string, file: string, lines: string[]) => writeFileSync(path.join(dir, file), lines.map((l) => l + '\n').join(''))

/** file and 1-based line of the request record with id r<i>. */
function locate(dir: string, i: number): { file: string; line: number } {
  for (const file of sortAuditFiles(readdirSync(dir))) {
    const n = read(dir, file).findIndex((l) => l.includes(`"id":"r${i}"`))
    if (n >= 0) return { file, line: n + 1 }
  }
  throw new Error(`r${i} not found`)
}

/** Recomputes every prev from `file`:`line` on, as someone without the key could. */
function rehashFrom(dir: string, file: string, line: number): void {
  let prev: string | null = null
  let started = false
  for (const f of sortAuditFiles(readdirSync(dir))) {
    const lines = read(dir, f)
    for (let i = 0; i < lines.length; i++) {
      if (f === file && i + 1 === line) started = true
      if (started && prev !== null && f + i !== file + (line - 1)) {
        const rec = JSON.parse(lines[i]!) as { prev: string }
        rec.prev = prev
        lines[i] = JSON.stringify(rec)
      }
      prev = sha256(lines[i]!).toString('hex')
    }
    write(dir, f, lines)
  }
}

function first(report: VerifyReport) {
  return report.problems[0]
}

t.test('the untouched log verifies, with its counts', async (t) => {
  t.ok(files.length >= 3, `${files.length} files`)
  const report = await verifyAuditLog(original, publicKeys)
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
  t.equal(report.records, 34)
  t.ok(report.closedCleanly)
  t.equal(report.unsignedTail, 0)
  t.same(report.torn, [])
  // One file alone verifies too (its start is anchored by its signed open checkpoint).
  const single = await verifyAuditLog(path.join(original, files[1]!), publicKeys)
  t.ok(single.ok, `the log verifies${single.ok ? '' : ': ' + JSON.stringify(single.problems)}`)
})

t.test('one flipped byte is found on its line', async (t) => {
  const dir = copy()
  const at = locate(dir, 12)
  const lines = read(dir, at.file)
  const text = lines[at.line - 1]!
  const i = text.indexOf('"id":"r12"') + 6
  lines[at.line - 1] = text.slice(0, i) + String.fromCharCode(text.charCodeAt(i) ^ 0x01) + text.slice(i + 1) // r12 -> s12
  write(dir, at.file, lines)
  const p = first(await verifyAuditLog(dir, publicKeys))
  t.match(p, { kind: 'modified', file: at.file, line: at.line })
})

t.test('a flipped byte that breaks the JSON is found on its line', async (t) => {
  const dir = copy()
  const at = locate(dir, 7)
  const buf = readFileSync(path.join(dir, at.file))
  let offset = 0
  for (let n = 1; n < at.line; n++) offset = buf.indexOf(0x0a, offset) + 1
  buf[offset] = buf[offset]! ^ 0x20 // '{' -> '['
  writeFileSync(path.join(dir, at.file), buf)
  const report = await verifyAuditLog(dir, publicKeys)
  t.notOk(report.ok)
  t.match(first(report), { file: at.file, line: at.line })
})

t.test('a deleted record is named by its seq and where it stood', async (t) => {
  const dir = copy()
  const at = locate(dir, 8)
  const lines = read(dir, at.file)
  const seq = (JSON.parse(lines[at.line - 1]!) as { seq: number }).seq
  lines.splice(at.line - 1, 1)
  write(dir, at.file, lines)
  const p = first(await verifyAuditLog(dir, publicKeys))
  t.match(p, { kind: 'deleted', file: at.file, line: at.line, seq })
})

t.test('two swapped records are found at the first of them', async (t) => {
  const dir = copy()
  const at = locate(dir, 16)
  const lines = read(dir, at.file)
  const a = lines[at.line - 1]!
  t.ok(lines[at.line]!.includes('"id":"r17"'), 'r17 follows r16 in the same file')
  lines[at.line - 1] = lines[at.line]!
  lines[at.line] = a
  write(dir, at.file, lines)
  const p = first(await verifyAuditLog(dir, publicKeys))
  t.match(p, { kind: 'reordered', file: at.file, line: at.line })
})

t.test('an inserted record is found on its line', async (t) => {
  const dir = copy()
  const at = locate(dir, 21)
  const lines = read(dir, at.file)
  lines.splice(at.line, 0, lines[at.line - 1]!.replace('"id":"r21"', '"id":"forged"'))
  write(dir, at.file, lines)
  const p = first(await verifyAuditLog(dir, publicKeys))
  t.match(p, { kind: 'inserted', file: at.file, line: at.line + 1 })
})

t.test('a record copied to another place is found', async (t) => {
  const dir = copy()
  const from = locate(dir, 2)
  const at = locate(dir, 11)
  const src = read(dir, from.file)[from.line - 1]!
  const lines = read(dir, at.file)
  lines.splice(at.line - 1, 0, src)
  write(dir, at.file, lines)
  const p = first(await verifyAuditLog(dir, publicKeys))
  t.match(p, { kind: 'inserted', file: at.file, line: at.line })
})

t.test('a tail cut off after the last checkpoint is found (signed head), and reported where the log now ends', async (t) => {
  const dir = copy()
  const last = files[files.length - 1]!
  const file = path.join(dir, last)
  const lines = read(dir, last)
  t.ok(lines.length >= 5, 'the last file has records to cut')
  // Cut in the middle of the third line from the end: two whole lines and half of one go.
  const keep = lines.slice(0, -3).reduce((n, l) => n + Buffer.byteLength(l) + 1, 0) + 40
  truncateSync(file, keep)
  const report = await verifyAuditLog(dir, publicKeys)
  t.equal(report.torn.length, 1, 'the half line is reported as torn')
  t.match(first(report), { kind: 'truncated', file: last, line: lines.length - 3 })
})

t.test('a cut at a line boundary is found too', async (t) => {
  const dir = copy()
  const last = files[files.length - 1]!
  write(dir, last, read(dir, last).slice(0, -1))
  t.match(first(await verifyAuditLog(dir, publicKeys)), { kind: 'truncated' })
})

t.test('the end of an earlier file cut off is found by the chain into the next file', async (t) => {
  const dir = copy()
  const lines = read(dir, files[0]!)
  const seq = (JSON.parse(lines[lines.length - 1]!) as { seq: number }).seq
  write(dir, files[0]!, lines.slice(0, -1))
  t.match(first(await verifyAuditLog(dir, publicKeys)), { kind: 'deleted', seq })
})

t.test('a whole file removed from the middle is found', async (t) => {
  const dir = copy()
  unlinkSync(path.join(dir, files[1]!))
  t.match(first(await verifyAuditLog(dir, publicKeys)), { kind: 'deleted', file: files[2]!, line: 1 })
})

t.test('lines removed from the start of the first file are found', async (t) => {
  const dir = copy()
  write(dir, files[0]!, read(dir, files[0]!).slice(2))
  t.match(first(await verifyAuditLog(dir, publicKeys)), { kind: 'deleted', file: files[0]!, line: 1 })
})

t.test('a record changed and the chain re-hashed without the key is named exactly', async (t) => {
  const dir = copy()
  const at = locate(dir, 13)
  const lines = read(dir, at.file)
  lines[at.line - 1] = lines[at.line - 1]!.replace('"status":200', '"status":201')
  write(dir, at.file, lines)
  rehashFrom(dir, at.file, at.line)
  // The chain itself is consistent again:
  const all = sortAuditFiles(readdirSync(dir)).flatMap((f) => read(dir, f))
  for (let i = 1; i < all.length; i++) t.equal((JSON.parse(all[i]!) as { prev: string }).prev, sha256(all[i - 1]!).toString('hex'))
  const report = await verifyAuditLog(dir, publicKeys)
  t.match(first(report), { kind: 'modified', file: at.file, line: at.line, seq: (JSON.parse(lines[at.line - 1]!) as { seq: number }).seq })
})

t.test('a re-hash that also rewrites the checkpoints cannot forge their signatures', async (t) => {
  const dir = copy()
  const at = locate(dir, 3)
  const lines = read(dir, at.file)
  lines[at.line - 1] = lines[at.line - 1]!.replace('"status":403', '"status":200')
  write(dir, at.file, lines)
  // Re-hash, setting each checkpoint's head to match as well.
  let prev: string | null = null
  for (const f of sortAuditFiles(readdirSync(dir))) {
    const ls = read(dir, f).map((l) => {
      const rec = JSON.parse(l) as { prev: string; type: string; head?: string }
      if (prev !== null) rec.prev = prev
      if (rec.type === 'checkpoint' && prev !== null) rec.head = prev
      const text = JSON.stringify(rec)
      prev = sha256(text).toString('hex')
      return text
    })
    write(dir, f, ls)
  }
  const report = await verifyAuditLog(dir, publicKeys)
  t.notOk(report.ok)
  t.match(first(report), { kind: 'signature' })
  t.ok(first(report)!.line <= read(dir, at.file).length, 'at the first checkpoint after the change')
})

t.test('checkpoints signed by another key do not verify', async (t) => {
  const other = generateSigningKey(cryptoRandom)
  const report = await verifyAuditLog(original, [other.publicKey])
  t.notOk(report.ok)
  t.match(first(report), { kind: 'signature', message: /not among the keys given/ })
})

t.test('a missing or altered audit-head.json is reported', async (t) => {
  const dir = copy()
  unlinkSync(path.join(dir, HEAD_FILE))
  t.match(first(await verifyAuditLog(dir, publicKeys)), { kind: 'head' })
  const dir2 = copy()
  const head = readFileSync(path.join(dir2, HEAD_FILE), 'utf8').replace('"event":"shutdown"', '"event":"interval"')
  writeFileSync(path.join(dir2, HEAD_FILE), head)
  t.match(first(await verifyAuditLog(dir2, publicKeys)), { kind: 'head' })
})

t.test('a torn last line is reported and tolerated', async (t) => {
  const dir = copy()
  const last = files[files.length - 1]!
  appendFileSync(path.join(dir, last), '{"seq":999,"prev":"00')
  const report = await verifyAuditLog(dir, publicKeys)
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
  t.same(report.torn, [{ file: last, line: read(original, last).length + 1, bytes: 21 }])
  t.match(report.warnings.join('\n'), /torn last line/)
})

// --- the command line ---

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [path.join(repo, 'bin/bulwark.js'), 'audit', ...args], { encoding: 'utf8', cwd: repo })
  return { status: r.status, out: r.stdout, err: r.stderr }
}

const keyDir = tempDir('cli-key')
const privFile = path.join(keyDir, 'audit-key.pem')
await writeSigningKey(privFile, testKey, cryptoRandom)
const pubFile = publicKeyPath(privFile)

t.test('bulwark audit verify: an intact folder prints the count and exits 0', async (t) => {
  const r = cli('verify', original, '--key', pubFile)
  t.equal(r.status, 0, r.err)
  t.match(r.out, /^ok: 34 records and \d+ checkpoints in \d+ file\(s\)/m)
})

t.test('bulwark audit verify: a tampered folder names file and line and exits 1', async (t) => {
  const dir = copy()
  const at = locate(dir, 5)
  const lines = read(dir, at.file)
  lines[at.line - 1] = lines[at.line - 1]!.replace('"status":200', '"status":500')
  write(dir, at.file, lines)
  const r = cli('verify', dir, '--key', pubFile)
  t.equal(r.status, 1)
  t.match(r.out, `TAMPERED: ${at.file}:${at.line} `)
})

t.test('bulwark audit verify: a torn line is a warning, exit 0; a single file can be checked', async (t) => {
  const dir = copy()
  const last = files[files.length - 1]!
  appendFileSync(path.join(dir, last), '{"seq":')
  const r = cli('verify', path.join(dir, last), '--key', pubFile)
  t.equal(r.status, 0, r.out + r.err)
  t.match(r.out, /warning: .*torn last line/)
})

t.test('bulwark audit verify: usage and key errors exit 2', async (t) => {
  t.equal(cli('verify').status, 2)
  t.equal(cli('verify', original, '--key', path.join(keyDir, 'missing.pem')).status, 2)
})

t.test('bulwark audit keygen writes a private key only its owner can read', async (t) => {
  const dir = tempDir('keygen')
  const out = path.join(dir, 'k.pem')
  const r = cli('keygen', '--out', out)
  t.equal(r.status, 0, r.err)
  t.equal((statSync(out).mode & 0o777).toString(8), '600')
  t.ok(statSync(path.join(dir, 'k.pub.pem')).isFile())
  t.equal(cli('keygen', '--out', out).status, 2, 'never overwrites a key')
})
