import { appendFile, open, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { Ledger, MemoryAccountant, type PrivacyBudget } from '../../src/privacy/accountant.ts'
import { FileAccountant, JOURNAL_FILE, journalFileText, journalSettings, journalText, parseJournalLine, PrivacyStateError, replayJournal, sealLine } from '../../src/privacy/file-accountant.ts'
import { calibrateGaussian, epsilonForRho, rhoFor, RHO_UNITS } from '../../src/privacy/mechanisms.ts'
import { nodeDurableFs } from '../../src/durable/fs.ts'
import { FolderLockedError } from '../../src/durable/lock.ts'
import { crashLock } from '../durable/helpers.ts'
import { budget, eps, fakeClock, HOUR, tempDir } from './helpers.ts'

// These tests pin the journal's lines one charge at a time: reservations (charge ahead, the
// configured default) have their own tests in reservations.test.ts.
const noReservations = { reserveFraction: 0 }

type EntryLine = { t: number; k: string; e: number; r: number; w: number }
/** The journal's charge lines, parsed (not the header, not the clock lines). */
async function entryLines(dir: string): Promise<EntryLine[]> {
  const lines = (await readFile(path.join(dir, JOURNAL_FILE), 'utf8')).trim().split('\n')
  return lines.map((l) => JSON.parse(l) as EntryLine).filter((l) => 'k' in l)
}

t.test('basic composition is exact: ten charges of 0.1 spend exactly 1.0', async (t) => {
  const acct = new MemoryAccountant({ clock: fakeClock() })
  let last
  for (let i = 0; i < 10; i++) {
    last = await acct.charge('k', eps(0.1), budget(1))
    t.ok(last.ok, `charge ${i + 1} fits`)
  }
  t.equal(last!.epsilonSpent, 1, 'spent is exactly 1')
  t.equal(last!.epsilonLeft, 0, 'left is exactly 0')
  t.equal(last!.delta, 0, 'pure DP: δ = 0')
  const refused = await acct.charge('k', eps(0.1), budget(1))
  t.equal(refused.ok, false, 'the eleventh does not fit')
  t.equal(refused.epsilonSpent, 1)
  t.equal(refused.retryAfterMs, HOUR)
  t.equal((await acct.charge('other', eps(0.1), budget(1))).ok, true, 'another key has its own budget')
})

t.test('the sliding window frees each charge exactly windowMs after it', async (t) => {
  const clock = fakeClock()
  const acct = new MemoryAccountant({ clock })
  const b = budget(1, 60_000)
  t.ok((await acct.charge('k', eps(0.3), b)).ok) // t0
  clock.advance(10_000)
  t.ok((await acct.charge('k', eps(0.3), b)).ok) // t0 + 10 s
  clock.advance(10_000)
  t.ok((await acct.charge('k', eps(0.4), b)).ok) // t0 + 20 s: 1.0 spent
  clock.advance(5_000) // t0 + 25 s
  const r = await acct.charge('k', eps(0.5), b)
  t.equal(r.ok, false)
  t.equal(r.retryAfterMs, 45_000, 'needs the first two charges gone: the second frees at t0 + 70 s')
  clock.advance(34_999) // t0 + 59.999 s
  const one = await acct.charge('k', eps(0.3), b)
  t.equal(one.ok, false, 'one millisecond before the first charge frees')
  t.equal(one.retryAfterMs, 1)
  clock.advance(1) // t0 + 60 s
  const freed = await acct.balance('k', b)
  t.equal(freed.epsilonSpent, 0.7, 'the first charge no longer counts')
  t.ok((await acct.charge('k', eps(0.3), b)).ok, 'and its budget is available again')
})

t.test('a balance asked about a cost says whether it would fit, and when, and records nothing', async (t) => {
  const clock = fakeClock()
  const acct = new MemoryAccountant({ clock })
  const b = budget(1, 60_000)
  t.ok((await acct.charge('k', eps(0.8), b)).ok)
  clock.advance(10_000)
  const no = await acct.balance('k', b, eps(0.3))
  t.same([no.ok, no.retryAfterMs, no.epsilonSpent], [false, 50_000, 0.8], 'does not fit: frees when the charge of 0.8 does')
  const yes = await acct.balance('k', b, eps(0.2))
  t.same([yes.ok, yes.epsilonSpent], [true, 1], 'fits (spent as if charged, as a charge reports it)')
  t.equal((await acct.balance('k', b)).epsilonSpent, 0.8, 'nothing recorded by either')
})

t.test('a charge larger than the whole budget can never fit', async (t) => {
  const acct = new MemoryAccountant({ clock: fakeClock() })
  const r = await acct.charge('k', eps(1.5), budget(1))
  t.equal(r.ok, false)
  t.equal(r.retryAfterMs, Infinity)
})

t.test('Gaussian answers compose in zCDP: more answers than basic composition allows, stated at the budget δ', async (t) => {
  const acct = new MemoryAccountant({ clock: fakeClock() })
  const spec = calibrateGaussian(0.25, 1e-6, 16)
  const b: PrivacyBudget = { epsilonMicros: 1_000_000, delta: 1e-6, windowMs: HOUR }
  let accepted = 0
  let last
  for (;;) {
    const r = await acct.charge('k', spec.cost, b)
    if (!r.ok) break
    accepted++
    last = r
  }
  const expected = Math.floor(Math.floor(rhoFor(1, 1e-6) * RHO_UNITS) / spec.cost.rhoNanos)
  t.equal(accepted, expected, `accepts floor(ρ_budget / ρ_answer) = ${expected} answers`)
  t.ok(accepted > 4, `${accepted} answers at ε = 0.25 each, where basic composition allows 4`)
  t.ok(last!.epsilonSpent <= 1 && last!.epsilonSpent > 0.9, `spent ${last!.epsilonSpent}`)
  t.equal(last!.delta, 1e-6)
  t.equal(last!.epsilonSpent, epsilonForRho((accepted * spec.cost.rhoNanos) / RHO_UNITS, 1e-6))
})

t.test('pure and zCDP charges in one window add up', async (t) => {
  const acct = new MemoryAccountant({ clock: fakeClock() })
  const b: PrivacyBudget = { epsilonMicros: 2_000_000, delta: 1e-6, windowMs: HOUR }
  t.ok((await acct.charge('k', eps(1), b)).ok)
  const g = calibrateGaussian(0.5, 1e-6, 16)
  const r = await acct.charge('k', g.cost, b)
  t.ok(r.ok)
  t.equal(r.epsilonSpent, 1 + epsilonForRho(g.cost.rhoNanos / RHO_UNITS, 1e-6))
  t.equal((await acct.charge('k', eps(0.6), b)).ok, false, 'no room for 0.6 more pure ε')
})

t.test('concurrent charges never overspend', async (t) => {
  const dir = await tempDir(t)
  const acct = await FileAccountant.open({ directory: dir, clock: fakeClock(), ...noReservations })
  const results = await Promise.all(Array.from({ length: 25 }, () => acct.charge('k', eps(0.1), budget(1))))
  t.equal(results.filter((r) => r.ok).length, 10)
  await acct.close()
  const lines = await entryLines(dir)
  const onDisk = lines.reduce((sum, l) => sum + l.e, 0)
  t.equal(onDisk, 1_000_000, 'the ten accepted charges, and only those, are on disk (1 ε)')
  t.ok(lines.length < 10, `charges written together share lines (${lines.length} lines for 10 charges)`)
})

t.test('merged journal lines free their cost no earlier than the charges they merge, and at most 1 s later', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const t0 = clock.nowMs()
  const b = budget(1, 10_000)
  const a = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  // The first charge starts a write; everything charged while it runs goes into the next.
  const pending = [a.charge('other', eps(0.1), b)]
  for (let i = 0; i < 4; i++) {
    pending.push(a.charge('k', eps(0.1), b)) // at t0, +200, +400, +600 ms
    clock.advance(200)
  }
  clock.advance(t0 + 2_000 - clock.nowMs())
  pending.push(a.charge('k', eps(0.1), b), a.charge('k', eps(0.1), b))
  t.ok((await Promise.all(pending)).every((r) => r.ok))
  await a.close()
  const kLines = (await entryLines(dir)).filter((l) => l.k === 'k')
  t.same(kLines.map((l) => [l.t - t0, l.e, l.w]), [[600, 400_000, 10_000], [2_000, 200_000, 10_000]], 'one line per key and second, at the latest time of its charges, with their window')
  const reopened = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  t.equal((await reopened.balance('k', b)).epsilonSpent, 0.6, 'the whole cost survives the restart')
  clock.advance(t0 + 10_000 - clock.nowMs())
  t.equal((await reopened.balance('k', b)).epsilonSpent, 0.6, 'the first charge of a merged line does not free at its own time')
  clock.advance(600)
  t.equal((await reopened.balance('k', b)).epsilonSpent, 0.2, 'the merged line frees 600 ms later, all at once')
  await reopened.close()
})

