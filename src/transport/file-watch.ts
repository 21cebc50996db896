// When to re-read files that something else rotates (cert-manager, SPIRE, a Kubernetes secret
// volume): shortly after a file-system event in one of their folders, and every `intervalMs`
// besides, since events miss some swaps (an atomic rename of a `..data` symlink, a folder
// that was replaced). What a check reads and whether it applies it is the caller's; this only
// says when. Used by the listener's TLS files (src/transport/tls.ts), the upstream calls'
// client certificate (src/inference/upstream-tls.ts) and the policy folder
// (src/config/policy-watch.ts).

import { watch, type FSWatcher } from 'node:fs'
import path from 'node:path'
import type { Clock, Logger, Timer } from '../deps.ts'

/** Events come in bursts (write, rename, chmod): check once, shortly after the last. */
const DEBOUNCE_MS = 50

export interface FileWatchOptions {
  /** The files to watch (their folders are watched: a rename replaces the file itself). */
  files: readonly string[]
  /** Folders to watch as a whole (a folder of files the check reads, e.g. a ConfigMap volume). */
  folders?: readonly string[]
  /** false: the periodic check only, no file-system events (default true). */
  events?: boolean
  intervalMs: number
  clock: Clock
  log: Logger
  /** What the files are, for the warning when a folder cannot be watched ("TLS", "upstream TLS", "the policy"). */
  what: string
  /** Called after a burst of events and at each interval; must not throw. */
  check: () => void
}

export interface FileWatch {
  /** Stops the events and the timers; idempotent. */
  close(): void
}

export function watchFiles(o: FileWatchOptions): FileWatch {
  const watchers: FSWatcher[] = []
  let debounce: Timer | null = null
  const soon = () => {
    debounce?.cancel()
    debounce = o.clock.setTimeout(o.check, DEBOUNCE_MS, { keepAlive: false })
  }
  const folders = o.events === false ? [] : [...o.files.map((f) => path.dirname(f)), ...(o.folders ?? [])]
  for (const dir of new Set(folders)) {
    try {
      // eslint-disable-next-line security/detect-non-literal-fs-filename -- folders the operator's config names, never a name a request gives
      const w = watch(dir, { persistent: false }, soon)
      w.on('error', () => {}) // a vanished folder: the interval still checks
      watchers.push(w)
    } catch (err) {
      o.log.warn({ dir, err: (err as Error).message }, `cannot watch ${o.what} folder; relying on the periodic check`)
    }
  }
  // Checks alone must not keep a stopping process up.
  const timer = o.clock.setInterval(o.check, o.intervalMs, { keepAlive: false })
  return {
    close() {
      for (const w of watchers.splice(0)) w.close()
      timer.cancel()
      debounce?.cancel()
      debounce = null
    },
  }
}
