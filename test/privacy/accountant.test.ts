import { appendFile, open, readFile, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { Ledger, MemoryAccountant, type PrivacyBudget } from '../../src/privacy/accountant.ts'
import { FileAccountant, JOURNAL_FILE, PrivacyStateError } from '../../src/privacy/file-accountant.ts'
import { calibrateGaussian, epsilonForRho, rhoFor, RHO_UNITS } from '../../src/privacy/mechanisms.ts'
import { budget, eps, fakeClock, HOUR, tempDir } from './helpers.ts'

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
  const acct = await FileAccountant.open({ directory: dir, clock: fakeClock() })
  const results = await Promise.all(Array.from({ length: 25 }, () => acct.charge('k', eps(0.1), budget(1))))
  t.equal(results.filter((r) => r.ok).length, 10)
  await acct.close()
  const lines = (await readFile(path.join(dir, JOURNAL_FILE), 'utf8')).trim().split('\n')
  const onDisk = lines.slice(1).reduce((sum, l) => sum + (JSON.parse(l) as { e: number }).e, 0)
  t.equal(onDisk, 1_000_000, 'the ten accepted charges, and only those, are on disk (1 ε)')
  t.ok(lines.length < 11, `charges written together share lines (${lines.length - 1} lines for 10 charges)`)
})

t.test('merged journal lines free their cost no earlier than the charges they merge, and at most 1 s later', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const t0 = clock.nowMs()
  const b = budget(1, 10_000)
  const a = await FileAccountant.open({ directory: dir, clock })
  // The first charge starts a write; everything charged while it runs goes into the next.
  const pending = [a.charge('other', eps(0.1), b)]
  for (let i = 0; i < 4; i++) {
    pending.push(a.charge('k', eps(0.1), b)) // at t0, +200, +400, +600 ms
    clock.advance(200)
  }
  clock.set(t0 + 2_000)
  pending.push(a.charge('k', eps(0.1), b), a.charge('k', eps(0.1), b))
  t.ok((await Promise.all(pending)).every((r) => r.ok))
  await a.close()
  const lines = (await readFile(path.join(dir, JOURNAL_FILE), 'utf8')).trim().split('\n').slice(1)
  const kLines = lines.map((l) => JSON.parse(l) as { t: number; k: string; e: number }).filter((l) => l.k === 'k')
  t.same(kLines.map((l) => [l.t - t0, l.e]), [[600, 400_000], [2_000, 200_000]], 'one line per key and second, at the latest time of its charges')
  const reopened = await FileAccountant.open({ directory: dir, clock })
  t.equal((await reopened.balance('k', b)).epsilonSpent, 0.6, 'the whole cost survives the restart')
  clock.set(t0 + 10_000)
  t.equal((await reopened.balance('k', b)).epsilonSpent, 0.6, 'the first charge of a merged line does not free at its own time')
  clock.set(t0 + 10_600)
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
  const a = await FileAccountant.open({ directory: dir, clock })
  const first = a.charge('k', eps(0.1), budget(1)) // taken by a write at once
  const more = Array.from({ length: 5 }, () => a.charge('k', eps(0.1), budget(1))) // same ms, next write
  t.ok((await Promise.all([first, ...more])).every((r) => r.ok))
  const lines = (await readFile(path.join(dir, JOURNAL_FILE), 'utf8')).trim().split('\n').slice(1)
  t.same(lines.map((l) => (JSON.parse(l) as { e: number }).e), [100_000, 500_000], 'one line for the first write, one for the five that waited')
  const b = await FileAccountant.open({ directory: dir, clock })
  t.equal((await b.balance('k', budget(1))).epsilonSpent, 0.6, 'all six charges survive a restart')
  await b.close()
  await a.close()
})

t.test('budgets survive a restart: a new accountant over the same folder sees what was spent', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const first = await FileAccountant.open({ directory: dir, clock })
  for (let i = 0; i < 3; i++) t.ok((await first.charge('alice', eps(0.1), budget(1))).ok)
  t.ok((await first.charge('bob', eps(0.4), budget(1))).ok)
  // No close(): as after a crash. Every resolved charge is already synced.
  const second = await FileAccountant.open({ directory: dir, clock })
  t.equal((await second.balance('alice', budget(1))).epsilonSpent, 0.3)
  t.equal((await second.balance('bob', budget(1))).epsilonLeft, 0.6)
  for (let i = 0; i < 7; i++) t.ok((await second.charge('alice', eps(0.1), budget(1))).ok)
  t.equal((await second.charge('alice', eps(0.1), budget(1))).ok, false, 'the budget spent before the restart stays spent')
  await second.close()
  await first.close()
  const third = await FileAccountant.open({ directory: dir, clock })
  t.equal((await third.balance('alice', budget(1))).epsilonSpent, 1)
  await third.close()
})

