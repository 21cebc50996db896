// The file accountant's reservations (charge ahead): one durable line covers several
// answers of a busy caller, and whatever moment a crash picks, the journal read back shows
// at least what was released, stamped no earlier, and at most one reservation more.

import { readFile } from 'node:fs/promises'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import { costFits } from '../../src/privacy/accountant.ts'
import { FileAccountant, JOURNAL_FILE, reservationSize } from '../../src/privacy/file-accountant.ts'
import { calibrateGaussian, scaleCost } from '../../src/privacy/mechanisms.ts'
import { crashLock } from '../durable/helpers.ts'
import { budget, eps, fakeClock, HOUR, tempDir } from './helpers.ts'

type Line = { t: number; k: string; e: number; r: number; w: number }
/** The journal's charge lines (not the header, not the clock lines). */
function journalLines(dir: string): Line[] {
  return readFileSync(path.join(dir, JOURNAL_FILE), 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Line)
    .filter((l) => 'k' in l)
}

t.test('a busy caller: reservations double while they run out within their lease, up to the fraction of the budget', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, reserveFraction: 0.05, reserveLeaseMs: 1000 })
  // ε 0.01 per answer, budget 100: the cap is 5 ε = 500 answers per line.
  let accepted = 0
  for (let i = 0; i < 2000; i++) {
    if ((await a.charge('k', eps(0.01), budget(100))).ok) accepted++
    if (i % 10 === 9) clock.advance(1)
  }
  t.equal(accepted, 2000)
  const lines = journalLines(dir)
  t.same(
    lines.map((l) => l.e / 10_000),
    [1, 2, 4, 8, 16, 32, 64, 128, 256, 500, 500, 500],
    'answers per line: 1, 2, 4, ... then capped at 500',
  )
  t.equal(lines.length, 12, '12 writes for 2,000 answers')
  const start = 1_700_000_000_000
  t.equal(lines[0]!.t, start + 1000, 'each line is stamped at the end of its lease')
  const sum = lines.reduce((s, l) => s + l.e, 0)
  t.ok(sum >= 2000 * 10_000 && sum < 2000 * 10_000 + 500 * 10_000, `the lines hold what was charged plus at most one reservation (${sum / 1e6} ε for 20 ε charged)`)
  await a.close()
})

t.test('an answer is released only once a durable line covers it, whenever the crash comes', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, reserveFraction: 0.1 })
  const releasedOf = new Map<string, number>()
  const violations: string[] = []
  // Waves of concurrent charges by 3 callers: some draw on a reservation still being written.
  for (let wave = 0; wave < 20; wave++) {
    const pending = []
    for (let i = 0; i < 16; i++) {
      const key = `k${i % 3}`
      const at = clock.nowMs()
      pending.push(
        a.charge(key, eps(0.01), budget(100)).then((res) => {
          if (!res.ok) violations.push(`wave ${wave}: a charge of ${key} was refused`)
          const released = (releasedOf.get(key) ?? 0) + 1
          releasedOf.set(key, released)
          // What the disk holds at this moment, as a new process would read it after a crash.
          const onDisk = journalLines(dir).filter((l) => l.k === key)
          if (!onDisk.some((l) => l.t >= at)) violations.push(`wave ${wave}: an answer made at ${at} released with no line stamped at or after it`)
          const total = onDisk.reduce((s, l) => s + l.e, 0)
          if (total < released * 10_000) violations.push(`wave ${wave}: ${released} answers of ${key} released, its lines hold ${total / 10_000}`)
        }),
      )
    }
    await Promise.all(pending)
    clock.advance(wave % 4 === 3 ? 1500 : 100) // now and then a lease runs out
  }
  t.same(violations, [], 'the journal covered every released answer at the moment it was released')
  t.equal([...releasedOf.values()].reduce((s, n) => s + n, 0), 320)
  await a.close()
})

t.test('after a restart nothing released is forgotten, and the rest of the last reservation is the only loss', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, reserveFraction: 0.02 })
  for (let i = 0; i < 37; i++) t.ok((await a.charge('alice', eps(0.1), budget(100))).ok)
  const before = (await a.balance('alice', budget(100))).epsilonSpent
  t.equal(before, 3.7, 'decisions use the exact charges, not the reservations')
  // No close(): as after a crash.
  crashLock(dir)
  const b = await FileAccountant.open({ directory: dir, clock, reserveFraction: 0.02 })
  const after = (await b.balance('alice', budget(100))).epsilonSpent
  t.ok(after >= before, `spent after the restart (${after}) is at least what was spent before (${before})`)
  t.ok(after <= before + 2, `and at most one reservation (2% of the budget) more (${after})`)
  // The lines are stamped up to a lease late: the budget frees no earlier than it would have.
  clock.advance(HOUR - 1)
  t.ok((await b.balance('alice', budget(100))).epsilonSpent > 0, 'one ms before the first charges would expire, they still count')
  clock.advance(1001)
  t.equal((await b.balance('alice', budget(100))).epsilonSpent, 0, 'one lease after that, all of it has freed')
  await b.close()
  await a.close()
})

