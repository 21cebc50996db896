// The durable log shared by the audit writer and the privacy journal: group commit, strict and
// relaxed sync, spaced writes, the no-progress guard, failing closed and recovering by a probe,
// atomic rewrite, the folder lock, and the file-system edge cases every platform brings
// (a directory that cannot be fsynced). On a fake clock: nothing here sleeps.

import t from 'tap'
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { FakeClock } from '../../kit/clock.ts'
import type { Logger } from '../../src/deps.ts'
import type { LogWriter } from '../../src/durable/files.ts'
import { dirSyncUnsupported, nodeDurableFs, syncDirectory, writeAll, type DurableFileHandle, type DurableFs } from '../../src/durable/fs.ts'
import { FolderLockedError } from '../../src/durable/lock.ts'
import { DurableLog, type DurableLogOptions } from '../../src/durable/log.ts'

const FILE = 'log.txt'

function folder(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-durable-'))
  t.teardown(() => rmSync(dir, { recursive: true, force: true }))
  return dir
}

function memoryLog(): Logger & { lines: { level: string; msg: string }[] } {
  const lines: { level: string; msg: string }[] = []
  const at = (level: string) => (_obj: object, msg?: string) => void lines.push({ level, msg: msg ?? '' })
  return { lines, info: at('info'), warn: at('warn'), error: at('error') }
}