t.test('a torn last line is dropped and the journal stays usable', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const file = path.join(dir, JOURNAL_FILE)
  const a = await FileAccountant.open({ directory: dir, clock })
  await a.charge('k', eps(0.2), budget(1))
  await a.close()
  await appendFile(file, '{"t":1700000000000,"k":"k","e":3000')
  const b = await FileAccountant.open({ directory: dir, clock })
  t.equal((await b.balance('k', budget(1))).epsilonSpent, 0.2, 'the torn charge was never acknowledged: not counted')
  t.ok((await b.charge('k', eps(0.3), budget(1))).ok)
  await b.close()
  const c = await FileAccountant.open({ directory: dir, clock })
  t.equal((await c.balance('k', budget(1))).epsilonSpent, 0.5, 'charges after the tear are read back')
  await c.close()
  // A tail of zeros (file extended, data never written) is a torn tail too.
  await appendFile(file, Buffer.alloc(40))
  await appendFile(file, '\n')
  const d = await FileAccountant.open({ directory: dir, clock })
  t.equal((await d.balance('k', budget(1))).epsilonSpent, 0.5)
  await d.close()
})

t.test('a damaged line followed by intact ones stops the start (corruption, not a crash)', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const file = path.join(dir, JOURNAL_FILE)
  const a = await FileAccountant.open({ directory: dir, clock })
  for (let i = 0; i < 3; i++) await a.charge('k', eps(0.1), budget(1))
  await a.close()
  const lines = (await readFile(file, 'utf8')).split('\n')
  lines[2] = lines[2]!.replace('"e":100000', '"e":100')
  await writeFile(file, lines.join('\n'))
  await t.rejects(FileAccountant.open({ directory: dir, clock }), PrivacyStateError)
  await writeFile(file, 'not a journal\n')
  await t.rejects(FileAccountant.open({ directory: dir, clock }), PrivacyStateError)
})

t.test('compaction keeps the journal bounded and loses nothing live', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const b = budget(1, 10_000)
  const acct = await FileAccountant.open({ directory: dir, clock, retentionMs: 10_000, compactMinLines: 16 })
  let maxLines = 0
  for (let i = 0; i < 400; i++) {
    await acct.charge(`k${i % 3}`, eps(0.05), b)
    clock.advance(1_000)
    maxLines = Math.max(maxLines, acct.journalLines)
  }
  t.ok(maxLines <= 64, `the journal never exceeded ${maxLines} lines over 400 charges`)
  const live = await Promise.all([0, 1, 2].map((k) => acct.balance(`k${k}`, b)))
  await acct.close() // a compaction may still be running after the last charge resolved
  const reopened = await FileAccountant.open({ directory: dir, clock, retentionMs: 10_000 })
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
    const a = await FileAccountant.open({ directory: dir, clock, durability: 'relaxed', relaxedSyncIntervalMs: 20 })
    const before = syncs()
    t.ok((await a.charge('k', eps(0.3), budget(1))).ok)
    const lines = (await readFile(path.join(dir, JOURNAL_FILE), 'utf8')).trim().split('\n')
    t.equal(lines.length, 2, 'the charge reached the file before it resolved')
    // A killed process (no close): a new accountant reads it back.
    const b = await FileAccountant.open({ directory: dir, clock })
    t.equal((await b.balance('k', budget(1))).epsilonSpent, 0.3, 'the budget spent before the "crash" is still spent')
    await b.close()
    await new Promise((r) => setTimeout(r, 120))
    const afterInterval = syncs()
    t.ok(afterInterval > before, 'the interval synced the written charge')
    await new Promise((r) => setTimeout(r, 120))
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
    const a = await FileAccountant.open({ directory: dir, clock, commitIntervalMs })
    // Three charges 10 ms apart in real time, at the same wall time (so they may merge).
    const pending = []
    for (let i = 0; i < 3; i++) {
      pending.push(a.charge('k', eps(0.1), budget(1)))
      await new Promise((r) => setTimeout(r, 10))
    }
    await Promise.all(pending)
    await a.close()
    return (await readFile(path.join(dir, JOURNAL_FILE), 'utf8')).trim().split('\n').length - 1
  }
  t.equal(await linesFor(0), 3, 'interval 0: each charge is written as it comes')
  t.equal(await linesFor(200), 2, 'interval 200 ms: the first at once, the next two together')
})

t.test('entries older than the retention are dropped at open', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, retentionMs: HOUR })
  await a.charge('k', eps(0.5), budget(1))
  await a.close()
  clock.advance(HOUR)
  const b = await FileAccountant.open({ directory: dir, clock, retentionMs: HOUR })
  t.equal(b.journalLines, 1, 'only the header is left')
  await b.close()
})

t.test('misuse is refused', async (t) => {
  const acct = new MemoryAccountant({ clock: fakeClock(), retentionMs: HOUR })
  await t.rejects(acct.charge('k', eps(0.1), budget(1, 2 * HOUR)), RangeError, 'a window longer than the retention')
  await t.rejects(acct.charge('has space', eps(0.1), budget(1)), RangeError)
  await t.rejects(acct.charge('k', { epsilonMicros: 0.5, rhoNanos: 0 }, budget(1)), RangeError)
})
