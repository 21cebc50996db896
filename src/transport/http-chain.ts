// The REST transport's side of the chain (src/pipeline.ts): where each phase runs in
// fastify's request lifecycle. The transport only translates; every decision is a link's.
//   onRequest   a request context for every request (verb 'server' for routes that name no
//               model, and for unknown ones), then the arrival and headers phases
//   preHandler  the body phase (model routes): body read, validation, screening, the model,
//               output privacy
//   handler     the route turns the context into the protocol's answer (src/routes/inference-api.ts)
//   onSend      the response phase (the audit record) once the answer is final
//   close       each link's onDestroy, however the exchange ended
// The transport's own work is timed beside the links' (ctx.stageMs), so that a request's
// server time adds up: `encode-answer` from the last phase to the response phase (the route
// encoding the answer, or the error handler writing a refusal's body) and `send-answer` from
// the response phase to the end of the exchange (writing the answer to the socket).
// Refusals by the transport itself (unknown route, a fastify error) are recorded on the
// context as a typed value like any link's.

import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { IncomingMessage } from 'node:http'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { Config } from '../config/schema.ts'
import type { Clock, Logger } from '../deps.ts'
import { BulwarkError, errorBody, type ErrorCode } from '../errors.ts'
import { asBulwarkError, destroyChain, refuse, runPhase } from '../pipeline.ts'
import { readBody } from './read-body.ts'
import { HEADER_LENGTH } from '../oip/codec.ts'
import { newRequestContext, type RequestContext, type Stage, type Verb } from '../types.ts'
import { tlsVersionOf } from './peer.ts'
import { verifiedPeerCertificate } from './tls.ts'

declare module 'fastify' {
  interface FastifyRequest {
    /** The chain's request context; set on arrival for every request on the API listener. */
    ctx: RequestContext | null
    /** When the last phase ended, and when the response phase ended (monotonic ms; -1: not yet). */
    phaseEndMs: number
    respondedMs: number
  }
  interface FastifyContextConfig {
    /** The verb of a model route; absent on server-level routes. */
    verb?: Verb
  }
}

export interface HttpChainOptions {
  chain: readonly Stage[]
  clock: Clock
  log: Logger
  /** bodyLimitBytes, bodyIdleTimeoutMs, and requestTimeoutMs (ms from arrival to the request's deadline). */
  server: Pick<Config['server'], 'bodyLimitBytes' | 'bodyIdleTimeoutMs' | 'requestTimeoutMs'>
  /** Whether the listener is TLS (the peer certificate is read for mtls-identity). */
  tls: boolean
  /** True once the gateway is shutting down: every answer then closes its connection. */
  closing: () => boolean
  /** Told of each connection closed after an answer because the request's body was left unread, when the client showed no valid token. */
  closedOnRefusal: (socket: Socket) => void
}

/** Fastify's own errors (body limit, content type, ...) as our catalogue's codes. */
function fromFastifyError(err: FastifyError): BulwarkError {
  const map: Record<string, ErrorCode> = {
    FST_ERR_CTP_BODY_TOO_LARGE: 'payload_too_large',
    FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type',
    FST_ERR_CTP_INVALID_CONTENT_LENGTH: 'bad_request',
    FST_ERR_CTP_EMPTY_JSON_BODY: 'invalid_json',
  }
  const code = map[err.code]
  if (code === 'payload_too_large') {
    return new BulwarkError(code, 'the request body exceeds the server limit; send fewer items per request or use binary tensors', { cause: err })
  }
  if (code) return new BulwarkError(code, err.message, { cause: err })
  if (err.statusCode !== undefined && err.statusCode >= 400 && err.statusCode < 500) {
    return new BulwarkError('bad_request', err.message, { cause: err })
  }
  return asBulwarkError(err)
}

/** Whether a request still has body bytes on the wire that nothing has read. */
function bodyPending(req: IncomingMessage): boolean {
  if (req.complete) return false
  const declared = req.headers['content-length']
  return req.headers['transfer-encoding'] !== undefined || (declared !== undefined && declared !== '0')
}

/** Bodies up to this size, unread, are drained (read and dropped) for callers with a valid token. */
const DRAIN_LIMIT_BYTES = 1024 * 1024

/**
 * Whether a refused request's unread body may be drained instead of the connection closed:
 * its caller showed a valid token (accountable, under its own limits), nothing has started
 * reading it (a stalled upload cut off mid-body is closed), and it declared at most
 * DRAIN_LIMIT_BYTES. Node then drops the bytes as they come (nothing is held) and the
 * connection stays open, so a caller throttled with 429 is not also made to reconnect, and
 * pay a TLS handshake, for each refusal. receiveTimeoutMs still bounds how long it may take.
 */
function drainable(ctx: RequestContext, req: IncomingMessage): boolean {
  const declared = req.headers['content-length']
  return ctx.principal !== null && !req.readableDidRead && req.headers['transfer-encoding'] === undefined && declared !== undefined && Number(declared) <= DRAIN_LIMIT_BYTES
}

