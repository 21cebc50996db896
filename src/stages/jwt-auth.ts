// Stage: jwt-auth.
// Reads: ctx.bearerToken (the raw Authorization header), the JSON Web Key Set.
// Writes: ctx.principal (subject, issuer, scopes, claims, expiry of the verified token).
// Throws: unauthenticated (401, with `WWW-Authenticate: Bearer`) for a missing, oversized,
//         malformed, unsigned, badly signed, expired, not-yet-valid, too long-lived, wrong-issuer,
//         wrong-audience or wrong-type token (its `typ` header is not one of auth.acceptedTypes,
//         or absent unless auth.acceptUntypedTokens). The client learns only the code; the
//         reason names the check.
//
// Work before the signature is verified is bounded by the token size limit, checked first on
// the header's length: no parsing, hashing or key lookup depends on more bytes than that.
// Then: the cache of verified tokens (SHA-256 of the whole token -> principal, until exp), and
// only on a miss jose's jwtVerify with an explicit algorithm allow-list (asymmetric only, so a
// public key can never be used as an HMAC secret, and `alg: none` is never accepted).
// The type is checked once the signature holds, so a forged token is refused for its
// signature whatever header it carries.

import { errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose'
import { BulwarkError } from '../errors.ts'
import type { AuthConfig } from '../config/security.ts'
import type { Clock } from '../deps.ts'
import { TokenCache } from '../auth/token-cache.ts'
import type { Principal, RequestContext, Stage } from '../types.ts'

export interface JwtAuthDeps {
  clock: Clock
  /** The key resolver (JwksKeySet.getKey). */
  getKey: JWTVerifyGetKey
  /** The cache of verified tokens; the caller keeps it to clear it when keys change. */
  cache?: TokenCache
}

/** `Bearer <three base64url parts>`; the signature part may be empty so that `alg: none` gets its own reason. */
const BEARER = /^[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*)$/

/** The scopes in a claim: an OAuth 2.0 space-separated string, or an array of strings. */
function scopesOf(value: unknown): string[] {
  if (typeof value === 'string') return value.split(' ').filter((s) => s.length > 0)
  if (Array.isArray(value)) return value.filter((s): s is string => typeof s === 'string')
  return []
}

const clip = (v: unknown) => JSON.stringify(v)?.slice(0, 80) ?? String(v)

/**
 * A `typ` value as the media type it names: lowercase (media types are case-insensitive), and
 * with `application/` in front when it has no '/' (RFC 7515 4.1.9), so `at+jwt`,
 * `application/at+jwt` and `AT+JWT` are one type.
 */
export function mediaTypeOf(typ: string): string {
  const t = typ.toLowerCase()
  return t.includes('/') ? t : `application/${t}`
}

/** jose's error as an operator-facing reason (never sent to the client). */
function reasonOf(err: unknown): string {
  if (err instanceof joseErrors.JWTExpired) return `token expired or too old: ${err.message} (exp ${clip(err.payload.exp)}, iat ${clip(err.payload.iat)})`
  if (err instanceof joseErrors.JWTClaimValidationFailed) return `claim "${err.claim}" ${err.reason}: ${err.message} (value ${clip(err.payload[err.claim])})`
  if (err instanceof joseErrors.JOSEAlgNotAllowed) return `signing algorithm not allowed: ${err.message}`
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return 'signature does not verify'
  if (err instanceof joseErrors.JWKSNoMatchingKey) return 'no key in the JSON Web Key Set matches the token\'s kid and alg'
  if (err instanceof joseErrors.JWKSMultipleMatchingKeys) return 'several keys in the JSON Web Key Set match the token; the issuer must set kid'
  if (err instanceof joseErrors.JOSEError) return `malformed token: ${err.message}`
  return `token verification failed: ${err instanceof Error ? err.message : String(err)}`
}

export function createJwtAuthStage(config: AuthConfig, deps: JwtAuthDeps): Stage {
  const { clock, getKey } = deps
  const cache = deps.cache ?? new TokenCache(config.tokenCacheEntries)
  // 'Bearer ' plus the token; the header is read as a JS string, but a longer string has more bytes too.
  const maxHeaderChars = config.maxTokenBytes + 'Bearer '.length
  const options = {
    algorithms: [...config.algorithms],
    issuer: config.issuer,
    audience: config.audience,
    clockTolerance: config.clockToleranceSeconds,
    maxTokenAge: config.maxTokenLifetimeSeconds,
    requiredClaims: ['exp', 'iat', 'sub'],
  }
  const acceptedTypes = new Set(config.acceptedTypes.map(mediaTypeOf))
  const challenge = { 'www-authenticate': 'Bearer realm="bulwark"' }
  const refuse = (reason: string, cause?: unknown) =>
    new BulwarkError('unauthenticated', 'a valid bearer token is required', { reason, headers: challenge, cause })

  /** Why the token's type is not one an access token may have, or null. */
  function typeProblem(typ: unknown): string | null {
    if (typ === undefined) return config.acceptUntypedTokens ? null : 'the token has no typ header; access tokens are typed (RFC 9068: at+jwt), and auth.acceptUntypedTokens is off'
    if (typeof typ !== 'string') return `the typ header is ${clip(typ)}, not a string`
    if (acceptedTypes.has(mediaTypeOf(typ))) return null
    return `token type (typ header) ${clip(typ)} is not an access token type this gateway accepts (auth.acceptedTypes: ${config.acceptedTypes.join(', ')})`
  }

  function principalOf(payload: JWTPayload): Principal {
    const lifetime = payload.exp! - payload.iat!
    if (lifetime > config.maxTokenLifetimeSeconds) {
      throw refuse(`token lifetime ${lifetime} s (exp - iat) exceeds auth.maxTokenLifetimeSeconds ${config.maxTokenLifetimeSeconds}`)
    }
    if (typeof payload.sub !== 'string' || payload.sub.length === 0) throw refuse('claim "sub" is not a non-empty string')
    return Object.freeze({
      subject: payload.sub,
      issuer: payload.iss!,
      scopes: Object.freeze(scopesOf(payload[config.scopeClaim])) as string[],
      claims: Object.freeze({ ...payload }),
      expiresAtMs: payload.exp! * 1000,
    })
  }

  return {
    name: 'jwt-auth',
    phase: 'headers',
    verbs: ['infer', 'metadata'],
    async run(ctx: RequestContext) {
      const header = ctx.bearerToken
      if (header === null) throw refuse('no Authorization header')
      if (header.length > maxHeaderChars) throw refuse(`Authorization header is ${header.length} characters; the limit is ${maxHeaderChars} (auth.maxTokenBytes)`)
      const m = BEARER.exec(header)
      if (!m) throw refuse(header.slice(0, 7).toLowerCase() === 'bearer ' ? 'the bearer token is not a compact JWS (three base64url parts)' : 'the Authorization scheme is not Bearer')
      const token = m[1]!
      const now = clock.nowMs()
      const key = TokenCache.key(token)
      const cached = cache.get(key, now)
      if (cached) {
        ctx.principal = cached
        return
      }
      let payload: JWTPayload
      let typ: unknown
      try {
        const verified = await jwtVerify(token, getKey, { ...options, currentDate: new Date(now) })
        payload = verified.payload
        typ = verified.protectedHeader.typ
      } catch (err) {
        throw refuse(reasonOf(err), err)
      }
      const wrongType = typeProblem(typ)
      if (wrongType !== null) throw refuse(wrongType)
      const principal = principalOf(payload)
      cache.set(key, principal)
      ctx.principal = principal
    },
  }
}
