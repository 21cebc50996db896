// Policy reload: the policy folder is re-read when a file-system event fires in it, and every
// policies.reloadCheckIntervalMs besides, as the TLS files are (src/transport/tls.ts). Events
// miss some swaps; the periodic check bounds how long a change can wait.
//
// Kubernetes updates a ConfigMap volume atomically: the files live in a timestamped folder,
// `..data` is a symlink to it, and each `<name>.yaml` is a symlink through `..data`; an update
// writes a new folder and renames a new `..data` over the old one. The folder is read through
// those links, hidden names are skipped, and a digest of the files tells a change from a
// touch, so a swap is seen as one change, never half of one.
//
// A changed folder is validated as at start (every file, every problem) and compiled by every
// view (src/config/policy-store.ts). If all is well, the new generation applies to requests
// that start after the swap. If not, the policies in force stay, the problems are logged (file,
// path, fix) once per distinct bad state, the failure is counted, and status() says the served
// policies are stale until the folder is fixed. A policy file removed is a model denied:
// nothing is kept from a policy that is gone.

import { watch, type FSWatcher } from 'node:fs'
import type { Clock, Logger, Timer } from '../deps.ts'
import type { LivePolicies } from './policy-store.ts'
import { readPolicyFolder } from './policy.ts'

export type PolicyReloadOutcome = 'applied' | 'unchanged' | 'failed'

export interface PolicyStatus {
  /** 'current': the folder's policies are served; 'stale': the folder changed and the change was refused. */
  state: 'current' | 'stale'
  /** The generation in force (1 at start). */
  generation: number
  /** Why the folder's policies are not served (file, path and fix); empty when current. */
  problems: string[]
}

export interface PolicyWatcherOptions {
  directory: string
  intervalMs: number
  /** The digest of the folder as it was loaded at start. */
  digest: string
  /** Whether the folder must exist (authorization on). */
  required: boolean
  /** Listen to file-system events (default true); the periodic check runs either way. */
  events?: boolean
}

export interface PolicyWatcherDeps {
  live: LivePolicies
  clock: Clock
  log: Logger
  onReload?: (outcome: 'applied' | 'failed') => void
}

/** Events come in bursts (a swap is several renames): check once, shortly after the last. */
const DEBOUNCE_MS = 50

export class PolicyWatcher {
  readonly #o: PolicyWatcherOptions
  readonly #deps: PolicyWatcherDeps
  #served: string
  #lastBad: string | null = null
  #problems: string[] = []
  #watcher: FSWatcher | null = null
  #timer: Timer | null = null
  #debounce: Timer | null = null
  #inFlight: Promise<PolicyReloadOutcome> | null = null
  #again = false

  constructor(options: PolicyWatcherOptions, deps: PolicyWatcherDeps) {
    this.#o = options
    this.#deps = deps
    this.#served = options.digest
  }

  /** Starts the file-system watch and the periodic check. */
  start(): void {
    if (this.#o.events !== false) {
      try {
        // eslint-disable-next-line security/detect-non-literal-fs-filename -- the operator's policies.directory, never a name a request gives
        this.#watcher = watch(this.#o.directory, { persistent: false }, () => this.#soon())
        this.#watcher.on('error', () => {}) // a vanished folder: the interval still checks
      } catch (err) {
        this.#deps.log.warn({ directory: this.#o.directory, err: (err as Error).message }, 'cannot watch the policy folder; relying on the periodic check')
      }
    }
    // Reload checks alone must not keep a stopping process up.
    this.#timer = this.#deps.clock.setInterval(() => void this.check(), this.#o.intervalMs, { keepAlive: false })
  }

  #soon(): void {
    this.#debounce?.cancel()
    this.#debounce = this.#deps.clock.setTimeout(() => void this.check(), DEBOUNCE_MS, { keepAlive: false })
  }

  status(): PolicyStatus {
    return { state: this.#problems.length > 0 ? 'stale' : 'current', generation: this.#deps.live.generation, problems: [...this.#problems] }
  }

  /**
   * Re-reads the folder and applies it if it changed and is valid. A check asked for while one
   * runs runs again after it (the folder may have changed after that one read it).
   */
  check(): Promise<PolicyReloadOutcome> {
    if (this.#inFlight) {
      this.#again = true
      return this.#inFlight
    }
    const run = async (): Promise<PolicyReloadOutcome> => {
      let outcome = await this.#reload()
      while (this.#again) {
        this.#again = false
        const next = await this.#reload()
        if (next !== 'unchanged') outcome = next
      }
      return outcome
    }
    this.#inFlight = run().finally(() => (this.#inFlight = null))
    return this.#inFlight
  }

  async #reload(): Promise<PolicyReloadOutcome> {
    const folder = await readPolicyFolder(this.#o.directory, { required: this.#o.required })
    if (folder.digest === this.#served) {
      // Back to what is served (a bad edit reverted): nothing is stale any more.
      if (this.#problems.length > 0) this.#deps.log.info({ directory: this.#o.directory }, 'policy folder is back to the policies in force')
      this.#problems = []
      this.#lastBad = null
      return 'unchanged'
    }
    if (folder.digest === this.#lastBad) return 'failed'
    const problems = folder.problems.length > 0 ? folder.problems : await this.#deps.live.propose(folder.policies)
    if (problems.length > 0) {
      this.#lastBad = folder.digest
      this.#problems = problems
      this.#deps.log.error(
        { directory: this.#o.directory, problems, generation: this.#deps.live.generation },
        'policy change refused; the policies in force stay until the folder is fixed',
      )
      this.#deps.onReload?.('failed')
      return 'failed'
    }
    this.#served = folder.digest
    this.#lastBad = null
    this.#problems = []
    this.#deps.log.info({ directory: this.#o.directory, generation: this.#deps.live.generation, models: [...folder.policies.keys()] }, 'policies reloaded; requests that start from now on use them')
    this.#deps.onReload?.('applied')
    return 'applied'
  }

  close(): void {
    this.#watcher?.close()
    this.#watcher = null
    this.#timer?.cancel()
    this.#debounce?.cancel()
    this.#timer = this.#debounce = null
  }
}
