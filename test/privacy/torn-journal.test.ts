// Fault injection: a crash can cut the journal anywhere after its last synced byte. Whatever
// byte it is cut at, with reservations and compaction on, the journal read back never shows
// less spent than the answers released while the file was no longer than that.

import { mkdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import t, { type Test } from 'tap'
import { FileAccountant, JOURNAL_FILE } from '../../src/privacy/file-accountant.ts'
import { budget, eps, fakeClock, tempDir } from './helpers.ts'

const WINDOW_MS = 10_000
const KEYS = ['a', 'b', 'c']

interface Released {
  key: string
  t: number
  e: number
}

/** The file as it was when some answers had been released: which file, how long, how many answers. */
interface Snapshot {
  file: string
  size: number
  released: number
}

/**
 * Which journal file this is: every rewrite (at open, at compaction) starts a new file with the
 * header and a clock line of that moment, so the clock line names the file (an inode number may
 * be reused by the next file at once).
 */
function fileOf(bytes: Buffer): string {
  return bytes.toString('utf8').split('\n')[1]!
}

/** Charges, cuts the journal at every byte of its last lines, and reads each cut back. */
async function cutEverywhere(t: Test, reserveFraction: number): Promise<void> {
  const dir = await tempDir(t)
  const clock = fakeClock()
  const b = budget(100, WINDOW_MS)
  const options = { clock, retentionMs: WINDOW_MS, reserveFraction, reserveLeaseMs: 1000, compactMinLines: 16 }
  const acct = await FileAccountant.open({ directory: dir, ...options })
  const file = path.join(dir, JOURNAL_FILE)
  const released: Released[] = []
  const snapshots: Snapshot[] = []
  const files = new Set<string>()
  // Three callers at different rates over six minutes of 10-second windows: reservations
  // grow, run out and lapse, old lines die and the journal is compacted. Charges of a step run
  // concurrently, so one write can carry several lines.
  // Then on until the file has 8 lines since it was last rewritten: the bytes cut below.
  const lastLines = 8
  let linesSinceRewrite = 0
  for (let step = 0; step < 300 || linesSinceRewrite < lastLines; step++) {
    const pending = KEYS.flatMap((key, i) =>
      Array.from({ length: (step % (i + 2)) + (i === 0 ? 3 : 0) }, async () => {
        const at = clock.nowMs()
        const r = await acct.charge(key, eps(0.25), b)
        if (r.ok) released.push({ key, t: at, e: 250_000 })
      }),
    )
    await Promise.all(pending)
    await acct.whenIdle()
    const now = await readFile(file)
    files.add(fileOf(now))
    snapshots.push({ file: fileOf(now), size: now.length, released: released.length })
    const rewritten = snapshots.find((s) => s.file === fileOf(now))!
    linesSinceRewrite = now.subarray(rewritten.size).toString('utf8').split('\n').length - 1
    // A second or more apart, so that no two steps share a line (a shared line frees later: slack).
    clock.advance(step % 7 === 6 ? 2500 : 1000)
  }
  const bytes = await readFile(file)
  const last = fileOf(bytes)
  t.ok(files.size > 3, `the journal was compacted (${files.size - 1} times)`)
  const lines = bytes.toString('utf8').trimEnd().split('\n')
  if (reserveFraction > 0) t.ok(lines.some((l) => (JSON.parse(l) as { e?: number }).e! > 250_000), 'some lines are reservations of several answers')

  // Valid crash states: the current file cut at any byte since its rewrite (earlier bytes were
  // synced before it was renamed into place), as the last lines are. Cut at o, the answers
  // released while it was no longer than o must all be covered.
  const from = bytes.length - lines.slice(-lastLines).join('\n').length - 1
  const copy = path.join(dir, 'copy')
  await mkdir(copy)
  const shortfalls: string[] = []
  for (let o = from; o <= bytes.length; o++) {
    const before = snapshots.filter((s) => s.file !== last || s.size <= o).at(-1)!
    await writeFile(path.join(copy, JOURNAL_FILE), bytes.subarray(0, o))
    const reread = await FileAccountant.open({ directory: copy, ...options })
    for (const key of KEYS) {
      const owed = released.slice(0, before.released).filter((r) => r.key === key && r.t > clock.nowMs() - WINDOW_MS)
      const owedMicros = owed.reduce((s, r) => s + r.e, 0)
      const spentMicros = Math.round((await reread.balance(key, b)).epsilonSpent * 1e6)
      if (spentMicros < owedMicros) shortfalls.push(`cut at byte ${o}: ${key} released ${owedMicros / 1e6} in the window, read back ${spentMicros / 1e6}`)
    }
    await reread.close()
  }
  t.same(shortfalls, [], `cut at each of the last ${bytes.length - from + 1} bytes (${lastLines} lines), every released answer is still charged`)
  await acct.close()
}

// With reservations (a line covers answers to come, so most cuts leave some to spare) and
// without (a line per write of charges, so a cut leaves none).
for (const reserveFraction of [0.05, 0]) {
  t.test(`a journal cut at any byte of its last lines never reads back less spending than was released (reserveFraction ${reserveFraction})`, (t) => cutEverywhere(t, reserveFraction))
}
