// What a connection says about its peer, for the request context and the audit record.

import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'

/** The negotiated TLS version ('TLSv1.3'), or null over plain TCP. */
export function tlsVersionOf(socket: Socket | null | undefined): string | null {
  const tls = socket as Partial<TLSSocket> | null | undefined
  return typeof tls?.getProtocol === 'function' ? tls.getProtocol() : null
}
