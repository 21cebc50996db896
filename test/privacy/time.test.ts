// Time never frees or forgets a privacy charge early: a wall clock stepped forward (while the
// gateway runs, or while it is down), a policy whose window was shortened, a model taken out
// of service. Charges count by elapsed (monotonic) time while the gateway runs, by the wall
// clock across a restart unless it is implausibly far ahead, and each by the window it was
// charged under.

import { readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import t from 'tap'
import type { Clock, Logger } from '../../src/deps.ts'
import { ChargeClock, Ledger, MemoryAccountant, type PrivacyAccountant } from '../../src/privacy/accountant.ts'
import { FileAccountant, JOURNAL_FILE, sealLine } from '../../src/privacy/file-accountant.ts'
import { gatewayAccountant } from './gateway-accountant.ts'
import { budget, eps, fakeClock, HOUR, tempDir } from './helpers.ts'

const MINUTE = 60_000
const DAY = 24 * HOUR

/** A logger that keeps its warnings. */
function recordingLog(): { log: Logger; warnings: string[] } {
  const warnings: string[] = []
  return { log: { info() {}, error() {}, warn: (_obj, msg) => void warnings.push(msg ?? '') }, warnings }
}

type Line = Record<string, unknown>
async function journal(dir: string): Promise<Line[]> {
  return (await readFile(path.join(dir, JOURNAL_FILE), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Line)
}
const entries = async (dir: string) => (await journal(dir)).filter((l) => 'k' in l)

t.test('ChargeClock: wall time that never runs ahead of the monotonic clock, and follows the wall clock back', async (t) => {
  const clock = fakeClock()
  const steps: number[] = []
  const time = new ChargeClock(clock, undefined, (behindMs) => steps.push(behindMs))
  const t0 = clock.nowMs()
  t.equal(time.nowMs(), t0)
  clock.advance(5000)
  t.equal(time.nowMs(), t0 + 5000, 'moves with both clocks')
  clock.setWall(clock.nowMs() + HOUR)
  t.equal(time.nowMs(), t0 + 5000, 'a forward step of the wall clock alone does not move it')
  t.same(steps, [HOUR], 'the step is reported')
  clock.advance(1000)
  t.equal(time.nowMs(), t0 + 6000, 'then it goes on at the monotonic pace, an hour behind the wall clock')
  t.same(steps, [HOUR], 'reported once')
  clock.setWall(t0)
  t.equal(time.nowMs(), t0, 'a backward step: it follows the wall clock back (charges count longer, never shorter)')
  clock.advance(10)
  t.equal(time.nowMs(), t0 + 10)
  t.equal(new ChargeClock(clock, t0 + DAY).nowMs(), t0 + 10, 'it never starts ahead of the wall clock')
})

t.test('Ledger: a charge counts while its own window or the budget window lasts, and is kept while it may count', async (t) => {
  const ledger = new Ledger(MINUTE)
  ledger.add('k', { t: 0, e: 400_000, r: 0, w: HOUR, durable: true }) // charged under a 1-hour window
  ledger.add('k', { t: 10 * MINUTE, e: 300_000, r: 0, w: MINUTE, durable: true }) // under today's 1-minute window
  const at = (ms: number, cost = 0) => ledger.charge('k', eps(cost), budget(1, MINUTE), ms, false).result
  t.equal(at(10.5 * MINUTE).epsilonSpent, 0.7, 'after 10.5 minutes both count: the first by its own hour')
  t.equal(at(10.5 * MINUTE, 0.5).retryAfterMs, 30_000, 'room for 0.5 once the 1-minute charge frees')
  t.equal(at(10.5 * MINUTE, 0.7).retryAfterMs, 49.5 * MINUTE, 'room for 0.7 only once the 1-hour charge frees too')
  ledger.prune(20 * MINUTE)
  t.equal(ledger.size, 1, 'the retention (1 minute) does not drop the charge whose window is an hour')
  t.equal(at(HOUR - 1).epsilonSpent, 0.4)
  t.equal(at(HOUR).epsilonSpent, 0, 'it frees an hour after it was made')
  ledger.prune(HOUR)
  t.equal(ledger.size, 0, 'and is forgotten then')

  const longer = new Ledger(2 * HOUR)
  longer.add('k', { t: 0, e: 400_000, r: 0, w: HOUR, durable: true })
  t.equal(longer.charge('k', eps(0), budget(1, 2 * HOUR), HOUR + 1, false).result.epsilonSpent, 0.4, 'a window lengthened since holds it for the new length')
})

/** The three accountants that keep budgets in this process, each on its own folder. */
const accountants: [string, (clock: Clock, dir: string) => Promise<PrivacyAccountant>][] = [
  ['memory', async (clock) => new MemoryAccountant({ clock })],
  ['file', (clock, directory) => FileAccountant.open({ directory, clock, reserveFraction: 0 })],
  ['file with reservations', (clock, directory) => FileAccountant.open({ directory, clock, reserveFraction: 0.02 })],
]

for (const [kind, open] of accountants) {
  t.test(`${kind}: a forward step of the wall clock frees nothing early`, async (t) => {
    const clock = fakeClock()
    const acct = await open(clock, await tempDir(t))
    t.ok((await acct.charge('k', eps(1), budget(1))).ok, 'the whole hourly budget spent')
    clock.setWall(clock.nowMs() + 2 * HOUR)
    const after = await acct.charge('k', eps(0.1), budget(1))
    t.equal(after.ok, false, 'two hours on the wall clock, none elapsed: still spent')
    t.equal(after.retryAfterMs, HOUR, 'and it frees an hour of elapsed time after it was made')
    clock.advance(HOUR - 1)
    t.equal((await acct.charge('k', eps(0.1), budget(1))).ok, false, 'a millisecond before that, still spent')
    clock.advance(1)
    t.ok((await acct.charge('k', eps(0.1), budget(1))).ok, 'then free')
    await acct.close()
  })
}

t.test('a restart after a forward step of the wall clock keeps counting by elapsed time', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const { log, warnings } = recordingLog()
  const a = await FileAccountant.open({ directory: dir, clock, log, reserveFraction: 0 })
  t.ok((await a.charge('k', eps(1), budget(1))).ok)
  clock.setWall(clock.nowMs() + 2 * HOUR)
  clock.advance(MINUTE)
  t.equal((await a.balance('k', budget(1))).epsilonSpent, 1)
  t.match(warnings, [/the wall clock stepped forward/], 'the step is logged')
  await a.close()
  const b = await FileAccountant.open({ directory: dir, clock, reserveFraction: 0 })
  t.equal((await b.balance('k', budget(1))).epsilonSpent, 1, 'right after the restart, still spent: the journal recorded how far behind the wall clock it runs')
  clock.advance(HOUR - MINUTE - 1)
  t.equal((await b.balance('k', budget(1))).epsilonSpent, 1)
  clock.advance(1)
  t.equal((await b.balance('k', budget(1))).epsilonSpent, 0, 'it frees an hour of elapsed time after it was made')
  await b.close()
})

t.test('a wall clock past the journal by more than its longest window at open: held, nothing pruned, freed by elapsed time', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, retentionMs: HOUR })
  t.ok((await a.charge('k', eps(1), budget(1))).ok)
  await a.close()
  clock.setWall(clock.nowMs() + 3 * DAY) // down for three days, or a clock stepped forward: no way to tell
  const { log, warnings } = recordingLog()
  const b = await FileAccountant.open({ directory: dir, clock, retentionMs: HOUR, log })
  t.match(warnings, [/past the last record by more than the longest window.*Holding/], 'the hold is logged')
  t.equal((await entries(dir)).length, 1, 'the charge is still in the journal')
  const r = await b.charge('k', eps(0.1), budget(1))
  t.match(r, { ok: false, epsilonSpent: 1 }, 'and still counts')
  t.ok(r.retryAfterMs >= HOUR && r.retryAfterMs <= HOUR + 1000, `until an hour of elapsed time after it was made, or a lease more (${r.retryAfterMs} ms)`)
  clock.advance(HOUR + 1000)
  t.ok((await b.charge('k', eps(0.1), budget(1))).ok, 'then free')
  await b.close()
})

