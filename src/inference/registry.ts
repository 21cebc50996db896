// The models this gateway serves: reads each configured manifest, checks the model file's
// digest, starts its backend and batcher. A model that fails any step is reported not ready
// with one clear log line, and the others still serve.
//
// A model with `upstream:` (src/config/scaleout.ts) is served by remote model pods: its
// manifest still comes from models/<name>/manifest.json (validation, screening and output
// protection need its inputs and outputs), but its file, digest and signature are not read
// (the pod serving it checks those); its backend is an UpstreamBackend behind the same batcher,
// so concurrent requests go upstream as one call (fewer round trips; the pod batches too).
//
// A model may be served at several versions at once (models/<name>/<n>/manifest.json, the
// ones its versionPolicy picks: src/inference/model-versions.ts), each with its own backend and
// batcher. A request names a version or gets the highest served one; the versions served
// together have the same inputs and outputs, because one policy covers them all.

import path from 'node:path'
import { readFile } from 'node:fs/promises'
import type { KeyObject } from 'node:crypto'
import { trace, type Tracer } from '@opentelemetry/api'
import { BulwarkError } from '../errors.ts'
import { cryptoRandom, type Clock, type Logger, type RandomSource } from '../deps.ts'
import type { Config, ModelSettings } from '../config/schema.ts'
import type { UpstreamConfig } from '../config/scaleout.ts'
import type { Backend } from './backend.ts'
import type { ExecutionTimes } from '../oip/stats.ts'
import { DynamicBatcher } from './batcher.ts'
import { batchLimit, readManifest, readVerifiedModel, type Manifest } from './manifest.ts'
import { MANIFEST, selectVersions, versionFolders } from './model-versions.ts'
import { OnnxBackend } from './onnx-backend.ts'
import { UpstreamBackend, type UpstreamObserver } from './upstream-backend.ts'
import { readUpstreamTls, upstreamTlsFiles, type UpstreamTlsSource } from './upstream-tls.ts'
import { ConfigError } from '../config/load.ts'
import { checkModelSignature, parsePublicKey } from '../signing/model-signature.ts'

export type ModelState = 'loading' | 'ready' | 'failed'

export interface ServedModel {
  readonly name: string
  /** The version folder it was loaded from (models/<name>/<n>/); absent for a manifest at the top of the folder, whose own version names it. */
  readonly folderVersion?: string
  manifest: Manifest | null
  state: ModelState
  /** Why the model is not ready (operator-facing). */
  reason: string | null
  settings: ModelSettings
  /** Where the model runs when it is not local (null: a local ONNX file). */
  upstream: UpstreamConfig | null
  backend: Backend | null
  batcher: DynamicBatcher | null
}

export interface RegistryDeps {
  clock: Clock
  log: Logger
  onBatch?: (model: string, items: number) => void
  /** Each model execution's item count, queue and compute times (the statistics extension, src/oip/stats.ts). */
  onExecuted?: (model: string, times: ExecutionTimes, version: string) => void
  /** Retry jitter of upstream calls (default: the OS CSPRNG). */
  random?: RandomSource
  /** Spans of upstream calls (default: the global tracer provider's). */
  tracer?: Tracer
  upstreamObserver?: UpstreamObserver
  /** A model was loaded, replaced or unloaded while serving (loadVersion, unload). */
  onChange?: (model: string) => void
}

/** Config defaults overlaid with a model's own settings (a model `serve` does not list, found by polling the folder, has the defaults). */
function settingsFor(config: Config['models'], name: string): ModelSettings {
  const entry = config.serve.find((m) => m.name === name) ?? { name }
  return {
    workers: entry.workers ?? config.defaults.workers,
    intraOpThreads: entry.intraOpThreads ?? config.defaults.intraOpThreads,
    executionProviders: entry.executionProviders ?? config.defaults.executionProviders,
    threadNiceness: entry.threadNiceness ?? config.defaults.threadNiceness,
    intraOpSpinning: entry.intraOpSpinning ?? config.defaults.intraOpSpinning,
    batching: { ...config.defaults.batching, ...entry.batching },
    ...(entry.versionPolicy ?? config.defaults.versionPolicy ? { versionPolicy: entry.versionPolicy ?? config.defaults.versionPolicy } : {}),
  }
}

