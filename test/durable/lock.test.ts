// The folder lock of the durable logs: one process per audit or state folder. A second open
// (in this process, or in another real process) is refused with a message that names the
// folder, the holder and what to do; a lock left by a process that no longer runs is taken
// over; release removes only the lock its holder wrote.

import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { hostname, tmpdir } from 'node:os'
import path from 'node:path'
import { FakeClock } from '../../kit/clock.ts'
import type { Logger } from '../../src/deps.ts'
import { nodeDurableFs, parseProcStat, procfsLiveness, type ProcessLiveness } from '../../src/durable/fs.ts'
import { FolderLockedError, LOCK_FILE, lockFolder, type LockOptions } from '../../src/durable/lock.ts'
import { DurableLog } from '../../src/durable/log.ts'
import { crashLock, DEAD_PID } from './helpers.ts'

const hasProc = existsSync('/proc/self/stat')
const purpose = { what: 'test log', setting: 'test.directory', risk: 'two writers would interleave their lines' }

function folder(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-lock-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function memoryLog(): Logger & { warnings: string[] } {
  const warnings: string[] = []
  return { warnings, info() {}, error() {}, warn: (_obj, msg) => void warnings.push(msg ?? '') }
}

function options(dir: string, over: Partial<LockOptions> = {}): LockOptions {
  return { directory: dir, purpose, fs: nodeDurableFs, liveness: procfsLiveness, clock: new FakeClock(), log: memoryLog(), ...over }
}

/** A lock file as another holder would have written it. */
function writeLock(dir: string, holder: { pid: number | null; start?: string | null; host?: string }, name = LOCK_FILE): void {
  const text = JSON.stringify({ pid: holder.pid, start: holder.start ?? null, host: holder.host ?? hostname(), since: '2030-01-01T00:00:00.000Z', n: 1 })
  writeFileSync(path.join(dir, name), text + '\n')
}

const lockText = (dir: string) => readFileSync(path.join(dir, LOCK_FILE), 'utf8')

t.test('the lock file names its holder, and release removes it', { skip: !hasProc && 'needs /proc' }, async (t) => {
  const dir = folder(t)
  const lock = await lockFolder(options(dir))
  const holder = JSON.parse(lockText(dir)) as { pid: number; start: string; host: string; since: string }
  t.equal(holder.pid, process.pid)
  t.match(holder.start, /^\d+$/, 'with its start time, so a reused pid is told apart')
  t.equal(holder.host, hostname())
  t.equal(holder.since, '2030-01-01T00:00:00.000Z', 'taken at the clock time')
  await lock.release()
  t.notOk(existsSync(path.join(dir, LOCK_FILE)))
  await lock.release()
  t.pass('release is idempotent')
})

t.test('a second open of the folder in this process is refused, naming the folder and what to do', async (t) => {
  const dir = folder(t)
  const lock = await lockFolder(options(dir))
  const err = await lockFolder(options(dir)).then(
    () => null,
    (e: unknown) => e,
  )
  t.type(err, FolderLockedError)
  const message = (err as Error).message
  t.match(message, `the test log folder ${dir} is in use: this process already has it open`)
  t.match(message, 'two writers would interleave their lines')
  t.match(message, 'Stop the other process, or give this one a folder of its own (test.directory)')
  t.match(message, `delete ${path.join(dir, LOCK_FILE)}`)
  t.equal((err as FolderLockedError).directory, dir)
  await lock.release()
  const again = await lockFolder(options(dir))
  t.pass('free again once released')
  await again.release()
})

t.test('the same folder reached by another path (a symlink) is still this process\'s', async (t) => {
  const dir = folder(t)
  const link = path.join(folder(t), 'link')
  symlinkSync(dir, link)
  const lock = await lockFolder(options(dir))
  await t.rejects(lockFolder(options(link)), { name: 'FolderLockedError', message: /this process already has it open/ })
  await lock.release()
})

t.test('two opens at the same moment: one gets the folder, the other is refused', async (t) => {
  const dir = folder(t)
  const results = await Promise.allSettled([lockFolder(options(dir)), lockFolder(options(dir))])
  t.equal(results.filter((r) => r.status === 'fulfilled').length, 1)
  t.type((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason, FolderLockedError)
  for (const r of results) if (r.status === 'fulfilled') await r.value.release()
})

t.test('a lock left by a process that no longer runs is taken over, and said so', { skip: !hasProc && 'needs /proc' }, async (t) => {
  const dir = folder(t)
  writeLock(dir, { pid: DEAD_PID, start: '12345' })
  const log = memoryLog()
  const lock = await lockFolder(options(dir, { log }))
  t.equal((JSON.parse(lockText(dir)) as { pid: number }).pid, process.pid, 'the lock is ours now')
  t.match(log.warnings, [/took over the lock of a process that no longer runs/])
  await lock.release()
})

t.test('a pid that now names another process (pid reuse) does not hold the folder', { skip: !hasProc && 'needs /proc' }, async (t) => {
  const dir = folder(t)
  // The parent (the test runner) runs, but started at another time than the lock says.
  writeLock(dir, { pid: process.ppid, start: '1' })
  const lock = await lockFolder(options(dir))
  t.pass('taken over')
  await lock.release()
  // Our own pid with another start: an earlier process that had it (a restarted container, pid 1 again).
  writeLock(dir, { pid: process.pid, start: '1' })
  const mine = await lockFolder(options(dir))
  t.pass('taken over')
  await mine.release()
})

t.test('a running holder is refused with its pid', { skip: !hasProc && 'needs /proc' }, async (t) => {
  const dir = folder(t)
  const start = parseProcStat(readFileSync(`/proc/${process.ppid}/stat`, 'utf8'))!.start
  writeLock(dir, { pid: process.ppid, start })
  await t.rejects(lockFolder(options(dir)), { name: 'FolderLockedError', message: new RegExp(`in use: another process holds it \\(pid ${process.ppid} on host `) })
  t.ok(existsSync(path.join(dir, LOCK_FILE)), 'and its lock stays')
})

t.test('what cannot be told is refused: another host, an unreadable lock, a platform without /proc', async (t) => {
  const dir = folder(t)
  writeLock(dir, { pid: 4242, host: 'elsewhere.example' })
  await t.rejects(lockFolder(options(dir)), { message: /pid 4242 on host elsewhere\.example.*: another host; from .* it cannot be told whether that process still runs/ })
  writeFileSync(path.join(dir, LOCK_FILE), 'not a lock')
  await t.rejects(lockFolder(options(dir)), { message: /another process may hold it: its lock file .* cannot be read as a Bulwark lock/ })
  const blind: ProcessLiveness = { self: async () => null, isRunning: async () => null }
  writeLock(dir, { pid: 4242 })
  await t.rejects(lockFolder(options(dir, { liveness: blind })), { message: /pid 4242 .*: this platform cannot tell whether that process still runs/ })
})

t.test('release leaves alone a lock that another holder took over', async (t) => {
  const dir = folder(t)
  const first = await lockFolder(options(dir))
  crashLock(dir) // as if the first holder had been judged dead
  const second = await lockFolder(options(dir))
  const secondText = lockText(dir)
  await first.release()
  t.equal(lockText(dir), secondText, "the first holder's release keeps the second's lock")
  await second.release()
  t.notOk(existsSync(path.join(dir, LOCK_FILE)))
})

t.test('a takeover left half-done by a dead process is finished; one in progress elsewhere is refused', { skip: !hasProc && 'needs /proc' }, async (t) => {
  const dir = folder(t)
  writeLock(dir, { pid: DEAD_PID })
  writeLock(dir, { pid: DEAD_PID }, LOCK_FILE + '.takeover')
  const lock = await lockFolder(options(dir))
  t.notOk(existsSync(path.join(dir, LOCK_FILE + '.takeover')), 'the dead taker’s guard is gone')
  await lock.release()

  writeLock(dir, { pid: DEAD_PID })
  writeLock(dir, { pid: process.ppid }, LOCK_FILE + '.takeover')
  await t.rejects(lockFolder(options(dir)), { message: /another process is taking over its stale lock right now/ })
})

// --- two real processes ---

/** Starts a process that opens a durable log on `dir`; resolves once it holds the folder. */
function holder(dir: string): Promise<ChildProcess> {
  const child = spawn(process.execPath, [path.join(import.meta.dirname, 'fixtures', 'hold-log.ts'), dir], { stdio: ['ignore', 'pipe', 'pipe'] })
  let err = ''
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()))
  return new Promise((resolve, reject) => {
    child.stdout!.on('data', (c: Buffer) => {
      if (c.toString().startsWith('open ')) resolve(child)
    })
    child.once('exit', (code) => reject(new Error(`the holder exited (${code}) before it held the folder: ${err}`)))
  })
}