t.test('a restart after a downtime within the longest window: the downtime counts', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, retentionMs: HOUR, reserveFraction: 0 })
  t.ok((await a.charge('k', eps(1), budget(1))).ok)
  await a.close()
  clock.setWall(clock.nowMs() + 30 * MINUTE)
  const { log, warnings } = recordingLog()
  const b = await FileAccountant.open({ directory: dir, clock, retentionMs: HOUR, log, reserveFraction: 0 })
  t.same(warnings, [], 'no hold')
  t.match(await b.charge('k', eps(0.1), budget(1)), { ok: false, retryAfterMs: 30 * MINUTE }, 'the charge frees an hour of wall time after it was made')
  await b.close()
})

t.test('a long downtime with no charge left to free starts over at the wall clock', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, retentionMs: HOUR, reserveFraction: 0 })
  t.ok((await a.charge('k', eps(1), budget(1))).ok)
  clock.advance(2 * HOUR)
  await a.close()
  clock.setWall(clock.nowMs() + 3 * DAY)
  const { log, warnings } = recordingLog()
  const b = await FileAccountant.open({ directory: dir, clock, retentionMs: HOUR, log, reserveFraction: 0 })
  t.same(warnings, [], 'nothing to hold')
  t.ok((await b.charge('k', eps(1), budget(1))).ok)
  t.same((await entries(dir)).map((l) => l.t), [clock.nowMs()], 'the new charge is stamped with the wall clock')
  await b.close()
})

