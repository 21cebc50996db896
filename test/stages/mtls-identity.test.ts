// The workload identity a client certificate proves: its SPIFFE ID (URI SAN), else its
// subject CN; certificates that are not valid X.509-SVIDs are refused, not guessed at. And the
// certificate's validity dates against the clock on every request of a connection: an expired
// one is refused and its connection closed.

import t from 'tap'
import { X509Certificate } from 'node:crypto'
import { realDeps } from '../../src/deps.ts'
import { isBulwarkError } from '../../src/errors.ts'
import { createCa, issueCertificate } from '../../src/dev/pki.ts'
import { createMtlsIdentityStage, workloadIdentity } from '../../src/stages/mtls-identity.ts'
import { fakeContext } from '../helpers/context.ts'
import { FakeClock } from '../helpers/fake-clock.ts'

const ca = await createCa(realDeps, { commonName: 'Test CA' })
const cert = async (o: { cn: string; uris?: string[]; dns?: string[]; notBeforeMs?: number; notAfterMs?: number }) =>
  new X509Certificate(
    (
      await issueCertificate(ca, realDeps, {
        commonName: o.cn,
        usage: 'client',
        uris: o.uris ?? [],
        dnsNames: o.dns ?? [],
        ...(o.notBeforeMs !== undefined ? { notBeforeMs: o.notBeforeMs } : {}),
        ...(o.notAfterMs !== undefined ? { notAfterMs: o.notAfterMs } : {}),
      })
    ).certPem,
  )

const cases: { name: string; cert: () => Promise<X509Certificate>; expect: { id: string; kind: string } | RegExp }[] = [
  { name: 'a SPIFFE ID in the URI SAN', cert: () => cert({ cn: 'ignored', uris: ['spiffe://bulwark.local/ns/default/sa/dev'] }), expect: { id: 'spiffe://bulwark.local/ns/default/sa/dev', kind: 'spiffe' } },
  { name: 'a SPIFFE ID next to DNS names', cert: () => cert({ cn: 'x', dns: ['a.example'], uris: ['spiffe://td.example/ns/a/sa/b'] }), expect: { id: 'spiffe://td.example/ns/a/sa/b', kind: 'spiffe' } },
  { name: 'a SPIFFE ID beside another URI SAN (X.509-SVID: exactly one URI SAN)', cert: () => cert({ cn: 'x', uris: ['https://example.com/x', 'spiffe://td.example/ns/a/sa/b'] }), expect: /has 2 URI SANs \(1 of them SPIFFE IDs\)/ },
  { name: 'no SPIFFE ID: the subject CN', cert: () => cert({ cn: 'legacy-client', dns: ['legacy.example'] }), expect: { id: 'cn:legacy-client', kind: 'cn' } },
  { name: 'two SPIFFE IDs', cert: () => cert({ cn: 'x', uris: ['spiffe://td/ns/a/sa/b', 'spiffe://td/ns/a/sa/c'] }), expect: /has 2 URI SANs \(2 of them SPIFFE IDs\)/ },
  { name: 'a malformed SPIFFE ID (uppercase trust domain)', cert: () => cert({ cn: 'x', uris: ['spiffe://TD/ns/a'] }), expect: /malformed SPIFFE ID "spiffe:\/\/TD\/ns\/a": the trust domain has uppercase/ },
  {
    name: 'a SPIFFE ID with dot-dot segments (it would pass a ns/default/* prefix while naming ns/evil)',
    cert: () => cert({ cn: 'x', uris: ['spiffe://bulwark.local/ns/default/../../ns/evil/sa/x'] }),
    expect: /malformed SPIFFE ID .*: the path has a dot segment \(\.\.\)/,
  },
  { name: 'a SPIFFE ID with a dot segment', cert: () => cert({ cn: 'x', uris: ['spiffe://td/ns/./a'] }), expect: /the path has a dot segment \(\.\)/ },
  { name: 'a SPIFFE ID with an empty segment', cert: () => cert({ cn: 'x', uris: ['spiffe://td/ns//a'] }), expect: /the path has an empty segment/ },
  { name: 'a SPIFFE ID with a trailing slash', cert: () => cert({ cn: 'x', uris: ['spiffe://td/ns/a/'] }), expect: /the path ends with a slash/ },
  { name: 'a SPIFFE ID with a port', cert: () => cert({ cn: 'x', uris: ['spiffe://td:443/ns/a'] }), expect: /port/ },
  { name: 'a SPIFFE ID with a query', cert: () => cert({ cn: 'x', uris: ['spiffe://td/ns/a?b=c'] }), expect: /query/ },
  { name: 'a SPIFFE ID of a trust domain alone (no workload path)', cert: () => cert({ cn: 'x', uris: ['spiffe://td'] }), expect: /names a trust domain only/ },
]

