// The Ed25519 key that signs audit checkpoints: load it, or create the development one.
//
// A new key is derived from 32 bytes of the injected RandomSource (an Ed25519 private key is
// its 32-byte seed), so no module but deps.ts draws randomness and tests can seed it. Files
// are created through a temporary name and link(2), which fails if the target exists: two
// processes starting at once never leave a half-written key, and the loser reads the
// winner's key.

import { createHash, createPrivateKey, createPublicKey, type KeyObject } from 'node:crypto'
import { link, mkdir, open, readFile, unlink, writeFile } from 'node:fs/promises'
import path from 'node:path'
import type { RandomSource } from '../deps.ts'

export interface SigningKey {
  privateKey: KeyObject
  publicKey: KeyObject
  /** First 16 hex digits of SHA-256 over the public key (SPKI DER); names the key in checkpoints. */
  keyId: string
}

/** PKCS#8 DER prefix of an Ed25519 private key; the 32-byte seed follows (RFC 8410). */
const ED25519_PKCS8_PREFIX = Buffer.from('302e020100300506032b657004220420', 'hex')

export function keyIdOf(publicKey: KeyObject): string {
  const der = publicKey.export({ type: 'spki', format: 'der' })
  return createHash('sha256').update(der).digest('hex').slice(0, 16)
}

export function signingKeyFromPrivate(privateKey: KeyObject): SigningKey {
  if (privateKey.asymmetricKeyType !== 'ed25519') {
    throw new Error(`the audit signing key must be an Ed25519 key, not ${privateKey.asymmetricKeyType ?? 'unknown'}`)
  }
  const publicKey = createPublicKey(privateKey)
  return { privateKey, publicKey, keyId: keyIdOf(publicKey) }
}

/** A fresh Ed25519 key from 32 random bytes. */
export function generateSigningKey(random: RandomSource): SigningKey {
  const seed = random.bytes(32)
  const der = Buffer.concat([ED25519_PKCS8_PREFIX, seed])
  return signingKeyFromPrivate(createPrivateKey({ key: der, format: 'der', type: 'pkcs8' }))
}

/** The public key file written next to a private key file: `x.pem` -> `x.pub.pem`. */
export function publicKeyPath(privateKeyFile: string): string {
  return privateKeyFile.endsWith('.pem') ? `${privateKeyFile.slice(0, -4)}.pub.pem` : `${privateKeyFile}.pub.pem`
}

/** Writes `text` to `file` only if it does not exist yet (atomically); false if it existed. */
async function createExclusive(file: string, text: string, mode: number, random: RandomSource): Promise<boolean> {
  const tmp = `${file}.${Buffer.from(random.bytes(6)).toString('hex')}.tmp`
  const fh = await open(tmp, 'wx', mode)
  try {
    await fh.writeFile(text)
    await fh.sync()
  } finally {
    await fh.close()
  }
  try {
    await link(tmp, file)
    return true
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false
    throw err
  } finally {
    await unlink(tmp).catch(() => {})
  }
}

/** Writes a new key pair: the private key with mode 0600, the public key with 0644. */
export async function writeSigningKey(privateKeyFile: string, key: SigningKey, random: RandomSource): Promise<boolean> {
  await mkdir(path.dirname(privateKeyFile), { recursive: true, mode: 0o700 })
  const pem = key.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string
  const created = await createExclusive(privateKeyFile, pem, 0o600, random)
  if (created) {
    // The public half follows the private key that won; a stale one from an older key is replaced.
    const pub = key.publicKey.export({ type: 'spki', format: 'pem' }) as string
    await writeFile(publicKeyPath(privateKeyFile), pub, { mode: 0o644 })
  }
  return created
}

export interface LoadedSigningKey extends SigningKey {
  /** True when this call created the key (development key). */
  created: boolean
}

/**
 * Reads the private key at `file`. When it is missing and `createIfMissing` is set, creates a
 * development key there (and its public key next to it); otherwise the error says what to do.
 */
export async function loadSigningKey(file: string, options: { createIfMissing: boolean; random: RandomSource }): Promise<LoadedSigningKey> {
  let pem: string
  let created = false
  try {
    pem = await readFile(file, 'utf8')
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || !options.createIfMissing) {
      throw new Error(`cannot read the audit signing key ${file}: ${(err as Error).message}; create one with \`bulwark audit keygen --out ${file}\``, { cause: err })
    }
    created = await writeSigningKey(file, generateSigningKey(options.random), options.random)
    pem = await readFile(file, 'utf8')
  }
  let key: SigningKey
  try {
    key = signingKeyFromPrivate(createPrivateKey(pem))
  } catch (err) {
    throw new Error(`${file} is not an Ed25519 private key in PEM form: ${(err as Error).message}`, { cause: err })
  }
  return { ...key, created }
}

/** Reads a public key (or a private key, whose public half is used) for verification. */
export async function loadVerifyKey(file: string): Promise<KeyObject> {
  const pem = await readFile(file, 'utf8')
  const key = pem.includes('PRIVATE KEY') ? createPublicKey(createPrivateKey(pem)) : createPublicKey(pem)
  if (key.asymmetricKeyType !== 'ed25519') throw new Error(`${file} is not an Ed25519 key`)
  return key
}
