// The front door's configuration slices (bulwark.yaml): `tls`, `auth`, `authorization`,
// `rateLimits` and `policies`. Each field has its default, unit and range next to it, and says
// why the default is safe. The defaults describe the development set-up that `npm start`
// creates under .bulwark/dev/: mTLS with the dev CA, JWTs signed by the dev key, the bundled
// policies. Each part can be switched off (`enabled: false`) for the benchmark baseline ("the
// same gateway over plain HTTP with these stages off") or when a mesh terminates TLS in front;
// switching a part off is logged as a warning at start.

import { Type, type Static } from '@sinclair/typebox'

/** Where `bulwark dev-pki` and `npm start` write the development PKI and signing key. */
export const DEV_DIR = '.bulwark/dev'
/** The `iss` of development tokens (`bulwark token`). */
export const DEV_ISSUER = 'https://bulwark.local/dev'
/** The `aud` of development tokens, and the audience the embedded default accepts. */
export const DEV_AUDIENCE = 'bulwark'
/** The workload identity in the development client certificate. */
export const DEV_WORKLOAD = 'spiffe://bulwark.local/ns/default/sa/dev'

/**
 * TLS 1.2 cipher suites the gateway may offer: ECDHE key exchange with an AEAD cipher only
 * (no CBC, no RSA key transport, no SHA-1). TLS 1.3 suites are all AEAD and need no list.
 */
export const TLS12_AEAD_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
] as const

const File = (def: string, description: string) => Type.String({ minLength: 1, default: def, description })

export const TlsConfig = Type.Object(
  {
    /** Off: the API listener speaks plain HTTP and no client certificate is asked for. Only for
     *  a benchmark baseline, or behind a proxy that terminates mTLS and is the only way in. */
    enabled: Type.Boolean({ default: true }),
    /** Server certificate chain (PEM), leaf first. Re-read when it changes on disk. */
    certFile: File(`${DEV_DIR}/server.pem`, 'server certificate chain, PEM'),
    /** Private key of the server certificate (PEM). Re-read when it changes on disk. */
    keyFile: File(`${DEV_DIR}/server-key.pem`, 'server private key, PEM'),
    /** CA bundle (PEM) that client certificates must chain to. Re-read when it changes on disk. */
    caFile: File(`${DEV_DIR}/ca.pem`, 'CA bundle for client certificates, PEM'),
    /** Lowest protocol version. TLSv1.3 by default; TLSv1.2 only for clients that cannot do 1.3. */
    minVersion: Type.Union([Type.Literal('TLSv1.3'), Type.Literal('TLSv1.2')], { default: 'TLSv1.3' }),
    /** Suites offered to TLS 1.2 clients (ignored unless minVersion is TLSv1.2): AEAD suites only. */
    tls12Ciphers: Type.Array(Type.Union(TLS12_AEAD_CIPHERS.map((c) => Type.Literal(c))), {
      minItems: 1,
      uniqueItems: true,
      default: [...TLS12_AEAD_CIPHERS],
    }),
    /** How often the certificate, key and CA files are checked for changes, besides file-system
     *  events (which miss some atomic symlink swaps, as Kubernetes secret volumes do them). */
    reloadCheckIntervalMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 5_000 }),
    /** A TLS handshake that takes longer is abandoned; bounds what a slow client can hold. */
    handshakeTimeoutMs: Type.Integer({ minimum: 100, maximum: 120_000, default: 10_000 }),
  },
  { additionalProperties: false, default: {} },
)

export const JwtAlgorithm = Type.Union(
  ['ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'].map((a) => Type.Literal(a)),
  { description: 'asymmetric JWS algorithms only: HMAC (HS*) and none are never accepted' },
)

export const JwksConfig = Type.Object(
  {
    /** Where the verification keys come from: a JSON Web Key Set file (path), or the issuer's
     *  JWKS endpoint (https:// URL). Plain http:// is refused: keys must not be swappable in transit. */
    source: Type.String({
      minLength: 1,
      pattern: '^(?![hH][tT][tT][pP]://)',
      default: `${DEV_DIR}/jwks.json`,
      description: 'a JWKS file path or an https:// URL (never http://)',
      examples: ['https://issuer.example/.well-known/jwks.json', '/etc/bulwark/jwks.json'],
    }),
    /** CA bundle to trust for an https source, for issuers with a private CA; default: the system CAs. */
    caFile: Type.Optional(Type.String({ minLength: 1 })),
    /** An unknown `kid` re-reads the key set at most this often, so bad tokens cannot hammer the issuer. */
    refreshCooldownMs: Type.Integer({ minimum: 0, maximum: 3_600_000, default: 30_000 }),
    /** The key set is re-read when older than this, whatever the tokens say (key revocation). */
    maxAgeMs: Type.Integer({ minimum: 1_000, maximum: 86_400_000, default: 600_000 }),
    /** Give up on a JWKS fetch after this long and keep the keys we have. */
    fetchTimeoutMs: Type.Integer({ minimum: 100, maximum: 60_000, default: 5_000 }),
    /** Largest key set accepted (file or response body). */
    maxBytes: Type.Integer({ minimum: 1024, maximum: 16 * 1024 * 1024, default: 1024 * 1024 }),
  },
  { additionalProperties: false, default: {} },
)

