// The workload identity a client certificate proves: its SPIFFE ID (URI SAN), else its
// subject CN; certificates that are not valid X.509-SVIDs are refused, not guessed at.

import t from 'tap'
import { X509Certificate } from 'node:crypto'
import { realDeps } from '../../src/deps.ts'
import { isBulwarkError } from '../../src/errors.ts'
import { createCa, issueCertificate } from '../../src/dev/pki.ts'
import { createMtlsIdentityStage, workloadIdentity } from '../../src/stages/mtls-identity.ts'
import { fakeContext } from '../helpers/context.ts'

const ca = await createCa(realDeps, { commonName: 'Test CA' })
const cert = async (o: { cn: string; uris?: string[]; dns?: string[] }) =>
  new X509Certificate((await issueCertificate(ca, realDeps, { commonName: o.cn, usage: 'client', uris: o.uris ?? [], dnsNames: o.dns ?? [] })).certPem)

const cases: { name: string; cert: () => Promise<X509Certificate>; expect: { id: string; kind: string } | RegExp }[] = [
  { name: 'a SPIFFE ID in the URI SAN', cert: () => cert({ cn: 'ignored', uris: ['spiffe://bulwark.local/ns/default/sa/dev'] }), expect: { id: 'spiffe://bulwark.local/ns/default/sa/dev', kind: 'spiffe' } },
  { name: 'a SPIFFE ID next to other names', cert: () => cert({ cn: 'x', dns: ['a.example'], uris: ['https://example.com/x', 'spiffe://td.example/ns/a/sa/b'] }), expect: { id: 'spiffe://td.example/ns/a/sa/b', kind: 'spiffe' } },
  { name: 'no SPIFFE ID: the subject CN', cert: () => cert({ cn: 'legacy-client', dns: ['legacy.example'] }), expect: { id: 'cn:legacy-client', kind: 'cn' } },
  { name: 'two SPIFFE IDs', cert: () => cert({ cn: 'x', uris: ['spiffe://td/ns/a/sa/b', 'spiffe://td/ns/a/sa/c'] }), expect: /has 2 SPIFFE IDs/ },
  { name: 'a malformed SPIFFE ID (uppercase trust domain)', cert: () => cert({ cn: 'x', uris: ['spiffe://TD/ns/a'] }), expect: /malformed SPIFFE ID/ },
  { name: 'a SPIFFE ID with a dot-dot segment is still only a name, matched exactly', cert: () => cert({ cn: 'x', uris: ['spiffe://td/ns/a/../b'] }), expect: { id: 'spiffe://td/ns/a/../b', kind: 'spiffe' } },
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
  const stage = createMtlsIdentityStage()
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
