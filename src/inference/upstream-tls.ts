// The TLS files of upstream calls (models.serve[].upstream.tls): the CA bundle the pods'
// server certificates must chain to, and Bulwark's own client certificate and key. They are
// read at start and re-read when they change on disk, as the listener's are
// (src/transport/tls.ts): a client certificate in Kubernetes rotates (a SPIFFE SVID every
// hour), and a gateway that kept presenting the old one would fail every call once it expired.
//
// A check runs shortly after a file-system event in the files' folders and every
// reloadCheckIntervalMs besides (src/transport/file-watch.ts). When the content changed and the
// new set is usable (each file parses, the key belongs to the certificate), the backend gets
// it (apply): new upstream calls use it, calls in flight finish on the connections they have.
// A set that is not usable (a rotation caught half-way: the certificate written, its key not
// yet) keeps the material in use, logs an error once per distinct bad state, and is checked
// again at the next event or tick.

import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { createSecureContext } from 'node:tls'
import type { UpstreamConfig } from '../config/scaleout.ts'
import type { Clock, Logger } from '../deps.ts'
import { watchFiles, type FileWatch } from '../transport/file-watch.ts'
import { parseBundle } from '../transport/tls.ts'
import type { UpstreamTlsMaterial } from './upstream-backend.ts'

/** Absolute paths of the files upstream.tls names (each optional, certFile and keyFile together). */
export interface UpstreamTlsFiles {
  caFile?: string
  certFile?: string
  keyFile?: string
}

/** What the backend needs to watch its TLS files: the files, the material read at start and its digest. */
export interface UpstreamTlsSource {
  files: UpstreamTlsFiles
  servername?: string
  intervalMs: number
  material: UpstreamTlsMaterial
  digest: string
}

export type UpstreamTlsOutcome = 'changed' | 'unchanged' | 'failed'

/** The files upstream.tls names, resolved from the config file's folder. */
export function upstreamTlsFiles(tls: NonNullable<UpstreamConfig['tls']>, baseDir: string): UpstreamTlsFiles {
  const files: UpstreamTlsFiles = {}
  if (tls.caFile !== undefined) files.caFile = path.resolve(baseDir, tls.caFile)
  if (tls.certFile !== undefined) files.certFile = path.resolve(baseDir, tls.certFile)
  if (tls.keyFile !== undefined) files.keyFile = path.resolve(baseDir, tls.keyFile)
  return files
}

/**
 * Reads and checks the files: throws an Error naming the files and what to do when one cannot
 * be read, holds no PEM, or the key does not belong to the certificate.
 */
export async function readUpstreamTls(files: UpstreamTlsFiles, servername: string | undefined): Promise<{ material: UpstreamTlsMaterial; digest: string }> {
  const read = async (file: string | undefined) => {
    if (file === undefined) return undefined
    try {
      // eslint-disable-next-line security/detect-non-literal-fs-filename -- files the operator's upstream.tls names, never a name a request gives
      return await readFile(file, 'utf8')
    } catch (err) {
      throw new Error(`cannot read upstream TLS file ${file}: ${(err as Error).message}`)
    }
  }
  const [ca, cert, key] = await Promise.all([read(files.caFile), read(files.certFile), read(files.keyFile)])
  const material: UpstreamTlsMaterial = { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}), ...(servername ? { servername } : {}) }
  try {
    if (files.caFile !== undefined && parseBundle(ca ?? '').length === 0) throw new Error('the CA file holds no PEM certificate')
    if (files.certFile !== undefined && parseBundle(cert ?? '').length === 0) throw new Error('the certificate file holds no PEM certificate')
    // Throws when the key does not match the certificate, or either does not parse.
    createSecureContext({ ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}) })
  } catch (err) {
    const named = [files.certFile, files.keyFile, files.caFile].filter((f) => f !== undefined).join(', ')
    throw new Error(`upstream TLS files ${named} cannot be used: ${(err as Error).message}; the key must belong to the certificate, and each file must be PEM`)
  }
  const digest = createHash('sha256').update(ca ?? '').update('\0').update(cert ?? '').update('\0').update(key ?? '').digest('hex')
  return { material, digest }
}

export interface UpstreamTlsWatcherDeps {
  /** The model whose calls use the files (logs). */
  model: string
  clock: Clock
  log: Logger
  /** Gets each new usable set; new calls must use it from now on. */
  apply: (material: UpstreamTlsMaterial) => void
  onReload?: (outcome: 'changed' | 'failed') => void
}

export class UpstreamTlsWatcher {
  /** How many times new material was applied. */
  generation = 0
  private readonly source: UpstreamTlsSource
  private readonly deps: UpstreamTlsWatcherDeps
  private digest: string
  private lastBad: string | null = null
  private inFlight: Promise<UpstreamTlsOutcome> | null = null
  private watch: FileWatch | null = null
  private closed = false

  constructor(source: UpstreamTlsSource, deps: UpstreamTlsWatcherDeps) {
    this.source = source
    this.deps = deps
    this.digest = source.digest
  }

  /** Starts the file-system watch and the periodic check. */
  start(): void {
    if (this.closed || this.watch) return
    const { caFile, certFile, keyFile } = this.source.files
    this.watch = watchFiles({
      files: [caFile, certFile, keyFile].filter((f) => f !== undefined),
      intervalMs: this.source.intervalMs,
      clock: this.deps.clock,
      log: this.deps.log,
      what: 'upstream TLS',
      check: () => void this.check(),
    })
  }

  /** Re-reads the files; applies them if they changed and are usable. A call while one runs joins it. */
  check(): Promise<UpstreamTlsOutcome> {
    this.inFlight ??= this.reload().finally(() => (this.inFlight = null))
    return this.inFlight
  }

  private async reload(): Promise<UpstreamTlsOutcome> {
    let next: { material: UpstreamTlsMaterial; digest: string }
    try {
      next = await readUpstreamTls(this.source.files, this.source.servername)
    } catch (err) {
      return this.failed(err as Error)
    }
    if (this.closed) return 'unchanged'
    if (next.digest === this.digest) {
      this.lastBad = null // back to the files in use (a bad write undone): a new bad state is logged again
      return 'unchanged'
    }
    try {
      this.deps.apply(next.material)
    } catch (err) {
      return this.failed(err as Error)
    }
    this.digest = next.digest
    this.lastBad = null
    this.generation++
    this.deps.log.info({ model: this.deps.model, ...this.source.files, generation: this.generation }, 'upstream TLS files changed on disk; new upstream calls use them')
    this.deps.onReload?.('changed')
    return 'changed'
  }

  private failed(err: Error): UpstreamTlsOutcome {
    if (err.message !== this.lastBad && !this.closed) {
      this.lastBad = err.message
      this.deps.log.error(
        { model: this.deps.model, ...this.source.files, err: err.message },
        'upstream TLS files changed but cannot be used; upstream calls keep the certificate in use, and the files are checked again at the next change or reloadCheckIntervalMs: write the certificate and its key together',
      )
      this.deps.onReload?.('failed')
    }
    return 'failed'
  }

  /** Whether the files are being watched (started and not closed). */
  get watching(): boolean {
    return this.watch !== null
  }

  /** Stops watching; idempotent. */
  close(): void {
    this.closed = true
    this.watch?.close()
    this.watch = null
  }
}