for (const c of cases) {
  t.test(c.name, async (t) => {
    const found = workloadIdentity(await c.cert())
    if (c.expect instanceof RegExp) {
      t.ok('problem' in found)
      t.match((found as { problem: string }).problem, c.expect)
    } else {
      t.match(found, c.expect)
      t.match((found as { certSha256: string }).certSha256, /^[0-9a-f]{64}$/, 'with the certificate digest for audit')
    }
  })
}

t.test('the stage: identity per connection certificate, refusal without one', async (t) => {
  const stage = createMtlsIdentityStage({ clock: new FakeClock(Date.now()) })
  const c = await cert({ cn: 'x', uris: ['spiffe://td/ns/a/sa/b'] })
  const a = fakeContext({ client: { peerCertificate: c } })
  const b = fakeContext({ client: { peerCertificate: c } })
  stage.run(a)
  stage.run(b)
  t.equal(a.identity?.id, 'spiffe://td/ns/a/sa/b')
  t.equal(a.identity, b.identity, 'the same connection certificate: the identity is computed once')
  try {
    stage.run(fakeContext())
    t.fail('expected a refusal')
  } catch (err) {
    t.ok(isBulwarkError(err) && err.code === 'unauthenticated' && /no verified client certificate/.test(err.reason))
  }
  const bad = await cert({ cn: 'x', uris: ['spiffe://td/a', 'spiffe://td/b'] })
  t.throws(() => stage.run(fakeContext({ client: { peerCertificate: bad } })), { code: 'unauthenticated' })
})

/** The refusal `run` throws (or a test failure when it throws none). */
function refusal(run: () => void): { code: string; reason: string; headers: Readonly<Record<string, string>> } {
  try {
    run()
  } catch (err) {
    if (isBulwarkError(err)) return err
    throw err
  }
  throw new Error('expected a refusal')
}

t.test('a certificate past its notAfter is refused on the next request of its connection, which is then closed', async (t) => {
  const clock = new FakeClock(Date.now())
  const stage = createMtlsIdentityStage({ clock })
  const notAfterMs = Math.floor(clock.nowMs() / 1000) * 1000 + 60_000 // X.509 times have whole seconds
  const c = await cert({ cn: 'x', uris: ['spiffe://td/ns/a/sa/b'], notAfterMs })
  const first = fakeContext({ client: { peerCertificate: c } })
  stage.run(first)
  t.equal(first.identity?.id, 'spiffe://td/ns/a/sa/b', 'valid now: admitted')

  clock.advance(notAfterMs - clock.nowMs())
  const last = fakeContext({ client: { peerCertificate: c } })
  stage.run(last)
  t.equal(last.identity?.id, 'spiffe://td/ns/a/sa/b', 'at notAfter itself (inclusive, RFC 5280 4.1.2.5): still admitted')

  clock.advance(1)
  const late = fakeContext({ client: { peerCertificate: c } })
  const r = refusal(() => stage.run(late))
  t.equal(r.code, 'unauthenticated')
  t.match(r.reason, new RegExp(`client certificate [0-9a-f]{64} expired at ${new Date(notAfterMs).toISOString()}`), 'the reason says when it expired')
  t.equal(r.headers.connection, 'close', 'the answer closes the connection')
  t.equal(late.identity, null, 'no identity is set')
})

t.test('a certificate before its notBefore (the clock stepped back) is refused and its connection closed', async (t) => {
  const clock = new FakeClock(Date.now())
  const stage = createMtlsIdentityStage({ clock })
  const notBeforeMs = Math.floor(clock.nowMs() / 1000) * 1000 - 1000
  const c = await cert({ cn: 'x', uris: ['spiffe://td/ns/a/sa/b'], notBeforeMs })
  stage.run(fakeContext({ client: { peerCertificate: c } }))
  clock.setWall(notBeforeMs - 1)
  const r = refusal(() => stage.run(fakeContext({ client: { peerCertificate: c } })))
  t.equal(r.code, 'unauthenticated')
  t.match(r.reason, /is not valid before/)
  t.equal(r.headers.connection, 'close')
})

t.test('a malformed identity is refused without closing the connection (the dates are fine)', async (t) => {
  const stage = createMtlsIdentityStage({ clock: new FakeClock(Date.now()) })
  const c = await cert({ cn: 'x', uris: ['spiffe://td/ns/../a'] })
  const r = refusal(() => stage.run(fakeContext({ client: { peerCertificate: c } })))
  t.equal(r.code, 'unauthenticated')
  t.match(r.reason, /dot segment/)
  t.equal(r.headers.connection, undefined)
})
