// mTLS termination for the API listener: the TLS options (TLS 1.3 by default, TLS 1.2 with
// AEAD suites only when configured, client certificate required and verified against the CA
// bundle), and hot reload of the certificate, key and CA files.
//
// Reload: cert-manager and SPIRE rotate these files often, usually by an atomic rename or a
// symlink swap. The files are re-read when a file-system event fires in their folders, and
// every reloadCheckIntervalMs besides (events miss some swaps); when their content changed and
// the new set is consistent (the key matches the certificate, the CA parses), the server's
// secure context is replaced with `server.setSecureContext()`. New handshakes use the new
// files; open connections keep theirs and are not dropped, unless the CA bundle changed and
// the connection's client certificate no longer chains to it: a CA taken out of the bundle is
// distrusted, and a keep-alive connection must not outlive that trust. Those are closed at
// once (and handshakes that began under the old bundle are checked as they complete). An
// inconsistent set (a rotation caught half-way, key written before certificate) keeps the old
// context and is retried at the next event or tick, with one warning per distinct bad state.

import { createHash, X509Certificate } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import type { Server as HttpsServer, ServerOptions as HttpsServerOptions } from 'node:https'
import path from 'node:path'
import { createSecureContext, type DetailedPeerCertificate, type SecureContextOptions, type TLSSocket } from 'node:tls'
import { ConfigError } from '../config/load.ts'
import type { TlsConfig } from '../config/security.ts'
import { systemClock, type Clock, type Logger } from '../deps.ts'
import { watchFiles, type FileWatch } from './file-watch.ts'

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
export function httpsServerOptions(config: TlsConfig, m: TlsMaterial, receiving: { maxHeaderSize: number; connectionsCheckingInterval?: number }): HttpsServerOptions {
  return {
    ...contextOptions(config, m),
    requestCert: true,
    rejectUnauthorized: false,
    handshakeTimeout: config.handshakeTimeoutMs,
    ...receiving,
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

/** Longest certificate chain followed, leaf and trust anchor included. */
const MAX_CHAIN = 10

/** The certificates of a PEM bundle. */
export function parseBundle(pem: string): X509Certificate[] {
  return [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map((m) => new X509Certificate(m[0]))
}

const issues = (issuer: X509Certificate, cert: X509Certificate) => cert.checkIssued(issuer) && cert.verify(issuer.publicKey)
const validAt = (cert: X509Certificate, nowMs: number) => cert.validFromDate.getTime() <= nowMs && nowMs <= cert.validToDate.getTime()

/**
 * Whether `chain` (leaf first, then what the peer sent and the handshake found) leads to a
 * trust anchor of `bundle`: a self-signed certificate of the bundle, valid at `nowMs`, reached
 * by signatures from the leaf, with the bundle's certificates preferred as issuers. As OpenSSL
 * does by default, a chain that ends at a bundle certificate that is not self-signed does not
 * count (no partial chains). The rest of path validation (the leaf's own dates, key usage) was
 * done at the handshake and does not depend on the bundle.
 */
export function chainsToBundle(chain: readonly X509Certificate[], bundle: readonly X509Certificate[], nowMs: number): boolean {
  const trusted = new Set(bundle.map((c) => c.fingerprint256))
  const pool = [...bundle, ...chain.slice(1)]
  let current = chain[0]
  for (let depth = 0; current !== undefined && depth < MAX_CHAIN; depth++) {
    const cert: X509Certificate = current
    if (trusted.has(cert.fingerprint256) && issues(cert, cert)) return validAt(cert, nowMs)
    current = pool.find((c) => c.fingerprint256 !== cert.fingerprint256 && issues(c, cert))
  }
  return false
}

/** The chain of a connection's peer as Node reports it: leaf, then each issuer it knows. */
function peerChain(socket: TLSSocket): X509Certificate[] {
  const chain: X509Certificate[] = []
  const seen = new Set<DetailedPeerCertificate>()
  for (let c: DetailedPeerCertificate | undefined = socket.getPeerCertificate(true); c?.raw && !seen.has(c) && chain.length < MAX_CHAIN; c = c.issuerCertificate) {
    seen.add(c)
    chain.push(new X509Certificate(c.raw))
  }
  return chain
}

/** What a reload needs of a TLS listener: its context replaced, its new connections seen. */
export interface SecureListener {
  setSecureContext(options: SecureContextOptions): void
  prependListener(event: 'secureConnection', listener: (socket: TLSSocket) => void): unknown
}

export type ReloadOutcome = 'changed' | 'unchanged' | 'failed'

export interface TlsReloaderDeps {
  log: Logger
  /** Times the periodic check and the debounce, and dates the CA's validity (default: the system clock). */
  clock?: Clock
  onReload?: (outcome: ReloadOutcome) => void
  /** Open connections closed because their client certificate no longer chains to the CA bundle. */
  onDistrusted?: (count: number) => void
}

export class TlsReloader {
  readonly paths: TlsPaths
  private readonly config: TlsConfig
  private readonly deps: TlsReloaderDeps
  private current: TlsMaterial
  private lastBadDigest: string | null = null
  private server: HttpsServer | null = null
  private watch: FileWatch | null = null
  private readonly clock: Clock
  private inFlight: Promise<ReloadOutcome> | null = null
  /** The API listener's open connections with a verified client certificate. */
  private readonly open = new Set<TLSSocket>()
  /** The CA bundle's certificates once it changed, and when (monotonic): handshakes begun before are checked against it. */
  private bundleChange: { anchors: X509Certificate[]; atMs: number } | null = null
  /** How many times the secure context was replaced. */
  generation = 0
  /** Listeners besides the API listener that serve the same files (alsoServe). */
  private readonly others: SecureListener[] = []

  constructor(config: TlsConfig, baseDir: string, initial: TlsMaterial, deps: TlsReloaderDeps) {
    this.config = config
    this.paths = tlsPaths(config, baseDir)
    this.current = initial
    this.deps = deps
    this.clock = deps.clock ?? systemClock
  }

  /**
   * Another listener on the same files (the gRPC listener's HTTP/2 server): a reload replaces
   * its context too, and its connections are checked against a changed CA bundle as the API
   * listener's are. Call after attach().
   */
  alsoServe(server: SecureListener): void {
    this.others.push(server)
    server.prependListener('secureConnection', (socket: TLSSocket) => this.track(socket))
  }

  /** Starts watching the files and applying changes to `server`. */
  attach(server: HttpsServer): void {
    this.server = server
    // Before the HTTP layer's listener: a connection closed here has not been read from.
    server.prependListener('secureConnection', (socket: TLSSocket) => this.track(socket))
    this.watch = watchFiles({
      files: Object.values(this.paths),
      intervalMs: this.config.reloadCheckIntervalMs,
      clock: this.clock,
      log: this.deps.log,
      what: 'TLS',
      check: () => void this.check(),
    })
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
    let anchors: X509Certificate[] | null
    try {
      validate(this.config, next)
      anchors = next.ca === this.current.ca ? null : parseBundle(next.ca)
      const options = contextOptions(this.config, next)
      this.server?.setSecureContext(options)
      for (const other of this.others) other.setSecureContext(options)
    } catch (err) {
      return this.failed(next.digest, err)
    }
    this.current = next
    this.lastBadDigest = null
    this.generation++
    this.deps.log.info({ ...this.paths, generation: this.generation }, 'TLS certificate, key or CA changed on disk; new connections use them')
    this.deps.onReload?.('changed')
    if (anchors) this.distrustOpen(anchors)
    return 'changed'
  }

  /** Keeps the verified connections, to be checked again when the CA bundle changes. */
  private track(socket: TLSSocket): void {
    if (!socket.authorized || socket.destroyed) return
    // A handshake that began before the bundle changed was verified against the old one (the
    // context is fixed when the connection is accepted); one that began after passes anyway.
    const change = this.bundleChange
    if (change && this.clock.monotonicMs() - change.atMs <= this.config.handshakeTimeoutMs && !this.trusts(socket, change.anchors)) {
      this.distrust(socket)
      this.deps.onDistrusted?.(1)
      return
    }
    this.open.add(socket)
    socket.once('close', () => this.open.delete(socket))
  }

  /** Closes each open connection whose client certificate does not chain to the new bundle. */
  private distrustOpen(anchors: X509Certificate[]): void {
    this.bundleChange = { anchors, atMs: this.clock.monotonicMs() }
    let closed = 0
    for (const socket of [...this.open]) {
      if (socket.destroyed || this.trusts(socket, anchors)) continue
      this.open.delete(socket)
      this.distrust(socket)
      closed++
    }
    if (closed > 0) this.deps.onDistrusted?.(closed)
  }

  /** Whether the connection's client certificate chains to `anchors` (fails closed: a chain that cannot be read does not). */
  private trusts(socket: TLSSocket, anchors: readonly X509Certificate[]): boolean {
    try {
      return chainsToBundle(peerChain(socket), anchors, this.clock.nowMs())
    } catch {
      return false
    }
  }

  private distrust(socket: TLSSocket): void {
    const leaf = socket.getPeerX509Certificate()
    const remote = socket.remoteAddress
    socket.destroy()
    this.deps.log.warn(
      { caFile: this.paths.caFile, remote, subject: leaf?.subject, certSha256: leaf?.fingerprint256.replace(/:/g, '').toLowerCase() },
      'closed a connection whose client certificate no longer chains to the reloaded CA bundle',
    )
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
    this.watch?.close()
    this.watch = null
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
