// The development PKI: a CA, a server certificate for localhost, a client certificate with a
// SPIFFE ID, and a JWT signing key with its public JWKS, so that `npm start` serves mTLS and
// JWT with nothing else installed. Built with @peculiar/x509 on WebCrypto keys (ECDSA P-256:
// small, fast handshakes). Also the toolkit the tests use to make foreign CAs, expired
// certificates and rotated files.
//
// Time and serial numbers come from the caller's Clock and RandomSource; key generation uses
// WebCrypto's own CSPRNG (keys must never be reproducible).

import { webcrypto } from 'node:crypto'
import { chmod, mkdir, open, readFile, rename, stat } from 'node:fs/promises'
import path from 'node:path'
// @peculiar/x509's dependency injection (tsyringe) reads the Reflect metadata API at load time.
import 'reflect-metadata'
import * as x509 from '@peculiar/x509'
import { calculateJwkThumbprint, exportJWK, type JWK } from 'jose'
import { DEV_WORKLOAD } from '../config/security.ts'
import type { Clock, RandomSource } from '../deps.ts'

type CryptoKey = webcrypto.CryptoKey
type CryptoKeyPair = webcrypto.CryptoKeyPair

const crypto = webcrypto
x509.cryptoProvider.set(crypto as unknown as Parameters<typeof x509.cryptoProvider.set>[1])

const EC: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' }
const SIGNING: webcrypto.EcdsaParams = { name: 'ECDSA', hash: 'SHA-256' }
const DAY_MS = 86_400_000

export interface PkiDeps {
  clock: Clock
  random: RandomSource
}

/** A certificate with its private key, both PEM. */
export interface KeyedCertificate {
  certPem: string
  keyPem: string
}

/** A CA that can issue certificates. */
export interface CertificateAuthority extends KeyedCertificate {
  readonly cert: x509.X509Certificate
  readonly keys: CryptoKeyPair
}

export interface IssueOptions {
  commonName: string
  /** server: serverAuth EKU; client: clientAuth EKU. */
  usage: 'server' | 'client'
  dnsNames?: string[]
  ipAddresses?: string[]
  /** URI SANs, e.g. a SPIFFE ID. */
  uris?: string[]
  /** Validity window in ms since the epoch; default: from one minute ago for validDays. */
  notBeforeMs?: number
  notAfterMs?: number
  validDays?: number
}

function serial(random: RandomSource): string {
  const b = random.bytes(16)
  b[0] = b[0]! & 0x7f // positive
  return Buffer.from(b).toString('hex')
}

async function keyPem(key: CryptoKey): Promise<string> {
  const der = await crypto.subtle.exportKey('pkcs8', key)
  return x509.PemConverter.encode(der, 'PRIVATE KEY') + '\n'
}

async function newKeys(): Promise<CryptoKeyPair> {
  return crypto.subtle.generateKey(EC, true, ['sign', 'verify']) as Promise<CryptoKeyPair>
}

function validity(deps: PkiDeps, o: { notBeforeMs?: number; notAfterMs?: number; validDays?: number }, days: number) {
  const now = deps.clock.nowMs()
  const notBefore = new Date(o.notBeforeMs ?? now - 60_000)
  const notAfter = new Date(o.notAfterMs ?? now + (o.validDays ?? days) * DAY_MS)
  return { notBefore, notAfter }
}

/** A self-signed CA (ECDSA P-256). */
export async function createCa(
  deps: PkiDeps,
  o: { commonName: string; notBeforeMs?: number; notAfterMs?: number; validDays?: number },
): Promise<CertificateAuthority> {
  const keys = await newKeys()
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(deps.random),
    name: `CN=${o.commonName}`,
    ...validity(deps, o, 3650),
    keys,
    signingAlgorithm: SIGNING,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  })
  return { cert, keys, certPem: cert.toString('pem') + '\n', keyPem: await keyPem(keys.privateKey) }
}

/** A CA from its PEM certificate and PKCS#8 key (e.g. the development CA on disk), to issue more. */
export async function loadCertificateAuthority(certPem: string, keyPem: string): Promise<CertificateAuthority> {
  const cert = new x509.X509Certificate(certPem)
  const der = x509.PemConverter.decodeFirst(keyPem)
  const privateKey = await crypto.subtle.importKey('pkcs8', der, EC, true, ['sign'])
  const publicKey = await cert.publicKey.export(EC, ['verify'], crypto as unknown as Parameters<typeof cert.publicKey.export>[2])
  return { cert, keys: { privateKey, publicKey: publicKey as unknown as CryptoKey }, certPem, keyPem }
}

/** A leaf certificate signed by `ca`, with a fresh key. */
export async function issueCertificate(ca: CertificateAuthority, deps: PkiDeps, o: IssueOptions): Promise<KeyedCertificate> {
  const keys = await newKeys()
  const names: { type: 'dns' | 'ip' | 'url'; value: string }[] = [
    ...(o.dnsNames ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(o.ipAddresses ?? []).map((value) => ({ type: 'ip' as const, value })),
    ...(o.uris ?? []).map((value) => ({ type: 'url' as const, value })),
  ]
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension([o.usage === 'server' ? x509.ExtendedKeyUsage.serverAuth : x509.ExtendedKeyUsage.clientAuth], false),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(ca.keys.publicKey),
  ]
  if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names, false))
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(deps.random),
    subject: `CN=${o.commonName}`,
    issuer: ca.cert.subject,
    ...validity(deps, o, 365),
    publicKey: keys.publicKey,
    signingKey: ca.keys.privateKey,
    signingAlgorithm: SIGNING,
    extensions,
  })
  return { certPem: cert.toString('pem') + '\n', keyPem: await keyPem(keys.privateKey) }
}

