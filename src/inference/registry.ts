// The models this gateway serves: reads each configured manifest, checks the model file's
// digest, starts its backend and batcher. A model that fails any step is reported not ready
// with one clear log line, and the others still serve.
//
// A model with `upstream:` (src/config/scaleout.ts) is served by remote model pods: its
// manifest still comes from models/<name>/manifest.json (validation, screening and output
// protection need its inputs and outputs), but its file, digest and signature are not read
// (the pod serving it checks those); its backend is an UpstreamBackend behind the same batcher,
// so concurrent requests go upstream as one call (fewer round trips; the pod batches too).

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
import { readManifest, readVerifiedModel, type Manifest } from './manifest.ts'
import { OnnxBackend } from './onnx-backend.ts'
import { UpstreamBackend, type UpstreamObserver, type UpstreamTlsMaterial } from './upstream-backend.ts'
import { ConfigError } from '../config/load.ts'
import { checkModelSignature, parsePublicKey } from '../signing/model-signature.ts'

export type ModelState = 'loading' | 'ready' | 'failed'

export interface ServedModel {
  readonly name: string
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
  onExecuted?: (model: string, times: ExecutionTimes) => void
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
  }
}

export class ModelRegistry {
  /** The version of each model that new requests get. */
  private readonly models = new Map<string, ServedModel>()
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
    for (const entry of config.serve) this.models.set(entry.name, this.fresh(entry.name))
  }

  private fresh(name: string): ServedModel {
    return {
      name,
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
    await Promise.all([...this.models.values()].map((m) => this.loadOne(m, signing)))
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

  private async loadOne(m: ServedModel, signing: { key: KeyObject } | { problem: string } | null): Promise<void> {
    const manifestPath = path.join(this.dir, m.name, 'manifest.json')
    try {
      m.manifest = await readManifest(manifestPath)
      if (m.manifest.name !== m.name) throw new Error(`${manifestPath} names model "${m.manifest.name}", expected "${m.name}"`)
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
      m.state = 'failed'
      m.reason = (err as Error).message
      this.deps.log.error({ model: m.name, err: m.reason }, 'model not served')
    }
  }

  private async startUpstream(m: ServedModel, manifest: Manifest, upstream: UpstreamConfig): Promise<void> {
    let tls: UpstreamTlsMaterial | null = null
    if (upstream.tls) {
      const read = (file: string | undefined) => (file === undefined ? undefined : readFile(path.resolve(this.baseDir, file), 'utf8'))
      const [ca, cert, key] = await Promise.all([read(upstream.tls.caFile), read(upstream.tls.certFile), read(upstream.tls.keyFile)])
      tls = { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}), ...(upstream.tls.serverName ? { servername: upstream.tls.serverName } : {}) }
    }
    const backend = new UpstreamBackend({
      model: m.name,
      manifest,
      config: upstream,
      tls,
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
    const maxBatch = b.enabled ? Math.min(b.maxBatchSize || manifest.maxBatchSize, manifest.maxBatchSize) : 1
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
      onExecuted: (times) => this.deps.onExecuted?.(m.name, times),
    })
    m.state = 'ready'
    m.reason = null
    this.deps.log.info({ model: m.name, version: manifest.version, ...logFields, maxBatch }, message)
  }

  /**
   * Whether a request for `name` would find the model's queue full (load shedding checks this
   * on arrival, before the body is read). False for unknown or unloaded models: the pipeline
   * refuses those with their own codes.
   */
  queueFull(name: string): boolean {
    const b = this.models.get(name)?.batcher
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

  list(): ServedModel[] {
    return [...this.models.values()]
  }

  allReady(): boolean {
    return this.list().every((m) => m.state === 'ready')
  }

  /** The model, checked against the requested version; throws 404s with clear messages. */
  get(name: string, version: string | null): ServedModel {
    const m = this.models.get(name)
    if (!m) throw new BulwarkError('model_not_found', `no model named "${name.slice(0, 64)}" is served here; GET /v2/models/{name} for a served model`)
    return checkVersion(m, version)
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
    if (pinned) return checkVersion(pinned, version)
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
    const next = this.fresh(name)
    await this.loadOne(next, await this.signingKey())
    if (next.state !== 'ready') {
      await next.backend?.close()
      return next.reason ?? 'not ready'
    }
    const old = this.models.get(name)
    this.models.set(name, next)
    if (old) this.retire(old)
    this.deps.onChange?.(name)
    return null
  }

  /** Serves the model no more: new requests get 404; requests already pinned to it finish, then it closes. */
  unload(name: string): boolean {
    const old = this.models.get(name)
    if (!old) return false
    this.models.delete(name)
    this.retire(old)
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
      this.deps.log.info({ model: m.name, version: m.manifest?.version }, 'model version closed: its last request is done')
    } catch (err) {
      this.deps.log.warn({ model: m.name, err: (err as Error).message }, 'closing a retired model version failed')
    } finally {
      this.retired.delete(m)
    }
  }

  /** Resolves when no model has queued or running work. */
  async drain(): Promise<void> {
    await Promise.all([...this.list(), ...this.retired].map((m) => m.batcher?.drain()))
  }

  async close(): Promise<void> {
    await Promise.all([...this.list(), ...this.retired].map((m) => m.backend?.close()))
  }
}

function checkVersion(m: ServedModel, version: string | null): ServedModel {
  if (version !== null && m.manifest && m.manifest.version !== version) {
    throw new BulwarkError('version_not_found', `model "${m.name}" has no version "${version.slice(0, 32)}"; served version is "${m.manifest.version}"`)
  }
  return m
}