/** The version a loaded model serves: its manifest's, else its folder's (a version that failed to load). */
export function versionOf(m: ServedModel): string | null {
  return m.manifest?.version ?? m.folderVersion ?? null
}

export class ModelRegistry {
  /** The version of each model that new requests naming no version get (the highest served). */
  private readonly models = new Map<string, ServedModel>()
  /** Every version served of each model, highest first. */
  private readonly versions = new Map<string, ServedModel[]>()
  private readonly config: Config['models']
  /** The version each request read its manifest from, by model name: it runs on that version to its end. */
  private readonly pins = new WeakMap<object, Map<string, ServedModel>>()
  /** Requests pinned to each version, until their exchange ends (release). */
  private readonly users = new Map<ServedModel, number>()
  /** Versions replaced or removed, closed once their last request is done. */
  private readonly retired = new Set<ServedModel>()
  private readonly dir: string
  private readonly baseDir: string
  private readonly deps: RegistryDeps
  /** models.requireSignature: the public key file every model's signature must verify with; null when off. */
  private readonly signingKeyFile: string | null

  constructor(config: Config['models'], baseDir: string, deps: RegistryDeps) {
    this.dir = path.resolve(baseDir, config.directory)
    this.config = config
    this.baseDir = baseDir
    this.deps = deps
    if (config.requireSignature && config.signingPublicKeyFile === undefined) {
      throw new ConfigError('the configuration', ['/models/signingPublicKeyFile: required when /models/requireSignature is on; give the PEM public key that model signatures must verify with'])
    }
    this.signingKeyFile = config.requireSignature ? path.resolve(baseDir, config.signingPublicKeyFile!) : null
    for (const entry of config.serve) this.install(entry.name, [this.fresh(entry.name)])
  }

  private fresh(name: string, folderVersion?: string): ServedModel {
    return {
      name,
      ...(folderVersion === undefined ? {} : { folderVersion }),
      manifest: null,
      state: 'loading',
      reason: 'loading',
      settings: settingsFor(this.config, name),
      upstream: this.config.serve.find((m) => m.name === name)?.upstream ?? null,
      backend: null,
      batcher: null,
    }
  }

  /** Loads every model; never rejects (failures are per model). */
  async load(): Promise<void> {
    const signing = await this.signingKey()
    await Promise.all([...this.models.keys()].map(async (name) => this.install(name, await this.loadModel(name, signing))))
  }

  /** Makes `set` (highest first) the versions served of `name`; requests naming no version get the highest ready one. */
  private install(name: string, set: ServedModel[]): void {
    this.versions.set(name, set)
    this.models.set(name, set.find((m) => m.state === 'ready') ?? set[0]!)
  }

  /** Loads the versions of the model folder that its versionPolicy picks (one when the manifest is at the top). Never rejects. */
  private async loadModel(name: string, signing: { key: KeyObject } | { problem: string } | null): Promise<ServedModel[]> {
    const dir = path.join(this.dir, name)
    const folders = await versionFolders(dir)
    if (folders === null) {
      const m = this.fresh(name)
      await this.loadOne(m, path.join(dir, MANIFEST), signing)
      return [m]
    }
    const wanted = selectVersions(dir, folders, settingsFor(this.config, name).versionPolicy)
    if (wanted.length === 0) {
      const m = this.fresh(name)
      this.fail(m, `${dir} has no ${MANIFEST}, nor a version folder with one (${path.join(dir, '<version>', MANIFEST)})`)
      return [m]
    }
    const set = await Promise.all(
      wanted.map(async (w) => {
        const m = this.fresh(name, w.version)
        if (w.manifestPath === null) this.fail(m, `versionPolicy lists version ${w.version}, but ${path.join(dir, w.version, MANIFEST)} does not exist; version folders found: ${folders.join(', ') || 'none'}`)
        else await this.loadOne(m, w.manifestPath, signing)
        return m
      }),
    )
    await this.refuseOtherTensors(set)
    return set
  }

