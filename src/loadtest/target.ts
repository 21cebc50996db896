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
  /** One bearer token per caller the load is spread over (round robin); empty: no token sent. */
  tokens: string[]
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
      if (err) reject(new BenchTargetError(`--token-command failed (${err.message.split('\n')[0]}); it must print one token a line on stdout and exit 0`))
      else resolve(stdout)
    })
  })
}

/**
 * The tokens the token flag gives: --token one; --token-file and --token-command one a line
 * (blank lines skipped), each a caller; --callers N takes the first N and needs that many.
 */
async function tokensFrom(o: BenchOptions, cwd: string): Promise<string[]> {
  if (!o.token) return []
  const flag = o.token.kind === 'value' ? '--token' : `--token-${o.token.kind}`
  const text = o.token.kind === 'value' ? o.token.value : o.token.kind === 'file' ? await readText(path.resolve(cwd, o.token.value), '--token-file') : await runTokenCommand(o.token.value)
  const lines = o.token.kind === 'value' ? [text.trim()] : text.split('\n').map((l) => l.trim()).filter((l) => l !== '')
  const tokens = lines.map((l) => l.replace(/^Bearer\s+/i, ''))
  const bad = tokens.findIndex((t) => t === '' || /\s/.test(t))
  if (tokens.length === 0 || bad >= 0) {
    const what = tokens.length === 0 ? 'nothing' : `${tokens[bad]!.length} characters with spaces${tokens.length > 1 ? ` on line ${bad + 1}` : ''}`
    throw new BenchTargetError(`the token from ${flag} must be one bearer token${o.token.kind === 'value' ? '' : ' a line'} (no spaces); got ${what}`)
  }
  if (o.callers === undefined) return tokens
  if (tokens.length < o.callers) throw new BenchTargetError(`--callers ${o.callers} needs ${o.callers} tokens, one a line; ${flag} gave ${tokens.length}`)
  return tokens.slice(0, o.callers)
}

/**
 * The callers' subjects: fresh for each run, so a run does not find per-caller budgets and
 * limits spent by the one before it.
 */
export function benchSubjects(n: number, deps: Deps): string[] {
  const run = Buffer.from(deps.random.bytes(4)).toString('hex')
  return Array.from({ length: n }, (_, i) => (n === 1 ? `bench-${run}` : `bench-${run}-${i + 1}`))
}

/** Development tokens for every bundled model, one per caller, valid for the whole run (as `bulwark token` mints). */
async function devTokens(dir: string, cwd: string, ttlSeconds: number, n: number, deps: Deps): Promise<string[]> {
  const { files } = devPkiPaths(dir)
  const signing = await loadSigningKey(files.jwtKey, files.jwks)
  const scopes = await devScopes(defaultConfig(cwd).config, cwd)
  return Promise.all(benchSubjects(n, deps).map((subject) => mintToken(signing, { issuer: DEV_ISSUER, audience: DEV_AUDIENCE, subject, scopes, ttlSeconds }, deps)))
}

/** The TLS material and tokens the options name, or the development set-up's when none is named. */
export async function loadCredentials(o: BenchOptions, cwd: string, deps: Deps): Promise<Credentials> {
  const notes: string[] = []
  const devDir = path.resolve(cwd, DEV_DIR)
  const dev = devPkiPaths(devDir).files
  const https = o.url.protocol === 'https:'
  // The development set-up only ever stands in for a gateway on this machine.
  const useDevTls = https && isLoopback(o.url) && o.cacert === undefined && o.cert === undefined && (await exists(dev.clientCert))
  const useDevToken = !o.token && isLoopback(o.url) && (await exists(dev.jwtKey))
  const creds: Credentials = { tokens: [], notes }
  if (useDevTls) {
    creds.tls = { ca: await readText(dev.ca, 'the development CA'), cert: await readText(dev.clientCert, 'the development client certificate'), key: await readText(dev.clientKey, 'the development client key') }
    notes.push(`no --cacert/--cert/--key: using the development PKI in ${path.relative(cwd, devDir) || '.'}/`)
  } else if (https) {
    creds.tls = {}
    if (o.cacert !== undefined) creds.tls.ca = await readText(path.resolve(cwd, o.cacert), '--cacert')
    if (o.cert !== undefined) creds.tls.cert = await readText(path.resolve(cwd, o.cert), '--cert')
    if (o.key !== undefined) creds.tls.key = await readText(path.resolve(cwd, o.key), '--key')
  }
  const callers = o.callers ?? 1
  if (useDevToken) {
    creds.tokens = await devTokens(devDir, cwd, Math.ceil(o.maxDurationMs / 1000) + 300, callers, deps)
    notes.push(`no --token: minted ${callers === 1 ? 'a development token' : `${callers} development tokens (distinct subjects, new for this run)`} from ${path.relative(cwd, dev.jwtKey)}`)
  } else {
    creds.tokens = await tokensFrom(o, cwd)
  }
  if (callers > 1 && creds.tokens.length === 0) {
    throw new BenchTargetError(`--callers ${callers} spreads the load over ${callers} identities, but there is no token to give them: give --token-file with one token a line, or run from a folder with a development set-up (.bulwark/dev/) against a loopback gateway`)
  }
  return creds
}
