// Shared pieces of the durable-log tests, and of the audit and privacy tests that simulate a
// crash inside one test process.

import { readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { LOCK_FILE } from '../../src/durable/lock.ts'

/** A pid no Linux process can have: above PID_MAX_LIMIT (2^22). */
export const DEAD_PID = 4_194_304 + 1_000

/**
 * Makes a folder's lock what a killed holder leaves behind: a lock file naming a process that
 * no longer runs. The test's own open log stays open, as a crashed process's files would; the
 * next open of the folder takes the stale lock over.
 */
export function crashLock(dir: string): void {
  const file = path.join(dir, LOCK_FILE)
  const holder = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>
  writeFileSync(file, JSON.stringify({ ...holder, pid: DEAD_PID }) + '\n')
}
