// The audit writer on real files: group commit, the chain across files and restarts,
// rotation, retention, relaxed durability, the mirror, and failing closed then recovering.

import t from 'tap'
import { readFileSync, statSync, utimesSync, writeFileSync, appendFileSync } from 'node:fs'
import path from 'node:path'
import { BulwarkError } from '../../src/errors.ts'
import { GENESIS, HEAD_FILE, sha256 } from '../../src/audit/chain.ts'
import { verifyAuditLog } from '../../src/audit/verify.ts'
import { FakeClock } from '../../kit/clock.ts'
import { FolderLockedError } from '../../src/durable/lock.ts'
import { crashLock } from '../durable/helpers.ts'
import { auditFiles, body, faultyFs, memoryLogger, publicKeys, readAudit, requestRecords, startWriter, tempDir, tickWriter } from './helpers.ts'

/** A fake clock at the real time, for the tests that move it. */
const realNow = () => new FakeClock(Date.now())

t.test('records written together share one sync, and each promise resolves only after it', async (t) => {
  const dir = tempDir('group')
  const fs = faultyFs()
  const w = await startWriter(dir, { fs })
  const syncsBefore = fs.syncs
  const settled: number[] = []
  const all = Array.from({ length: 50 }, (_, i) => w.append(body(i)).then(() => settled.push(i)))
  await Promise.all(all)
  t.equal(settled.length, 50)
  const syncs = fs.syncs - syncsBefore
  t.ok(syncs >= 1 && syncs < 50, `50 concurrent records took ${syncs} syncs (group commit)`)
  // Every record is on disk by the time its promise resolved: read them back now.
  t.same(requestRecords(dir).map((l) => l.rec.id), Array.from({ length: 50 }, (_, i) => `r${i}`), 'all 50, in append order')
  await w.close()
  t.ok((await verifyAuditLog(dir, publicKeys)).ok)
})

t.test('each line chains to the previous one and the first to the genesis', async (t) => {
  const dir = tempDir('chain')
  const w = await startWriter(dir, { checkpointEveryRecords: 4 })
  for (let i = 0; i < 10; i++) await w.append(body(i))
  await w.close()
  const lines = readAudit(dir)
  t.equal(lines[0]!.rec.prev, GENESIS)
  t.equal(lines[0]!.rec.type, 'checkpoint')
  t.equal(lines[0]!.rec.event, 'open')
  for (let i = 1; i < lines.length; i++) {
    t.equal(lines[i]!.rec.prev, sha256(lines[i - 1]!.text).toString('hex'), `line ${i + 1} points at line ${i}`)
    t.equal(lines[i]!.rec.seq, i + 1)
  }
  const events = lines.filter((l) => l.rec.type === 'checkpoint').map((l) => l.rec.event)
  t.same(events, ['open', 'interval', 'interval', 'shutdown'], 'a checkpoint every 4 records, and one at shutdown')
  const head = readFileSync(path.join(dir, HEAD_FILE), 'utf8').trim()
  t.equal(head, lines[lines.length - 1]!.text, `${HEAD_FILE} holds the newest checkpoint`)
})

t.test('a checkpoint is written on a timer when records are waiting for one', async (t) => {
  const dir = tempDir('timer')
  const clock = realNow()
  const w = await startWriter(dir, { checkpointEveryMs: 100, clock })
  await w.append(body(1))
  for (let i = 0; i < 4; i++) await tickWriter(clock, w, 100)
  const events = readAudit(dir).filter((l) => l.rec.type === 'checkpoint').map((l) => l.rec.event)
  t.same(events, ['open', 'interval'], 'one timed checkpoint after the record, none while idle')
  await w.close()
})

t.test('rotation by size keeps the chain across files; each file opens with a checkpoint', async (t) => {
  const dir = tempDir('rotate')
  const w = await startWriter(dir, { maxFileBytes: 4096 })
  for (let i = 0; i < 40; i++) await w.append(body(i, { pad: 'x'.repeat(200) }))
  await w.close()
  const files = auditFiles(dir)
  t.ok(files.length >= 3, `${files.length} files`)
  for (const f of files) t.ok(statSync(path.join(dir, f)).size <= 4096 + 600, `${f} stays near the limit`)
  const lines = readAudit(dir)
  for (let i = 1; i < lines.length; i++) t.equal(lines[i]!.rec.prev, sha256(lines[i - 1]!.text).toString('hex'))
  for (const f of files) {
    const first = lines.find((l) => l.file === f)!
    t.match(first.rec, { type: 'checkpoint', event: 'open', file: f }, `${f} starts with its open checkpoint`)
  }
  t.equal(requestRecords(dir).length, 40)
  t.equal((statSync(path.join(dir, files[0]!)).mode & 0o777).toString(8), '600', 'audit files are private')
  const report = await verifyAuditLog(dir, publicKeys)
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
  t.equal(report.records, 40)
})

t.test('rotation by age', async (t) => {
  const dir = tempDir('age')
  const clock = realNow()
  const w = await startWriter(dir, { maxFileAgeMs: 100, clock })
  await w.append(body(1))
  await tickWriter(clock, w, 150)
  await w.append(body(2))
  await w.close()
  t.equal(auditFiles(dir).length, 2)
  t.ok((await verifyAuditLog(dir, publicKeys)).ok)
})

