// mTLS termination for the API listener: the TLS options (TLS 1.3 by default, TLS 1.2 with
// AEAD suites only when configured, client certificate required and verified against the CA
// bundle), and hot reload of the certificate, key and CA files.
//
// Reload: cert-manager and SPIRE rotate these files often, usually by an atomic rename or a
// symlink swap. The files are re-read when a file-system event fires in their folders, and
// every reloadCheckIntervalMs besides (events miss some swaps); when their content changed and
// the new set is consistent (the key matches the certificate, the CA parses), the server's
// secure context is replaced with `server.setSecureContext()`. New handshakes use the new
// files; open connections keep theirs and are not dropped. An inconsistent set (a rotation
// caught half-way, key written before certificate) keeps the old context and is retried at the
// next event or tick, with one warning per distinct bad state.

import { createHash, type X509Certificate } from 'node:crypto'
import { watch, type FSWatcher } from 'node:fs'
import { readFile } from 'node:fs/promises'
import type { Server as HttpsServer, ServerOptions as HttpsServerOptions } from 'node:https'
import path from 'node:path'
import { createSecureContext, type SecureContextOptions, type TLSSocket } from 'node:tls'
import { ConfigError } from '../config/load.ts'
import type { TlsConfig } from '../config/security.ts'
import { systemClock, type Clock, type Logger, type Timer } from '../deps.ts'

/** The TLS 1.3 suites (all AEAD), offered first whatever the minimum version. */
const TLS13_CIPHERS = ['TLS_AES_128_GCM_SHA256', 'TLS_AES_256_GCM_SHA384', 'TLS_CHACHA20_POLY1305_SHA256']

export interface TlsMaterial {
  cert: string
  key: string
  ca: string
  /** SHA-256 over the three files, to tell a change from a touch. */
  digest: string
}

export interface TlsPaths {
  certFile: string
  keyFile: string
  caFile: string
}

export function tlsPaths(config: TlsConfig, baseDir: string): TlsPaths {
  return {
    certFile: path.resolve(baseDir, config.certFile),
    keyFile: path.resolve(baseDir, config.keyFile),
    caFile: path.resolve(baseDir, config.caFile),
  }
}

/** The options that make a secure context (also what setSecureContext takes). */
function contextOptions(config: TlsConfig, m: TlsMaterial): SecureContextOptions {
  const ciphers = config.minVersion === 'TLSv1.2' ? [...TLS13_CIPHERS, ...config.tls12Ciphers] : TLS13_CIPHERS
  return {
    cert: m.cert,
    key: m.key,
    ca: m.ca,
    minVersion: config.minVersion,
    maxVersion: 'TLSv1.3',
    ciphers: ciphers.join(':'),
    honorCipherOrder: true,
  }
}

async function readMaterial(paths: TlsPaths): Promise<TlsMaterial> {
  const [cert, key, ca] = await Promise.all([readFile(paths.certFile, 'utf8'), readFile(paths.keyFile, 'utf8'), readFile(paths.caFile, 'utf8')])
  const digest = createHash('sha256').update(cert).update('\0').update(key).update('\0').update(ca).digest('hex')
  return { cert, key, ca, digest }
}

/** Throws when the files do not make a usable context (key does not match certificate, bad PEM). */
function validate(config: TlsConfig, m: TlsMaterial): void {
  createSecureContext(contextOptions(config, m))
  if (!/-----BEGIN CERTIFICATE-----/.test(m.ca)) throw new Error('the CA file holds no PEM certificate')
}

/** Reads and checks the TLS files at start; every problem stops the start with the file named. */
export async function loadTlsMaterial(config: TlsConfig, baseDir: string): Promise<TlsMaterial> {
  const paths = tlsPaths(config, baseDir)
  let m: TlsMaterial
  try {
    m = await readMaterial(paths)
  } catch (err) {
    throw new ConfigError('tls', [`cannot read a TLS file: ${(err as Error).message}; check tls.certFile, tls.keyFile, tls.caFile (or run \`npx bulwark dev-pki\`)`])
  }
  try {
    validate(config, m)
  } catch (err) {
    throw new ConfigError('tls', [`${paths.certFile}, ${paths.keyFile}, ${paths.caFile} do not make a TLS context: ${(err as Error).message}; check that the key belongs to the certificate`])
  }
  return m
}

/**
 * Options for https.createServer: the secure context plus the client-certificate request.
 * The certificate is required and verified by requireClientCertificates() below, which must
 * be attached to the server: Node's own `rejectUnauthorized` would drop such connections
 * without a word, and the operator could not learn why a workload cannot connect.
 */
export function httpsServerOptions(config: TlsConfig, m: TlsMaterial, extra: { maxHeaderSize: number }): HttpsServerOptions {
  return {
    ...contextOptions(config, m),
    requestCert: true,
    rejectUnauthorized: false,
    handshakeTimeout: config.handshakeTimeoutMs,
    maxHeaderSize: extra.maxHeaderSize,
  }
}

/**
 * mTLS enforcement: a connection whose client presented no certificate, or one that does not
 * chain to the CA bundle or is outside its validity dates, is destroyed as soon as its
 * handshake completes, before the HTTP layer reads a byte from it (this listener runs first,
 * synchronously, and data is only read on a later tick). `onRefused` gets OpenSSL's verdict
 * (CERT_HAS_EXPIRED, UNABLE_TO_VERIFY_LEAF_SIGNATURE, ...) or NO_CLIENT_CERTIFICATE.
 * Handshakes that fail outright (protocol version, no shared cipher, timeout) are reported by
 * the server's 'tlsClientError' event instead. The mtls-identity stage checks `authorized`
 * again for every request, so a connection that slipped through would still get no answer.
 */