t.test('a reservation never exceeds what the window has left, so refusals come at the same total', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, reserveFraction: 0.25 })
  let accepted = 0
  for (let i = 0; i < 20; i++) if ((await a.charge('k', eps(1), budget(10))).ok) accepted++
  t.equal(accepted, 10, 'exactly the budget: 10 answers of ε 1')
  const total = journalLines(dir).reduce((s, l) => s + l.e, 0)
  t.equal(total, 10_000_000, 'and the lines hold exactly ε 10: no reservation reached past the budget')
  await a.close()
  const b = await FileAccountant.open({ directory: dir, clock, reserveFraction: 0.25 })
  t.equal((await b.charge('k', eps(1), budget(10))).ok, false, 'after a restart the budget is still spent')
  await b.close()
})

t.test('a caller that slows down gets reservations sized to what the last one served', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, reserveFraction: 0.5, reserveLeaseMs: 1000 })
  for (let i = 0; i < 7; i++) await a.charge('k', eps(0.01), budget(100)) // lines of 1, 2, 4 answers
  clock.advance(2000) // the third line's lease (4 answers, all used: 1 + 2 + 4 = 7) is over
  for (let i = 0; i < 3; i++) {
    await a.charge('k', eps(0.01), budget(100))
    clock.advance(400)
  }
  // 3 answers in 1.2 s: the fourth line (sized 4 after a full lease) covers the first 3 within its lease.
  clock.advance(2000)
  await a.charge('k', eps(0.01), budget(100))
  const sizes = journalLines(dir).map((l) => l.e / 10_000)
  t.same(sizes, [1, 2, 4, 4, 3], 'after an expired lease the next is sized to what the last one served')
  await a.close()
  const text = await readFile(path.join(dir, JOURNAL_FILE), 'utf8')
  t.match(text, /^\{"journal":"bulwark-privacy","version":2,/, 'the journal is of version 2')
})

t.test('without reservations (reserveFraction 0) every charge is written as before', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, reserveFraction: 0 })
  for (let i = 0; i < 5; i++) {
    await a.charge('k', eps(0.1), budget(1))
    clock.advance(2000)
  }
  t.same(
    journalLines(dir).map((l) => l.e),
    [100_000, 100_000, 100_000, 100_000, 100_000],
    'one line per charge, of its exact cost',
  )
  await a.close()
})

t.test("an accountant opened without journal settings takes the configuration's defaults: reservations on", async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock })
  for (let i = 0; i < 3; i++) await a.charge('k', eps(0.1), budget(100))
  t.same(
    journalLines(dir).map((l) => l.e / 100_000),
    [1, 2],
    'reserveFraction 0.02, as the gateway config says by default: a line of 1 answer, then one of 2',
  )
  await a.close()
})

t.test('reservationSize: 1 for a new caller, doubling within the lease, what was served after it, capped by the fraction and what is left', async (t) => {
  const now = 10_000
  const cost = eps(0.01)
  const b = budget(100)
  const size = (last: { until: number; size: number; served: number } | undefined, left = 100, fraction = 0.05) => reservationSize(last, now, cost, b, left, fraction)
  t.equal(size(undefined), 1, 'a new caller')
  t.equal(size({ until: now, size: 8, served: 8 }), 16, 'ran out within its lease: twice as many')
  t.equal(size({ until: now - 1, size: 8, served: 3 }), 3, 'lease over: what the last one served')
  t.equal(size({ until: now - 1, size: 8, served: 0 }), 1, 'never less than this answer')
  t.equal(size({ until: now, size: 4096, served: 4096 }), 500, 'at most reserveFraction (5% of 100 = 5 ε = 500 answers)')
  t.equal(size({ until: now, size: 64, served: 64 }, 0.02), 3, 'at most this answer and what is left after it (0.02 ε: 2 more)')
  const g = calibrateGaussian(0.25, 1e-6, 16).cost
  const n = reservationSize({ until: now, size: 1024, served: 1024 }, now, g, b, 100, 0.02)
  const cap = { ...b, epsilonMicros: Math.floor(b.epsilonMicros * 0.02) }
  t.ok(n >= 1 && costFits(scaleCost(g, n), cap), `zCDP answers: ${n} fit in the cap together`)
})
