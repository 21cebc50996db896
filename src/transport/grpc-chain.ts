// The gRPC transport's side of the chain (src/pipeline.ts), as src/transport/http-chain.ts is
// REST's: each unary call of inference.GRPCInferenceService gets a request context, runs the
// arrival, headers and body phases, is answered by translating the context (src/oip/
// model-info.ts, src/transport/grpc-codec.ts), and runs the response phase (the audit record)
// before the answer leaves; each link's onDestroy runs once the call is over. The transport
// only translates; every decision is a link's. A refusal ends the call with the gRPC status
// of its code (errorGrpcStatus) and the code in the `bulwark-code` trailer.
//
// Per call: the verb is the method's ('server' for ServerLive, ServerReady, ServerMetadata;
// 'metadata' for the model's readiness, metadata, configuration and statistics; 'infer' for
// ModelInfer), the bearer token is the `authorization` metadata, the client certificate is the
// connection's (verified at the handshake), the deadline is the call's gRPC deadline capped by
// server.requestTimeoutMs.

import { X509Certificate } from 'node:crypto'
import * as grpc from '@grpc/grpc-js'
import type { Clock, Logger, RandomSource } from '../deps.ts'
import { BulwarkError, errorGrpcStatus } from '../errors.ts'
import type { ModelRegistry } from '../inference/registry.ts'
import { EXTENSIONS, modelConfiguration, modelMetadata, modelStatistics } from '../oip/model-info.ts'
import type { ModelStatistics } from '../oip/stats.ts'
import { asBulwarkError, destroyChain, refuse, runPhase } from '../pipeline.ts'
import { newRequestContext, type IncomingBody, type RequestContext, type Stage, type Verb } from '../types.ts'
import { inferBody, inferResponse, type InferRequestMessage } from './grpc-codec.ts'
import { clientClosed } from './read-body.ts'
import { LruMap } from '../state/lru.ts'

export const SERVICE_PATH = '/inference.GRPCInferenceService'

export interface GrpcChainOptions {
  chain: readonly Stage[]
  clock: Clock
  /** Request ids. */
  random: RandomSource
  log: Logger
  registry: ModelRegistry
  statistics: ModelStatistics
  serverVersion: string
  isShuttingDown: () => boolean
  /** The longest deadline a call gets (server.requestTimeoutMs); a shorter gRPC deadline wins. */
  requestTimeoutMs: number
  /** The TLS version every connection has (TLS 1.3 when tls.minVersion is), else null (unknown per call). */
  tlsVersion: string | null
}

/** What a method is to the chain: its verb, the model it names, how it is answered. */
interface Method<Req> {
  verb: Verb
  target?: (req: Req) => { model: string; version: string | null }
  body?: (req: Req) => IncomingBody
  answer: (ctx: RequestContext, req: Req) => unknown
}

type ModelRequest = { name: string; version: string }
const named = (req: ModelRequest) => ({ model: req.name, version: req.version === '' ? null : req.version })

/** Most client certificates remembered (parsed once, then one object per certificate for mtls-identity's cache). */
const MAX_CERTIFICATES = 1024

/** The chain's options, and the connection's certificate reader. */
interface Serving extends GrpcChainOptions {
  peerCertificate: (call: grpc.ServerUnaryCall<unknown, unknown>) => X509Certificate | null
}

export function grpcHandlers(options: GrpcChainOptions): grpc.UntypedServiceImplementation {
  const o: Serving = { ...options, peerCertificate: certificateReader() }
  const { registry } = o
  const unary = <Req>(name: string, method: Method<Req>) => (call: grpc.ServerUnaryCall<Req, unknown>, callback: grpc.sendUnaryData<unknown>) => {
    void serveCall(o, name, method, call, callback)
  }
  return {
    ServerLive: unary('ServerLive', { verb: 'server', answer: () => ({ live: true }) }),
    ServerReady: unary('ServerReady', { verb: 'server', answer: () => ({ ready: registry.allReady() && !o.isShuttingDown() }) }),
    ServerMetadata: unary('ServerMetadata', { verb: 'server', answer: () => ({ name: 'bulwark', version: o.serverVersion, extensions: EXTENSIONS }) }),
    ModelReady: unary<ModelRequest>('ModelReady', {
      verb: 'metadata',
      target: named,
      answer: (ctx) => ({ ready: registry.get(ctx.target.model, ctx.target.version).state === 'ready' && !o.isShuttingDown() }),
    }),
    ModelMetadata: unary<ModelRequest>('ModelMetadata', { verb: 'metadata', target: named, answer: (ctx) => modelMetadata(registry, ctx) }),
    ModelConfig: unary<ModelRequest>('ModelConfig', { verb: 'metadata', target: named, answer: (ctx) => ({ config: modelConfiguration(registry, ctx) }) }),
    ModelStatistics: unary<ModelRequest>('ModelStatistics', { verb: 'metadata', target: named, answer: (ctx) => modelStatistics(registry, o.statistics, ctx) }),
    ModelInfer: unary<InferRequestMessage>('ModelInfer', {
      verb: 'infer',
      target: (req) => ({ model: req.model_name, version: req.model_version === '' ? null : req.model_version }),
      body: inferBody,
      answer: (ctx) => inferResponse(ctx.result!, ctx.request!, ctx.request!.id ?? ''),
    }),
    ModelStreamInfer: (call: grpc.ServerDuplexStream<unknown, unknown>) => {
      call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: 'ModelStreamInfer is not implemented by Bulwark; send each request with ModelInfer' })
    },
  }
}

/**
 * Reads the verified client certificate of a call's connection (grpc-js reports it only for a
 * connection whose handshake verified it), as one object per certificate: parsed once, and
 * mtls-identity's per-certificate cache holds across the calls of a connection.
 */