export function requireClientCertificates(server: HttpsServer, onRefused: (reason: string, socket: TLSSocket) => void): void {
  server.prependListener('secureConnection', (socket: TLSSocket) => {
    if (socket.authorized) {
      // The identity is read once per connection; a TLS 1.2 renegotiation must not swap the certificate under it.
      if (socket.getProtocol() !== 'TLSv1.3') socket.disableRenegotiation()
      return
    }
    const hasCert = Object.keys(socket.getPeerCertificate() ?? {}).length > 0
    const err = socket.authorizationError as unknown
    const reason = !hasCert ? 'NO_CLIENT_CERTIFICATE' : typeof err === 'string' ? err : ((err as { code?: string } | null)?.code ?? 'UNVERIFIED')
    socket.destroy()
    onRefused(reason, socket)
  })
}

export type ReloadOutcome = 'changed' | 'unchanged' | 'failed'

export interface TlsReloaderDeps {
  log: Logger
  /** Times the periodic check and the debounce (default: the system clock). */
  clock?: Clock
  onReload?: (outcome: ReloadOutcome) => void
}

export class TlsReloader {
  readonly paths: TlsPaths
  private readonly config: TlsConfig
  private readonly deps: TlsReloaderDeps
  private current: TlsMaterial
  private lastBadDigest: string | null = null
  private server: HttpsServer | null = null
  private watchers: FSWatcher[] = []
  private readonly clock: Clock
  private timer: Timer | null = null
  private debounce: Timer | null = null
  private inFlight: Promise<ReloadOutcome> | null = null
  /** How many times the secure context was replaced. */
  generation = 0

  constructor(config: TlsConfig, baseDir: string, initial: TlsMaterial, deps: TlsReloaderDeps) {
    this.config = config
    this.paths = tlsPaths(config, baseDir)
    this.current = initial
    this.deps = deps
    this.clock = deps.clock ?? systemClock
  }

  /** Starts watching the files and applying changes to `server`. */
  attach(server: HttpsServer): void {
    this.server = server
    const dirs = new Set(Object.values(this.paths).map((f) => path.dirname(f)))
    for (const dir of dirs) {
      try {
        const w = watch(dir, { persistent: false }, () => this.soon())
        w.on('error', () => {}) // a vanished folder: the interval still checks
        this.watchers.push(w)
      } catch (err) {
        this.deps.log.warn({ dir, err: (err as Error).message }, 'cannot watch TLS folder; relying on the periodic check')
      }
    }
    // Reload checks alone must not keep a stopping process up.
    this.timer = this.clock.setInterval(() => void this.check(), this.config.reloadCheckIntervalMs, { keepAlive: false })
  }

  /** Events come in bursts (write, rename, chmod): check once, shortly after the last. */
  private soon(): void {
    this.debounce?.cancel()
    this.debounce = this.clock.setTimeout(() => void this.check(), 50, { keepAlive: false })
  }

  /** Re-reads the files; applies them if they changed and are consistent. */
  check(): Promise<ReloadOutcome> {
    this.inFlight ??= this.reload().finally(() => (this.inFlight = null))
    return this.inFlight
  }

  private async reload(): Promise<ReloadOutcome> {
    let next: TlsMaterial
    try {
      next = await readMaterial(this.paths)
    } catch (err) {
      return this.failed(`read:${(err as Error).message}`, err)
    }
    if (next.digest === this.current.digest) return 'unchanged'
    try {
      validate(this.config, next)
      this.server?.setSecureContext(contextOptions(this.config, next))
    } catch (err) {
      return this.failed(next.digest, err)
    }
    this.current = next
    this.lastBadDigest = null
    this.generation++
    this.deps.log.info({ ...this.paths, generation: this.generation }, 'TLS certificate, key or CA changed on disk; new connections use them')
    this.deps.onReload?.('changed')
    return 'changed'
  }

  private failed(state: string, err: unknown): ReloadOutcome {
    if (state !== this.lastBadDigest) {
      this.lastBadDigest = state
      this.deps.log.warn({ ...this.paths, err: (err as Error).message }, 'TLS files changed but cannot be used yet; keeping the current ones and retrying')
      this.deps.onReload?.('failed')
    }
    return 'failed'
  }

  close(): void {
    for (const w of this.watchers) w.close()
    this.watchers = []
    this.timer?.cancel()
    this.debounce?.cancel()
    this.timer = this.debounce = null
  }
}

const peerCache = new WeakMap<TLSSocket, X509Certificate | null>()

/**
 * The client certificate of a TLS connection, if the handshake verified it; parsed once per
 * connection, so every request on a keep-alive connection sees the same object.
 */
export function verifiedPeerCertificate(socket: TLSSocket): X509Certificate | null {
  let cert = peerCache.get(socket)
  if (cert === undefined) {
    cert = socket.authorized ? (socket.getPeerX509Certificate() ?? null) : null
    peerCache.set(socket, cert)
  }
  return cert
}

/** A bounded label for a failed handshake: the OpenSSL/Node error code, or "other". */
export function handshakeFailureReason(err: Error & { code?: string }): string {
  const code = err.code
  return typeof code === 'string' && /^[A-Z0-9_]{1,64}$/.test(code) ? code : 'other'
}
