// What the bench needs to reach a gateway: the target check (loopback, or the one host the
// operator named), the TLS client material and the bearer token. With none given, the
// development set-up in the working folder (.bulwark/dev/, what `npm start` creates) is used,
// so the bench works against `npm start` as it is.

import { execFile } from 'node:child_process'
import { readFile, stat } from 'node:fs/promises'
import path from 'node:path'
import { defaultConfig } from '../config/load.ts'
import { DEV_AUDIENCE, DEV_DIR, DEV_ISSUER } from '../config/security.ts'
import type { Deps } from '../deps.ts'
import { loadSigningKey, mintToken } from '../dev/mint-token.ts'
import { devPkiPaths } from '../dev/pki.ts'
import { devScopes } from '../dev/setup.ts'
import type { BenchOptions } from './options.ts'

/** A problem with the target or the credentials: the message says what to do. */
export class BenchTargetError extends Error {}

/** Whether a URL's host is this machine's loopback (127.0.0.0/8, ::1, localhost). */
export function isLoopback(url: URL): boolean {
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase()
  return host === 'localhost' || host === '::1' || /^127\.[0-9]+\.[0-9]+\.[0-9]+$/.test(host)
}

/**
 * Refuses a target off this machine unless --allow-target names its host exactly, so a
 * mistyped URL never load-tests a production host.
 */
export function checkTarget(url: URL, allowTarget: string | undefined, flag: string): void {
  if (isLoopback(url)) return
  const host = url.hostname.replace(/^\[|\]$/g, '').toLowerCase()
  if (allowTarget !== undefined && allowTarget.toLowerCase() === host) return
  const why = allowTarget === undefined ? 'it is not a loopback address' : `--allow-target names ${JSON.stringify(allowTarget)}, not this host`
  throw new BenchTargetError(`refusing to load ${flag} ${url.origin}: ${why}. To load-test that host on purpose, add --allow-target ${host}`)
}

export interface Credentials {
  tls?: { ca?: string; cert?: string; key?: string }
  token?: string
  /** Notes for stderr: which defaults were taken from where. */
  notes: string[]
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await readFile(file, 'utf8')
  } catch (err) {
    throw new BenchTargetError(`cannot read ${what} ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`)
  }
}

const exists = (file: string) => stat(file).then(() => true, () => false)

function runTokenCommand(command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    // The operator's own command line, run as they typed it (like git's credential helpers).
    execFile('/bin/sh', ['-c', command], { timeout: 30_000, maxBuffer: 1 << 20 }, (err, stdout) => {
      if (err) reject(new BenchTargetError(`--token-command failed (${err.message.split('\n')[0]}); it must print one token on stdout and exit 0`))
      else resolve(stdout)
    })
  })
}

async function tokenFrom(o: BenchOptions, cwd: string): Promise<string | undefined> {
  if (!o.token) return undefined
  const text = o.token.kind === 'value' ? o.token.value : o.token.kind === 'file' ? await readText(path.resolve(cwd, o.token.value), '--token-file') : await runTokenCommand(o.token.value)
  const token = text.trim().replace(/^Bearer\s+/i, '')
  if (token === '' || /\s/.test(token)) throw new BenchTargetError(`the token from --${o.token.kind === 'value' ? 'token' : `token-${o.token.kind}`} must be one bearer token (no spaces); got ${token === '' ? 'nothing' : `${token.length} characters with spaces`}`)
  return token
}

/** A development token for every bundled model, valid for the whole run (as `bulwark token` mints). */
async function devToken(dir: string, cwd: string, ttlSeconds: number, deps: Deps): Promise<string> {
  const { files } = devPkiPaths(dir)
  const signing = await loadSigningKey(files.jwtKey, files.jwks)
  const scopes = await devScopes(defaultConfig(cwd).config, cwd)
  return mintToken(signing, { issuer: DEV_ISSUER, audience: DEV_AUDIENCE, subject: 'bench', scopes, ttlSeconds }, deps)
}

/** The TLS material and token the options name, or the development set-up's when none is named. */
export async function loadCredentials(o: BenchOptions, cwd: string, deps: Deps): Promise<Credentials> {
  const notes: string[] = []
  const devDir = path.resolve(cwd, DEV_DIR)
  const dev = devPkiPaths(devDir).files
  const https = o.url.protocol === 'https:'
  // The development set-up only ever stands in for a gateway on this machine.
  const useDevTls = https && isLoopback(o.url) && o.cacert === undefined && o.cert === undefined && (await exists(dev.clientCert))
  const useDevToken = !o.token && isLoopback(o.url) && (await exists(dev.jwtKey))
  const creds: Credentials = { notes }
  if (useDevTls) {
    creds.tls = { ca: await readText(dev.ca, 'the development CA'), cert: await readText(dev.clientCert, 'the development client certificate'), key: await readText(dev.clientKey, 'the development client key') }
    notes.push(`no --cacert/--cert/--key: using the development PKI in ${path.relative(cwd, devDir) || '.'}/`)
  } else if (https) {
    creds.tls = {}
    if (o.cacert !== undefined) creds.tls.ca = await readText(path.resolve(cwd, o.cacert), '--cacert')
    if (o.cert !== undefined) creds.tls.cert = await readText(path.resolve(cwd, o.cert), '--cert')
    if (o.key !== undefined) creds.tls.key = await readText(path.resolve(cwd, o.key), '--key')
  }
  const bearer = useDevToken ? await devToken(devDir, cwd, Math.ceil(o.maxDurationMs / 1000) + 300, deps) : await tokenFrom(o, cwd)
  if (useDevToken) notes.push(`no --token: minted a development token from ${path.relative(cwd, dev.jwtKey)}`)
  if (typeof bearer === 'string') creds.token = bearer
  return creds
}
