// Model signatures in the OpenSSF model-signing format (sigstore/model-transparency v1.0),
// key-based: a Sigstore bundle (JSON) holding a DSSE envelope over an in-toto v1 statement
// whose predicate lists every signed file with its SHA-256.
//
//   models/<name>/model.sig.json
//   { mediaType: application/vnd.dev.sigstore.bundle.v0.3+json,
//     verificationMaterial: { publicKey: { hint: sha256(SPKI PEM of the signing key) } },
//     dsseEnvelope: { payloadType: application/vnd.in-toto+json, payload: b64(statement),
//                     signatures: [{ sig: b64(ECDSA-DER over PAE(payloadType, payload)) }] } }
//   statement = { _type: https://in-toto.io/Statement/v1,
//     subject: [{ name: <model name>, digest: { sha256: sha256(concat of resource digests) } }],
//     predicateType: https://model_signing/signature/v1.0,
//     predicate: { serialization: { method: files, hash_type: sha256, allow_symlinks: false,
//                                   ignore_paths: [...] },
//                  resources: [{ name, algorithm: sha256, digest }] (sorted by name) } }
//
// What is signed: the manifest (`manifest.json`, its exact bytes) and the model bytes. A model
// given by `file` is named by its path inside the model folder (`model.onnx`), as upstream
// names files; a model shipped in an npm package (`package`) is outside the folder and is
// named `npm:<package>/<path>`: upstream's verifier cannot re-hash that one, ours can. The
// other files in the folder (training scripts) are recorded in ignore_paths, as upstream does
// for files it leaves out. Keys: ECDSA P-256, P-384 or P-521 (SHA-256/384/512), as upstream's
// key signer; Sigstore keyless signing (Fulcio, Rekor) needs the network and is not offered.
//
// Verification never trusts the bundle's own claims: the signature is checked with the
// operator's public key, the statement's root digest is recomputed, and every listed resource
// is re-hashed from the bytes the gateway is about to load. Nothing here throws for a bad
// signature: results say what is wrong, phrased for the operator.

