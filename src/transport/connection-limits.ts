// Caps on the API listener's connections: open ones, all clients together
// (server.maxConnections, Node's own cap) and per client (server.maxConnectionsPerClient), so
// that one client, even one with only a certificate and no token, cannot take every
// connection the others need; and new ones per address and second
// (server.newConnectionsPerSecondPerAddress), checked before the TLS handshake, so that a
// client reconnecting as fast as it can (each answer from the headers closes its connection)
// cannot spend the CPU the others' requests need on handshakes. A connection the gateway
// closes after refusing a request whose body it would not read (server.closedOnRefusalCost)
// counts as several new ones: a client that only earns refusals, and reconnects after each,
// gets a small share of the handshakes a well-behaved client may open. A client is its
// certificate (SHA-256 of the DER) once the TLS handshake has verified it, or its address on
// plain HTTP. A connection past any cap is reset at once, before the TLS server sees it, and
// counted.

import type { Server } from 'node:http'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { Clock } from '../deps.ts'
import { Counter } from '../telemetry/metrics.ts'
import { certificateKey } from './peer.ts'
import { verifiedPeerCertificate } from './tls.ts'
import { TokenBuckets } from './token-buckets.ts'

export interface ConnectionLimits {
  readonly refused: Counter
  /** Open connections of each client right now (for tests and debugging). */
  open(client: string): number
  /** The gateway is closing `socket` after a refusal, with the request's body unread: its address pays closedOnRefusalCost new connections. */
  closedOnRefusal(socket: Socket): void
}

/** Addresses whose connection rate is tracked at once; the least recently seen is forgotten first. */
const MAX_TRACKED_ADDRESSES = 10_000

export function limitConnections(
  server: Server,
  o: { maxConnections: number; maxPerClient: number; newPerSecondPerAddress: number; closedOnRefusalCost: number; tls: boolean; clock: Clock },
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
  gateConnections(server, (socket) => {
    if (allowNew(socket.remoteAddress ?? '')) return true
    refused.inc({ reason: 'rate' })
    return false
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
      // The parsed certificate is cached per connection for the requests that follow.
      const fingerprint = verifiedPeerCertificate(socket)?.fingerprint256
      // Without a verified certificate the handshake is refused elsewhere; count by address meanwhile.
      admit(socket, fingerprint ? certificateKey(fingerprint) : `addr:${socket.remoteAddress ?? ''}`)
    })
  } else {
    server.on('connection', (socket: Socket) => {
      if (!socket.destroyed) admit(socket, `addr:${socket.remoteAddress ?? ''}`)
    })
  }
  return {
    refused,
    open: (client) => open.get(client) ?? 0,
    closedOnRefusal: (socket) => buckets.charge(socket.remoteAddress ?? '', o.clock.monotonicMs(), o.closedOnRefusalCost),
  }
}

/**
 * Runs `admit` on each new connection before every 'connection' listener, the TLS server's
 * own included: a refused connection is reset (no FIN, no TIME_WAIT left here) without a TLS
 * socket ever being made for it, which is most of what a refused connection would cost.
 */
function gateConnections(server: Server, admit: (socket: Socket) => boolean): void {
  const emit = server.emit
  server.emit = function (this: Server, event: string | symbol, ...args: unknown[]): boolean {
    if (event === 'connection' && !admit(args[0] as Socket)) {
      ;(args[0] as Socket).resetAndDestroy()
      return false
    }
    return emit.apply(this, [event, ...args] as Parameters<Server['emit']>)
  } as Server['emit']
}
