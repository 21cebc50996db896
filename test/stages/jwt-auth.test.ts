// The jwt-auth stage and the JSON Web Key Set behind it, stage by stage with a fake clock:
// the verified-token cache (hit, keyed by the whole token, until exp), the key set's refresh
// on an unknown kid with a cool-down, an https key set behind a private CA, the checks
// that stop a bad key set at start, and the token type (`typ`): only access tokens pass.

import t from 'tap'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { createServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { Value } from '@sinclair/typebox/value'
import { decodeProtectedHeader, importPKCS8, SignJWT } from 'jose'
import { JwksKeySet } from '../../src/auth/jwks.ts'
import { mintToken, type SigningKey } from '../../src/dev/mint-token.ts'
import { TokenCache } from '../../src/auth/token-cache.ts'
import { ConfigError } from '../../src/config/load.ts'
import { AuthConfig, DEV_AUDIENCE, DEV_ISSUER, type AuthConfig as AuthConfigT } from '../../src/config/security.ts'
import { isBulwarkError } from '../../src/errors.ts'
import { realDeps, silentLogger } from '../../src/deps.ts'
import { createSigningKey, createCa, issueCertificate } from '../../src/dev/pki.ts'
import { createJwtAuthStage } from '../../src/stages/jwt-auth.ts'
import { fakeContext } from '../helpers/context.ts'
import { FakeClock } from '../helpers/fake-clock.ts'

const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-jwt-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))

const authConfig = (over: Record<string, unknown> = {}): AuthConfigT => Value.Default(AuthConfig, structuredClone(over)) as AuthConfigT

async function signingKey(): Promise<{ signing: SigningKey; jwks: { keys: object[] } }> {
  const k = await createSigningKey()
  return { signing: { key: await importPKCS8(k.keyPem, 'ES256'), kid: k.kid, alg: 'ES256' }, jwks: k.jwks }
}

async function keySetFile(name: string, jwks: object): Promise<string> {
  const file = path.join(dir, name)
  await writeFile(file, JSON.stringify(jwks))
  return file
}

const mint = (signing: SigningKey, clock: FakeClock, o: { ttlSeconds?: number; scopes?: string[]; claims?: Record<string, unknown>; type?: string | null } = {}) =>
  mintToken(
    signing,
    {
      issuer: DEV_ISSUER,
      audience: DEV_AUDIENCE,
      subject: 'alice',
      scopes: o.scopes ?? ['mnist:infer'],
      ttlSeconds: o.ttlSeconds ?? 600,
      ...(o.claims ? { claims: o.claims } : {}),
      ...(o.type !== undefined ? { type: o.type } : {}),
    },
    { clock, random: realDeps.random },
  )

async function refusal(p: unknown): Promise<{ code: string; reason: string }> {
  try {
    await p
  } catch (err) {
    if (isBulwarkError(err)) return { code: err.code, reason: err.reason }
    throw err
  }
  throw new Error('expected a refusal')
}

t.test('a verified token becomes the principal, and is cached by its SHA-256 until it expires', async (t) => {
  const clock = new FakeClock()
  const { signing, jwks } = await signingKey()
  const file = await keySetFile('cache.json', jwks)
  const keys = await JwksKeySet.open(authConfig({ jwks: { source: file } }).jwks, dir, { clock, log: silentLogger })
  let verifications = 0
  const getKey: typeof keys.getKey = (...args) => {
    verifications++
    return keys.getKey(...args)
  }
  const cache = new TokenCache(100)
  const stage = createJwtAuthStage(authConfig(), { clock, getKey, cache })

  const token = await mint(signing, clock, { ttlSeconds: 600, scopes: ['mnist:infer', 'mnist:metadata'] })
  const ctx = fakeContext({ bearerToken: `Bearer ${token}` })
  await stage.run(ctx)
  t.equal(ctx.principal?.subject, 'alice')
  t.equal(ctx.principal?.issuer, DEV_ISSUER)
  t.same(ctx.principal?.scopes, ['mnist:infer', 'mnist:metadata'])
  t.equal(ctx.principal?.expiresAtMs, Math.floor(clock.nowMs() / 1000) * 1000 + 600_000)
  t.equal(verifications, 1)

  const again = fakeContext({ bearerToken: `bearer ${token}` })
  await stage.run(again)
  t.equal(again.principal, ctx.principal, 'the same token again: the cached principal')
  t.equal(verifications, 1, 'without a second verification')
  t.equal(cache.size, 1)

  // A token that differs in one byte of the signature is not the cached token.
  const last = token.at(-2) === 'A' ? 'B' : 'A'
  const forged = token.slice(0, -2) + last + token.at(-1)
  const r = await refusal(stage.run(fakeContext({ bearerToken: `Bearer ${forged}` })))
  t.equal(r.code, 'unauthenticated', 'a forged signature on the cached payload misses the cache and fails verification')
  t.equal(verifications, 2)

  clock.advance(632_000) // past exp and the 30 s clock tolerance
  const late = await refusal(stage.run(fakeContext({ bearerToken: `Bearer ${token}` })))
  t.match(late.reason, /expired/, 'past exp (and the clock tolerance) the cache forgets it and verification refuses it')
  t.equal(cache.size, 0)
})