t.test('charges of one key in the same millisecond share an entry, never one that is being written', async (t) => {
  const ledger = new Ledger(HOUR)
  const clock = fakeClock()
  for (let i = 0; i < 100; i++) ledger.charge('k', eps(0.01), budget(2), clock.nowMs())
  ledger.charge('other', eps(0.01), budget(2), clock.nowMs())
  clock.advance(1)
  ledger.charge('k', eps(0.01), budget(2), clock.nowMs())
  t.equal(ledger.size, 3, '100 same-millisecond charges of k in one entry, one of other, one a millisecond later')
  t.equal(ledger.charge('k', eps(0), budget(2), clock.nowMs(), false).result.epsilonSpent, 1.01, 'with the exact sum')

  // In the file accountant, a charge made while its key's entry is being written starts a
  // new entry: it must reach the disk too.
  const dir = await tempDir(t)
  const a = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  const first = a.charge('k', eps(0.1), budget(1)) // taken by a write at once
  const more = Array.from({ length: 5 }, () => a.charge('k', eps(0.1), budget(1))) // same ms, next write
  t.ok((await Promise.all([first, ...more])).every((r) => r.ok))
  t.same((await entryLines(dir)).map((l) => l.e), [100_000, 500_000], 'one line for the first write, one for the five that waited')
  crashLock(dir) // a stays open, as a killed process's files would
  const b = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  t.equal((await b.balance('k', budget(1))).epsilonSpent, 0.6, 'all six charges survive a restart')
  await b.close()
  await a.close()
})

