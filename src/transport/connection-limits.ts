// Caps on the API listener's open connections: all clients together (server.maxConnections,
// Node's own cap) and per client (server.maxConnectionsPerClient), so that one client, even
// one with only a certificate and no token, cannot take every connection the others need.
// A client is its certificate (SHA-256 of the DER) once the TLS handshake has verified it,
// or its address on plain HTTP. A connection past either cap is closed at once, counted.

import { createHash } from 'node:crypto'
import type { Server } from 'node:http'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import { Counter } from '../telemetry/metrics.ts'

export interface ConnectionLimits {
  readonly refused: Counter
  /** Open connections of each client right now (for tests and debugging). */
  open(client: string): number
}

export function limitConnections(server: Server, o: { maxConnections: number; maxPerClient: number; tls: boolean }): ConnectionLimits {
  const refused = new Counter('bulwark_connections_refused_total', 'Connections closed on arrival, by reason: total (server.maxConnections open) or per_client (server.maxConnectionsPerClient open for that client).')
  const open = new Map<string, number>()
  server.maxConnections = o.maxConnections
  // Node closes a connection past maxConnections itself, and says so.
  server.on('drop', () => refused.inc({ reason: 'total' }))

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
      const raw = socket.getPeerCertificate()?.raw
      // Without a verified certificate the handshake is refused elsewhere; count by address meanwhile.
      admit(socket, raw ? `cert:${createHash('sha256').update(raw).digest('hex')}` : `addr:${socket.remoteAddress ?? ''}`)
    })
  } else {
    server.on('connection', (socket: Socket) => admit(socket, `addr:${socket.remoteAddress ?? ''}`))
  }
  return { refused, open: (client) => open.get(client) ?? 0 }
}