t.test('the token cache is bounded and can be switched off', async (t) => {
  const clock = new FakeClock()
  const cache = new TokenCache(2)
  const p = (s: string) => ({ subject: s, issuer: 'i', scopes: [], claims: {}, expiresAtMs: clock.nowMs() + 1000 })
  cache.set('a', p('a'))
  cache.set('b', p('b'))
  cache.set('c', p('c'))
  t.equal(cache.size, 2)
  t.equal(cache.get('a', clock.nowMs()), undefined, 'the oldest entry went first')
  t.equal(cache.get('c', clock.nowMs())?.subject, 'c')
  const off = new TokenCache(0)
  off.set('a', p('a'))
  t.equal(off.size, 0)
})

t.test('scopes may come as an OAuth string or as an array claim', async (t) => {
  const clock = new FakeClock()
  const { signing, jwks } = await signingKey()
  const keys = await JwksKeySet.open(authConfig({ jwks: { source: await keySetFile('scp.json', jwks) } }).jwks, dir, { clock, log: silentLogger })
  const stage = createJwtAuthStage(authConfig({ scopeClaim: 'scp' }), { clock, getKey: keys.getKey })
  const ctx = fakeContext({ bearerToken: `Bearer ${await mint(signing, clock, { claims: { scp: ['a:infer', 'b:infer', 7] } })}` })
  await stage.run(ctx)
  t.same(ctx.principal?.scopes, ['a:infer', 'b:infer'], 'non-strings are ignored')
})

t.test('an unknown kid re-reads the key set, at most once per cool-down', async (t) => {
  const clock = new FakeClock()
  const first = await signingKey()
  const second = await signingKey()
  const file = await keySetFile('rotating.json', first.jwks)
  let reads = 0
  const keys = await JwksKeySet.open(authConfig({ jwks: { source: file, refreshCooldownMs: 30_000 } }).jwks, dir, {
    clock,
    log: silentLogger,
    onRefresh: () => reads++,
  })
  const cache = new TokenCache(10)
  const stage = createJwtAuthStage(authConfig(), { clock, getKey: keys.getKey, cache })
  await stage.run(fakeContext({ bearerToken: `Bearer ${await mint(first.signing, clock)}` }))
  t.equal(cache.size, 1)

  // The issuer rotates: the file now holds the second key only.
  await writeFile(file, JSON.stringify(second.jwks))
  const newToken = `Bearer ${await mint(second.signing, clock)}`
  const early = await refusal(stage.run(fakeContext({ bearerToken: newToken })))
  t.match(early.reason, /no key in the JSON Web Key Set matches/, 'within the cool-down after the start: no re-read')
  t.equal(reads, 0)

  clock.advance(30_000)
  const ctx = fakeContext({ bearerToken: newToken })
  await stage.run(ctx)
  t.equal(ctx.principal?.subject, 'alice', 'after the cool-down the unknown kid triggers a re-read and verifies')
  t.equal(reads, 1)

  // A flood of made-up kids costs one re-read per cool-down, not one per token.
  const bogus = await signingKey()
  for (let i = 0; i < 20; i++) await refusal(stage.run(fakeContext({ bearerToken: `Bearer ${await mint(bogus.signing, clock)}` })))
  t.equal(reads, 1, '20 tokens with an unknown kid right after a re-read: none')
  clock.advance(30_000)
  for (let i = 0; i < 20; i++) await refusal(stage.run(fakeContext({ bearerToken: `Bearer ${await mint(bogus.signing, clock)}` })))
  t.equal(reads, 2, '20 more after the cool-down: one')
})