  /** One policy covers every version: a version whose inputs or outputs differ from the highest ready one's is not served. */
  private async refuseOtherTensors(set: ServedModel[]): Promise<void> {
    const tensors = (m: ServedModel) => JSON.stringify([m.manifest!.inputs, m.manifest!.outputs])
    const first = set.find((m) => m.state === 'ready')
    if (!first) return
    for (const m of set) {
      if (m === first || m.state !== 'ready' || tensors(m) === tensors(first)) continue
      await m.backend?.close()
      m.backend = null
      m.batcher = null
      this.fail(m, `version ${versionOf(m)} declares other inputs or outputs than version ${versionOf(first)}; the versions served together must declare the same ones (one policy covers them all): serve it as a model of its own`)
    }
  }

  private fail(m: ServedModel, reason: string): void {
    m.state = 'failed'
    m.reason = reason
    this.deps.log.error({ model: m.name, ...(m.folderVersion ? { version: m.folderVersion } : {}), err: m.reason }, 'model not served')
  }

  /** The signing public key, or why it cannot be used (then no model is served: fail closed). */
  private async signingKey(): Promise<{ key: KeyObject } | { problem: string } | null> {
    if (this.signingKeyFile === null) return null
    try {
      return { key: parsePublicKey(await readFile(this.signingKeyFile)) }
    } catch (err) {
      return { problem: `models.signingPublicKeyFile ${this.signingKeyFile} cannot be used: ${(err as Error).message}` }
    }
  }

  private async loadOne(m: ServedModel, manifestPath: string, signing: { key: KeyObject } | { problem: string } | null): Promise<void> {
    try {
      const manifest = await readManifest(manifestPath)
      if (manifest.name !== m.name) throw new Error(`${manifestPath} names model "${manifest.name}", expected "${m.name}"`)
      if (m.folderVersion !== undefined && manifest.version !== m.folderVersion) {
        throw new Error(`${manifestPath} says version "${manifest.version}" but lies in the folder of version ${m.folderVersion}; set "version": "${m.folderVersion}" in it`)
      }
      m.manifest = manifest
      // A remote model's bytes are the model server's to check; its signature still covers the
      // manifest (what validation enforces) and the model digest that manifest pins.
      const bytes = m.upstream ? null : await readVerifiedModel(m.manifest, manifestPath)
      if (signing) {
        const problem = 'key' in signing ? await checkModelSignature(path.dirname(manifestPath), m.manifest, bytes, signing.key) : signing.problem
        if (problem !== null) throw new Error(`${m.name}: ${problem}`)
      }
      if (bytes === null) return await this.startUpstream(m, m.manifest, m.upstream!)
      const backend = await OnnxBackend.create({
        model: m.name,
        bytes,
        workers: m.settings.workers,
        intraOpThreads: m.settings.intraOpThreads,
        executionProviders: m.settings.executionProviders,
        niceness: m.settings.threadNiceness,
        spinning: m.settings.intraOpSpinning,
        log: this.deps.log,
        clock: this.deps.clock,
      })
      this.serve(m, m.manifest, backend, { provider: backend.executionProvider, workers: m.settings.workers }, 'model ready')
    } catch (err) {
      this.fail(m, (err as Error).message)
    }
  }

  private async startUpstream(m: ServedModel, manifest: Manifest, upstream: UpstreamConfig): Promise<void> {
    let tlsSource: UpstreamTlsSource | null = null
    if (upstream.tls) {
      // Read now (a file that cannot be used fails the model), and watched while the model is served.
      const files = upstreamTlsFiles(upstream.tls, this.baseDir)
      const servername = upstream.tls.serverName
      const { material, digest } = await readUpstreamTls(files, servername)
      tlsSource = { files, ...(servername ? { servername } : {}), intervalMs: upstream.tls.reloadCheckIntervalMs, material, digest }
    }
    const backend = new UpstreamBackend({
      model: m.name,
      manifest,
      config: upstream,
      tls: tlsSource,
      clock: this.deps.clock,
      random: this.deps.random ?? cryptoRandom,
      log: this.deps.log,
      tracer: this.deps.tracer ?? trace.getTracer('bulwark'),
      ...(this.deps.upstreamObserver ? { observer: this.deps.upstreamObserver } : {}),
    })
    this.serve(m, manifest, backend, { upstream: upstream.endpoints }, 'model ready (upstream)')
  }

