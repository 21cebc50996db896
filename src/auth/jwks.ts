// The JSON Web Key Set that tokens are verified against, from a file or an https URL.
//
// Loaded once at start (a key set that cannot be read stops the start), then kept in memory.
// It is re-read (a) when it is older than maxAgeMs (in the background), so a key the issuer revoked goes away,
// (b) when a token names a key id we do not have, so an issuer's new key is picked up without
// a restart; but never more often than refreshCooldownMs, so a flood of tokens with made-up
// key ids costs the issuer one request per cool-down, not one per token. A failed re-read keeps
// the keys we have. Only one re-read runs at a time; concurrent callers share it.

import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { Agent, request } from 'undici'
import { createLocalJWKSet, errors as joseErrors, type JSONWebKeySet, type JWTVerifyGetKey } from 'jose'
import { ConfigError } from '../config/load.ts'
import { isUrl, type JwksConfig } from '../config/security.ts'
import type { Clock, Logger } from '../deps.ts'

export interface JwksDeps {
  clock: Clock
  log: Logger
  /** Called after a re-read that changed the keys (e.g. to drop cached verified tokens). */
  onChange?: () => void
  /** Counts re-reads by outcome (ok, unchanged, failed). */
  onRefresh?: (outcome: 'changed' | 'unchanged' | 'failed') => void
}

interface Loader {
  (): Promise<string>
  close?(): Promise<void>
}

function fileLoader(file: string, maxBytes: number): Loader {
  return async () => {
    const text = await readFile(file, 'utf8')
    if (Buffer.byteLength(text) > maxBytes) throw new Error(`${file} is larger than ${maxBytes} bytes (auth.jwks.maxBytes)`)
    return text
  }
}

function urlLoader(url: string, config: JwksConfig, ca: string | undefined): Loader {
  const dispatcher = new Agent({
    connect: { ...(ca ? { ca } : {}), timeout: config.fetchTimeoutMs },
    headersTimeout: config.fetchTimeoutMs,
    bodyTimeout: config.fetchTimeoutMs,
  })
  const load: Loader = async () => {
    const signal = AbortSignal.timeout(config.fetchTimeoutMs)
    // undici's request() follows no redirects: the key set must come from the configured URL.
    const res = await request(url, { dispatcher, signal, headers: { accept: 'application/jwk-set+json, application/json' } })
    if (res.statusCode !== 200) {
      await res.body.dump()
      throw new Error(`GET ${url} answered ${res.statusCode}`)
    }
    const chunks: Buffer[] = []
    let size = 0
    for await (const chunk of res.body) {
      size += (chunk as Buffer).length
      if (size > config.maxBytes) {
        res.body.destroy()
        throw new Error(`GET ${url}: the key set is larger than ${config.maxBytes} bytes (auth.jwks.maxBytes)`)
      }
      chunks.push(chunk as Buffer)
    }
    return Buffer.concat(chunks).toString('utf8')
  }
  load.close = () => dispatcher.close()
  return load
}

function parseKeySet(text: string, where: string): JSONWebKeySet {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch (err) {
    throw new Error(`${where} is not JSON: ${(err as Error).message}`)
  }
  const keys = (value as { keys?: unknown } | null)?.keys
  if (!Array.isArray(keys) || keys.length === 0) throw new Error(`${where} holds no "keys" array; expected a JSON Web Key Set`)
  for (const [i, k] of keys.entries()) {
    if (k === null || typeof k !== 'object') throw new Error(`${where}: keys[${i}] is not an object`)
    const { d, k: secret } = k as { d?: unknown; k?: unknown }
    // A private or symmetric key in a verification key set is a leak or a misconfiguration; refuse it.
    if (d !== undefined || secret !== undefined) throw new Error(`${where}: keys[${i}] holds private or symmetric key material; publish public keys only`)
  }
  return value as JSONWebKeySet
}