t.test('a changed key set drops the cached tokens (a key may have been revoked)', async (t) => {
  const clock = new FakeClock()
  const first = await signingKey()
  const file = await keySetFile('revoke.json', first.jwks)
  const cache = new TokenCache(10)
  const keys = await JwksKeySet.open(authConfig({ jwks: { source: file, maxAgeMs: 60_000 } }).jwks, dir, { clock, log: silentLogger, onChange: () => cache.clear() })
  const stage = createJwtAuthStage(authConfig(), { clock, getKey: keys.getKey, cache })
  const token = `Bearer ${await mint(first.signing, clock, { ttlSeconds: 3600 })}`
  await stage.run(fakeContext({ bearerToken: token }))
  t.equal(cache.size, 1)
  await writeFile(file, JSON.stringify((await signingKey()).jwks))
  clock.advance(60_000)
  await keys.refresh()
  t.equal(cache.size, 0, 'the cache is empty')
  const r = await refusal(stage.run(fakeContext({ bearerToken: token })))
  t.equal(r.code, 'unauthenticated', 'and the token of the revoked key is refused')
})

t.test('a JSON Web Key Set over https, from an issuer with a private CA', async (t) => {
  const clock = new FakeClock()
  const { signing, jwks } = await signingKey()
  const ca = await createCa(realDeps, { commonName: 'Issuer CA' })
  const cert = await issueCertificate(ca, realDeps, { commonName: 'localhost', usage: 'server', ipAddresses: ['127.0.0.1'] })
  let hits = 0
  const issuer = createServer({ cert: cert.certPem, key: cert.keyPem }, (req, res) => {
    hits++
    if (req.url !== '/jwks.json') return void res.writeHead(404).end()
    res.writeHead(200, { 'content-type': 'application/jwk-set+json' }).end(JSON.stringify(jwks))
  })
  await new Promise<void>((r) => issuer.listen(0, '127.0.0.1', r))
  t.teardown(() => issuer.close())
  const url = `https://127.0.0.1:${(issuer.address() as AddressInfo).port}/jwks.json`
  const caFile = path.join(dir, 'issuer-ca.pem')
  await writeFile(caFile, ca.certPem)

  const keys = await JwksKeySet.open(authConfig({ jwks: { source: url, caFile } }).jwks, dir, { clock, log: silentLogger })
  const stage = createJwtAuthStage(authConfig(), { clock, getKey: keys.getKey })
  for (let i = 0; i < 3; i++) await stage.run(fakeContext({ bearerToken: `Bearer ${await mint(signing, clock)}` }))
  t.equal(hits, 1, 'fetched once at start, then served from memory')

  await t.rejects(JwksKeySet.open(authConfig({ jwks: { source: url } }).jwks, dir, { clock, log: silentLogger }), ConfigError, 'without the issuer CA the https key set is not trusted')
  await t.rejects(
    JwksKeySet.open(authConfig({ jwks: { source: url.replace('jwks.json', 'nothing'), caFile } }).jwks, dir, { clock, log: silentLogger }),
    /answered 404/,
  )
})

t.test('a key set that cannot be used stops the start', async (t) => {
  const clock = new FakeClock()
  const open = (source: string) => JwksKeySet.open(authConfig({ jwks: { source } }).jwks, dir, { clock, log: silentLogger })
  await t.rejects(open(path.join(dir, 'missing.json')), /cannot load the JSON Web Key Set/)
  await t.rejects(open(await keySetFile('empty.json', { keys: [] })), /holds no "keys"/)
  const k = await createSigningKey()
  const priv = JSON.parse(JSON.stringify(k.jwks)) as { keys: Record<string, unknown>[] }
  priv.keys[0]!.d = 'c2VjcmV0'
  await t.rejects(open(await keySetFile('private.json', priv)), /private or symmetric key material/)
  await t.rejects(open(await keySetFile('hmac.json', { keys: [{ kty: 'oct', k: 'c2VjcmV0', kid: 'h' }] })), /private or symmetric key material/)
})