  /** Puts a loaded backend behind the model's batcher and marks the model ready. */
  private serve(m: ServedModel, manifest: Manifest, backend: Backend, logFields: object, message: string): void {
    const b = m.settings.batching
    const maxBatch = batchLimit(b, manifest)
    m.backend = backend
    m.batcher = new DynamicBatcher({
      model: m.name,
      backend,
      maxBatchSize: maxBatch,
      maxQueueDelayMicros: b.maxQueueDelayMicros,
      maxQueueSize: b.maxQueueSize,
      outputNames: manifest.outputs.map((o) => o.name),
      clock: this.deps.clock,
      onBatch: (items) => this.deps.onBatch?.(m.name, items),
      onExecuted: (times) => this.deps.onExecuted?.(m.name, times, manifest.version),
    })
    m.state = 'ready'
    m.reason = null
    this.deps.log.info({ model: m.name, version: manifest.version, ...logFields, maxBatch }, message)
  }

  /**
   * Whether a request for `name` at `version` (null: the highest served) would find that
   * version's queue full (load shedding checks this on arrival, before the body is read). False
   * for unknown or unloaded models and versions: the pipeline refuses those with their own codes.
   */
  queueFull(name: string, version: string | null = null): boolean {
    const m = version === null ? this.models.get(name) : this.versions.get(name)?.find((v) => versionOf(v) === version)
    const b = m?.batcher
    return b ? b.queueDepth >= b.maxQueueSize : false
  }

  /** The models served by upstream pods, with their backends (readiness, metrics). */
  upstreams(): { model: string; backend: UpstreamBackend }[] {
    const out: { model: string; backend: UpstreamBackend }[] = []
    for (const m of this.models.values()) if (m.backend instanceof UpstreamBackend) out.push({ model: m.name, backend: m.backend })
    return out
  }

  /** Whether a model of that name is served now (any state). */
  has(name: string): boolean {
    return this.models.has(name)
  }

  /** One entry per model: the version a request naming none gets. */
  list(): ServedModel[] {
    return [...this.models.values()]
  }

  /** Every version of every model. */
  all(): ServedModel[] {
    return [...this.versions.values()].flat()
  }

  /**
   * The version whose statistics a request for `name` at `version` counts under: that one if
   * the registry holds it, the highest served when none is named; null for anything else (no
   * state for names and versions a caller made up).
   */
  statsVersion(name: string, version: string | null): string | null {
    const held = this.versions.get(name)
    if (!held) return null
    if (version === null) return versionOf(this.models.get(name)!) ?? ''
    return held.some((m) => versionOf(m) === version) ? version : null
  }

  /** Every version of `name` the registry holds (ready or failed), highest first. */
  versionsOf(name: string): readonly ServedModel[] {
    return this.versions.get(name) ?? []
  }

  /** The versions of `name` served (loaded and ready), highest first. */
  served(name: string): string[] {
    return (this.versions.get(name) ?? []).flatMap((m) => (m.state === 'ready' ? (versionOf(m) ?? []) : []))
  }

  allReady(): boolean {
    return this.all().every((m) => m.state === 'ready')
  }

  /** The model at the requested version (null: the highest served); throws 404s with clear messages. */
  get(name: string, version: string | null): ServedModel {
    const m = this.models.get(name)
    if (!m) throw new BulwarkError('model_not_found', `no model named "${name.slice(0, 64)}" is served here; GET /v2/models/{name} for a served model`)
    if (version === null) return m
    return this.versions.get(name)!.find((v) => versionOf(v) === version) ?? checkVersion(m, version, this.served(name))
  }

  /**
   * The manifest of a ready model (for validation). With `pin` (the request context), the
   * request is pinned to this version: every later read for it (the inference) gets the same
   * one, even after a newer version replaced it, until release(pin).
   */
  manifest(name: string, version: string | null, pin?: object): Manifest {
    const m = this.ready(name, version, pin)
    return m.manifest!
  }

