// What the benches read of this machine about a process or a folder: CPU time and resident
// memory from /proc (Linux), and the bytes a folder holds.

import { readdirSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'

/** CPU seconds (user + system, all threads) a process has used, from /proc/PID/stat (clock ticks at 100 Hz). */
export function cpuSeconds(pid: number): number {
  return statCpuSeconds(`/proc/${pid}/stat`)
}

/** utime + stime of a /proc stat file (a process's or a thread's), in seconds. */
function statCpuSeconds(file: string): number {
  const fields = readFileSync(file, 'utf8').split(') ')[1]!.split(' ')
  return (Number(fields[11]) + Number(fields[12])) / 100
}

/** CPU seconds per thread name (comm: MainThread, WorkerThread, libuv-worker, V8Worker, ...), summed over a process's threads. */
export function threadCpuSeconds(pid: number): Record<string, number> {
  const out: Record<string, number> = {}
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const name = readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim()
      out[name] = (out[name] ?? 0) + statCpuSeconds(`/proc/${pid}/task/${tid}/stat`)
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return out
}

/** A process's resident set size in bytes, from /proc/PID/status; NaN when it is not there. */
export function rssBytes(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m ? Number(m[1]) * 1024 : NaN
}

/** Bytes of the files in `dir` and its sub-folders. */
export function folderBytes(dir: string): number {
  let total = 0
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    total += e.isDirectory() ? folderBytes(p) : statSync(p).size
  }
  return total
}