t.test('an HS256 token whose secret is the public JWK itself is refused before any key is used', async (t) => {
  const clock = new FakeClock()
  const { jwks } = await signingKey()
  let keyLookups = 0
  const keys = await JwksKeySet.open(authConfig({ jwks: { source: await keySetFile('hs.json', jwks) } }).jwks, dir, { clock, log: silentLogger })
  const stage = createJwtAuthStage(authConfig(), {
    clock,
    getKey: (...a) => {
      keyLookups++
      return keys.getKey(...a)
    },
  })
  const secret = new TextEncoder().encode(JSON.stringify((jwks.keys as object[])[0]))
  const token = await new SignJWT({ iss: DEV_ISSUER, aud: DEV_AUDIENCE, sub: 'mallory' })
    .setProtectedHeader({ alg: 'HS256' })
    .setIssuedAt(Math.floor(clock.nowMs() / 1000))
    .setExpirationTime(Math.floor(clock.nowMs() / 1000) + 60)
    .sign(secret)
  const r = await refusal(stage.run(fakeContext({ bearerToken: `Bearer ${token}` })))
  t.match(r.reason, /algorithm not allowed/)
  t.equal(keyLookups, 0, 'the allow-list is checked before the key set is consulted')
})

t.test('the algorithm allow-list accepts asymmetric algorithms only', async (t) => {
  t.ok(Value.Check(AuthConfig, Value.Default(AuthConfig, { algorithms: ['ES256', 'EdDSA', 'PS256'] })))
  for (const alg of ['HS256', 'none', 'HS512']) t.notOk(Value.Check(AuthConfig, Value.Default(AuthConfig, { algorithms: [alg] })), `${alg} is not a valid choice`)
})


t.test('the token type: access tokens pass, other kinds of token from the same issuer and audience do not', async (t) => {
  const clock = new FakeClock()
  const { signing, jwks } = await signingKey()
  const keys = await JwksKeySet.open(authConfig({ jwks: { source: await keySetFile('typ.json', jwks) } }).jwks, dir, { clock, log: silentLogger })
  const cache = new TokenCache(100)
  const stage = createJwtAuthStage(authConfig(), { clock, getKey: keys.getKey, cache })
  const run = async (type: string | null) => stage.run(fakeContext({ bearerToken: `Bearer ${await mint(signing, clock, { type })}` }))

  // at+jwt (RFC 9068) and JWT by default, whatever the case, with or without application/ (RFC 7515 4.1.9).
  for (const type of ['at+jwt', 'AT+JWT', 'application/at+jwt', 'Application/At+JWT', 'JWT', 'jwt', 'application/jwt']) {
    await t.resolves(run(type), `typ ${type} is accepted`)
  }
  const accepted = cache.size

  const refused: [type: string | null, reason: RegExp][] = [
    ['id+jwt', /token type \(typ header\) "id\+jwt" is not an access token type this gateway accepts \(auth\.acceptedTypes: at\+jwt, JWT\)/],
    ['dpop+jwt', /"dpop\+jwt" is not an access token type/],
    ['logout+jwt', /"logout\+jwt" is not an access token type/],
    ['secevent+jwt', /"secevent\+jwt" is not an access token type/],
    ['text/jwt', /"text\/jwt" is not an access token type/],
    ['application/at+jwt+x', /is not an access token type/],
    [null, /the token has no typ header; access tokens are typed \(RFC 9068: at\+jwt\), and auth\.acceptUntypedTokens is off/],
  ]
  for (const [type, reason] of refused) {
    const r = await refusal(run(type))
    t.equal(r.code, 'unauthenticated', `typ ${type}: refused`)
    t.match(r.reason, reason, `typ ${type}: the reason names the type`)
  }
  t.equal(cache.size, accepted, 'a refused token is not cached')
})