const exited = (child: ChildProcess) => new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)))

function testLog(dir: string, log: Logger = memoryLog()): DurableLog<string> {
  return new DurableLog<string>({
    directory: dir,
    purpose,
    durability: 'strict',
    relaxedSyncIntervalMs: 200,
    commitIntervalMs: 0,
    retryMs: null,
    messages: { failing: 'test log failed' },
    clock: new FakeClock(),
    log,
    format: { load: (w) => w.create('log-parent.txt'), commit: async () => {}, unavailable: (reason) => new Error(reason) },
  })
}

// Real processes: the waits here are for a child's output and exit (events), never a sleep.
t.test('another process holds the folder: refused with its pid; once it is killed, its stale lock is taken over', { skip: !hasProc && 'needs /proc' }, async (t) => {
  const dir = folder(t)
  const child = await holder(dir)
  t.teardown(() => void child.kill('SIGKILL'))
  const refused = testLog(dir)
  await t.rejects(refused.start(), {
    name: 'FolderLockedError',
    message: new RegExp(`^the test log folder ${dir} is in use: another process holds it \\(pid ${child.pid} on host .*\\)\\. .*Stop the other process`),
  })
  await refused.close()
  t.ok(existsSync(path.join(dir, LOCK_FILE)), "the refused open left the holder's lock alone")

  const gone = exited(child)
  child.kill('SIGKILL')
  await gone
  t.equal((JSON.parse(lockText(dir)) as { pid: number }).pid, child.pid, 'a killed holder leaves its lock behind')
  const log = memoryLog()
  const after = testLog(dir, log)
  await after.start()
  t.match(log.warnings, [/took over the lock of a process that no longer runs/])
  await after.close()
  t.notOk(existsSync(path.join(dir, LOCK_FILE)), 'close releases it')
})

t.test('a holder that closes (SIGTERM) releases the folder for the next process', { skip: !hasProc && 'needs /proc' }, async (t) => {
  const dir = folder(t)
  const child = await holder(dir)
  const done = exited(child)
  child.kill('SIGTERM')
  t.equal(await done, 0)
  t.notOk(existsSync(path.join(dir, LOCK_FILE)), 'no lock left')
  const next = await holder(dir)
  const nextDone = exited(next)
  next.kill('SIGTERM')
  t.equal(await nextDone, 0, 'the next process opened it and closed it')
})