function certificateReader(): (call: grpc.ServerUnaryCall<unknown, unknown>) => X509Certificate | null {
  const certificates = new LruMap<X509Certificate>(MAX_CERTIFICATES)
  return (call) => {
    const peer = call.getAuthContext().sslPeerCertificate
    if (!peer?.raw) return null
    let cert = certificates.get(peer.fingerprint256)
    if (cert === undefined) {
      cert = new X509Certificate(peer.raw)
      certificates.set(peer.fingerprint256, cert)
    }
    return cert
  }
}

/**
 * The request's deadline (monotonic ms) from the call's gRPC deadline (wall time; Infinity
 * when the client set none), never later than `maxMs` after arrival (server.requestTimeoutMs).
 */
export function callDeadlineMs(deadline: Date | number, receivedAtMs: number, startedMs: number, maxMs: number): number {
  const leftMs = (deadline instanceof Date ? deadline.getTime() : deadline) - receivedAtMs
  return startedMs + Math.max(0, Math.min(maxMs, leftMs))
}

/** The peer's address without its port ("127.0.0.1:5000", "[::1]:5000"). */
function addressOf(peer: string): string {
  const cut = peer.lastIndexOf(':')
  const host = cut > 0 ? peer.slice(0, cut) : peer
  return host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host
}

function contextOf<Req>(o: Serving, name: string, method: Method<Req>, call: grpc.ServerUnaryCall<Req, unknown>, id: string): RequestContext {
  const { clock } = o
  const startedMs = clock.monotonicMs()
  const receivedAtMs = clock.nowMs()
  const first = (key: string) => {
    const v = call.metadata.get(key)[0]
    return typeof v === 'string' ? v : undefined
  }
  const target = method.target?.(call.request) ?? { model: '', version: null }
  const path = `${SERVICE_PATH}/${name}`
  return newRequestContext({
    id,
    receivedAtMs,
    startedMs,
    deadlineMs: callDeadlineMs(call.getDeadline(), receivedAtMs, startedMs, o.requestTimeoutMs),
    client: { address: addressOf(call.getPeer()), tlsVersion: o.tlsVersion, peerCertificate: o.peerCertificate(call) },
    target: { ...target, verb: method.verb },
    exchange: { method: 'POST', path, route: path, declaredBytes: null, traceparent: first('traceparent'), tracestate: first('tracestate') },
    bearerToken: first('authorization') ?? null,
    readBody: method.body ? async () => method.body!(call.request) : null,
  })
}

/** The trailers of an answer: the request id, and for a refusal its code and Retry-After. */
function trailers(ctx: RequestContext, err: BulwarkError | null): grpc.Metadata {
  const md = new grpc.Metadata()
  md.set('x-request-id', ctx.id)
  if (err) {
    md.set('bulwark-code', err.code)
    const retry = err.headers['retry-after']
    if (retry !== undefined) md.set('retry-after', retry)
  }
  return md
}

async function serveCall<Req>(o: Serving, name: string, method: Method<Req>, call: grpc.ServerUnaryCall<Req, unknown>, callback: grpc.sendUnaryData<unknown>): Promise<void> {
  const { chain, clock } = o
  let ctx: RequestContext
  try {
    ctx = contextOf(o, name, method, call, o.random.uuid())
  } catch (err) {
    o.log.error({ err, method: name }, 'a gRPC call could not be taken in')
    return callback({ code: grpc.status.INTERNAL, details: 'internal error; the operator can find details in the server log' })
  }
  let answer: unknown = null
  try {
    await runPhase(chain, 'arrival', ctx, clock)
    await runPhase(chain, 'headers', ctx, clock)
    if (ctx.target.verb !== 'server') await runPhase(chain, 'body', ctx, clock)
    const encoding = clock.monotonicMs()
    answer = method.answer(ctx, call.request)
    ctx.stageMs['encode-answer'] = clock.monotonicMs() - encoding
    ctx.response = { status: 200, bytesOut: null }
  } catch (err) {
    const e = refuse(ctx, asBulwarkError(err), 'transport')
    ctx.response = { status: e.status, bytesOut: null }
  }
  if (call.cancelled) {
    refuse(ctx, clientClosed(null, 'before the gRPC call was answered'), 'transport')
    ctx.response = { status: ctx.error!.status, bytesOut: null }
  }
  try {
    await runPhase(chain, 'response', ctx, clock)
  } catch (err) {
    // The audit record could not be written: the answer becomes its refusal (fail closed).
    const e = asBulwarkError(err)
    ctx.error = e
    ctx.response = { status: e.status, bytesOut: null }
  }
  const err = ctx.error
  // Timed beside the links, so that the request's server time adds up: serialising the
  // answer and handing it to the HTTP/2 stream.
  const sending = clock.monotonicMs()
  try {
    if (err) {
      logRefusal(o.log, ctx, err, name)
      callback({ code: grpc.status[errorGrpcStatus[err.code]], details: err.message, metadata: trailers(ctx, err) })
    } else callback(null, answer, trailers(ctx, null))
  } finally {
    ctx.stageMs['send-answer'] = clock.monotonicMs() - sending
    destroyChain(chain, ctx, (link, e) => o.log.error({ link, err: e }, 'a link failed to clean up after a request'))
  }
}

function logRefusal(log: Logger, ctx: RequestContext, err: BulwarkError, method: string): void {
  const fields = { code: err.code, reason: err.reason, stage: ctx.failedStage ?? 'transport', transport: 'grpc', method }
  if (err.code === 'internal') log.error({ ...fields, err: err.cause ?? err }, 'request failed')
  else if (err.status >= 500) log.warn(fields, 'request not served')
  else if (err.code === 'client_closed_request') log.info(fields, 'client closed the request')
  else log.info(fields, 'request refused')
}