t.test('budgets survive a restart: a new accountant over the same folder sees what was spent', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const first = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  for (let i = 0; i < 3; i++) t.ok((await first.charge('alice', eps(0.1), budget(1))).ok)
  t.ok((await first.charge('bob', eps(0.4), budget(1))).ok)
  // No close(): as after a crash. Every resolved charge is already synced.
  crashLock(dir)
  const second = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  t.equal((await second.balance('alice', budget(1))).epsilonSpent, 0.3)
  t.equal((await second.balance('bob', budget(1))).epsilonLeft, 0.6)
  for (let i = 0; i < 7; i++) t.ok((await second.charge('alice', eps(0.1), budget(1))).ok)
  t.equal((await second.charge('alice', eps(0.1), budget(1))).ok, false, 'the budget spent before the restart stays spent')
  await second.close()
  await first.close()
  const third = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  t.equal((await third.balance('alice', budget(1))).epsilonSpent, 1)
  await third.close()
})

t.test('a torn last line is dropped and the journal stays usable', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const file = path.join(dir, JOURNAL_FILE)
  const a = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  await a.charge('k', eps(0.2), budget(1))
  await a.close()
  await appendFile(file, '{"t":1700000000000,"k":"k","e":3000')
  const b = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  t.equal((await b.balance('k', budget(1))).epsilonSpent, 0.2, 'the torn charge was never acknowledged: not counted')
  t.ok((await b.charge('k', eps(0.3), budget(1))).ok)
  await b.close()
  const c = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  t.equal((await c.balance('k', budget(1))).epsilonSpent, 0.5, 'charges after the tear are read back')
  await c.close()
  // A tail of zeros (file extended, data never written) is a torn tail too.
  await appendFile(file, Buffer.alloc(40))
  await appendFile(file, '\n')
  const d = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  t.equal((await d.balance('k', budget(1))).epsilonSpent, 0.5)
  await d.close()
})

