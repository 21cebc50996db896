// What a connection says about its peer, for the request context and the audit record.

import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'

/** The negotiated TLS version ('TLSv1.3'), or null over plain TCP. */
export function tlsVersionOf(socket: Socket | null | undefined): string | null {
  const tls = socket as Partial<TLSSocket> | null | undefined
  return typeof tls?.getProtocol === 'function' ? tls.getProtocol() : null
}

/**
 * The key a client is counted under by certificate: `cert:` and the SHA-256 of its DER in
 * lowercase hex, from Node's colon-separated fingerprint256 (an X509Certificate's, or a TLS
 * socket's getPeerCertificate()). The same client gets the same key wherever it is counted.
 */
export function certificateKey(fingerprint256: string): string {
  return `cert:${fingerprint256.replace(/:/g, '').toLowerCase()}`
}
