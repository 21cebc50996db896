// The few file-system calls the audit writer makes, behind an interface so tests can inject
// failures (a full disk, a revoked permission, a closed descriptor) without being root.

import * as fsp from 'node:fs/promises'

export interface AuditFileHandle {
  write(buffer: Uint8Array, offset: number, length: number): Promise<{ bytesWritten: number }>
  datasync(): Promise<void>
  truncate(length: number): Promise<void>
  close(): Promise<void>
}

export interface AuditFs {
  mkdir(dir: string): Promise<void>
  readdir(dir: string): Promise<string[]>
  readFile(file: string): Promise<Buffer>
  stat(file: string): Promise<{ size: number; mtimeMs: number }>
  /** flags: 'wx' creates a new file (fails if it exists), 'a' appends to an existing one. */
  open(file: string, flags: 'wx' | 'a', mode: number): Promise<AuditFileHandle>
  /** Makes a new or renamed directory entry durable. */
  syncDir(dir: string): Promise<void>
  /** Replaces `file` atomically with `text` (write a temporary file, sync, rename). */
  replaceFile(file: string, text: string, mode: number): Promise<void>
  unlink(file: string): Promise<void>
}

export const nodeAuditFs: AuditFs = {
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
  async syncDir(dir) {
    const fh = await fsp.open(dir, 'r')
    try {
      await fh.sync()
    } finally {
      await fh.close()
    }
  },
  async replaceFile(file, text, mode) {
    const tmp = `${file}.tmp`
    const fh = await fsp.open(tmp, 'w', mode)
    try {
      await fh.writeFile(text)
      await fh.datasync()
    } finally {
      await fh.close()
    }
    await fsp.rename(tmp, file)
  },
  unlink: (file) => fsp.unlink(file),
}