t.test('a damaged line followed by intact ones stops the start (corruption, not a crash)', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const file = path.join(dir, JOURNAL_FILE)
  const a = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  for (let i = 0; i < 3; i++) await a.charge('k', eps(0.1), budget(1))
  await a.close()
  const lines = (await readFile(file, 'utf8')).split('\n')
  lines[2] = lines[2]!.replace('"e":100000', '"e":100')
  await writeFile(file, lines.join('\n'))
  await t.rejects(FileAccountant.open({ directory: dir, clock, ...noReservations }), PrivacyStateError)
  await writeFile(file, 'not a journal\n')
  await t.rejects(FileAccountant.open({ directory: dir, clock, ...noReservations }), PrivacyStateError)
})

t.test('compaction keeps the journal bounded and loses nothing live', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const b = budget(1, 10_000)
  const acct = await FileAccountant.open({ directory: dir, clock, retentionMs: 10_000, compactMinLines: 16, ...noReservations })
  let maxLines = 0
  for (let i = 0; i < 400; i++) {
    await acct.charge(`k${i % 3}`, eps(0.05), b)
    clock.advance(1_000)
    maxLines = Math.max(maxLines, acct.journalLines)
  }
  t.ok(maxLines <= 64, `the journal never exceeded ${maxLines} lines over 400 charges`)
  const live = await Promise.all([0, 1, 2].map((k) => acct.balance(`k${k}`, b)))
  await acct.close() // a compaction may still be running after the last charge resolved
  const reopened = await FileAccountant.open({ directory: dir, clock, retentionMs: 10_000, ...noReservations })
  const after = await Promise.all([0, 1, 2].map((k) => reopened.balance(`k${k}`, b)))
  t.same(after, live, 'a restart after compaction sees the same balances')
  await reopened.close()
})

/** Counts FileHandle.datasync calls in this process while `fn` runs. */
async function countingSyncs<T>(fn: (syncs: () => number) => Promise<T>): Promise<T> {
  const probe = await open(path.join(tmpdir(), `bulwark-probe-${process.pid}`), 'w')
  const proto = Object.getPrototypeOf(probe) as { datasync(): Promise<void> }
  await probe.close()
  const original = proto.datasync
  let n = 0
  proto.datasync = function (this: unknown) {
    n++
    return original.call(this)
  }
  try {
    return await fn(() => n)
  } finally {
    proto.datasync = original
  }
}

t.test('relaxed durability: a charge is in the file when it resolves, and synced within the interval', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  await countingSyncs(async (syncs) => {
    const a = await FileAccountant.open({ directory: dir, clock, durability: 'relaxed', relaxedSyncIntervalMs: 20, ...noReservations })
    const before = syncs()
    t.ok((await a.charge('k', eps(0.3), budget(1))).ok)
    t.equal((await entryLines(dir)).length, 1, 'the charge reached the file before it resolved')
    // A killed process (no close): a new accountant reads it back.
    crashLock(dir)
    const b = await FileAccountant.open({ directory: dir, clock, ...noReservations })
    t.equal((await b.balance('k', budget(1))).epsilonSpent, 0.3, 'the budget spent before the "crash" is still spent')
    await b.close()
    await clock.tick(120)
    await a.whenIdle()
    const afterInterval = syncs()
    t.ok(afterInterval > before, 'the interval synced the written charge')
    await clock.tick(120)
    await a.whenIdle()
    t.equal(syncs(), afterInterval, 'nothing written since: no more syncs')
    await a.charge('k', eps(0.1), budget(1))
    await a.close()
    t.ok(syncs() > afterInterval, 'close syncs what was written since the last sync')
  })
})

t.test('commitIntervalMs: charges made within the interval share the next write', async (t) => {
  const linesFor = async (commitIntervalMs: number) => {
    const dir = await tempDir(t)
    const clock = fakeClock()
    const a = await FileAccountant.open({ directory: dir, clock, commitIntervalMs, ...noReservations })
    // Three charges 10 ms apart (so they never share a ledger entry, and may share a line
    // only by sharing a write): the first is written at once, whatever the interval.
    await a.charge('k', eps(0.1), budget(1))
    const pending = []
    for (let i = 0; i < 2; i++) {
      pending.push(a.charge('k', eps(0.1), budget(1)))
      await clock.tick(10)
    }
    await clock.tick(commitIntervalMs)
    await Promise.all(pending)
    await a.close()
    return (await entryLines(dir)).length
  }
  t.equal(await linesFor(0), 3, 'interval 0: each charge is written as it comes')
  t.equal(await linesFor(200), 2, 'interval 200 ms: the first at once, the next two together')
})

