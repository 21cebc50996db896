// Shared pieces of the audit tests: temp folders, a test signing key, a memory logger, an
// audit writer with test-sized settings, a file system that fails on command, and readers.

import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { KeyObject } from 'node:crypto'
import { cryptoRandom, type Logger } from '../../src/deps.ts'
import { FakeClock } from '../../kit/clock.ts'
import { nodeAuditFs, type AuditFileHandle, type AuditFs } from '../../src/audit/fs.ts'
import { generateSigningKey, type SigningKey } from '../../src/audit/keys.ts'
import { sortAuditFiles } from '../../src/audit/chain.ts'
import { AuditWriter, type AuditWriterOptions } from '../../src/audit/writer.ts'

const created: string[] = []
/** A fresh folder under the OS temp dir, removed when the test process exits. */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), `bulwark-audit-${prefix}-`))
  created.push(dir)
  return dir
}
process.on('exit', () => {
  for (const dir of created) rmSync(dir, { recursive: true, force: true })
})

export const testKey: SigningKey = generateSigningKey(cryptoRandom)
export const publicKeys: KeyObject[] = [testKey.publicKey]

export interface LogEntry {
  level: 'info' | 'warn' | 'error'
  obj: object
  msg: string | undefined
}

export function memoryLogger(): Logger & { entries: LogEntry[] } {
  const entries: LogEntry[] = []
  return {
    entries,
    info: (obj, msg) => entries.push({ level: 'info', obj, msg }),
    warn: (obj, msg) => entries.push({ level: 'warn', obj, msg }),
    error: (obj, msg) => entries.push({ level: 'error', obj, msg }),
  }
}

/**
 * Test-sized settings on a fake clock that starts at the real time (file ages and names stay
 * plausible) and moves only when a test ticks it: no timer fires, and nothing sleeps, unless
 * the test says so. Pass `clock` to tick it.
 */
export function writerOptions(directory: string, over: Partial<AuditWriterOptions> = {}): AuditWriterOptions {
  return {
    directory,
    durability: 'strict',
    relaxedSyncIntervalMs: 50,
    maxFileBytes: 64 * 1024 * 1024,
    maxFileAgeMs: 0,
    retentionMaxTotalBytes: 0,
    retentionMaxAgeMs: 0,
    checkpointEveryRecords: 1000,
    checkpointEveryMs: 60_000,
    retryMs: 50,
    key: testKey,
    clock: new FakeClock(Date.now()),
    random: cryptoRandom,
    log: memoryLogger(),
    ...over,
  }
}

export async function startWriter(directory: string, over: Partial<AuditWriterOptions> = {}): Promise<AuditWriter> {
  const w = new AuditWriter(writerOptions(directory, over))
  await w.start()
  return w
}

/** Moves the writer's fake clock and waits until the batches that its timers started are done. */
export async function tickWriter(clock: FakeClock, w: AuditWriter, ms: number): Promise<void> {
  await clock.tick(ms)
  await w.whenIdle()
}

/** A record body like the gateway's, small. */
export const body = (i: number, extra: Record<string, unknown> = {}) => JSON.stringify({ type: 'request', id: `r${i}`, status: 200, ...extra })

function errno(code: string): NodeJS.ErrnoException {
  const e = new Error(`${code}: injected failure`) as NodeJS.ErrnoException
  e.code = code
  return e
}

/**
 * The real file system, with switches: `fail` makes writes, syncs and opens throw that errno
 * code (ENOSPC: disk full, EACCES: permission revoked); `handles` are the open files, so a
 * test can close one behind the writer's back. Counts calls.
 */
export function faultyFs(): AuditFs & { fail: string | null; failOnly: 'write' | 'datasync' | null; handles: AuditFileHandle[]; writes: number; syncs: number; opens: number } {
  const fs = {
    fail: null as string | null,
    failOnly: null as 'write' | 'datasync' | null,
    handles: [] as AuditFileHandle[],
    writes: 0,
    syncs: 0,
    opens: 0,
    ...nodeAuditFs,
    async open(file: string, flags: 'wx' | 'a', mode: number): Promise<AuditFileHandle> {
      fs.opens++
      if (fs.fail && fs.failOnly === null) throw errno(fs.fail)
      const inner = await nodeAuditFs.open(file, flags, mode)
      const handle: AuditFileHandle = {
        async write(buffer, offset, length) {
          fs.writes++
          if (fs.fail && fs.failOnly !== 'datasync') {
            // A full disk takes part of the batch before it refuses the rest.
            await inner.write(buffer, offset, Math.floor(length / 2))
            throw errno(fs.fail)
          }
          return inner.write(buffer, offset, length)
        },
        async datasync() {
          fs.syncs++
          if (fs.fail && fs.failOnly !== 'write') throw errno(fs.fail)
          return inner.datasync()
        },
        truncate: (n) => inner.truncate(n),
        close: () => inner.close(),
      }
      fs.handles.push(inner)
      return handle
    },
    async syncDir(dir: string) {
      if (fs.fail && fs.failOnly === null) throw errno(fs.fail)
      return nodeAuditFs.syncDir(dir)
    },
  }
  return fs
}

export interface Line {
  file: string
  line: number
  text: string
  rec: Record<string, unknown>
}

/** Every complete line of every audit file in a folder, parsed. */
export function readAudit(dir: string): Line[] {
  const out: Line[] = []
  for (const name of sortAuditFiles(readdirSync(dir))) {
    const text = readFileSync(path.join(dir, name), 'utf8')
    const lines = text.split('\n')
    lines.pop() // after the last newline: empty, or a torn line
    lines.forEach((l, i) => out.push({ file: name, line: i + 1, text: l, rec: JSON.parse(l) as Record<string, unknown> }))
  }
  return out
}

export const requestRecords = (dir: string) => readAudit(dir).filter((l) => l.rec.type === 'request')

export const auditFiles = (dir: string) => sortAuditFiles(readdirSync(dir))