export class JwksKeySet {
  /** Where the keys come from, for log lines. */
  readonly source: string
  private readonly load: Loader
  private readonly config: JwksConfig
  private readonly deps: JwksDeps
  private keys: ReturnType<typeof createLocalJWKSet>
  private text: string
  private loadedAtMs: number
  private inFlight: Promise<void> | null = null
  /** The resolver to hand to jose's jwtVerify. */
  readonly getKey: JWTVerifyGetKey

  private constructor(source: string, load: Loader, config: JwksConfig, deps: JwksDeps, text: string, keys: JSONWebKeySet) {
    this.source = source
    this.load = load
    this.config = config
    this.deps = deps
    this.text = text
    this.keys = createLocalJWKSet(keys)
    this.loadedAtMs = deps.clock.monotonicMs()
    this.getKey = (header, token) => this.resolve(header, token)
  }

  /** Reads the key set named by the config; throws ConfigError when it cannot be used. */
  static async open(config: JwksConfig, baseDir: string, deps: JwksDeps): Promise<JwksKeySet> {
    let load: Loader
    let source: string
    if (isUrl(config.source)) {
      source = config.source
      let ca: string | undefined
      if (config.caFile) {
        const caPath = path.resolve(baseDir, config.caFile)
        try {
          ca = await readFile(caPath, 'utf8')
        } catch (err) {
          throw new ConfigError('auth.jwks.caFile', [`cannot read ${caPath}: ${(err as Error).message}`])
        }
      }
      load = urlLoader(source, config, ca)
    } else {
      source = path.resolve(baseDir, config.source)
      load = fileLoader(source, config.maxBytes)
    }
    try {
      const text = await load()
      const keys = parseKeySet(text, source)
      createLocalJWKSet(keys) // validates the set's shape now, not at the first request
      return new JwksKeySet(source, load, config, deps, text, keys)
    } catch (err) {
      throw new ConfigError('auth.jwks.source', [`cannot load the JSON Web Key Set: ${(err as Error).message}; fix the file or URL, or run \`npx bulwark dev-pki\` for the development key set`])
    }
  }

  private async resolve(...args: Parameters<JWTVerifyGetKey>): Promise<Awaited<ReturnType<JWTVerifyGetKey>>> {
    // Old keys still verify while a re-read runs in the background; only an unknown kid waits.
    if (this.deps.clock.monotonicMs() - this.loadedAtMs >= this.config.maxAgeMs) void this.refresh()
    try {
      return await this.keys(...args)
    } catch (err) {
      if (!(err instanceof joseErrors.JWKSNoMatchingKey)) throw err
      // An unknown key id: maybe the issuer rotated. Re-read, at most once per cool-down.
      if (this.deps.clock.monotonicMs() - this.loadedAtMs < this.config.refreshCooldownMs) throw err
      await this.refresh()
      return this.keys(...args)
    }
  }

  /** Closes the connections to the issuer (URL sources). */
  async close(): Promise<void> {
    await this.inFlight
    await this.load.close?.()
  }

  /** Re-reads the key set now (shared by concurrent callers); keeps the old keys on failure. */
  refresh(): Promise<void> {
    this.inFlight ??= this.reload().finally(() => (this.inFlight = null))
    return this.inFlight
  }

  private async reload(): Promise<void> {
    try {
      const text = await this.load()
      if (text === this.text) {
        this.deps.onRefresh?.('unchanged')
        return
      }
      const keys = parseKeySet(text, this.source)
      this.keys = createLocalJWKSet(keys)
      this.text = text
      this.deps.log.info({ jwks: this.source, keys: keys.keys.length }, 'JSON Web Key Set changed')
      this.deps.onRefresh?.('changed')
      this.deps.onChange?.()
    } catch (err) {
      this.deps.log.warn({ jwks: this.source, err: (err as Error).message }, 'cannot re-read the JSON Web Key Set; keeping the keys we have')
      this.deps.onRefresh?.('failed')
    } finally {
      // Failures count too: a down issuer must not be asked again before the cool-down.
      this.loadedAtMs = this.deps.clock.monotonicMs()
    }
  }
}
