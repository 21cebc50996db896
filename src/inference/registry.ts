// The models this gateway serves: reads each configured manifest, checks the model file's
// digest, starts its backend and batcher. A model that fails any step is reported not ready
// with one clear log line, and the others still serve.

import path from 'node:path'
import { readFile } from 'node:fs/promises'
import type { KeyObject } from 'node:crypto'
import { BulwarkError } from '../errors.ts'
import type { Clock, Logger } from '../deps.ts'
import type { Config, ModelSettings } from '../config/schema.ts'
import type { Backend } from './backend.ts'
import { DynamicBatcher } from './batcher.ts'
import { readManifest, readVerifiedModel, type Manifest } from './manifest.ts'
import { OnnxBackend } from './onnx-backend.ts'
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
  backend: Backend | null
  batcher: DynamicBatcher | null
}

export interface RegistryDeps {
  clock: Clock
  log: Logger
  onBatch?: (model: string, items: number) => void
}

/** Config defaults overlaid with a model's own settings. */
function settingsFor(config: Config['models'], name: string): ModelSettings {
  const entry = config.serve.find((m) => m.name === name)!
  return {
    workers: entry.workers ?? config.defaults.workers,
    intraOpThreads: entry.intraOpThreads ?? config.defaults.intraOpThreads,
    executionProviders: entry.executionProviders ?? config.defaults.executionProviders,
    threadNiceness: entry.threadNiceness ?? config.defaults.threadNiceness,
    batching: { ...config.defaults.batching, ...entry.batching },
  }
}

export class ModelRegistry {
  private readonly models = new Map<string, ServedModel>()
  private readonly dir: string
  private readonly deps: RegistryDeps
  /** models.requireSignature: the public key file every model's signature must verify with; null when off. */
  private readonly signingKeyFile: string | null

  constructor(config: Config['models'], baseDir: string, deps: RegistryDeps) {
    this.dir = path.resolve(baseDir, config.directory)
    this.deps = deps
    if (config.requireSignature && config.signingPublicKeyFile === undefined) {
      throw new ConfigError('the configuration', ['/models/signingPublicKeyFile: required when /models/requireSignature is on; give the PEM public key that model signatures must verify with'])
    }
    this.signingKeyFile = config.requireSignature ? path.resolve(baseDir, config.signingPublicKeyFile!) : null
    for (const entry of config.serve) {
      this.models.set(entry.name, {
        name: entry.name,
        manifest: null,
        state: 'loading',
        reason: 'loading',
        settings: settingsFor(config, entry.name),
        backend: null,
        batcher: null,
      })
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
      const bytes = await readVerifiedModel(m.manifest, manifestPath)
      if (signing) {
        const problem = 'key' in signing ? await checkModelSignature(path.dirname(manifestPath), m.manifest, bytes, signing.key) : signing.problem
        if (problem !== null) throw new Error(`${m.name}: ${problem}`)
      }
      const backend = await OnnxBackend.create({
        model: m.name,
        bytes,
        workers: m.settings.workers,
        intraOpThreads: m.settings.intraOpThreads,
        executionProviders: m.settings.executionProviders,
        niceness: m.settings.threadNiceness,
        log: this.deps.log,
      })
      const b = m.settings.batching
      const maxBatch = b.enabled ? Math.min(b.maxBatchSize || m.manifest.maxBatchSize, m.manifest.maxBatchSize) : 1
      m.backend = backend
      m.batcher = new DynamicBatcher({
        model: m.name,
        backend,
        maxBatchSize: maxBatch,
        maxQueueDelayMicros: b.maxQueueDelayMicros,
        maxQueueSize: b.maxQueueSize,
        outputNames: m.manifest.outputs.map((o) => o.name),
        clock: this.deps.clock,
        onBatch: (items) => this.deps.onBatch?.(m.name, items),
      })
      m.state = 'ready'
      m.reason = null
      this.deps.log.info(
        { model: m.name, version: m.manifest.version, provider: backend.executionProvider, workers: m.settings.workers, maxBatch },
        'model ready',
      )
    } catch (err) {
      m.state = 'failed'
      m.reason = (err as Error).message
      this.deps.log.error({ model: m.name, err: m.reason }, 'model not served')
    }
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
    if (version !== null && m.manifest && m.manifest.version !== version) {
      throw new BulwarkError('version_not_found', `model "${name}" has no version "${version.slice(0, 32)}"; served version is "${m.manifest.version}"`)
    }
    return m
  }

  /** The manifest of a ready model (for validation). */
  manifest(name: string, version: string | null): Manifest {
    const m = this.ready(name, version)
    return m.manifest!
  }

  /** The model if it is ready to infer; else 503 model_not_ready. */
  ready(name: string, version: string | null): ServedModel {
    const m = this.get(name, version)
    if (m.state !== 'ready') {
      throw new BulwarkError('model_not_ready', `model "${name}" is not ready; retry later or check /readyz`, {
        reason: m.reason ?? m.state,
        headers: { 'retry-after': '5' },
      })
    }
    return m
  }

  /** Resolves when no model has queued or running work. */
  async drain(): Promise<void> {
    await Promise.all(this.list().map((m) => m.batcher?.drain()))
  }

  async close(): Promise<void> {
    await Promise.all(this.list().map((m) => m.backend?.close()))
  }
}