t.test('entries older than the retention are dropped at open', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, retentionMs: HOUR, ...noReservations })
  await a.charge('k', eps(0.5), budget(1))
  await a.close()
  clock.advance(HOUR)
  const b = await FileAccountant.open({ directory: dir, clock, retentionMs: HOUR, ...noReservations })
  t.equal(b.journalLines, 2, 'only the header and a clock line are left')
  t.same(await entryLines(dir), [])
  await b.close()
})

t.test('misuse is refused', async (t) => {
  const acct = new MemoryAccountant({ clock: fakeClock(), retentionMs: HOUR })
  await t.rejects(acct.charge('k', eps(0.1), budget(1, 2 * HOUR)), RangeError, 'a window longer than the retention')
  await t.rejects(acct.charge('has space', eps(0.1), budget(1)), RangeError)
  await t.rejects(acct.charge('k', { epsilonMicros: 0.5, rhoNanos: 0 }, budget(1)), RangeError)
})

t.test('a second accountant on the same folder refuses to open; the first goes on', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  await t.rejects(FileAccountant.open({ directory: dir, clock }), FolderLockedError)
  await t.rejects(FileAccountant.open({ directory: dir, clock }), { message: /privacy journal folder .* is in use: .*\(state\.directory\)/ })
  t.ok((await a.charge('k', eps(0.1), budget(1))).ok)
  await a.close()
  const b = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  t.equal((await b.balance('k', budget(1))).epsilonSpent, 0.1, 'once closed, the next one opens it')
  await b.close()
})

t.test('a write that fails closes the journal to charges until a restart, which keeps what was on disk', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  let fail = false
  const fs = {
    ...nodeDurableFs,
    async open(file: string, flags: 'wx' | 'a', mode: number) {
      const h = await nodeDurableFs.open(file, flags, mode)
      return { ...h, write: (b: Uint8Array, o: number, n: number) => (fail ? Promise.resolve({ bytesWritten: 0 }) : h.write(b, o, n)) }
    },
  }
  const a = await FileAccountant.open({ directory: dir, clock, fs, ...noReservations })
  t.ok((await a.charge('k', eps(0.1), budget(1))).ok)
  fail = true
  await t.rejects(a.charge('k', eps(0.1), budget(1)), { name: 'PrivacyStateError', message: /cannot be written \(write made no progress/ })
  fail = false
  await t.rejects(a.charge('k', eps(0.1), budget(1)), { name: 'PrivacyStateError', message: /failed earlier.*refusing charges until restart/ })
  await a.close()
  const b = await FileAccountant.open({ directory: dir, clock, ...noReservations })
  t.equal((await b.balance('k', budget(1))).epsilonSpent, 0.1, 'the charge written before the failure survives')
  await b.close()
})

// --- the journal's format, pure ---

