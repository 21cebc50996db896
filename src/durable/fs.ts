// The file-system calls of the durable logs (src/durable/log.ts), behind an interface so tests
// can inject failures (a full disk, a revoked permission, a closed descriptor, a write that
// makes no progress) without being root, and the one place that decides what a directory
// sync that the platform does not support means.
//
// Also here, because it is read from the file system too: whether a process still runs,
// from /proc (Linux). Bulwark code outside src/cli.ts never touches the process object
// (STYLE.md habit 7), and /proc answers more than `kill(pid, 0)` would: a zombie is dead,
// and a pid that now names a later process is told apart by its start time.

import * as fsp from 'node:fs/promises'
import { platform } from 'node:os'

export interface DurableFileHandle {
  write(buffer: Uint8Array, offset: number, length: number): Promise<{ bytesWritten: number }>
  datasync(): Promise<void>
  truncate(length: number): Promise<void>
  close(): Promise<void>
}

export interface DurableFs {
  /** Creates the folder and its parents, mode 0700; an existing folder is fine. */
  mkdir(dir: string): Promise<void>
  readdir(dir: string): Promise<string[]>
  readFile(file: string): Promise<Buffer>
  stat(file: string): Promise<{ size: number; mtimeMs: number }>
  /** flags: 'wx' creates a new file (fails with EEXIST if it exists), 'a' appends. */
  open(file: string, flags: 'wx' | 'a', mode: number): Promise<DurableFileHandle>
  /**
   * Writes `data` as the whole file and fsyncs it before closing. 'w' replaces what is there;
   * 'wx' fails with EEXIST if the file exists (lock files).
   */
  writeFileSynced(file: string, data: Uint8Array, mode: number, flags: 'w' | 'wx'): Promise<void>
  rename(from: string, to: string): Promise<void>
  unlink(file: string): Promise<void>
  /** Makes a new, renamed or removed directory entry durable, where the platform can. */
  syncDir(dir: string): Promise<void>
}

/**
 * Writes all of `buf`. A write that reports no progress is an error rather than a reason to
 * try again: retrying it would spin forever on a file system that keeps answering 0.
 */
export async function writeAll(fh: Pick<DurableFileHandle, 'write'>, buf: Uint8Array): Promise<void> {
  let off = 0
  while (off < buf.length) {
    const { bytesWritten } = await fh.write(buf, off, buf.length - off)
    if (!(bytesWritten > 0)) throw new Error(`write made no progress (${off} of ${buf.length} bytes written)`)
    off += bytesWritten
  }
}

/**
 * Whether a failed directory fsync means only that this platform cannot sync a directory:
 * EISDIR and EINVAL where opening or syncing a directory is not supported, EPERM on Windows.
 * A rename there is still atomic; only its durability across a power cut is weaker.
 */
export function dirSyncUnsupported(code: string | undefined, onPlatform: string = platform()): boolean {
  return code === 'EISDIR' || code === 'EINVAL' || (code === 'EPERM' && onPlatform === 'win32')
}

type OpenDir = (dir: string) => Promise<{ sync(): Promise<void>; close(): Promise<void> }>

/** fsync of a folder; `openDir` is for tests of platforms that refuse it. */
export async function syncDirectory(dir: string, openDir: OpenDir = openForReading): Promise<void> {
  let fh: Awaited<ReturnType<OpenDir>> | undefined
  try {
    fh = await openDir(dir)
    await fh.sync()
  } catch (err) {
    if (!dirSyncUnsupported((err as NodeJS.ErrnoException).code)) throw err
  } finally {
    await fh?.close()
  }
}

/** Identifies one process across pid reuse: its pid and, where known, its start time. */
export interface ProcessIdentity {
  pid: number
  /** Opaque start stamp (clock ticks since boot on Linux), or null where unknown. */
  start: string | null
}

export interface ProcessLiveness {
  /** This process, or null where it cannot be told. */
  self(): Promise<ProcessIdentity | null>
  /** false only when certain that it no longer runs; null when it cannot be told here. */
  isRunning(p: ProcessIdentity): Promise<boolean | null>
}

/** Field 22 (starttime) and field 3 (state) of /proc/<pid>/stat; the name in field 2 may hold spaces and parentheses. */
export function parseProcStat(text: string): { state: string; start: string } | null {
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ')
  const state = fields[0]
  const start = fields[19]
  return state && start && /^\d+$/.test(start) ? { state, start } : null
}


async function openForReading(dir: string) {
  return fsp.open(dir, 'r')
}

export const procfsLiveness: ProcessLiveness = {
  async self() {
    try {
      const pid = Number(await fsp.readlink('/proc/self'))
      const stat = parseProcStat(await fsp.readFile(`/proc/${pid}/stat`, 'utf8'))
      return Number.isSafeInteger(pid) && pid > 0 ? { pid, start: stat?.start ?? null } : null
    } catch {
      return null
    }
  },
  async isRunning({ pid, start }) {
    let text: string
    try {
      text = await fsp.readFile(`/proc/${pid}/stat`, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' && (err as NodeJS.ErrnoException).code !== 'ESRCH') return null
      // No such entry: gone, unless there is no /proc to ask at all.
      return (await fsp.stat('/proc/self').then(() => true, () => false)) ? false : null
    }
    const stat = parseProcStat(text)
    if (!stat) return null
    // Z: exited, not yet reaped; X: being removed. A different start: the pid was reused.
    if (stat.state === 'Z' || stat.state === 'X') return false
    return start === null || start === stat.start
  },
}

export const nodeDurableFs: DurableFs = {
  async mkdir(dir) {
    await fsp.mkdir(dir, { recursive: true, mode: 0o700 })
  },
  readdir: (dir) => fsp.readdir(dir),
  readFile: (file) => fsp.readFile(file),
  stat: (file) => fsp.stat(file),
  async open(file, flags, mode) {
    const fh = await fsp.open(file, flags, mode)
    return {
      write: (buffer, offset, length) => fh.write(buffer, offset, length),
      datasync: () => fh.datasync(),
      truncate: (length) => fh.truncate(length),
      close: () => fh.close(),
    }
  },
  async writeFileSynced(file, data, mode, flags) {
    const fh = await fsp.open(file, flags, mode)
    try {
      await writeAll(fh, data)
      await fh.sync()
    } finally {
      await fh.close()
    }
  },
  rename: (from, to) => fsp.rename(from, to),
  unlink: (file) => fsp.unlink(file),
  syncDir: (dir) => syncDirectory(dir),
}

