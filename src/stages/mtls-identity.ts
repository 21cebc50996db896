// Stage: mtls-identity.
// Reads: ctx.client.peerCertificate, the client certificate that the TLS handshake already
//        verified (chain to the configured CA bundle, validity dates; see src/transport/tls.ts),
//        and the wall clock.
// Writes: ctx.identity: the SPIFFE ID of the certificate's URI SAN, else `cn:<subject CN>`.
// Throws: unauthenticated (401) when the connection has no verified certificate, the
//         certificate is outside its validity dates now, or it names no usable identity (a
//         SPIFFE ID that breaks the SPIFFE-ID standard, two URI SANs beside a SPIFFE ID, no CN).
//         An expired (or not yet valid) certificate's refusal also closes the connection.
//
// A certificate is parsed once per connection: the server hands every request of a keep-alive
// connection the same X509Certificate object, and the identity and validity dates are cached
// against it. The handshake checked the dates once, but a keep-alive connection outlives the
// handshake: each request compares the cached dates with the clock (two number comparisons).

import type { X509Certificate } from 'node:crypto'
import { workloadSpiffeIdProblem } from '../auth/spiffe-id.ts'
import type { Clock } from '../deps.ts'
import { BulwarkError } from '../errors.ts'
import type { RequestContext, Stage, WorkloadIdentity } from '../types.ts'

/** Longest subject CN taken as an identity. */
const MAX_CN_LENGTH = 2048

/** Node writes a value that holds a separator as a JSON string; undo that. */
function unquote(value: string): string {
  if (!value.startsWith('"')) return value
  try {
    return JSON.parse(value) as string
  } catch {
    return value
  }
}

/** The URI entries of Node's subjectAltName string ("DNS:a, URI:spiffe://..., IP Address:..."). */
function uriSans(subjectAltName: string | undefined): string[] {
  if (!subjectAltName) return []
  const out: string[] = []
  for (const m of subjectAltName.matchAll(/(?:^|, )URI:("(?:[^"\\]|\\.)*"|[^,]*)/g)) out.push(unquote(m[1]!))
  return out
}

/** The first CN of Node's subject string ("CN=dev\nO=Example"). */
function commonName(subject: string): string | null {
  for (const line of subject.split('\n')) {
    if (line.startsWith('CN=')) return unquote(line.slice(3))
  }
  return null
}

/**
 * The workload identity a certificate proves, or why it proves none (operator-facing).
 * X.509-SVID rules (section 2 and 5.2): a certificate with a SPIFFE ID has exactly one URI
 * SAN, and that ID is well-formed (src/auth/spiffe-id.ts) with a path.
 */
export function workloadIdentity(cert: X509Certificate): WorkloadIdentity | { problem: string } {
  const certSha256 = cert.fingerprint256.replace(/:/g, '').toLowerCase()
  const uris = uriSans(cert.subjectAltName)
  const spiffe = uris.filter((u) => u.toLowerCase().startsWith('spiffe:'))
  if (spiffe.length > 0 && uris.length > 1) {
    return { problem: `certificate ${certSha256} has ${uris.length} URI SANs (${spiffe.length} of them SPIFFE IDs); an X.509-SVID has exactly one` }
  }
  if (spiffe.length === 1) {
    const id = spiffe[0]!
    const why = workloadSpiffeIdProblem(id)
    if (why !== null) return { problem: `certificate ${certSha256} has a malformed SPIFFE ID ${JSON.stringify(id.slice(0, 200))}: ${why}` }
    return { id, kind: 'spiffe', certSha256 }
  }
  const cn = commonName(cert.subject)
  if (cn === null || cn.length === 0 || cn.length > MAX_CN_LENGTH) return { problem: `certificate ${certSha256} has neither a SPIFFE ID nor a subject CN` }
  return { id: `cn:${cn}`, kind: 'cn', certSha256 }
}

/** What one certificate proves, worked out once per connection. */
interface CertFacts {
  found: Readonly<WorkloadIdentity> | { problem: string }
  notBeforeMs: number
  notAfterMs: number
  sha256: string
}

function factsOf(cert: X509Certificate): CertFacts {
  return {
    found: Object.freeze(workloadIdentity(cert)),
    notBeforeMs: cert.validFromDate.getTime(),
    notAfterMs: cert.validToDate.getTime(),
    sha256: cert.fingerprint256.replace(/:/g, '').toLowerCase(),
  }
}

export function createMtlsIdentityStage(deps: { clock: Clock }): Stage {
  const { clock } = deps
  const cache = new WeakMap<X509Certificate, CertFacts>()
  const refuse = (reason: string, headers?: Record<string, string>) =>
    new BulwarkError('unauthenticated', 'a valid client certificate is required', { reason, ...(headers ? { headers } : {}) })
  // The certificate will not become valid again on this connection: the client must reconnect
  // with a current one, so the transport closes the connection after the answer.
  const closing = { connection: 'close' }
  const iso = (ms: number) => new Date(ms).toISOString()

  return {
    name: 'mtls-identity',
    phase: 'headers',
    verbs: ['infer', 'metadata'],
    run(ctx: RequestContext) {
      const cert = ctx.client.peerCertificate
      if (cert === null) throw refuse('the connection carries no verified client certificate')
      let facts = cache.get(cert)
      if (facts === undefined) {
        facts = factsOf(cert)
        cache.set(cert, facts)
      }
      const now = clock.nowMs()
      if (now > facts.notAfterMs) throw refuse(`client certificate ${facts.sha256} expired at ${iso(facts.notAfterMs)} (now ${iso(now)}); closing the connection`, closing)
      if (now < facts.notBeforeMs) throw refuse(`client certificate ${facts.sha256} is not valid before ${iso(facts.notBeforeMs)} (now ${iso(now)}); closing the connection`, closing)
      if ('problem' in facts.found) throw refuse(facts.found.problem)
      ctx.identity = facts.found
    },
  }
}