t.test('a typ that is not a string is refused', async (t) => {
  const clock = new FakeClock()
  const { signing, jwks } = await signingKey()
  const keys = await JwksKeySet.open(authConfig({ jwks: { source: await keySetFile('typ-number.json', jwks) } }).jwks, dir, { clock, log: silentLogger })
  const stage = createJwtAuthStage(authConfig(), { clock, getKey: keys.getKey })
  const now = Math.floor(clock.nowMs() / 1000)
  const token = await new SignJWT({ iss: DEV_ISSUER, aud: DEV_AUDIENCE, sub: 'alice', iat: now, exp: now + 60 })
    .setProtectedHeader({ alg: 'ES256', kid: signing.kid, typ: 7 as unknown as string })
    .sign(signing.key)
  const r = await refusal(stage.run(fakeContext({ bearerToken: `Bearer ${token}` })))
  t.match(r.reason, /the typ header is 7, not a string/)
})

t.test('the accepted types are the operator\'s: narrowed to at+jwt, or untyped tokens let in', async (t) => {
  const clock = new FakeClock()
  const { signing, jwks } = await signingKey()
  const keys = await JwksKeySet.open(authConfig({ jwks: { source: await keySetFile('typ-config.json', jwks) } }).jwks, dir, { clock, log: silentLogger })
  const strict = createJwtAuthStage(authConfig({ acceptedTypes: ['application/AT+JWT'] }), { clock, getKey: keys.getKey })
  const typed = fakeContext({ bearerToken: `Bearer ${await mint(signing, clock, { type: 'at+jwt' })}` })
  await strict.run(typed)
  t.equal(typed.principal?.subject, 'alice', 'the configured type, written differently, passes')
  const r = await refusal(strict.run(fakeContext({ bearerToken: `Bearer ${await mint(signing, clock, { type: 'JWT' })}` })))
  t.match(r.reason, /"JWT" is not an access token type .*auth\.acceptedTypes: application\/AT\+JWT/, 'JWT is refused once the list no longer has it')

  const lenient = createJwtAuthStage(authConfig({ acceptUntypedTokens: true }), { clock, getKey: keys.getKey })
  const ctx = fakeContext({ bearerToken: `Bearer ${await mint(signing, clock, { type: null })}` })
  await lenient.run(ctx)
  t.equal(ctx.principal?.subject, 'alice', 'auth.acceptUntypedTokens: an untyped token passes')
  const still = await refusal(lenient.run(fakeContext({ bearerToken: `Bearer ${await mint(signing, clock, { type: 'dpop+jwt' })}` })))
  t.match(still.reason, /"dpop\+jwt" is not an access token type/, 'but a token typed as something else still does not')
})

t.test('a forged token is refused for its signature, whatever type it claims', async (t) => {
  const clock = new FakeClock()
  const { jwks } = await signingKey()
  const other = await signingKey()
  const keys = await JwksKeySet.open(authConfig({ jwks: { source: await keySetFile('typ-forged.json', jwks) } }).jwks, dir, { clock, log: silentLogger })
  const stage = createJwtAuthStage(authConfig(), { clock, getKey: keys.getKey })
  const kid = (jwks.keys[0] as { kid: string }).kid
  const r = await refusal(stage.run(fakeContext({ bearerToken: `Bearer ${await mint({ ...other.signing, kid }, clock, { type: 'id+jwt' })}` })))
  t.match(r.reason, /signature does not verify/)
})

t.test('auth.acceptedTypes: media types only, at least one; the defaults are at+jwt and JWT, untyped off', async (t) => {
  const defaults = authConfig()
  t.same(defaults.acceptedTypes, ['at+jwt', 'JWT'])
  t.equal(defaults.acceptUntypedTokens, false)
  t.ok(Value.Check(AuthConfig, authConfig({ acceptedTypes: ['application/at+jwt'] })))
  for (const bad of [[], [''], ['at+jwt; charset=utf-8'], ['a/b/c'], ['at jwt']]) {
    t.notOk(Value.Check(AuthConfig, authConfig({ acceptedTypes: bad })), `${JSON.stringify(bad)} is refused`)
  }
})

t.test('development tokens are typed at+jwt', async (t) => {
  const { signing } = await signingKey()
  const token = await mint(signing, new FakeClock())
  t.equal((decodeProtectedHeader(token) as { typ?: string }).typ, 'at+jwt')
})