function errno(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: injected`), { code })
}

/** The real file system, recording what happens in order, with failures on command. */
function scriptedFs() {
  const fs = {
    events: [] as string[],
    /** 'half': a write takes half its bytes, then fails (a full disk); 'zero': it reports 0 bytes written. */
    write: 'ok' as 'ok' | 'half' | 'zero',
    failSync: false,
    failRename: false,
    failOpen: false,
    ...nodeDurableFs,
    async open(file: string, flags: 'wx' | 'a', mode: number): Promise<DurableFileHandle> {
      if (fs.failOpen) throw errno('EMFILE')
      const inner = await nodeDurableFs.open(file, flags, mode)
      return {
        async write(buffer, offset, length) {
          fs.events.push('write')
          if (fs.write === 'zero') return { bytesWritten: 0 }
          if (fs.write === 'half') {
            await inner.write(buffer, offset, Math.floor(length / 2))
            throw errno('ENOSPC')
          }
          return inner.write(buffer, offset, length)
        },
        async datasync() {
          fs.events.push('datasync')
          if (fs.failSync) throw errno('EIO')
          return inner.datasync()
        },
        truncate: (n) => inner.truncate(n),
        close: () => inner.close(),
      }
    },
    async rename(from: string, to: string) {
      if (fs.failRename) throw errno('EXDEV')
      return nodeDurableFs.rename(from, to)
    },
  } satisfies DurableFs & Record<string, unknown>
  return fs
}

interface Opts {
  dir: string
  clock?: FakeClock
  fs?: DurableFs
  log?: Logger
  over?: Partial<DurableLogOptions<string>>
  /** Rewrites the file with its lines so far after every batch (as compaction does). */
  compact?: boolean
}

/** A log of text lines: one line per item, the file continued across opens. */
function lineLog(o: Opts): DurableLog<string> {
  const load = async (w: LogWriter) => {
    const size = await w.fs.stat(path.join(o.dir, FILE)).then((s) => s.size, () => null)
    await (size === null ? w.create(FILE) : w.continueFile(FILE, size))
  }
  return new DurableLog<string>({
    directory: o.dir,
    purpose: { what: 'test log', setting: 'test.directory', risk: 'two writers would interleave their lines' },
    durability: 'strict',
    relaxedSyncIntervalMs: 100,
    commitIntervalMs: 0,
    retryMs: 50,
    messages: { failing: 'test log failing', recovered: 'test log recovered' },
    clock: o.clock ?? new FakeClock(),
    log: o.log ?? memoryLog(),
    fs: o.fs,
    format: {
      load,
      commit: async (items, w) => {
        if (items.length > 0) await w.append(Buffer.from(items.map((i) => i + '\n').join('')))
      },
      // As the journal compacts: a failure before the rename leaves the old file in use; one
      // after it has lost the old file, and fails the log.
      afterCommit: o.compact
        ? async (w) => {
            const kept = linesOf(o.dir).filter((l) => !l.startsWith('#'))
            let renamed = false
            try {
              await w.rewrite(FILE, Buffer.from(['# compacted', ...kept].map((l) => l + '\n').join('')), () => (renamed = true))
            } catch (err) {
              if (renamed) throw err
            }
          }
        : undefined,
      probe: () => 'probe',
      unavailable: (reason) => Object.assign(new Error(`unavailable: ${reason}`), { code: 'test_unavailable' }),
    },
    ...o.over,
  })
}

const linesOf = (dir: string) => readFileSync(path.join(dir, FILE), 'utf8').split('\n').slice(0, -1)

t.test('group commit: what arrives during a write shares the next one, and each item resolves once on disk', async (t) => {
  const dir = folder(t)
  const fs = scriptedFs()
  const log = lineLog({ dir, fs })
  await log.start()
  const seenAtResolve: number[] = []
  await Promise.all(Array.from({ length: 40 }, (_, i) => log.submit(`item ${i}`).then(() => seenAtResolve.push(linesOf(dir).includes(`item ${i}`) ? 1 : 0))))
  t.same(linesOf(dir), Array.from({ length: 40 }, (_, i) => `item ${i}`), 'in submission order')
  t.ok(seenAtResolve.every((x) => x === 1), 'every item was in the file when its promise resolved')
  t.ok(log.stats.batches <= 3, `40 items in ${log.stats.batches} batches`)
  await log.close()
})

t.test('strict: the write is synced before the caller hears of it', async (t) => {
  const dir = folder(t)
  const fs = scriptedFs()
  const log = lineLog({ dir, fs })
  await log.start()
  fs.events.length = 0
  await log.submit('a').then(() => fs.events.push('acknowledged'))
  t.same(fs.events, ['write', 'datasync', 'acknowledged'])
  await log.close()
})

t.test('relaxed: acknowledged once written, synced on the interval, and at close', async (t) => {
  const dir = folder(t)
  const fs = scriptedFs()
  const clock = new FakeClock()
  const log = lineLog({ dir, fs, clock, over: { durability: 'relaxed' } })
  await log.start()
  fs.events.length = 0
  await log.submit('a')
  t.same(fs.events, ['write'], 'no sync before the acknowledgement')
  t.same(linesOf(dir), ['a'], 'but the line is in the file (a killed process keeps it)')
  await clock.tick(99)
  await log.whenIdle()
  t.same(fs.events, ['write'], 'not before the interval')
  await clock.tick(1)
  await log.whenIdle()
  t.same(fs.events, ['write', 'datasync'], 'synced when the interval came')
  await clock.tick(300)
  await log.whenIdle()
  t.same(fs.events, ['write', 'datasync'], 'nothing new: no more syncs')
  await log.submit('b')
  await log.close()
  t.same(fs.events, ['write', 'datasync', 'write', 'datasync'], 'close syncs what the interval had not')
})

t.test('commitIntervalMs: writes start at least that far apart; what comes meanwhile shares the next', async (t) => {
  const dir = folder(t)
  const fs = scriptedFs()
  const clock = new FakeClock()
  const log = lineLog({ dir, fs, clock, over: { commitIntervalMs: 50 } })
  await log.start()
  fs.events.length = 0
  await log.submit('first')
  const later = [log.submit('second')]
  await clock.tick(20)
  later.push(log.submit('third'))
  await clock.tick(29)
  t.equal(fs.events.filter((e) => e === 'write').length, 1, '49 ms after the first write: still one')
  await clock.tick(1)
  await Promise.all(later)
  t.equal(fs.events.filter((e) => e === 'write').length, 2, 'at 50 ms, one write for both')
  t.same(linesOf(dir), ['first', 'second', 'third'])
  await log.close()
})

t.test('a write that makes no progress fails the batch instead of spinning', async (t) => {
  const dir = folder(t)
  const fs = scriptedFs()
  const log = lineLog({ dir, fs, over: { retryMs: null } })
  await log.start()
  fs.write = 'zero'
  await t.rejects(log.submit('a'), { code: 'test_unavailable', message: /write made no progress \(0 of 2 bytes written\)/ })
  t.equal(fs.events.filter((e) => e === 'write').length, 1, 'one attempt, no loop')
  t.match(log.failure?.reason, /no progress/)
  await log.close()
})

t.test('writeAll goes on after a short write and stops at a write of nothing', async (t) => {
  const chunks: number[] = []
  await writeAll({ write: async (_b, _o, length) => (chunks.push(length), { bytesWritten: Math.min(3, length) }) }, Buffer.alloc(7))
  t.same(chunks, [7, 4, 1], 'short writes continue where they stopped')
  await t.rejects(writeAll({ write: async () => ({ bytesWritten: 0 }) }, Buffer.alloc(1)), /no progress/)
  await t.rejects(writeAll({ write: async () => ({ bytesWritten: -1 }) }, Buffer.alloc(1)), /no progress/)
})

t.test('failing closed: callers are refused at once and the failure logged once; a probe cuts the half-written batch off and recovers', async (t) => {
  const dir = folder(t)
  const fs = scriptedFs()
  const clock = new FakeClock()
  const log = memoryLog()
  const dl = lineLog({ dir, fs, clock, log })
  await dl.start()
  await dl.submit('kept')
  fs.write = 'half'
  await t.rejects(dl.submit('a line that only half reaches the disk'), { code: 'test_unavailable', message: /ENOSPC/ })
  t.match(readFileSync(path.join(dir, FILE), 'utf8'), /^kept\na line that/, 'half a line is on disk')
  const writes = fs.events.filter((e) => e === 'write').length
  await t.rejects(dl.submit('refused'), { code: 'test_unavailable' })
  t.equal(fs.events.filter((e) => e === 'write').length, writes, 'refused without touching the disk')
  for (let i = 0; i < 3; i++) {
    await clock.tick(50)
    await dl.whenIdle()
  }
  t.equal(log.lines.filter((l) => l.level === 'error').length, 1, 'logged once, not per probe')
  fs.write = 'ok'
  await clock.tick(50)
  await dl.whenIdle()
  t.equal(dl.failure, null, 'recovered')
  t.same(log.lines.map((l) => l.msg), ['test log failing', 'test log recovered'])
  t.same(linesOf(dir), ['kept', 'probe'], 'the half line was cut off before the probe wrote')
  await dl.submit('after')
  await dl.close()
  t.same(linesOf(dir), ['kept', 'probe', 'after'])
})

t.test('without retryMs a failed log stays failed until restarted', async (t) => {
  const dir = folder(t)
  const fs = scriptedFs()
  const clock = new FakeClock()
  const dl = lineLog({ dir, fs, clock, over: { retryMs: null } })
  await dl.start()
  fs.failSync = true
  await t.rejects(dl.submit('a'), { code: 'test_unavailable', message: /EIO/ })
  fs.failSync = false
  t.equal(clock.pendingTimers, 0, 'no probe')
  await clock.tick(10_000)
  await t.rejects(dl.submit('b'), { code: 'test_unavailable' })
  await dl.close()
})

t.test('rewrite replaces the file atomically; a failure before the rename keeps the old one in use, one after it fails the log', async (t) => {
  const dir = folder(t)
  const fs = scriptedFs()
  const log = memoryLog()
  const dl = lineLog({ dir, fs, log, compact: true })
  await dl.start()
  await dl.submit('a')
  await dl.whenIdle()
  t.same(linesOf(dir), ['# compacted', 'a'], 'rewritten after the batch')
  await dl.submit('b')
  await dl.whenIdle()
  t.same(linesOf(dir), ['# compacted', 'a', 'b'], 'appends go to the new file')
  fs.failRename = true
  await dl.submit('c')
  await dl.whenIdle()
  t.same(readdirSync(dir).sort(), ['bulwark.lock', FILE], 'a rewrite that failed before its rename leaves no temporary file')
  await dl.submit('d')
  await dl.whenIdle()
  t.same(linesOf(dir), ['# compacted', 'a', 'b', 'c', 'd'], 'the old file stayed whole and in use')
  t.equal(dl.failure, null)
  fs.failRename = false
  fs.failOpen = true
  await dl.submit('e')
  await dl.whenIdle()
  t.match(dl.failure?.reason, /EMFILE/, 'replaced, but the new file cannot be opened: the log fails closed')
  t.same(linesOf(dir), ['# compacted', 'a', 'b', 'c', 'd', 'e'], 'the new file is whole')
  await t.rejects(dl.submit('f'), { code: 'test_unavailable' })
  fs.failOpen = false
  await dl.close()
})

t.test('a directory fsync the platform does not support is tolerated (EISDIR, EINVAL; EPERM on Windows); other errors fail', async (t) => {
  const refusing = (code: string) => async () => ({
    sync: async () => {
      throw errno(code)
    },
    close: async () => {},
  })
  await syncDirectory('/x', refusing('EISDIR'))
  await syncDirectory('/x', refusing('EINVAL'))
  t.pass('EISDIR and EINVAL: the platform cannot sync a directory; the rename stays atomic')
  await t.rejects(syncDirectory('/x', refusing('EIO')), { code: 'EIO' }, 'EIO is a real failure')
  const openRefused = async () => {
    throw errno('EISDIR')
  }
  await syncDirectory('/x', openRefused)
  t.pass('also when opening the directory is what the platform refuses')
  t.same(
    ['EISDIR', 'EINVAL', 'EPERM', 'EPERM', 'EIO', 'EACCES'].map((code, i) => dirSyncUnsupported(code, i === 3 ? 'win32' : 'linux')),
    [true, true, false, true, false, false],
    'EPERM only on Windows',
  )
})

t.test('the log locks its folder: a second log there refuses to start, and close releases it', async (t) => {
  const dir = folder(t)
  const first = lineLog({ dir })
  await first.start()
  const second = lineLog({ dir })
  await t.rejects(second.start(), FolderLockedError)
  await second.close()
  await first.close()
  t.notOk(existsSync(path.join(dir, 'bulwark.lock')), 'released')
  const third = lineLog({ dir })
  await third.start()
  await third.submit('x')
  await third.close()
  await t.rejects(third.submit('after close'), { message: /the test log is closed/ })
})

t.test('a folder that cannot be created: a probing log starts failed and recovers when it can', async (t) => {
  const base = folder(t)
  const dir = path.join(base, 'blocked')
  const { writeFileSync, unlinkSync } = await import('node:fs')
  writeFileSync(dir, 'a file where the folder should be')
  const clock = new FakeClock()
  const dl = lineLog({ dir, clock })
  await t.rejects(dl.start(), { code: /EEXIST|ENOTDIR/ })
  t.match(dl.failure?.reason, /EEXIST|ENOTDIR/)
  unlinkSync(dir)
  await clock.tick(50)
  await dl.whenIdle()
  t.equal(dl.failure, null, 'the probe created, locked and loaded the folder')
  t.same(linesOf(dir), ['probe'])
  await dl.close()
})