export const AuthConfig = Type.Object(
  {
    /** Off: no bearer token is asked for and requests carry no principal. Benchmark baseline only. */
    enabled: Type.Boolean({ default: true }),
    /** Required `iss`. The default is the issuer of development tokens (`bulwark token`). */
    issuer: Type.String({ minLength: 1, default: DEV_ISSUER }),
    /** Required `aud` (the token's audience must contain it). */
    audience: Type.String({ minLength: 1, default: DEV_AUDIENCE }),
    /** Accepted `alg` values. Asymmetric only, so a public key can never double as an HMAC secret. */
    algorithms: Type.Array(JwtAlgorithm, { minItems: 1, uniqueItems: true, default: ['ES256', 'EdDSA', 'RS256', 'PS256'] }),
    /** Accepted `typ` header values, so that another kind of token from the same issuer and
     *  audience (an ID token, a DPoP proof, a logout token) cannot pass for an access token.
     *  Compared case-insensitively, with the `application/` prefix optional (RFC 7515 4.1.9).
     *  Default: at+jwt (RFC 9068 access tokens) and JWT (what many issuers still put on theirs;
     *  an issuer that types its access tokens at+jwt should be narrowed to [at+jwt], since
     *  some issuers type their ID tokens JWT too). */
    acceptedTypes: Type.Array(Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}(/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126})?$', description: 'a media type, e.g. at+jwt' }), {
      minItems: 1,
      uniqueItems: true,
      default: ['at+jwt', 'JWT'],
    }),
    /** Whether a token without a `typ` header is accepted. Off: RFC 9068 requires access tokens
     *  to be typed at+jwt, and RFC 8725 (3.11) asks for explicit typing so that one kind of
     *  token cannot be taken for another; turn on only for an issuer that cannot type its tokens. */
    acceptUntypedTokens: Type.Boolean({ default: false }),
    jwks: JwksConfig,
    /** Allowed clock skew for exp, nbf and iat. Small: it lengthens every token's life. */
    clockToleranceSeconds: Type.Integer({ minimum: 0, maximum: 300, default: 30 }),
    /** Longest accepted token lifetime (exp - iat); longer-lived tokens are refused even if valid. */
    maxTokenLifetimeSeconds: Type.Integer({ minimum: 60, maximum: 30 * 86_400, default: 86_400 }),
    /** Largest accepted token; checked before any parsing. Must stay below server.maxHeaderBytes. */
    maxTokenBytes: Type.Integer({ minimum: 256, maximum: 64 * 1024, default: 8 * 1024 }),
    /** The claim holding the caller's scopes: a space-separated string (OAuth 2.0) or an array. */
    scopeClaim: Type.String({ minLength: 1, default: 'scope' }),
    /** Verified tokens kept (by SHA-256 of the whole token) until they expire; 0 verifies every time. */
    tokenCacheEntries: Type.Integer({ minimum: 0, maximum: 1_000_000, default: 10_000 }),
  },
  { additionalProperties: false, default: {} },
)

export const AuthorizationConfig = Type.Object(
  {
    /** Off: every caller may call every model (no policy check). Benchmark baseline only. */
    enabled: Type.Boolean({ default: true }),
  },
  { additionalProperties: false, default: {} },
)

export const RateLimitsConfig = Type.Object(
  {
    /** Off: no per-principal rate or concurrency limits. The per-model limits live in each policy. */
    enabled: Type.Boolean({ default: true }),
    /** Requests one principal (token subject and workload) may have in flight at once, across models. */
    maxInFlightPerPrincipal: Type.Integer({ minimum: 1, maximum: 100_000, default: 32 }),
    /** Principals tracked per model by the in-memory store (LRU); beyond it the least recent are forgotten. */
    storeEntries: Type.Integer({ minimum: 100, maximum: 10_000_000, default: 10_000 }),
  },
  { additionalProperties: false, default: {} },
)

export const PoliciesConfig = Type.Object(
  {
    /** Folder with one <model>.yaml per model; relative paths are from the config file's folder. */
    directory: Type.String({ minLength: 1, default: 'policies' }),
    /** Apply changes to the folder without a restart: a valid change applies to requests that
     *  start after it, an invalid one is refused (the policies in force stay, /readyz says they
     *  are stale). Off: the folder is read once, at start. */
    watch: Type.Boolean({ default: true }),
    /** How often the folder is checked for changes besides file-system events (which miss some
     *  atomic swaps, as a Kubernetes ConfigMap volume makes them); the longest a change waits. */
    reloadCheckIntervalMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 5_000 }),
  },
  { additionalProperties: false, default: {} },
)

export type TlsConfig = Static<typeof TlsConfig>
export type AuthConfig = Static<typeof AuthConfig>
export type JwksConfig = Static<typeof JwksConfig>
export type AuthorizationConfig = Static<typeof AuthorizationConfig>
export type RateLimitsConfig = Static<typeof RateLimitsConfig>
export type PoliciesConfig = Static<typeof PoliciesConfig>

/** Cross-field problems the schema cannot express, phrased as fixes (empty = fine). */
export function securityProblems(config: {
  server: { maxHeaderBytes: number }
  tls: TlsConfig
  auth: AuthConfig
  authorization: AuthorizationConfig
}): string[] {
  const problems: string[] = []
  const { auth } = config
  if (config.authorization.enabled && !(config.tls.enabled && auth.enabled)) {
    problems.push('/authorization/enabled: every policy rule names a workload (tls) and a token (auth), so with tls or auth off nothing would be callable; switch authorization off too, or tls and auth on')
  }
  if (auth.enabled) {
    if (auth.jwks.caFile !== undefined && !isUrl(auth.jwks.source)) problems.push('/auth/jwks/caFile: only used when /auth/jwks/source is an https:// URL; remove it')
    if (auth.maxTokenBytes + 16 > config.server.maxHeaderBytes) {
      problems.push(`/auth/maxTokenBytes: ${auth.maxTokenBytes} does not fit in server.maxHeaderBytes (${config.server.maxHeaderBytes}); lower it or raise server.maxHeaderBytes`)
    }
  }
  return problems
}

/** Whether a JWKS source names a URL (else a file path). */
export function isUrl(source: string): boolean {
  return /^https:\/\//i.test(source)
}
