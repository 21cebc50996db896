// The gRPC listener: inference.GRPCInferenceService (proto/grpc_service.proto) served by
// @grpc/grpc-js on its own port (grpc.listen), a second transport into the same chain as
// REST (src/transport/grpc-chain.ts). TLS as the REST listener's (the same files and their
// reloads, TLS 1.3 by default, a client certificate required and verified against the CA
// bundle at the handshake), or plain HTTP/2 when tls is off. The API listener's connection
// caps (server.maxConnections, maxConnectionsPerClient, newConnectionsPerSecondPerAddress)
// apply to this listener's connections on their own. Limits from the grpc config slice:
// message sizes, streams per connection, keepalive pings (sent, and enforced on clients: a
// client that pings more often than keepalive.minPingIntervalMs with no call in flight is
// sent GOAWAY ENHANCE_YOUR_CALM after keepalive.maxPingStrikes, as gRPC servers do), idle
// connections closed.

import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { constants as http2constants, type Http2SecureServer, type Http2Server, type Http2Session, type SecureServerOptions } from 'node:http2'
import type { TLSSocket } from 'node:tls'
import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'
import type { GrpcConfig } from '../config/grpc.ts'
import type { Config } from '../config/schema.ts'
import type { Clock, Logger } from '../deps.ts'
import type { Server as HttpServer } from 'node:http'
import { Counter, Gauge, type GatewayMetrics } from '../telemetry/metrics.ts'
import { limitConnections, type ConnectionLimits } from './connection-limits.ts'
import { grpcHandlers, type GrpcChainOptions } from './grpc-chain.ts'
import { handshakeFailureReason, httpsServerOptions, type TlsMaterial, type TlsReloader } from './tls.ts'

/** The folder of the .proto files, in the repository (and the image) next to src/. */
export const PROTO_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../proto')

/** How the gateway and its clients load the protocol: field names as in the .proto, int64 as numbers, enums by name. */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true, includeDirs: [PROTO_DIR] }

/** The client of GRPCInferenceService from proto/grpc_service.proto (its `service` is the definition the server serves). */
export function inferenceServiceClient(): grpc.ServiceClientConstructor {
  const definition = protoLoader.loadSync(path.join(PROTO_DIR, 'grpc_service.proto'), PROTO_LOADER_OPTIONS)
  return (grpc.loadPackageDefinition(definition) as unknown as { inference: { GRPCInferenceService: grpc.ServiceClientConstructor } }).inference.GRPCInferenceService
}

/** Server credentials from the REST listener's TLS options, with the client certificate checked at the handshake. */
class MutualTlsCredentials extends grpc.ServerCredentials {
  constructor(options: SecureServerOptions) {
    super(options, options)
  }
  _equals(other: grpc.ServerCredentials): boolean {
    return other === this
  }
}

export interface GrpcListener {
  /** Binds host:port (0 for any free port); resolves with the port bound. */
  listen(host: string, port: number): Promise<number>
  /** Stops taking calls; calls in flight finish, at most graceMs, then the rest are cut. */
  close(graceMs: number): Promise<void>
}

export interface GrpcListenerOptions extends Omit<GrpcChainOptions, 'tlsVersion'> {
  config: Config
  tlsMaterial: TlsMaterial | null
  /** The API listener's TLS reloader: rotated files reach this listener too. */
  tlsReloader: TlsReloader | null
  /** Where this listener's refused handshakes and connections are counted. */
  metrics: GatewayMetrics
}

/** The reasons limitConnections counts a refused connection under. */
const REFUSALS = ['total', 'per_client', 'rate'] as const