import { createHash, createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { isDeepStrictEqual } from 'node:util'
import { modelFilePath, readManifest, readVerifiedModel, type Manifest } from '../inference/manifest.ts'

export const SIGNATURE_FILE = 'model.sig.json'
export const MANIFEST_FILE = 'manifest.json'
export const BUNDLE_MEDIA_TYPE = 'application/vnd.dev.sigstore.bundle.v0.3+json'
export const IN_TOTO_PAYLOAD_TYPE = 'application/vnd.in-toto+json'
export const STATEMENT_TYPE = 'https://in-toto.io/Statement/v1'
export const PREDICATE_TYPE = 'https://model_signing/signature/v1.0'

/** Curves upstream's key signer accepts, with the hash each one signs with. */
const CURVE_HASH: ReadonlyMap<string, string> = new Map([
  ['prime256v1', 'sha256'],
  ['secp384r1', 'sha384'],
  ['secp521r1', 'sha512'],
])

/** Largest signature file read; a real one is a few KiB. */
const MAX_SIGNATURE_BYTES = 1024 * 1024

export interface Resource {
  name: string
  algorithm: 'sha256'
  digest: string
}

export interface Statement {
  _type: string
  subject: { name: string; digest: { sha256: string } }[]
  predicateType: string
  predicate: {
    serialization: { method: string; hash_type: string; allow_symlinks: boolean; ignore_paths: string[] }
    resources: Resource[]
  }
}

export interface SignatureBundle {
  mediaType: string
  verificationMaterial: { publicKey: { hint: string } }
  dsseEnvelope: { payload: string; payloadType: string; signatures: { sig: string; keyid?: string }[] }
}

/** What a model is made of, as the gateway loads it. */
export interface ModelContent {
  manifest: Manifest
  /** The manifest file's exact bytes. */
  manifestBytes: Uint8Array
  /** The resource name of the model bytes: the `file` path, or `npm:<package>/<path>`. */
  modelResource: string
  /**
   * The model bytes, or null for a model served by remote model pods (models.serve[].upstream):
   * then the signed digest of the model must be the one the signed manifest pins, and the
   * bytes themselves are the model server's to check.
   */
  modelBytes: Uint8Array | null
}

/** A model whose bytes are here (what signing needs). */
export type LocalModelContent = ModelContent & { modelBytes: Uint8Array }

export type VerifyFailure = 'unsigned' | 'malformed' | 'wrong_key' | 'bad_signature' | 'content_mismatch'

export type VerifyResult =
  | { ok: true; rootDigest: string; keyHint: string; resources: Resource[] }
  | { ok: false; failure: VerifyFailure; reason: string }

export const sha256Hex = (bytes: Uint8Array | string): string => createHash('sha256').update(bytes).digest('hex')

/** DSSE pre-authentication encoding: "DSSEv1 <len type> <type> <len body> <body>" (lengths in bytes). */
export function pae(payloadType: string, payload: Uint8Array): Buffer {
  const type = Buffer.from(payloadType, 'utf8')
  return Buffer.concat([Buffer.from(`DSSEv1 ${type.length} `), type, Buffer.from(` ${payload.length} `), payload])
}

/** The key's hint as upstream writes it: SHA-256 hex of its SubjectPublicKeyInfo PEM. */
export function keyHint(publicKey: KeyObject): string {
  return sha256Hex(publicKey.export({ type: 'spki', format: 'pem' }) as string)
}

function curveHash(key: KeyObject, role: string): string {
  const curve = key.asymmetricKeyType === 'ec' ? key.asymmetricKeyDetails?.namedCurve : undefined
  const digestName = curve === undefined ? undefined : CURVE_HASH.get(curve)
  if (digestName === undefined) {
    throw new Error(`the model signing ${role} key must be ECDSA P-256, P-384 or P-521 (as OpenSSF model signing uses), not ${key.asymmetricKeyType ?? 'unknown'}${curve ? ` ${curve}` : ''}`)
  }
  return digestName
}

/** An ECDSA private key from PEM (PKCS#8 or SEC1); throws a message that says what is wrong. */
export function parsePrivateKey(pem: string | Uint8Array): KeyObject {
  const key = createPrivateKey({ key: Buffer.from(pem), format: 'pem' })
  curveHash(key, 'private')
  return key
}

/** An ECDSA public key from PEM (SPKI); a private key's PEM is refused, so it is never deployed by mistake. */
export function parsePublicKey(pem: string | Uint8Array): KeyObject {
  const text = Buffer.from(pem).toString('utf8')
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(text)) throw new Error('this is a private key; give the public key (openssl ec -in KEY -pubout)')
  const key = createPublicKey({ key: text, format: 'pem' })
  curveHash(key, 'public')
  return key
}

/** The resource name of a manifest's model bytes. */
export function modelResourceName(manifest: Manifest): string {
  if (manifest.file !== undefined) return path.posix.normalize(manifest.file.split(path.sep).join('/'))
  return `npm:${manifest.package!.name}/${path.posix.normalize(manifest.package!.path)}`
}

/**
 * Reads a model folder as the gateway would load it: the manifest, and the model bytes
 * (checked against the manifest's digest unless `checkDigest` is false: `model verify`
 * reports an altered file as a signature mismatch instead).
 */
export async function readModelContent(modelDir: string, { checkDigest = true } = {}): Promise<LocalModelContent> {
  const manifestPath = path.join(modelDir, MANIFEST_FILE)
  const manifest = await readManifest(manifestPath)
  const manifestBytes = new Uint8Array(await readFile(manifestPath))
  if (!isDeepStrictEqual(JSON.parse(Buffer.from(manifestBytes).toString('utf8')), manifest)) {
    throw new Error(`${manifestPath} changed while it was read; try again`)
  }
  const modelBytes = checkDigest ? await readVerifiedModel(manifest, manifestPath) : new Uint8Array(await readFile(modelFilePath(manifest, manifestPath)))
  return { manifest, manifestBytes, modelResource: modelResourceName(manifest), modelBytes }
}

