// The model folder, polled as Triton's --model-control-mode=poll polls its repository: every
// models.poll.intervalMs, each sub-folder with a manifest.json (at its top, or in version
// folders: src/inference/model-versions.ts) is compared with what it was
// when its model was loaded. A new folder is loaded and then served; a changed one (its
// manifest, its model file, its signature: any file of the folder, by name, size and
// modification time, and the manifest by content) is loaded beside the version served, which
// new requests leave once the new one is ready (src/inference/registry.ts: loadVersion); a
// folder removed is served no more. Requests already validated against a version run on it to
// their end, and it closes after the last. A folder that cannot be loaded changes nothing: the
// version served stays, the failure is logged once per distinct state of the folder, counted,
// and retried when the folder changes again.

import { createHash } from 'node:crypto'
import { readdir, readFile, stat } from 'node:fs/promises'
import path from 'node:path'
import type { Clock, Logger, Timer } from '../deps.ts'
import type { ModelRegistry } from './registry.ts'
import { MANIFEST, versionFolders } from './model-versions.ts'

export type PollAction = 'loaded' | 'replaced' | 'unloaded' | 'failed'

export interface PollerDeps {
  registry: Pick<ModelRegistry, 'list' | 'loadVersion' | 'unload'>
  clock: Clock
  log: Logger
  onAction?: (model: string, action: PollAction) => void
}

/** What a folder holds now: the manifest's content and every file's name, size and mtime. Null: no manifest. */
async function folderPrint(folder: string): Promise<string | null> {
  let manifest: string
  try {
    // eslint-disable-next-line security/detect-non-literal-fs-filename -- a sub-folder of the operator's models.directory
    manifest = await readFile(path.join(folder, MANIFEST), 'utf8')
  } catch {
    return null
  }
  const hash = createHash('sha256').update(manifest)
  // eslint-disable-next-line security/detect-non-literal-fs-filename -- as above
  for (const name of (await readdir(folder)).sort()) {
    // eslint-disable-next-line security/detect-non-literal-fs-filename -- as above
    const s = await stat(path.join(folder, name)).catch(() => null)
    if (s?.isFile()) hash.update(`\0${name}\0${s.size}\0${s.mtimeMs}`)
  }
  return hash.digest('hex')
}

/** What a model folder holds now: its manifest's folder, or each version folder's (a version added or removed changes it). Null: no manifest. */
async function fingerprint(folder: string): Promise<string | null> {
  const versions = await versionFolders(folder)
  if (versions === null) return folderPrint(folder)
  if (versions.length === 0) return null
  const hash = createHash('sha256')
  for (const v of versions) hash.update(`\0${v}\0${(await folderPrint(path.join(folder, v))) ?? ''}`)
  return hash.digest('hex')
}

export class ModelRepositoryPoller {
  readonly #dir: string
  readonly #intervalMs: number
  readonly #deps: PollerDeps
  /** The folder state each served model was loaded from. */
  readonly #served = new Map<string, string>()
  /** The folder state that last failed to load, by model: not retried until it changes. */
  readonly #failed = new Map<string, string>()
  #timer: Timer | null = null
  #inFlight: Promise<void> | null = null

  constructor(directory: string, intervalMs: number, deps: PollerDeps) {
    this.#dir = directory
    this.#intervalMs = intervalMs
    this.#deps = deps
  }

  /** What the folder holds now: taken just before the models are loaded at start, so a change made while they load is seen. */
  async baseline(): Promise<void> {
    for (const [name, print] of await this.#scan()) this.#served.set(name, print)
  }

  /** Starts the periodic poll. */
  start(): void {
    this.#timer = this.#deps.clock.setInterval(() => void this.poll(), this.#intervalMs, { keepAlive: false })
  }

  /** One poll (one at a time: a poll asked for while one runs waits for it). */
  poll(): Promise<void> {
    this.#inFlight ??= this.#poll().finally(() => (this.#inFlight = null))
    return this.#inFlight
  }

  async #scan(): Promise<Map<string, string>> {
    const found = new Map<string, string>()
    let names: string[]
    try {
      // eslint-disable-next-line security/detect-non-literal-fs-filename -- the operator's models.directory
      names = await readdir(this.#dir)
    } catch (err) {
      this.#deps.log.warn({ directory: this.#dir, err: (err as Error).message }, 'cannot read the model folder; serving what is loaded')
      return new Map([...this.#served])
    }
    for (const name of names.filter((n) => /^[a-z0-9][a-z0-9_.-]{0,62}$/.test(n))) {
      const print = await fingerprint(path.join(this.#dir, name)).catch(() => null)
      if (print !== null) found.set(name, print)
    }
    return found
  }

  async #poll(): Promise<void> {
    const found = await this.#scan()
    const served = new Set(this.#deps.registry.list().map((m) => m.name))
    for (const name of served) {
      if (found.has(name)) continue
      this.#deps.registry.unload(name)
      this.#served.delete(name)
      this.#deps.log.info({ model: name }, 'model folder removed: served no more; requests already validated finish on it')
      this.#deps.onAction?.(name, 'unloaded')
    }
    for (const [name, print] of found) {
      const known = served.has(name) ? this.#served.get(name) : undefined
      if (known === print || this.#failed.get(name) === print) continue
      const problem = await this.#deps.registry.loadVersion(name)
      if (problem !== null) {
        this.#failed.set(name, print)
        this.#deps.log.error({ model: name, problem }, served.has(name) ? 'changed model folder cannot be served; the version served stays' : 'new model folder cannot be served')
        this.#deps.onAction?.(name, 'failed')
        continue
      }
      this.#failed.delete(name)
      this.#served.set(name, print)
      const action = served.has(name) ? 'replaced' : 'loaded'
      const version = this.#deps.registry.list().find((m) => m.name === name)?.manifest?.version
      this.#deps.log.info({ model: name, version }, action === 'replaced' ? 'new model version ready; new requests use it, the old one closes after its last request' : 'new model folder loaded and served')
      this.#deps.onAction?.(name, action)
    }
  }

  close(): void {
    this.#timer?.cancel()
    this.#timer = null
  }
}