/** A JWT signing key (ES256) and its public JWKS; `kid` is the key's JWK thumbprint. */
export async function createSigningKey(): Promise<{ keyPem: string; kid: string; jwks: { keys: JWK[] } }> {
  const keys = await newKeys()
  const jwk = await exportJWK(keys.publicKey)
  const kid = await calculateJwkThumbprint(jwk)
  return { keyPem: await keyPem(keys.privateKey), kid, jwks: { keys: [{ ...jwk, kid, alg: 'ES256', use: 'sig' }] } }
}

/** The files of the development PKI, by role, relative to its directory. */
export const DEV_FILES = {
  ca: 'ca.pem',
  caKey: 'ca-key.pem',
  serverCert: 'server.pem',
  serverKey: 'server-key.pem',
  clientCert: 'client.pem',
  clientKey: 'client-key.pem',
  jwtKey: 'jwt-key.pem',
  jwks: 'jwks.json',
} as const

const PRIVATE: ReadonlySet<string> = new Set([DEV_FILES.caKey, DEV_FILES.serverKey, DEV_FILES.clientKey, DEV_FILES.jwtKey])

/**
 * Writes `data` to `file` atomically (temporary file, then rename), so a gateway watching the
 * file never reads half of it. Private keys are created with mode 0600.
 */
let tmpCounter = 0
export async function writeFileAtomic(file: string, data: string, mode = 0o644): Promise<void> {
  const tmp = `${file}.tmp-${++tmpCounter}`
  const fh = await open(tmp, 'w', mode)
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
  await chmod(tmp, mode) // the umask may have narrowed or (for keys) must not widen it
  await rename(tmp, file)
}

export interface DevPki {
  dir: string
  /** Absolute path of each file. */
  files: { [K in keyof typeof DEV_FILES]: string }
}

export function devPkiPaths(dir: string): DevPki {
  const abs = path.resolve(dir)
  const files = Object.fromEntries(Object.entries(DEV_FILES).map(([k, v]) => [k, path.join(abs, v)])) as DevPki['files']
  return { dir: abs, files }
}

/** Why the development PKI in `dir` is not usable (missing file, expired certificate), or null. */
export async function devPkiProblem(dir: string, clock: Clock): Promise<string | null> {
  const { files } = devPkiPaths(dir)
  for (const file of Object.values(files)) {
    try {
      await stat(file)
    } catch {
      return `${file} is missing`
    }
  }
  for (const file of [files.ca, files.serverCert, files.clientCert]) {
    const cert = new x509.X509Certificate(await readFile(file, 'utf8'))
    if (cert.notAfter.getTime() < clock.nowMs() + DAY_MS) return `${file} expires ${cert.notAfter.toISOString()}`
  }
  return null
}

/**
 * Creates the whole development PKI under `dir` (mode 0700; private keys 0600): a CA, a
 * server certificate for localhost and 127.0.0.1, a client certificate for the dev workload
 * (spiffe://bulwark.local/ns/default/sa/dev) and a JWT signing key with its JWKS.
 */
export async function writeDevPki(dir: string, deps: PkiDeps): Promise<DevPki> {
  const pki = devPkiPaths(dir)
  await mkdir(pki.dir, { recursive: true, mode: 0o700 })
  const ca = await createCa(deps, { commonName: 'Bulwark development CA' })
  const server = await issueCertificate(ca, deps, { commonName: 'localhost', usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1', '::1'] })
  const client = await issueCertificate(ca, deps, { commonName: 'dev', usage: 'client', uris: [DEV_WORKLOAD] })
  const signing = await createSigningKey()
  const contents: Record<string, string> = {
    [DEV_FILES.caKey]: ca.keyPem,
    [DEV_FILES.serverKey]: server.keyPem,
    [DEV_FILES.clientKey]: client.keyPem,
    [DEV_FILES.jwtKey]: signing.keyPem,
    [DEV_FILES.ca]: ca.certPem,
    [DEV_FILES.serverCert]: server.certPem,
    [DEV_FILES.clientCert]: client.certPem,
    [DEV_FILES.jwks]: JSON.stringify(signing.jwks, null, 2) + '\n',
  }
  // Keys first: a gateway that watches these files sees a new certificate only with its key in place.
  for (const [name, data] of Object.entries(contents)) {
    await writeFileAtomic(path.join(pki.dir, name), data, PRIVATE.has(name) ? 0o600 : 0o644)
  }
  return pki
}

/** Creates the development PKI unless a usable one is there. Returns what was done, for the log. */
export async function ensureDevPki(dir: string, deps: PkiDeps): Promise<{ pki: DevPki; created: boolean; why: string | null }> {
  const why = await devPkiProblem(dir, deps.clock)
  if (why === null) return { pki: devPkiPaths(dir), created: false, why }
  return { pki: await writeDevPki(dir, deps), created: true, why }
}