/**
 * `reading` (a body being read from `req`), cut off with 408 request_timeout when no byte
 * arrives for `idleMs`: a client one byte short of its Content-Length cannot hold the
 * buffer, or the slots its request holds, for as long as it keeps the connection open.
 */
function whileArriving<T>(req: IncomingMessage, clock: Clock, idleMs: number, reading: Promise<T>): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const stalled = () => {
      req.off('data', arrived)
      req.pause()
      reject(new BulwarkError('request_timeout', 'the request body stopped arriving; send the whole body without pauses', { reason: `no body bytes for ${idleMs} ms (server.bodyIdleTimeoutMs)` }))
    }
    let timer = clock.setTimeout(stalled, idleMs)
    const arrived = () => {
      timer.cancel()
      timer = clock.setTimeout(stalled, idleMs)
    }
    req.on('data', arrived)
    const done = () => {
      timer.cancel()
      req.off('data', arrived)
    }
    reading.then(
      (value) => (done(), resolve(value)),
      (err: unknown) => (done(), reject(err)),
    )
  })
}

function byteLength(payload: unknown): number | null {
  if (typeof payload === 'string') return Buffer.byteLength(payload)
  if (payload instanceof Uint8Array) return payload.byteLength
  if (payload === null || payload === undefined) return 0
  return null
}

/**
 * The transport's two timed parts (see the header): `encode-answer` from the last phase to the
 * response phase, `send-answer` from the response phase to the end of the exchange. The marks
 * live on the request (fields declared here once, -1 until set): cheaper per request than a
 * map keyed by it.
 */
const answerTiming = (api: FastifyInstance, clock: Clock) => {
  api.decorateRequest('phaseEndMs', -1)
  api.decorateRequest('respondedMs', -1)
  const since = (ctx: RequestContext, t0: number, segment: 'encode-answer' | 'send-answer') => {
    if (t0 >= 0) ctx.stageMs[segment] = clock.monotonicMs() - t0
  }
  return {
    phaseEnded: (request: FastifyRequest) => void (request.phaseEndMs = clock.monotonicMs()),
    responded: (request: FastifyRequest) => void (request.respondedMs = clock.monotonicMs()),
    encoded: (request: FastifyRequest, ctx: RequestContext) => since(ctx, request.phaseEndMs, 'encode-answer'),
    sent: (request: FastifyRequest, ctx: RequestContext) => since(ctx, request.respondedMs, 'send-answer'),
  }
}

export interface HttpChain {
  /** For fastify's frameworkErrors (router errors run no hooks): answers `err` through the chain's response phase. */
  answerUnrouted(err: BulwarkError, request: FastifyRequest, reply: FastifyReply): void
}