t.test('retention removes the oldest files past the size limit, never the current one, and the rest verifies', async (t) => {
  const dir = tempDir('retain')
  const log = memoryLogger()
  const w = await startWriter(dir, { maxFileBytes: 4096, retentionMaxTotalBytes: 12_000, log })
  for (let i = 0; i < 80; i++) await w.append(body(i, { pad: 'x'.repeat(200) }))
  const current = path.basename(w.currentFile!)
  await w.close()
  const files = auditFiles(dir)
  t.ok(files.includes(current), 'the current file stays')
  const total = files.reduce((n, f) => n + statSync(path.join(dir, f)).size, 0)
  t.ok(total <= 12_000 + 4096, `${total} bytes kept`)
  t.ok(log.entries.some((e) => e.msg === 'audit file removed by retention'), 'each removal is logged')
  const report = await verifyAuditLog(dir, publicKeys)
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
  t.match(report.warnings.join('\n'), /chain starts at seq \d+/, 'the verifier says where the kept chain starts')
})

t.test('retention by age', async (t) => {
  const dir = tempDir('retain-age')
  const w1 = await startWriter(dir)
  await w1.append(body(1))
  await w1.close()
  const old = auditFiles(dir)[0]!
  const past = new Date(Date.now() - 3_600_000)
  utimesSync(path.join(dir, old), past, past)
  const w2 = await startWriter(dir, { retentionMaxAgeMs: 60_000 })
  await w2.append(body(2))
  await w2.close()
  t.notOk(auditFiles(dir).includes(old), 'the hour-old file is gone')
  t.equal(auditFiles(dir).length, 1)
})

t.test('a restart continues the chain in a new file, also after a torn last line', async (t) => {
  const dir = tempDir('restart')
  const w1 = await startWriter(dir, { checkpointEveryRecords: 3 })
  for (let i = 0; i < 5; i++) await w1.append(body(i))
  // No close: as if the process died. Then a write cut short by the crash.
  const first = w1.currentFile!
  appendFileSync(first, '{"seq":99,"prev":"ab')
  crashLock(dir)
  const w2 = await startWriter(dir)
  await w2.append(body(5))
  await w2.close()
  const files = auditFiles(dir)
  t.equal(files.length, 2)
  const lines = readAudit(dir)
  const open2 = lines.find((l) => l.file === files[1] && l.line === 1)!
  const lastOf1 = lines.filter((l) => l.file === files[0]).pop()!
  t.equal(open2.rec.prev, sha256(lastOf1.text).toString('hex'), 'the new file points at the last complete line of the old one')
  t.equal(open2.rec.seq, (lastOf1.rec.seq as number) + 1)
  const report = await verifyAuditLog(dir, publicKeys)
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
  t.equal(report.torn.length, 1, 'the torn line is reported')
  t.equal(report.records, 6)
  // w1 never closed; stop its timers.
  await w1.close()
})

t.test('relaxed durability acknowledges after the write and syncs on a timer', async (t) => {
  const dir = tempDir('relaxed')
  const fs = faultyFs()
  const clock = realNow()
  const w = await startWriter(dir, { fs, durability: 'relaxed', relaxedSyncIntervalMs: 400, clock })
  const syncsBefore = fs.syncs
  for (let i = 0; i < 20; i++) await w.append(body(i))
  t.equal(fs.syncs, syncsBefore, 'no sync per record')
  t.equal(requestRecords(dir).length, 20, 'but every record is written to the file (survives a killed process)')
  await tickWriter(clock, w, 399)
  t.equal(fs.syncs, syncsBefore, 'not before the interval')
  await tickWriter(clock, w, 1)
  t.equal(fs.syncs, syncsBefore + 1, 'the timer synced the file, once')
  await tickWriter(clock, w, 400)
  t.equal(fs.syncs, syncsBefore + 1, 'nothing written since: no more syncs')
  await w.close()
  t.ok((await verifyAuditLog(dir, publicKeys)).ok)
})

t.test('the mirror gets every committed line, exactly as written', async (t) => {
  const dir = tempDir('mirror')
  let mirrored = ''
  const w = await startWriter(dir, { mirror: { write: (s: string) => (mirrored += s) } })
  for (let i = 0; i < 3; i++) await w.append(body(i))
  await w.close()
  t.equal(mirrored, readFileSync(path.join(dir, auditFiles(dir)[0]!), 'utf8'))
})

