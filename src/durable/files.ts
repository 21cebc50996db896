// The file a durable log appends to, and the ways it changes: a new file (rotation), a file
// replaced by a rewrite (compaction), a side file replaced whole (the audit head). Used by
// DurableLog (src/durable/log.ts), which runs one batch at a time, so nothing here races.
//
// Every replacement is atomic: write a temporary file, fsync it, rename it over the old one,
// fsync the folder (so the rename survives a power cut). At every instant either the old or
// the new file is complete under its name. Every new directory entry is synced the same way.

import path from 'node:path'
import type { Clock, Logger } from '../deps.ts'
import { writeAll, type DurableFileHandle, type DurableFs } from './fs.ts'

/** Log files are private to the gateway's user. */
export const FILE_MODE = 0o600

export type Durability = 'strict' | 'relaxed'

export interface CurrentFile {
  name: string
  path: string
  /** Bytes acknowledged to callers; after a failure the file is cut back to this. */
  size: number
  openedAtMs: number
}

/** What a log format (the audit writer, the privacy journal) may do to its files. */
export interface LogWriter {
  readonly directory: string
  readonly fs: DurableFs
  /** The file appended to; null before the first create/continueFile, or when it was lost. */
  readonly current: Readonly<CurrentFile> | null
  /** Starts a new file (O_EXCL: EEXIST if the name is taken); the previous one is synced and closed. */
  create(name: string): Promise<void>
  /** Appends to an existing file whose first `size` bytes are intact. */
  continueFile(name: string, size: number): Promise<void>
  /**
   * Appends `bytes` in full (one batch: at most one append per batch). Synced before it
   * returns when durability is strict or `sync` asks; otherwise by the periodic sync.
   */
  append(bytes: Uint8Array, sync?: boolean): Promise<void>
  /**
   * Replaces the file `name` atomically with `bytes` and appends to it from then on.
   * `onRenamed` runs once the new file is in place: a failure after it has lost the old file.
   */
  rewrite(name: string, bytes: Uint8Array, onRenamed?: () => void): Promise<void>
  /** Replaces a file beside the log atomically (not appended to). */
  replaceSideFile(name: string, bytes: Uint8Array): Promise<void>
}

interface Open extends CurrentFile {
  /** null after a failure, until reopenIfLost. */
  fh: DurableFileHandle | null
}

const noop = () => {}

/** Write a temporary file, fsync, rename over `name`, fsync the folder. */
export async function replaceAtomically(fs: DurableFs, directory: string, name: string, bytes: Uint8Array, onRenamed?: () => void): Promise<void> {
  const file = path.join(directory, name)
  const tmp = `${file}.tmp`
  try {
    await fs.writeFileSynced(tmp, bytes, FILE_MODE, 'w')
    await fs.rename(tmp, file)
  } catch (err) {
    await fs.unlink(tmp).catch(noop)
    throw err
  }
  onRenamed?.()
  await fs.syncDir(directory)
}

export class LogFiles implements LogWriter {
  readonly directory: string
  readonly fs: DurableFs
  readonly #strict: boolean
  readonly #clock: Clock
  readonly #log: Logger
  readonly #what: string
  #current: Open | null = null
  /** Written but not yet synced (relaxed durability). */
  dirty = false
  syncs = 0

  constructor(o: { directory: string; fs: DurableFs; durability: Durability; clock: Clock; log: Logger; what: string }) {
    this.directory = o.directory
    this.fs = o.fs
    this.#strict = o.durability === 'strict'
    this.#clock = o.clock
    this.#log = o.log
    this.#what = o.what
  }

  get current(): Readonly<CurrentFile> | null {
    return this.#current
  }

  /** A failure let go of the current file's handle: reopenIfLost before the next append. */
  get lost(): boolean {
    return this.#current !== null && this.#current.fh === null
  }

  async create(name: string): Promise<void> {
    await this.#closeCurrent()
    const file = path.join(this.directory, name)
    const fh = await this.fs.open(file, 'wx', FILE_MODE)
    this.#current = { name, path: file, fh, size: 0, openedAtMs: this.#clock.nowMs() }
    await this.fs.syncDir(this.directory)
  }

  async continueFile(name: string, size: number): Promise<void> {
    await this.#closeCurrent()
    const file = path.join(this.directory, name)
    const fh = await this.fs.open(file, 'a', FILE_MODE)
    this.#current = { name, path: file, fh, size, openedAtMs: this.#clock.nowMs() }
  }

  async append(bytes: Uint8Array, sync = false): Promise<void> {
    const cur = this.#current
    if (!cur?.fh) throw new Error(`${this.#what}: no file is open for appending`)
    await writeAll(cur.fh, bytes)
    if (this.#strict || sync) await this.#datasync(cur.fh)
    else this.dirty = true
    cur.size += bytes.length
  }

  /** Syncs what relaxed durability left unsynced. */
  async sync(): Promise<void> {
    const fh = this.#current?.fh
    if (this.dirty && fh) await this.#datasync(fh)
  }

  async rewrite(name: string, bytes: Uint8Array, onRenamed?: () => void): Promise<void> {
    const old = this.#current?.fh ?? null
    await replaceAtomically(this.fs, this.directory, name, bytes, () => {
      // From here the old handle appends to a file that is no longer in the folder.
      this.#current = null
      this.dirty = false
      onRenamed?.()
    })
    try {
      const file = path.join(this.directory, name)
      const fh = await this.fs.open(file, 'a', FILE_MODE)
      this.#current = { name, path: file, fh, size: bytes.length, openedAtMs: this.#clock.nowMs() }
    } finally {
      await old?.close().catch(noop)
    }
  }

  replaceSideFile(name: string, bytes: Uint8Array): Promise<void> {
    return replaceAtomically(this.fs, this.directory, name, bytes)
  }

  /** After a failure: lets go of the handle (what it wrote last is suspect); the file stays current. */
  drop(): void {
    const fh = this.#current?.fh
    if (this.#current) this.#current.fh = null
    this.dirty = false
    fh?.close().catch(noop)
  }

  /**
   * Reopens the current file after a failure and cuts off what the failed batch may have left
   * (a partial line, or lines the disk never got), so appends go on from an intact end. A file
   * that vanished or shrank meanwhile is given up: the format starts a new one.
   */
  async reopenIfLost(): Promise<void> {
    const cur = this.#current
    if (!cur || cur.fh) return
    const st = await this.fs.stat(cur.path).catch(() => null)
    if (!st || st.size < cur.size) {
      this.#log.error({ file: cur.path }, `${this.#what} file vanished or shrank while it could not be written; continuing in a new file`)
      this.#current = null
      return
    }
    const fh = await this.fs.open(cur.path, 'a', FILE_MODE)
    try {
      await fh.truncate(cur.size)
      await fh.datasync()
    } catch (err) {
      await fh.close().catch(noop)
      throw err
    }
    cur.fh = fh
  }

  /** Closes the current file (syncing what relaxed durability left); nothing is current after. */
  async close(): Promise<void> {
    await this.#closeCurrent()
  }

  async #closeCurrent(): Promise<void> {
    const cur = this.#current
    if (!cur) return
    // A failed sync leaves the file current: recovery cuts it back and goes on in it.
    if (cur.fh && this.dirty) await this.#datasync(cur.fh)
    this.#current = null
    this.dirty = false
    await cur.fh?.close()
  }

  async #datasync(fh: DurableFileHandle): Promise<void> {
    await fh.datasync()
    this.syncs++
    this.dirty = false
  }
}