/** The in-toto statement over a model's manifest and bytes; `ignorePaths` records the folder's other files. */
export function buildStatement(content: LocalModelContent, ignorePaths: string[] = []): Statement {
  const resources: Resource[] = [
    { name: MANIFEST_FILE, algorithm: 'sha256' as const, digest: sha256Hex(content.manifestBytes) },
    { name: content.modelResource, algorithm: 'sha256' as const, digest: sha256Hex(content.modelBytes) },
  ].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  return {
    _type: STATEMENT_TYPE,
    subject: [{ name: content.manifest.name, digest: { sha256: rootDigest(resources) } }],
    predicateType: PREDICATE_TYPE,
    predicate: {
      serialization: { method: 'files', hash_type: 'sha256', allow_symlinks: false, ignore_paths: [...ignorePaths].sort() },
      resources,
    },
  }
}

/** Upstream's subject digest: SHA-256 over the resource digests' bytes, in resource order. */
function rootDigest(resources: readonly Resource[]): string {
  const h = createHash('sha256')
  for (const r of resources) h.update(Buffer.from(r.digest, 'hex'))
  return h.digest('hex')
}

/** Signs a statement: the Sigstore bundle (JSON-ready object) to store as model.sig.json. */
export function signStatement(statement: Statement, privateKey: KeyObject): SignatureBundle {
  const hash = curveHash(privateKey, 'private')
  const payload = Buffer.from(JSON.stringify(statement), 'utf8')
  const sig = sign(hash, pae(IN_TOTO_PAYLOAD_TYPE, payload), { key: privateKey, dsaEncoding: 'der' })
  return {
    mediaType: BUNDLE_MEDIA_TYPE,
    verificationMaterial: { publicKey: { hint: keyHint(createPublicKey(privateKey)) } },
    dsseEnvelope: { payload: payload.toString('base64'), payloadType: IN_TOTO_PAYLOAD_TYPE, signatures: [{ sig: sig.toString('base64'), keyid: '' }] },
  }
}

/** The other files of a model folder (not the manifest, not the signature), for ignore_paths. */
export async function otherFiles(modelDir: string, content: ModelContent): Promise<string[]> {
  const entries = await readdir(modelDir, { recursive: true, withFileTypes: true })
  const signed = new Set([MANIFEST_FILE, content.modelResource])
  return entries
    .filter((e) => e.isFile())
    .map((e) => path.relative(modelDir, path.join(e.parentPath, e.name)).split(path.sep).join('/'))
    .filter((name) => !signed.has(name))
    .sort()
}

const fail = (failure: VerifyFailure, reason: string): VerifyResult => ({ ok: false, failure, reason })

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

function decodeBase64(value: unknown): Buffer | null {
  if (typeof value !== 'string' || !/^[A-Za-z0-9+/_-]*={0,2}$/.test(value)) return null
  return Buffer.from(value, 'base64')
}

/**
 * Checks a signature file's bytes against the public key and the model content: the bundle's
 * shape, the DSSE signature, the statement, the root digest, and every resource's digest.
 * `readResource` supplies a resource that is neither the manifest nor the model bytes (files
 * that an upstream signer covered too); null means it does not exist.
 */
