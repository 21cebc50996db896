// A gRPC client for the load generator (src/loadtest/client.ts's LoadClient): it sends
// prepared requests to inference.GRPCInferenceService and says how each ended, so the bench
// drives the gRPC listener exactly as it drives REST. A request is prepared once (the method
// path and the serialized message, `grpcRequest`) and sent many times as bytes, so the client
// spends nothing per request on encoding. Calls are spread over `connections` channels, each
// with its own HTTP/2 connection.

import * as grpc from '@grpc/grpc-js'
import { systemClock, type Clock } from '../deps.ts'
import { errorStatus, type ErrorCode } from '../errors.ts'
import type { LoadClient, LoadRequest, Outcome } from '../loadtest/client.ts'
import { SERVICE_PATH } from './grpc-chain.ts'
import { inferenceServiceClient } from './grpc.ts'

let service: grpc.ServiceDefinition | null = null

/** A prepared gRPC call as the load generator carries it: the method's path, and its message serialized. */
export function grpcRequest(method: string, message: unknown, items = 1): LoadRequest {
  service ??= inferenceServiceClient().service
  // eslint-disable-next-line bulwark/object-injection -- method is one of the service's names, given by the bench's own code
  const m = service[method]
  if (!m) throw new Error(`inference.GRPCInferenceService has no method ${method}`)
  return { method: 'POST', path: `${SERVICE_PATH}/${method}`, body: m.requestSerialize(message), items }
}

export interface GrpcClientOptions {
  /** HOST:PORT of the gRPC listener. */
  address: string
  connections: number
  /** PEM CA, client certificate and key for TLS; absent: plain HTTP/2. */
  tls?: { ca: Buffer | string; cert?: Buffer | string; key?: Buffer | string; serverName?: string }
  /** Sent as `authorization: Bearer ...` metadata on every call. */
  token?: string
  /** Per-call deadline (ms). */
  deadlineMs?: number
  /** Dates the deadlines (default: the system clock). */
  clock?: Clock
}

const asBuffer = (v: Buffer | string | undefined) => (v === undefined ? null : Buffer.isBuffer(v) ? v : Buffer.from(v))
const passThrough = (b: Buffer) => b

/** How a call ended, as the generator counts it: the HTTP status its Bulwark code has (0 without one), and the code. */
function outcomeOf(err: grpc.ServiceError): Outcome {
  const code = err.metadata?.get('bulwark-code')[0]
  if (typeof code === 'string' && Object.hasOwn(errorStatus, code)) return { status: errorStatus[code as ErrorCode], code }
  return { status: 0, code: `grpc_${grpc.status[err.code] ?? err.code}` }
}

export function grpcLoadClient(o: GrpcClientOptions): LoadClient {
  const credentials = o.tls ? grpc.credentials.createSsl(asBuffer(o.tls.ca), asBuffer(o.tls.key), asBuffer(o.tls.cert)) : grpc.credentials.createInsecure()
  const options: grpc.ChannelOptions = {
    // Each channel its own connection: without it, channels to one address share one.
    'grpc.use_local_subchannel_pool': 1,
    'grpc.max_receive_message_length': -1,
    'grpc.max_send_message_length': -1,
    ...(o.tls?.serverName ? { 'grpc.ssl_target_name_override': o.tls.serverName } : {}),
  }
  const clients = Array.from({ length: Math.max(1, o.connections) }, () => new grpc.Client(o.address, credentials, options))
  const metadata = new grpc.Metadata()
  if (o.token !== undefined) metadata.set('authorization', `Bearer ${o.token}`)
  const clock = o.clock ?? systemClock
  let next = 0
  return {
    send: (r) =>
      new Promise((resolve) => {
        const client = clients[next++ % clients.length]!
        const body = Buffer.isBuffer(r.body) ? r.body : Buffer.from(r.body ?? '')
        const deadline = o.deadlineMs === undefined ? Infinity : clock.nowMs() + o.deadlineMs
        client.makeUnaryRequest(r.path, passThrough, passThrough, body, metadata, { deadline }, (err) => resolve(err ? outcomeOf(err) : { status: 200, code: 'ok' }))
      }),
    close: async () => {
      for (const c of clients) c.close()
    },
  }
}