/** Adds the chain's hooks and handlers to the API instance; call before registering routes. */
export function attachChain(api: FastifyInstance, o: HttpChainOptions): HttpChain {
  const { chain, clock } = o

  const contextOf = (request: FastifyRequest): RequestContext => {
    const verb = request.routeOptions.config?.verb ?? 'server'
    const params = (request.params ?? {}) as { model?: string; version?: string }
    const startedMs = clock.monotonicMs()
    const socket = request.raw.socket
    const auth = request.headers.authorization
    const declared = Number(request.headers['content-length'])
    const traceparent = request.headers.traceparent
    const tracestate = request.headers.tracestate
    return newRequestContext({
      id: request.id,
      receivedAtMs: clock.nowMs(),
      startedMs,
      deadlineMs: startedMs + o.server.requestTimeoutMs,
      client: {
        address: request.ip,
        tlsVersion: tlsVersionOf(socket),
        peerCertificate: o.tls ? verifiedPeerCertificate(socket as TLSSocket) : null,
      },
      target: { model: verb === 'server' ? '' : (params.model ?? ''), version: params.version ?? null, verb },
      exchange: {
        method: request.method,
        path: request.url.split('?', 1)[0]!,
        route: request.routeOptions.url ?? '',
        declaredBytes: request.headers['content-length'] !== undefined && Number.isSafeInteger(declared) ? declared : null,
        traceparent: typeof traceparent === 'string' ? traceparent : undefined,
        tracestate: typeof tracestate === 'string' ? tracestate : undefined,
      },
      bearerToken: typeof auth === 'string' ? auth : null,
      readBody: async () => {
        const header = request.headers[HEADER_LENGTH]
        if (Array.isArray(header)) throw new BulwarkError('invalid_binary_header', `send ${HEADER_LENGTH} once`)
        const bytes = await whileArriving(request.raw, clock, o.server.bodyIdleTimeoutMs, readBody(request.raw, o.server.bodyLimitBytes))
        return { bytes, headerLength: header }
      },
    })
  }

  const timing = answerTiming(api, clock)

  const begin = (request: FastifyRequest, reply: FastifyReply): RequestContext => {
    const ctx = contextOf(request)
    request.ctx = ctx
    const end = () => {
      timing.sent(request, ctx)
      destroyChain(chain, ctx, (link, err) => o.log.error({ link, err }, 'a link failed to clean up after a request'))
    }
    // 'close' fires once the answer is sent or the connection is gone, whichever comes first.
    if (reply.raw.closed) end()
    else reply.raw.once('close', end)
    return ctx
  }

  /** The response phase; an audit failure turns the answer into its refusal (fail closed). */
  const respond = async (ctx: RequestContext, reply: FastifyReply, payload: unknown): Promise<unknown> => {
    reply.header('x-request-id', ctx.id)
    // A body nobody read (an unknown route, a refusal before the body phase, a stalled
    // upload) is not read now either: the connection closes after this answer instead.
    if (ctx.bodyBytes === null && bodyPending(reply.request.raw) && !drainable(ctx, reply.request.raw)) {
      reply.header('connection', 'close')
      // Only a client that showed no valid token pays for the reconnect it forces: a caller
      // with one answers for its refusals under its own limits, and is not made to cost the
      // others at its address their connections.
      if (ctx.principal === null) o.closedOnRefusal(reply.request.raw.socket)
    }
    // While shutting down, a kept-alive connection would hold the listener open until the
    // client closes it: closing it after the answer lets the shutdown finish with the work.
    else if (o.closing()) reply.header('connection', 'close')
    ctx.response = { status: reply.statusCode, bytesOut: byteLength(payload) }
    timing.encoded(reply.request, ctx)
    try {
      await runPhase(chain, 'response', ctx, clock)
      return payload
    } catch (err) {
      const e = asBulwarkError(err)
      ctx.response = { status: e.status, bytesOut: null }
      reply.code(e.status).headers(e.headers)
      reply.removeHeader(HEADER_LENGTH)
      reply.removeHeader('content-length')
      reply.type('application/json; charset=utf-8')
      return JSON.stringify(errorBody(e))
    } finally {
      timing.responded(reply.request)
    }
  }

  // The protocol's bodies are JSON or JSON + raw tensor bytes: the body-read link reads
  // them, after the headers links have admitted the caller, so no parser may read first.
  api.removeAllContentTypeParsers()
  api.addContentTypeParser('*', (_request: FastifyRequest, _payload: unknown, done: (err: null, body?: undefined) => void) => done(null))
  api.decorateRequest('ctx', null)

  api.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    const ctx = begin(request, reply)
    try {
      await runPhase(chain, 'arrival', ctx, clock)
      await runPhase(chain, 'headers', ctx, clock)
    } finally {
      timing.phaseEnded(request)
    }
  })
  api.addHook('preHandler', async (request: FastifyRequest) => {
    const ctx = request.ctx
    if (!ctx || ctx.target.verb === 'server') return
    try {
      await runPhase(chain, 'body', ctx, clock)
    } finally {
      timing.phaseEnded(request)
    }
  })
  api.addHook('onSend', async (request: FastifyRequest, reply: FastifyReply, payload: unknown) => {
    const ctx = request.ctx
    return ctx ? respond(ctx, reply, payload) : payload
  })

  api.setErrorHandler((raw: FastifyError, request, reply) => {
    const err = raw instanceof BulwarkError ? raw : fromFastifyError(raw)
    const ctx = request.ctx
    if (ctx) refuse(ctx, err, 'transport')
    const fields = { code: err.code, reason: err.reason, stage: ctx?.failedStage ?? 'transport' }
    if (err.code === 'internal') request.log.error({ ...fields, err: err.cause ?? err }, 'request failed')
    else if (err.status >= 500) request.log.warn(fields, 'request not served')
    else if (err.code === 'client_closed_request') request.log.info(fields, 'client closed the request')
    else request.log.info(fields, 'request refused')
    return reply.code(err.status).headers(err.headers).send(errorBody(err))
  })
  api.setNotFoundHandler((request, reply) => {
    const err = new BulwarkError('not_found', `no route ${request.method} ${request.url.split('?')[0]!.slice(0, 100)}; see GET /v2 and the Open Inference Protocol v2 paths`)
    if (request.ctx) refuse(request.ctx, err, 'router')
    return reply.code(404).send(errorBody(err))
  })

  return {
    answerUnrouted(err, request, reply) {
      // Fastify runs no hooks for router errors: the context and the response phase are run here.
      const ctx = begin(request, reply)
      timing.phaseEnded(request)
      refuse(ctx, err, 'router')
      const body = JSON.stringify(errorBody(err))
      reply.code(err.status).type('application/json; charset=utf-8')
      respond(ctx, reply, body).then(
        (payload) => reply.send(payload),
        (fail: unknown) => reply.code(500).send(String(fail)),
      )
    },
  }
}