  /** The model if it is ready to infer (the version pinned to `pin`, if any); else 503 model_not_ready. */
  ready(name: string, version: string | null, pin?: object): ServedModel {
    const pinned = pin && this.pins.get(pin)?.get(name)
    if (pinned) return checkVersion(pinned, version, this.served(name))
    const m = this.get(name, version)
    if (m.state !== 'ready') {
      throw new BulwarkError('model_not_ready', `model "${name}" is not ready; retry later or check /readyz`, {
        reason: m.reason ?? m.state,
        headers: { 'retry-after': '5' },
      })
    }
    if (pin) {
      let mine = this.pins.get(pin)
      if (!mine) this.pins.set(pin, (mine = new Map()))
      mine.set(name, m)
      this.users.set(m, (this.users.get(m) ?? 0) + 1)
    }
    return m
  }

  /** The request's exchange ended: the versions it was pinned to may close once no one else uses them. Idempotent. */
  release(pin: object): void {
    const mine = this.pins.get(pin)
    if (!mine) return
    this.pins.delete(pin)
    for (const m of mine.values()) {
      const n = (this.users.get(m) ?? 1) - 1
      if (n > 0) this.users.set(m, n)
      else {
        this.users.delete(m)
        if (this.retired.has(m)) void this.closeRetired(m)
      }
    }
  }

  /**
   * Loads the model's folder as it is now, beside the version served (if any); once it is ready,
   * new requests get it and the old version closes after its last request. A folder that cannot
   * be loaded changes nothing (the version served stays); returns why, or null when swapped in.
   */
  async loadVersion(name: string): Promise<string | null> {
    const next = await this.loadModel(name, await this.signingKey())
    const failed = next.filter((m) => m.state !== 'ready')
    if (failed.length > 0) {
      await Promise.all(next.map((m) => m.backend?.close()))
      if (next.length === 1) return failed[0]!.reason ?? 'not ready'
      return failed.map((m) => `version ${versionOf(m)}: ${m.reason ?? 'not ready'}`).join('; ')
    }
    const old = this.versions.get(name) ?? []
    this.install(name, next)
    for (const m of old) this.retire(m)
    this.deps.onChange?.(name)
    return null
  }

  /** Serves the model no more: new requests get 404; requests already pinned to it finish, then it closes. */
  unload(name: string): boolean {
    const old = this.versions.get(name)
    if (!old) return false
    this.models.delete(name)
    this.versions.delete(name)
    for (const m of old) this.retire(m)
    this.deps.onChange?.(name)
    return true
  }

  private retire(m: ServedModel): void {
    this.retired.add(m)
    if (!this.users.has(m)) void this.closeRetired(m)
  }

  private async closeRetired(m: ServedModel): Promise<void> {
    try {
      await m.batcher?.drain()
      await m.backend?.close()
      this.deps.log.info({ model: m.name, version: versionOf(m) }, 'model version closed: its last request is done')
    } catch (err) {
      this.deps.log.warn({ model: m.name, err: (err as Error).message }, 'closing a retired model version failed')
    } finally {
      this.retired.delete(m)
    }
  }

  /** Resolves when no model has queued or running work. */
  async drain(): Promise<void> {
    await Promise.all([...this.all(), ...this.retired].map((m) => m.batcher?.drain()))
  }

  async close(): Promise<void> {
    await Promise.all([...this.all(), ...this.retired].map((m) => m.backend?.close()))
  }
}

/** `m` when it is at `version` (or none is asked for); else 404 naming the versions served. */
function checkVersion(m: ServedModel, version: string | null, served: string[] = m.manifest ? [m.manifest.version] : []): ServedModel {
  // A model that failed to load has no version to compare: its readiness answers (503).
  if (version === null || (m.manifest ? m.manifest.version === version : served.length === 0)) return m
  const list = `versions served: ${served.map((v) => `"${v}"`).join(', ')}`
  throw new BulwarkError('version_not_found', `model "${m.name}" is not served at version "${version.slice(0, 32)}"; ${list} (or omit the version for the highest)`)
}