t.test('a full disk fails closed: callers get audit_unavailable, logged once, then it recovers by itself', async (t) => {
  const dir = tempDir('enospc')
  const fs = faultyFs()
  const log = memoryLogger()
  const clock = realNow()
  const w = await startWriter(dir, { fs, log, retryMs: 50, clock })
  await w.append(body(0))
  t.equal(w.problem, null)

  fs.fail = 'ENOSPC'
  const failed = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => w.append(body(100 + i))))
  t.ok(failed.every((r) => r.status === 'rejected'), 'the batch in flight fails')
  const err = (failed[0] as PromiseRejectedResult).reason as BulwarkError
  t.type(err, BulwarkError)
  t.equal(err.code, 'audit_unavailable')
  t.equal(err.status, 503)
  t.match(err.reason, /ENOSPC/)
  t.match(w.problem, /ENOSPC/, 'readiness reports the problem')
  // While failed: every append is refused at once, without touching the disk again.
  const writes = fs.writes
  for (let i = 0; i < 20; i++) await t.rejects(w.append(body(200 + i)), { code: 'audit_unavailable' })
  t.equal(fs.writes, writes, 'no write attempt per request')
  const opens = fs.opens
  for (let i = 0; i < 4; i++) await tickWriter(clock, w, 50) // probes keep failing
  t.equal(fs.opens - opens, 4, 'a probe every retryMs')
  t.equal(log.entries.filter((e) => e.level === 'error').length, 1, 'the failure is logged once, not per request or probe')

  fs.fail = null
  await tickWriter(clock, w, 49)
  t.not(w.problem, null, 'no probe before retryMs')
  await tickWriter(clock, w, 1)
  t.equal(w.problem, null, 'recovered without a restart')
  t.ok(log.entries.some((e) => e.level === 'info' && /writable again/.test(e.msg ?? '')), 'recovery is logged')
  await w.append(body(1))
  await w.close()

  const ids = requestRecords(dir).map((l) => l.rec.id)
  t.same(ids, ['r0', 'r1'], 'no refused record reached the file; the half-written batch was cut off')
  t.ok(readAudit(dir).some((l) => l.rec.event === 'recovered'), 'a signed "recovered" checkpoint marks the gap')
  const report = await verifyAuditLog(dir, publicKeys)
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
})

t.test('a failing fdatasync fails closed too (EIO), and recovers', async (t) => {
  const dir = tempDir('eio')
  const fs = faultyFs()
  const clock = realNow()
  const w = await startWriter(dir, { fs, retryMs: 30, clock })
  fs.fail = 'EIO'
  fs.failOnly = 'datasync'
  await t.rejects(w.append(body(1)), { code: 'audit_unavailable' })
  fs.fail = null
  fs.failOnly = null
  await tickWriter(clock, w, 30)
  t.equal(w.problem, null)
  await w.append(body(2))
  await w.close()
  t.same(requestRecords(dir).map((l) => l.rec.id), ['r2'], 'the unsynced record was cut off on recovery')
  t.ok((await verifyAuditLog(dir, publicKeys)).ok)
})

t.test('a file descriptor closed under the writer fails closed, then the writer reopens the file', async (t) => {
  const dir = tempDir('ebadf')
  const fs = faultyFs()
  const log = memoryLogger()
  const clock = realNow()
  const w = await startWriter(dir, { fs, log, retryMs: 30, clock })
  await w.append(body(1))
  await fs.handles[fs.handles.length - 1]!.close()
  await t.rejects(w.append(body(2)), { code: 'audit_unavailable' })
  await tickWriter(clock, w, 30)
  t.equal(w.problem, null, 'recovered')
  await w.append(body(3))
  await w.close()
  t.same(requestRecords(dir).map((l) => l.rec.id), ['r1', 'r3'])
  t.equal(auditFiles(dir).length, 1, 'same file')
  t.ok((await verifyAuditLog(dir, publicKeys)).ok)
})

t.test('a folder that cannot be created: the writer starts failed and keeps trying', async (t) => {
  const base = tempDir('nodir')
  const blocker = path.join(base, 'audit')
  writeFileSync(blocker, 'a file where the folder should be')
  const log = memoryLogger()
  const w = await startWriter(blocker, { log, retryMs: 30 })
  t.match(w.problem, /EEXIST|ENOTDIR/)
  await t.rejects(w.append(body(1)), { code: 'audit_unavailable' })
  await w.close()
})

t.test('after close, appends are refused', async (t) => {
  const dir = tempDir('closed')
  const w = await startWriter(dir)
  await w.close()
  await t.rejects(w.append(body(1)), { code: 'audit_unavailable' })
  t.match(w.problem, /closed/)
})

t.test('a second writer on the same folder refuses to start, naming the folder; the first goes on', async (t) => {
  const dir = tempDir('locked')
  const w1 = await startWriter(dir)
  await w1.append(body(1))
  const clock = realNow()
  const err = await startWriter(dir, { clock }).then(
    () => null,
    (e: unknown) => e,
  )
  t.type(err, FolderLockedError)
  t.match((err as Error).message, `the audit log folder ${dir} is in use`)
  t.match((err as Error).message, 'two writers would fork the hash chain')
  t.match((err as Error).message, '(audit.directory)')
  t.equal(clock.pendingTimers, 0, 'the refused writer left no timer behind')
  await w1.append(body(2))
  await w1.close()
  t.same(requestRecords(dir).map((l) => l.rec.id), ['r1', 'r2'], 'only the first wrote')
  const w3 = await startWriter(dir)
  t.pass('once closed, the folder is free')
  await w3.close()
  t.ok((await verifyAuditLog(dir, publicKeys)).ok)
})
