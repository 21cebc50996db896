// Policy reload: the policy folder is re-read when a file-system event fires in it, and every
// policies.reloadCheckIntervalMs besides, as the TLS files are (src/transport/file-watch.ts). Events
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

import type { Clock, Logger } from '../deps.ts'
import { watchFiles, type FileWatch } from '../transport/file-watch.ts'
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

export class PolicyWatcher {
  readonly #o: PolicyWatcherOptions
  readonly #deps: PolicyWatcherDeps
  #served: string
  #lastBad: string | null = null
  #problems: string[] = []
  #watch: FileWatch | null = null
  #inFlight: Promise<PolicyReloadOutcome> | null = null
  #again = false

  constructor(options: PolicyWatcherOptions, deps: PolicyWatcherDeps) {
    this.#o = options
    this.#deps = deps
    this.#served = options.digest
  }

  /** Starts the file-system watch and the periodic check. */
  start(): void {
    this.#watch ??= watchFiles({
      files: [],
      folders: [this.#o.directory],
      events: this.#o.events !== false,
      intervalMs: this.#o.intervalMs,
      clock: this.#deps.clock,
      log: this.#deps.log,
      what: 'the policy',
      check: () => void this.check(),
    })
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
    this.#watch?.close()
    this.#watch = null
  }
}