export async function verifySignature(
  bundleBytes: Uint8Array,
  content: ModelContent,
  publicKey: KeyObject,
  readResource: (name: string) => Promise<Uint8Array | null> = async () => null,
): Promise<VerifyResult> {
  let bundle: unknown
  try {
    bundle = JSON.parse(Buffer.from(bundleBytes).toString('utf8'))
  } catch (err) {
    return fail('malformed', `the signature file is not JSON: ${(err as Error).message}`)
  }
  if (!isRecord(bundle) || typeof bundle.mediaType !== 'string' || !/^application\/vnd\.dev\.sigstore\.bundle(\.v0\.[23])?\+json/.test(bundle.mediaType)) {
    return fail('malformed', 'the signature file is not a Sigstore bundle (mediaType application/vnd.dev.sigstore.bundle.v0.3+json)')
  }
  const envelope = bundle.dsseEnvelope
  if (!isRecord(envelope) || !Array.isArray(envelope.signatures) || envelope.signatures.length === 0) {
    return fail('malformed', 'the signature file has no DSSE envelope with a signature')
  }
  if (envelope.payloadType !== IN_TOTO_PAYLOAD_TYPE) return fail('malformed', `the DSSE payload type is ${JSON.stringify(envelope.payloadType)}, expected ${IN_TOTO_PAYLOAD_TYPE}`)
  const payload = decodeBase64(envelope.payload)
  if (payload === null) return fail('malformed', 'the DSSE payload is not base64')

  const expectedHint = keyHint(publicKey)
  const material = bundle.verificationMaterial
  const hint = isRecord(material) && isRecord(material.publicKey) && typeof material.publicKey.hint === 'string' ? material.publicKey.hint : ''
  const hash = curveHash(publicKey, 'public')
  const message = pae(IN_TOTO_PAYLOAD_TYPE, payload)
  const verified = envelope.signatures.some((s: unknown) => {
    const sig = isRecord(s) ? decodeBase64(s.sig) : null
    if (sig === null || sig.length === 0) return false
    try {
      return verify(hash, message, { key: publicKey, dsaEncoding: 'der' }, sig)
    } catch {
      return false
    }
  })
  if (!verified) {
    if (hint !== '' && hint !== expectedHint) {
      return fail('wrong_key', `signed with another key (key hint ${hint.slice(0, 16)}…, the configured key is ${expectedHint.slice(0, 16)}…); re-sign with the trusted key or configure its public key`)
    }
    return fail('bad_signature', 'the signature does not verify with the configured public key: the signature file was altered or made with another key')
  }

  let statement: unknown
  try {
    statement = JSON.parse(payload.toString('utf8'))
  } catch {
    return fail('malformed', 'the signed statement is not JSON')
  }
  if (!isRecord(statement) || statement._type !== STATEMENT_TYPE) return fail('malformed', `the signed statement is not an in-toto ${STATEMENT_TYPE}`)
  if (statement.predicateType !== PREDICATE_TYPE) return fail('malformed', `the predicate type is ${JSON.stringify(statement.predicateType)}, expected ${PREDICATE_TYPE}`)
  const subjects = statement.subject
  const predicate = statement.predicate
  if (!Array.isArray(subjects) || subjects.length !== 1 || !isRecord(subjects[0]) || !isRecord(subjects[0].digest) || !isRecord(predicate) || !Array.isArray(predicate.resources)) {
    return fail('malformed', 'the signed statement needs one subject and a predicate with resources')
  }
  const subject = subjects[0]
  const resources: Resource[] = []
  for (const r of predicate.resources as unknown[]) {
    if (!isRecord(r) || typeof r.name !== 'string' || r.algorithm !== 'sha256' || typeof r.digest !== 'string' || !/^[0-9a-f]{64}$/.test(r.digest)) {
      return fail('malformed', 'every signed resource needs a name, algorithm sha256 and a hex digest')
    }
    resources.push({ name: r.name, algorithm: 'sha256', digest: r.digest })
  }
  const root = rootDigest(resources)
  if ((subject.digest as Record<string, unknown>).sha256 !== root) return fail('malformed', 'the statement is inconsistent: its subject digest does not match its resources')
  if (subject.name !== content.manifest.name) {
    return fail('content_mismatch', `the signature is for model ${JSON.stringify(subject.name)}, not ${JSON.stringify(content.manifest.name)}`)
  }

  const byName = new Map(resources.map((r) => [r.name, r]))
  if (byName.size !== resources.length) return fail('malformed', 'a resource is listed twice')
  const own: [string, string][] = [
    [MANIFEST_FILE, sha256Hex(content.manifestBytes)],
    // Remote model: the bytes are not here; the signed model digest must be the manifest's.
    [content.modelResource, content.modelBytes === null ? content.manifest.sha256 : sha256Hex(content.modelBytes)],
  ]
  for (const [name, actual] of own) {
    const signed = byName.get(name)
    if (!signed) return fail('content_mismatch', `${name} is not covered by the signature; re-sign the model`)
    if (actual !== signed.digest) return fail('content_mismatch', `${name} changed since it was signed (sha256 ${actual.slice(0, 16)}…, signed ${signed.digest.slice(0, 16)}…)`)
  }
  for (const r of resources) {
    if (r.name === MANIFEST_FILE || r.name === content.modelResource) continue
    const bytes = await readResource(r.name)
    if (bytes === null) return fail('content_mismatch', `${r.name} is covered by the signature but missing`)
    if (sha256Hex(bytes) !== r.digest) return fail('content_mismatch', `${r.name} changed since it was signed`)
  }
  return { ok: true, rootDigest: root, keyHint: expectedHint, resources }
}