t.test('a window shortened and a restart: older charges count until their own window ends', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const a = await FileAccountant.open({ directory: dir, clock, retentionMs: 2 * HOUR, reserveFraction: 0 })
  t.ok((await a.charge('k', eps(1), budget(1, 2 * HOUR))).ok, 'the budget spent under a 2-hour window')
  clock.advance(5 * MINUTE)
  await a.close()
  // The policy now says 1 minute, and so does the retention computed from it.
  const b = await FileAccountant.open({ directory: dir, clock, retentionMs: MINUTE, reserveFraction: 0 })
  t.equal((await entries(dir)).length, 1, 'the charge is still in the journal')
  t.match(await b.charge('k', eps(0.5), budget(1, MINUTE)), { ok: false, epsilonSpent: 1, retryAfterMs: 2 * HOUR - 5 * MINUTE }, 'and counts until its 2 hours have passed')
  clock.advance(2 * HOUR - 5 * MINUTE - 1)
  t.equal((await b.charge('k', eps(0.5), budget(1, MINUTE))).ok, false)
  clock.advance(1)
  t.ok((await b.charge('k', eps(0.5), budget(1, MINUTE))).ok, 'then the 1-minute budget applies')
  await b.close()
})

t.test('a version 1 journal is read as version 1 counted it (by the budget window), and rewritten as version 2', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const header = sealLine({ journal: 'bulwark-privacy', version: 1 })
  await writeFile(path.join(dir, JOURNAL_FILE), header + sealLine({ t: clock.nowMs() - 10 * MINUTE, k: 'k', e: 600_000, r: 0 }))
  const a = await FileAccountant.open({ directory: dir, clock, retentionMs: HOUR })
  t.equal((await a.balance('k', budget(1))).epsilonSpent, 0.6)
  const lines = await journal(dir)
  t.match(lines[0], { journal: 'bulwark-privacy', version: 2 })
  t.match(await entries(dir), [{ k: 'k', e: 600_000, w: 0 }], 'the charge, with no window of its own')
  t.equal((await a.balance('k', budget(1, 5 * MINUTE))).epsilonSpent, 0, 'a 5-minute budget does not count it')
  clock.advance(50 * MINUTE)
  t.equal((await a.balance('k', budget(1))).epsilonSpent, 0, 'an hourly one until an hour after it')
  await a.close()
})

t.test('a model taken out of service and a restart: its charges are kept by their own window', async (t) => {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const windows = { a: 2 * HOUR, b: MINUTE }
  const first = await gatewayAccountant({ dir, clock, windows, served: ['a', 'b'] })
  t.ok((await first.charge('caller-of-a', eps(1), budget(1, 2 * HOUR))).ok, "a's budget spent")
  await first.close()
  clock.advance(10 * MINUTE)
  // Only b is served: the retention is b's minute.
  const second = await gatewayAccountant({ dir, clock, windows, served: ['b'] })
  await second.close()
  clock.advance(10 * MINUTE)
  const third = await gatewayAccountant({ dir, clock, windows, served: ['a', 'b'] })
  t.match(await third.balance('caller-of-a', budget(1, 2 * HOUR)), { epsilonSpent: 1 }, 'a served again: its caller has still spent its budget')
  // The journal holds a reservation, stamped at the end of its lease (1 s, the default).
  clock.advance(2 * HOUR - 20 * MINUTE + 1000 - 1)
  t.match(await third.balance('caller-of-a', budget(1, 2 * HOUR)), { epsilonSpent: 1 }, 'until its 2 hours (and the lease) have passed')
  clock.advance(1)
  t.match(await third.balance('caller-of-a', budget(1, 2 * HOUR)), { epsilonSpent: 0 })
  await third.close()
})
