// One process per folder. Two gateways appending to the same audit folder would fork its hash
// chain; two sharing a privacy journal would each miss the other's charges and overspend. So
// a durable log holds an exclusive lock on its folder for as long as it is open, and a second
// process (or a second open in the same process) refuses to start, saying who holds it.
//
// The lock is a file, `bulwark.lock`, created with O_EXCL ('wx') and holding the holder's pid,
// its start time (from /proc where there is one), the host name and when it was taken.
// Advisory locks (flock, fcntl) are not reachable from Node without a native module, and a
// lock file also tells the operator who holds the folder. Its weakness is the holder that dies
// without removing it (SIGKILL, OOM kill, power cut); such a lock is stale and is taken over
// when, on the same host, its pid no longer runs, names a later process (pid reuse: another
// start time), or is this process's own pid without this process holding the lock (a
// restarted container, where the gateway is pid 1 again). What cannot be told (a holder on
// another host sharing the volume, a platform without /proc, an unreadable lock file) is
// refused, with what to do: stop the other process, give this one its own folder, or delete
// the lock file if nothing else uses the folder.
//
// Taking over a stale lock is serialised by a second O_EXCL file, `bulwark.lock.takeover`: two
// processes that both find the same stale lock cannot both replace it (each would otherwise
// remove the lock the other just made). Within one process, acquisitions run one at a time.
// Release removes the lock file only if it is still the one this holder wrote.

import { hostname } from 'node:os'
import path from 'node:path'
import type { Clock, Logger } from '../deps.ts'
import type { DurableFs, ProcessIdentity, ProcessLiveness } from './fs.ts'

export const LOCK_FILE = 'bulwark.lock'
const GUARD_SUFFIX = '.takeover'

/** What uses a folder, for the refusal: which setting names it and what sharing it would break. */
export interface LockPurpose {
  /** e.g. 'audit log' */
  what: string
  /** The configuration setting that names the folder, e.g. 'audit.directory'. */
  setting: string
  /** Why two processes must not share it, as a clause: 'two writers would fork the hash chain'. */
  risk: string
}

/** What a lock file says about its holder. */
export interface LockHolder {
  pid: number | null
  start: string | null
  host: string
  since: string
}

/** A folder that another process (or another open in this one) holds. */
export class FolderLockedError extends Error {
  override name = 'FolderLockedError'
  readonly directory: string
  readonly holder: LockHolder | null

  constructor(message: string, directory: string, holder: LockHolder | null) {
    super(message)
    this.directory = directory
    this.holder = holder
  }
}

export interface FolderLock {
  readonly file: string
  /** Removes the lock file if it is still ours; idempotent. */
  release(): Promise<void>
}

export interface LockOptions {
  /** Absolute folder, already created. */
  directory: string
  purpose: LockPurpose
  fs: DurableFs
  liveness: ProcessLiveness
  clock: Clock
  log: Logger
}

/**
 * Lock files this process wrote and still holds, by path. Each text is unique to its
 * acquisition (the counter `n`), so an open of our own is recognised by its text even when it
 * reached the folder by another path (a symlink).
 */
const heldHere = new Map<string, string>()
let acquisitions = 0
let serial: Promise<unknown> = Promise.resolve()

/** Takes the folder's lock, or throws FolderLockedError naming who holds it and what to do. */
export function lockFolder(o: LockOptions): Promise<FolderLock> {
  const run = serial.then(() => acquire(o))
  serial = run.catch(() => {})
  return run
}

async function acquire(o: LockOptions): Promise<FolderLock> {
  const file = path.join(o.directory, LOCK_FILE)
  const me = await o.liveness.self()
  const text = JSON.stringify({ pid: me?.pid ?? null, start: me?.start ?? null, host: hostname(), since: new Date(o.clock.nowMs()).toISOString(), n: ++acquisitions }) + '\n'
  // A few rounds: the lock may change hands between our look and our move.
  for (let round = 0; round < 4; round++) {
    if (await createExclusive(o.fs, file, text)) return held(o.fs, file, text)
    const found = await readLock(o.fs, file)
    if (found === null) continue // released between our attempt and our look
    const refusal = await refusalFor(o, file, found, me)
    if (refusal) throw refusal
    if (await takeOver(o, file, found.text, text, me)) {
      o.log.warn({ directory: o.directory, stale: found.holder }, `${o.purpose.what}: took over the lock of a process that no longer runs`)
      return held(o.fs, file, text)
    }
  }
  throw refuse(o, file, null, 'its lock kept changing hands while this process tried to take it')
}