t.test('journal lines carry a CRC of their content: read back exactly, and any change makes a line damaged', async (t) => {
  const line = sealLine({ t: 1_700_000_000_000, k: 'alice', e: 250_000, r: 7, w: 3_600_000 })
  t.match(line, /^\{"t":1700000000000,"k":"alice","e":250000,"r":7,"w":3600000,"crc":"[0-9a-f]{8}"\}\n$/)
  t.same(parseJournalLine(line.trimEnd()), { kind: 'entry', key: 'alice', entry: { t: 1_700_000_000_000, e: 250_000, r: 7, w: 3_600_000, durable: true }, format: 2 })
  t.equal(parseJournalLine(line.trimEnd().replace('250000', '250001')), null, 'a changed digit')
  t.equal(parseJournalLine(sealLine({ t: 1, k: 'a', e: 1, r: 0, w: 1000, x: 1 }).trimEnd()), null, 'a field too many, even sealed')
  t.equal(parseJournalLine(sealLine({ t: 1, k: 'a', e: 1, r: 0, x: 1 }).trimEnd()), null, 'another field in place of the window')
  t.equal(parseJournalLine(sealLine({ t: 1, k: 'a', e: 1, r: 0, w: -1 }).trimEnd()), null, 'a negative window')
  t.equal(parseJournalLine(sealLine({ t: 1, k: 'a', e: -1, r: 0, w: 1000 }).trimEnd()), null, 'a negative cost')
  t.equal(parseJournalLine('\0\0\0'), null, 'zeros')
  t.same(parseJournalLine(sealLine({ journal: 'bulwark-privacy', version: 2 }).trimEnd()), { kind: 'header', version: 2 })
  t.same(parseJournalLine(sealLine({ clock: 5, wall: 7 }).trimEnd()), { kind: 'clock', reading: { tau: 5, wall: 7 } })
  t.same(parseJournalLine(sealLine({ t: 1, k: 'a', e: 1, r: 0 }).trimEnd()), { kind: 'entry', key: 'a', entry: { t: 1, e: 1, r: 0, w: 0, durable: true }, format: 1 }, 'a version 1 line: no window')
  for (const key of ['["jwt","https://issuer","sub \\"q\\"",""]', 'back\\slash', 'ünïcödé ✓', '\u0001control']) {
    const sealed = sealLine({ t: 2, k: key, e: 3, r: 0, w: 1000 }).trimEnd()
    t.same(parseJournalLine(sealed), { kind: 'entry', key, entry: { t: 2, e: 3, r: 0, w: 1000, durable: true }, format: 2 }, `a key with quotes, backslashes, non-ASCII or control characters reads back exactly: ${JSON.stringify(key)}`)
    t.same(parseJournalLine(Buffer.from(sealed)), parseJournalLine(sealed), 'from the bytes as from the text')
  }
  const spaced = sealLine({ t: 1, k: 'a', e: 1, r: 0, w: 1000 }).trimEnd().replace('"e":1', '"e": 1')
  t.equal(parseJournalLine(spaced), null, 'the CRC covers the exact text: a space added makes a line damaged, though it parses to the same fields')
})

t.test('entry lines sealed by hand read back as the pattern reads them: leading zeros, an empty key, numbers past 2^53 and 17 digits', async (t) => {
  const { crc32 } = await import('node:zlib')
  const seal = (body: string) => `${body.slice(0, -1)},"crc":"${crc32(body).toString(16).padStart(8, '0')}"}`
  const entry = (key: string, t: number, e: number, r: number, w: number) => ({ kind: 'entry', key, entry: { t, e, r, w, durable: true }, format: 2 })
  t.same(parseJournalLine(seal('{"t":007,"k":"a","e":0010,"r":0,"w":1000}')), entry('a', 7, 10, 0, 1000), 'leading zeros, as \\d{1,16} reads them')
  t.same(parseJournalLine(seal('{"t":1,"k":"","e":1,"r":0,"w":1000}')), entry('', 1, 1, 0, 1000), 'an empty key')
  t.same(parseJournalLine(seal('{"t":9007199254740991,"k":"b","e":1,"r":2,"w":3}')), entry('b', 2 ** 53 - 1, 1, 2, 3), '2^53 - 1, the largest safe integer')
  t.equal(parseJournalLine(seal('{"t":9999999999999999,"k":"b","e":1,"r":0,"w":3}')), null, '16 digits past 2^53')
  t.equal(parseJournalLine(seal('{"t":10000000000000000,"k":"b","e":1,"r":0,"w":3}')), null, '17 digits')
  t.equal(parseJournalLine(seal('{"t":1,"k":"b","e":,"r":0,"w":3}')), null, 'a value missing')
  t.equal(parseJournalLine(seal('{"t":1,"k":"b","e":1,"r":0,"w":3,"x":1}')), null, 'a field too many after the window')
  t.same(parseJournalLine(seal('{"t":1,"k":"tab\\there","e":1,"r":0,"w":3}')), entry('tab\there', 1, 1, 0, 3), 'an escape in the key: the pattern\'s path')
})