/** Reads a file of a model folder named by a signed resource; refuses names that leave the folder. */
export function folderResourceReader(modelDir: string): (name: string) => Promise<Uint8Array | null> {
  const root = path.resolve(modelDir)
  return async (name) => {
    const file = path.resolve(root, name)
    if (name.startsWith('npm:') || path.isAbsolute(name) || !file.startsWith(root + path.sep)) return null
    try {
      return new Uint8Array(await readFile(file))
    } catch {
      return null
    }
  }
}

/** Reads a signature file, or null when there is none; bounded so a huge file cannot exhaust memory. */
export async function readSignatureFile(file: string): Promise<Uint8Array | null> {
  let bytes: Buffer
  try {
    bytes = await readFile(file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw err
  }
  if (bytes.length > MAX_SIGNATURE_BYTES) throw new Error(`${file} is larger than ${MAX_SIGNATURE_BYTES} bytes; not a model signature`)
  return new Uint8Array(bytes)
}

/**
 * The check the model registry runs before serving a model: the model folder's signature
 * file must verify against the key and cover exactly what is about to be loaded. Returns
 * null when the model may be served, else the reason it may not. `modelBytes` is null for a
 * model served by remote model pods: the manifest (what validation enforces) is checked, and
 * the model digest it pins must be the signed one.
 */
export async function checkModelSignature(
  modelDir: string,
  manifest: Manifest,
  modelBytes: Uint8Array | null,
  publicKey: KeyObject,
): Promise<string | null> {
  const sigFile = path.join(modelDir, SIGNATURE_FILE)
  const bundle = await readSignatureFile(sigFile)
  if (bundle === null) return `unsigned: no ${SIGNATURE_FILE} in ${modelDir}; sign the model with \`bulwark model sign ${modelDir} --key KEY\``
  // The manifest is read again as bytes for its digest; it must still say what the registry parsed.
  const manifestBytes = new Uint8Array(await readFile(path.join(modelDir, MANIFEST_FILE)))
  let reread: unknown
  try {
    reread = JSON.parse(Buffer.from(manifestBytes).toString('utf8'))
  } catch {
    reread = undefined
  }
  if (!isDeepStrictEqual(reread, manifest)) return `${MANIFEST_FILE} changed while the model was loading; restart to load it again`
  const content: ModelContent = { manifest, manifestBytes, modelResource: modelResourceName(manifest), modelBytes }
  const result = await verifySignature(bundle, content, publicKey, folderResourceReader(modelDir))
  return result.ok ? null : `signature ${result.failure.replace('_', ' ')}: ${result.reason}`
}