function held(fs: DurableFs, file: string, text: string): FolderLock {
  heldHere.set(file, text)
  let released = false
  return {
    file,
    async release() {
      if (released) return
      released = true
      if (heldHere.get(file) === text) heldHere.delete(file)
      const now = await readLock(fs, file)
      // Taken over meanwhile (we were judged dead): the lock is someone else's now.
      if (now?.text === text) await fs.unlink(file).catch(ignoreMissing)
    },
  }
}

async function createExclusive(fs: DurableFs, file: string, text: string): Promise<boolean> {
  try {
    await fs.writeFileSynced(file, Buffer.from(text, 'utf8'), 0o600, 'wx')
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw err
  }
}

/** The lock file's text and holder (null holder: unreadable), or null when there is none. */
async function readLock(fs: DurableFs, file: string): Promise<{ text: string; holder: LockHolder | null } | null> {
  let text: string
  try {
    text = (await fs.readFile(file)).toString('utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
  return { text, holder: parseHolder(text) }
}

export function parseHolder(text: string): LockHolder | null {
  try {
    const o = JSON.parse(text) as Record<string, unknown>
    const pid = o.pid === null || (Number.isSafeInteger(o.pid) && (o.pid as number) > 0) ? (o.pid as number | null) : undefined
    const start = o.start === null || typeof o.start === 'string' ? (o.start as string | null) : undefined
    if (pid === undefined || start === undefined || typeof o.host !== 'string' || typeof o.since !== 'string') return null
    return { pid, start, host: o.host, since: o.since }
  } catch {
    return null
  }
}

/** Whether the holder is certainly gone: null when it runs or cannot be told. */
async function gone(o: LockOptions, holder: LockHolder | null, me: ProcessIdentity | null): Promise<boolean | null> {
  if (!holder || holder.host !== hostname() || holder.pid === null) return null
  // Our pid, but not our lock (heldHere was checked first): an earlier process with this pid.
  if (me && holder.pid === me.pid) return me.start === null || holder.start !== me.start
  const running = await o.liveness.isRunning({ pid: holder.pid, start: holder.start })
  return running === null ? null : !running
}

/** Why the folder cannot be had, or null when its lock is stale and may be taken over. */
async function refusalFor(o: LockOptions, file: string, found: { text: string; holder: LockHolder | null }, me: ProcessIdentity | null): Promise<FolderLockedError | null> {
  const h = found.holder
  if ([...heldHere.values()].includes(found.text)) return refuse(o, file, h, 'this process already has it open')
  if (!h) return refuse(o, file, null, `another process may hold it: its lock file ${file} cannot be read as a Bulwark lock`)
  const isGone = await gone(o, h, me)
  if (isGone) return null
  const who = `pid ${h.pid ?? 'unknown'} on host ${h.host}, since ${h.since}`
  if (isGone === false) return refuse(o, file, h, `another process holds it (${who})`)
  const why = h.host !== hostname() ? `another host; from ${hostname()} it cannot be told whether that process still runs` : 'this platform cannot tell whether that process still runs'
  return refuse(o, file, h, `another process holds it (${who}): ${why}`)
}

function refuse(o: LockOptions, file: string, holder: LockHolder | null, who: string): FolderLockedError {
  return new FolderLockedError(
    `the ${o.purpose.what} folder ${o.directory} is in use: ${who}. One process per folder: ${o.purpose.risk}. ` +
      `Stop the other process, or give this one a folder of its own (${o.purpose.setting}). ` +
      `If no other Bulwark process uses ${o.directory}, delete ${file} and start again.`,
    o.directory,
    holder,
  )
}

/** Replaces the stale lock `staleText` with ours, under the takeover guard. false: look again. */
async function takeOver(o: LockOptions, file: string, staleText: string, text: string, me: ProcessIdentity | null): Promise<boolean> {
  const guard = file + GUARD_SUFFIX
  if (!(await createExclusive(o.fs, guard, text))) {
    const g = await readLock(o.fs, guard)
    // A taker that died between taking the guard and removing it (a window of microseconds).
    if (g && (await gone(o, g.holder, me))) {
      await o.fs.unlink(guard).catch(ignoreMissing)
      return false
    }
    if (!g) return false
    throw refuse(o, file, g.holder, 'another process is taking over its stale lock right now')
  }
  try {
    const now = await readLock(o.fs, file)
    if (now !== null && now.text !== staleText) return false
    if (now !== null) await o.fs.unlink(file).catch(ignoreMissing)
    // A plain start may have created a fresh lock since the unlink: then it holds the folder.
    return await createExclusive(o.fs, file, text)
  } finally {
    await o.fs.unlink(guard).catch(ignoreMissing)
  }
}

function ignoreMissing(err: unknown): void {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
}
