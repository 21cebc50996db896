// Signs development tokens (`bulwark token`, and the tests): ES256 JWTs with iss, sub, aud,
// scope, iat, nbf, exp and a random jti, typed `at+jwt` as RFC 9068 types access tokens (the
// gateway refuses untyped tokens by default). Never used by the serving path.

import { readFile } from 'node:fs/promises'
import { importPKCS8, SignJWT, type JWTPayload } from 'jose'
import type { Clock, RandomSource } from '../deps.ts'

export interface SigningKey {
  key: Awaited<ReturnType<typeof importPKCS8>>
  kid: string
  alg: string
}

/** The development signing key: jwt-key.pem, with the kid of the first key in jwks.json. */
export async function loadSigningKey(keyFile: string, jwksFile: string): Promise<SigningKey> {
  const jwks = JSON.parse(await readFile(jwksFile, 'utf8')) as { keys: { kid?: string; alg?: string }[] }
  const first = jwks.keys[0]
  if (!first?.kid) throw new Error(`${jwksFile} has no key with a kid`)
  const alg = first.alg ?? 'ES256'
  return { key: await importPKCS8(await readFile(keyFile, 'utf8'), alg), kid: first.kid, alg }
}

/** The `typ` of development tokens: an access token (RFC 9068). */
export const ACCESS_TOKEN_TYPE = 'at+jwt'

export interface MintOptions {
  issuer: string
  audience: string | string[]
  subject: string
  scopes: readonly string[]
  ttlSeconds: number
  /** Seconds from now before which the token is not valid (default 0: valid at once). */
  notBeforeSeconds?: number
  /** Extra claims; they override the standard ones (tests use this to craft bad tokens). */
  claims?: JWTPayload
  /** The `typ` header (default at+jwt); null leaves it out. Tests use it to craft other kinds of token. */
  type?: string | null
}

export async function mintToken(signing: SigningKey, o: MintOptions, deps: { clock: Clock; random: RandomSource }): Promise<string> {
  const now = Math.floor(deps.clock.nowMs() / 1000)
  const payload: JWTPayload = {
    iss: o.issuer,
    sub: o.subject,
    aud: o.audience,
    scope: o.scopes.join(' '),
    iat: now,
    nbf: now + (o.notBeforeSeconds ?? 0),
    exp: now + o.ttlSeconds,
    jti: deps.random.uuid(),
    ...o.claims,
  }
  const type = o.type === undefined ? ACCESS_TOKEN_TYPE : o.type
  return new SignJWT(payload).setProtectedHeader({ alg: signing.alg, kid: signing.kid, ...(type === null ? {} : { typ: type }) }).sign(signing.key)
}