export function createGrpcListener(o: GrpcListenerOptions): GrpcListener {
  const c = o.config.grpc
  const tls = o.config.tls
  const handshakeFailures = new Counter('bulwark_grpc_tls_handshake_failures_total', 'TLS handshakes the gRPC listener refused or that failed (no or untrusted client certificate, protocol, timeout), by reason.')
  const limits: ConnectionLimits[] = []
  const refused = new Gauge('bulwark_grpc_connections_refused_total', 'Connections the gRPC listener closed on arrival, by reason (as bulwark_connections_refused_total for the REST listener); only grows.', function* () {
    for (const reason of REFUSALS) yield [{ reason }, limits.reduce((n, l) => n + l.refused.get({ reason }), 0)]
  })
  o.metrics.add(handshakeFailures, refused)
  const server = new grpc.Server({
    'grpc.max_receive_message_length': c.maxReceiveMessageBytes,
    'grpc.max_send_message_length': c.maxSendMessageBytes,
    'grpc.max_concurrent_streams': c.maxConcurrentStreams,
    'grpc.keepalive_time_ms': c.keepalive.timeMs,
    'grpc.keepalive_timeout_ms': c.keepalive.timeoutMs,
    'grpc.max_connection_idle_ms': c.keepalive.maxConnectionIdleMs,
  })
  server.addService(inferenceServiceClient().service, grpcHandlers({ ...o, tlsVersion: o.tlsMaterial && tls.minVersion === 'TLSv1.3' ? 'TLSv1.3' : null }))
  const settings = { maxConcurrentStreams: c.maxConcurrentStreams, maxHeaderListSize: o.config.server.maxHeaderBytes }
  const credentials = o.tlsMaterial
    ? new MutualTlsCredentials({ ...httpsServerOptions(tls, o.tlsMaterial, { maxHeaderSize: o.config.server.maxHeaderBytes }), rejectUnauthorized: true, settings })
    : grpc.ServerCredentials.createInsecure()

  return {
    listen: (host, port) =>
      new Promise((resolve, reject) => {
        server.bindAsync(`${host.includes(':') ? `[${host}]` : host}:${port}`, credentials, (err, bound) => {
          if (err) return reject(err)
          try {
            for (const h2 of http2ServersOf(server)) {
              guard(h2, c, o.clock, o.log, handshakeFailures)
              // The API listener's connection caps, counted apart for this listener.
              const s = o.config.server
              const capped = limitConnections(h2 as unknown as HttpServer, { maxConnections: s.maxConnections, maxPerClient: s.maxConnectionsPerClient, newPerSecondPerAddress: s.newConnectionsPerSecondPerAddress, closedOnRefusalCost: s.closedOnRefusalCost, tls: o.tlsMaterial !== null, clock: o.clock })
              limits.push(capped)
              o.tlsReloader?.alsoServe(h2 as Http2SecureServer)
            }
          } catch (e) {
            server.forceShutdown()
            return reject(e as Error)
          }
          resolve(bound)
        })
      }),
    close: (graceMs) =>
      new Promise((resolve) => {
        const cut = o.clock.setTimeout(() => server.forceShutdown(), graceMs, { keepAlive: false })
        server.tryShutdown(() => {
          cut.cancel()
          resolve()
        })
      }),
  }
}

/**
 * grpc-js's HTTP/2 servers. It has no public hook for sessions or handshake failures, which
 * the ping enforcement and the handshake log need: its private map is read, and a grpc-js
 * that changed it stops the start (the tests run this path) rather than run unguarded.
 */
function http2ServersOf(server: grpc.Server): Http2Server[] {
  const map = (server as unknown as { http2Servers?: unknown }).http2Servers
  if (!(map instanceof Map)) throw new Error('@grpc/grpc-js no longer keeps its HTTP/2 servers in `http2Servers`; the gRPC listener cannot enforce keepalive pings; update src/transport/grpc.ts')
  return [...map.keys()] as Http2Server[]
}

/** Ping enforcement per session, and one log line per refused handshake. */
function guard(h2: Http2Server, c: GrpcConfig, clock: Clock, log: Logger, handshakeFailures: Counter): void {
  h2.on('session', (session: Http2Session) => enforcePings(session, c.keepalive, clock, log))
  // A refused handshake has no call: count it, and log why for the operator (as the REST listener does).
  h2.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => {
    const reason = handshakeFailureReason(err)
    handshakeFailures.inc({ reason })
    log.info({ reason, err: err.message, remote: socket.remoteAddress, transport: 'grpc' }, 'TLS handshake refused')
  })
}

function enforcePings(session: Http2Session, k: GrpcConfig['keepalive'], clock: Clock, log: Logger): void {
  let calls = 0
  let lastPingMs = -Infinity
  let strikes = 0
  session.on('stream', (stream) => {
    calls++
    strikes = 0
    stream.once('close', () => calls--)
  })
  session.on('ping', () => {
    const now = clock.monotonicMs()
    const tooSoon = calls === 0 && now - lastPingMs < k.minPingIntervalMs
    lastPingMs = now
    if (!tooSoon || ++strikes <= k.maxPingStrikes) return
    log.info({ remote: session.socket?.remoteAddress, strikes, minPingIntervalMs: k.minPingIntervalMs, transport: 'grpc' }, 'gRPC client pings too often; connection closed (GOAWAY ENHANCE_YOUR_CALM)')
    session.goaway(http2constants.NGHTTP2_ENHANCE_YOUR_CALM, 0, Buffer.from('too_many_pings'))
    session.close()
  })
}
