// Stage: mtls-identity.
// Reads: ctx.client.peerCertificate, the client certificate that the TLS handshake already
//        verified (chain to the configured CA bundle, validity dates; see src/transport/tls.ts).
// Writes: ctx.identity: the SPIFFE ID of the certificate's URI SAN, else `cn:<subject CN>`.
// Throws: unauthenticated (401) when the connection has no verified certificate, or the
//         certificate names no usable identity (two SPIFFE IDs, a malformed one, no CN).
//
// A certificate is parsed once per connection: the server hands every request of a keep-alive
// connection the same X509Certificate object, and the identity is cached against it.

import type { X509Certificate } from 'node:crypto'
import { BulwarkError } from '../errors.ts'
import type { RequestContext, Stage, WorkloadIdentity } from '../types.ts'

/** SPIFFE ID syntax (SPIFFE-ID spec section 2): lowercase trust domain, path segments of [A-Za-z0-9._-]. */
// eslint-disable-next-line security/detect-unsafe-regex -- linear: each repetition of the group starts with '/', which the segment class excludes, so there is one way to match; input is capped at MAX_ID_LENGTH
const SPIFFE_ID = /^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/
const MAX_ID_LENGTH = 2048

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
 * SPIFFE X.509-SVID rules: exactly one URI SAN with the spiffe scheme, well-formed.
 */
export function workloadIdentity(cert: X509Certificate): WorkloadIdentity | { problem: string } {
  const certSha256 = cert.fingerprint256.replace(/:/g, '').toLowerCase()
  const spiffe = uriSans(cert.subjectAltName).filter((u) => u.toLowerCase().startsWith('spiffe:'))
  if (spiffe.length > 1) return { problem: `certificate ${certSha256} has ${spiffe.length} SPIFFE IDs; an X.509-SVID has exactly one` }
  if (spiffe.length === 1) {
    const id = spiffe[0]!
    if (id.length > MAX_ID_LENGTH || !SPIFFE_ID.test(id)) return { problem: `certificate ${certSha256} has a malformed SPIFFE ID ${JSON.stringify(id.slice(0, 200))}` }
    return { id, kind: 'spiffe', certSha256 }
  }
  const cn = commonName(cert.subject)
  if (cn === null || cn.length === 0 || cn.length > MAX_ID_LENGTH) return { problem: `certificate ${certSha256} has neither a SPIFFE ID nor a subject CN` }
  return { id: `cn:${cn}`, kind: 'cn', certSha256 }
}

export function createMtlsIdentityStage(): Stage {
  const cache = new WeakMap<X509Certificate, Readonly<WorkloadIdentity> | { problem: string }>()
  const refuse = (reason: string) => new BulwarkError('unauthenticated', 'a valid client certificate is required', { reason })

  return {
    name: 'mtls-identity',
    phase: 'headers',
    verbs: ['infer', 'metadata'],
    run(ctx: RequestContext) {
      const cert = ctx.client.peerCertificate
      if (cert === null) throw refuse('the connection carries no verified client certificate')
      let found = cache.get(cert)
      if (found === undefined) {
        found = Object.freeze(workloadIdentity(cert))
        cache.set(cert, found)
      }
      if ('problem' in found) throw refuse(found.problem)
      ctx.identity = found
    },
  }
}