t.test("journalText: a key's charges within 1 s of the first of them share a line, their summed cost at the latest time and the longest window", async (t) => {
  const text = journalText([
    ['k', { t: 0, e: 1, r: 0, w: 5000 }],
    ['j', { t: 100, e: 5, r: 1, w: 1000 }],
    ['k', { t: 999, e: 2, r: 3, w: 9000 }],
    ['k', { t: 1000, e: 4, r: 0, w: 5000 }],
  ])
  const lines = text.trimEnd().split('\n').map((l) => parseJournalLine(l))
  t.same(
    lines.map((l) => (l?.kind === 'entry' ? [l.key, l.entry.t, l.entry.e, l.entry.r, l.entry.w] : null)),
    [
      ['k', 999, 3, 3, 9000],
      ['k', 1000, 4, 0, 5000],
      ['j', 100, 5, 1, 1000],
    ],
  )
})

t.test('replayJournal: the charges and the last clock line; a torn tail dropped and counted; corruption and foreign files refused with the reason', async (t) => {
  const header = sealLine({ journal: 'bulwark-privacy', version: 2 })
  const clock = sealLine({ clock: 1, wall: 3 })
  const a = sealLine({ t: 1, k: 'a', e: 10, r: 0, w: 1000 })
  const b = sealLine({ t: 2, k: 'b', e: 20, r: 0, w: 1000 })
  const good = header + clock + a + b
  t.match(replayJournal(Buffer.alloc(0)), { ok: true, entries: [], lines: 0 }, 'no journal yet')
  t.match(replayJournal(Buffer.from(good)), { ok: true, version: 2, lines: 4, droppedLines: 0, intactBytes: Buffer.byteLength(good), entries: [{ key: 'a' }, { key: 'b' }], clock: { tau: 1, wall: 3 } })
  t.equal(journalFileText([['a', { t: 1, e: 10, r: 0, w: 1000 }], ['b', { t: 2, e: 20, r: 0, w: 1000 }]], { tau: 1, wall: 3 }), good, 'the file text is the header, the clock line and the lines')
  t.match(replayJournal(Buffer.from(good + '{"t":3,"k":"c","e"')), { ok: true, lines: 4, droppedLines: 1, intactBytes: Buffer.byteLength(good) }, 'a write cut short')
  t.match(replayJournal(Buffer.from(header + a.replace('"e":10', '"e":11') + b)), { ok: false, problem: /^line 2 is damaged but later lines are intact/ })
  t.match(replayJournal(Buffer.from(header + sealLine({ t: 1, k: 'a', e: 10, r: 0 }) + b)), { ok: false, problem: /^line 2 is damaged/ }, 'a line without a window in a version 2 journal')
  t.match(replayJournal(Buffer.from('{"some":"other file"}\n')), { ok: false, problem: /first line is not a Bulwark privacy journal header/ })
  t.match(replayJournal(Buffer.from(header + a + header)), { ok: false, problem: /^line 3: a journal header in the middle/ })
  t.match(replayJournal(Buffer.from(sealLine({ journal: 'bulwark-privacy', version: 3 }))), { ok: false, problem: /journal version 3 is not supported/ })
  // Version 1: no windows, no clock lines.
  const v1 = sealLine({ journal: 'bulwark-privacy', version: 1 }) + sealLine({ t: 1, k: 'a', e: 10, r: 0 })
  t.match(replayJournal(Buffer.from(v1)), { ok: true, version: 1, clock: null, entries: [{ key: 'a', entry: { t: 1, e: 10, w: 0 } }] })
  t.match(replayJournal(Buffer.from(v1 + a)), { ok: true, droppedLines: 1 }, 'a line with a window is not a version 1 line')
  t.match(replayJournal(Buffer.from(v1 + clock)), { ok: true, droppedLines: 1 }, 'a clock line is not a version 1 line')
})

t.test('the journal settings an accountant is not given are the configuration schema\'s defaults', async (t) => {
  t.same(journalSettings({}), { durability: 'strict', relaxedSyncIntervalMs: 200, commitIntervalMs: 0, reserveFraction: 0.02, reserveLeaseMs: 1000 })
  t.match(journalSettings({ reserveFraction: 0, durability: undefined }), { reserveFraction: 0, durability: 'strict' }, 'what is given wins; undefined is not given')
})
