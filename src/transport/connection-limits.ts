// Caps on the API listener's connections: open ones, all clients together
// (server.maxConnections, Node's own cap) and per client (server.maxConnectionsPerClient), so
// that one client, even one with only a certificate and no token, cannot take every
// connection the others need; and new ones per address and second
// (server.newConnectionsPerSecondPerAddress), checked before the TLS handshake, so that a
// client reconnecting as fast as it can (each answer from the headers closes its connection)
// cannot spend the CPU the others' requests need on handshakes. A client is its certificate
// (SHA-256 of the DER) once the TLS handshake has verified it, or its address on plain HTTP.
// A connection past any cap is closed at once, and counted.

import type { Server } from 'node:http'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { Clock } from '../deps.ts'
import { Counter } from '../telemetry/metrics.ts'
import { certificateKey } from './peer.ts'
import { TokenBuckets } from './token-buckets.ts'

export interface ConnectionLimits {
  readonly refused: Counter
  /** Open connections of each client right now (for tests and debugging). */
  open(client: string): number
}

/** Addresses whose connection rate is tracked at once; the least recently seen is forgotten first. */
const MAX_TRACKED_ADDRESSES = 10_000

export function limitConnections(
  server: Server,
  o: { maxConnections: number; maxPerClient: number; newPerSecondPerAddress: number; tls: boolean; clock: Clock },
): ConnectionLimits {
  const refused = new Counter('bulwark_connections_refused_total', 'Connections closed on arrival, by reason: total (server.maxConnections open), per_client (server.maxConnectionsPerClient open for that client) or rate (server.newConnectionsPerSecondPerAddress exceeded).')
  const open = new Map<string, number>()
  server.maxConnections = o.maxConnections
  // Node closes a connection past maxConnections itself, and says so.
  server.on('drop', () => refused.inc({ reason: 'total' }))

  // A token bucket per address, a second's worth deep: bursts of reconnects pass, floods do not.
  const rate = o.newPerSecondPerAddress
  const buckets = new TokenBuckets({ perSecond: rate, burst: rate, maxKeys: MAX_TRACKED_ADDRESSES })
  const allowNew = (address: string): boolean => buckets.take(address, o.clock.monotonicMs()) === 0
  server.prependListener('connection', (socket: Socket) => {
    if (allowNew(socket.remoteAddress ?? '')) return
    refused.inc({ reason: 'rate' })
    socket.destroy()
  })

  const admit = (socket: Socket, client: string) => {
    const n = open.get(client) ?? 0
    if (n >= o.maxPerClient) {
      refused.inc({ reason: 'per_client' })
      socket.destroy()
      return
    }
    open.set(client, n + 1)
    socket.once('close', () => {
      const left = (open.get(client) ?? 1) - 1
      if (left <= 0) open.delete(client)
      else open.set(client, left)
    })
  }

  if (o.tls) {
    server.on('secureConnection', (socket: TLSSocket) => {
      const fingerprint = socket.getPeerCertificate()?.fingerprint256
      // Without a verified certificate the handshake is refused elsewhere; count by address meanwhile.
      admit(socket, fingerprint ? certificateKey(fingerprint) : `addr:${socket.remoteAddress ?? ''}`)
    })
  } else {
    server.on('connection', (socket: Socket) => {
      if (!socket.destroyed) admit(socket, `addr:${socket.remoteAddress ?? ''}`)
    })
  }
  return { refused, open: (client) => open.get(client) ?? 0 }
}
