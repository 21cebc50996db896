// Stage: audit-log, the ninth link. It does not run inside the pipeline: it wraps every
// exchange on the API listener, through a fastify onSend hook that runs for every reply
// before its bytes leave: answers, refusals by any stage (headers or body phase), and
// refusals by fastify itself (unknown route, body too large, unreadable body).
// Reads: the whole RequestContext except ctx.bearerToken and ctx.client.peerCertificate;
//        the reply's status and the error body it carries. Routes without a pipeline
//        (health, GET /v2, unknown routes) have no context and get a "server" record.
// Writes: one record per reply, durable before the reply is sent; the x-request-id response
//         header; ctx.error and ctx.failedStage ('audit-log') when the record cannot be
//         written, and then the reply itself becomes 503 audit_unavailable (fail closed).
// Throws: nothing.
//
// Its onSend hook must see the final status: a hook added after it that changes the reply
// would make the record disagree with what the client got.

import path from 'node:path'
import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { AuditWriter } from '../audit/writer.ts'
import type { AuditFs } from '../audit/fs.ts'
import { loadSigningKey } from '../audit/keys.ts'
import { buildAuditRecord, serializeAuditRecord } from '../audit/record.ts'
import { DEV_AUDIT_KEY, type AuditConfig } from '../config/audit.ts'
import { ConfigError } from '../config/load.ts'
import type { Clock, Logger, RandomSource } from '../deps.ts'
import { BulwarkError, errorBody, isBulwarkError } from '../errors.ts'

export interface AuditLogDeps {
  clock: Clock
  random: RandomSource
  log: Logger
  /** Where `mirror: stdout` lines go; the CLI passes standard output. */
  mirror?: { write(text: string): unknown } | undefined
  /** File-system calls of the writer (tests inject failures). */
  fs?: AuditFs | undefined
}

export interface AuditLogStage {
  readonly name: 'audit-log'
  /** null when audit.enabled is false. */
  readonly writer: AuditWriter | null
  /** Adds the hooks to the API instance; call before any other onRequest hook. */
  register(app: FastifyInstance): void
  /**
   * The API listener's clientErrorHandler: requests the HTTP parser refuses (malformed, a
   * header section over server.maxHeaderBytes, too slow) never reach fastify's hooks. The
   * answer is fastify's own (400, 431 or 408), sent after its record is written.
   */
  clientError(err: Error & { code?: string }, socket: Socket): void
  /**
   * For replies that fastify sends without running hooks (router errors: a URL that is not
   * valid, a path segment over the limit): writes the record and returns the payload to send,
   * exactly as the onSend hook does.
   */
  recordUnhooked(request: FastifyRequest, reply: FastifyReply, payload: string): Promise<unknown>
  /** For /readyz: not ready while records cannot be written. */
  readinessCheck(): { name: string; problem: string | null }
  /** Writes the shutdown checkpoint and closes the file. */
  close(): Promise<void>
}

const BINARY_HEADER = 'inference-header-content-length'

/** The `{"error","code"}` body fastify or a route sent, for refusals no stage recorded. */
function sentError(payload: unknown): { code: string; message: string } | null {
  const text = typeof payload === 'string' ? payload : Buffer.isBuffer(payload) && payload.length < 65536 ? payload.toString('utf8') : null
  if (text === null || text.length > 65536 || !text.startsWith('{')) return null
  try {
    const body = JSON.parse(text) as { error?: unknown; code?: unknown }
    return typeof body.code === 'string' ? { code: body.code, message: typeof body.error === 'string' ? body.error : '' } : null
  } catch {
    return null
  }
}

function byteLength(payload: unknown): number | null {
  if (typeof payload === 'string') return Buffer.byteLength(payload)
  if (payload instanceof Uint8Array) return payload.byteLength
  if (payload === null || payload === undefined) return 0
  return null
}

export async function createAuditLogStage(
  config: AuditConfig,
  where: { baseDir: string; source: string },
  deps: AuditLogDeps,
): Promise<AuditLogStage> {
  const { clock, log } = deps
  let writer: AuditWriter | null = null
  if (config.enabled) {
    const keyFile = path.resolve(where.baseDir, config.checkpoint.signingKeyFile)
    let key
    try {
      key = await loadSigningKey(keyFile, { createIfMissing: config.checkpoint.signingKeyFile === DEV_AUDIT_KEY, random: deps.random })
    } catch (err) {
      throw new ConfigError(where.source, [`/audit/checkpoint/signingKeyFile: ${(err as Error).message}`])
    }
    if (key.created) {
      log.warn({ key: keyFile, keyId: key.keyId }, 'created a development audit signing key; set audit.checkpoint.signingKeyFile to your own key in production')
    }
    writer = new AuditWriter({
      directory: path.resolve(where.baseDir, config.directory),
      durability: config.durability,
      relaxedSyncIntervalMs: config.relaxedSyncIntervalMs,
      maxFileBytes: config.rotation.maxFileBytes,
      maxFileAgeMs: config.rotation.maxFileAgeMs,
      retentionMaxTotalBytes: config.retention.maxTotalBytes,
      retentionMaxAgeMs: config.retention.maxAgeMs,
      checkpointEveryRecords: config.checkpoint.everyRecords,
      checkpointEveryMs: config.checkpoint.everyMs,
      retryMs: config.retryMs,
      key,
      clock,
      random: deps.random,
      log,
      fs: deps.fs,
      mirror: config.mirror === 'stdout' ? (deps.mirror ?? null) : null,
    })
    await writer.start()
  } else {
    log.warn({}, 'audit is disabled (audit.enabled: false): requests leave no record')
  }

  const arrived = new WeakMap<FastifyRequest, { wallMs: number; monoMs: number }>()

  async function onSend(request: FastifyRequest, reply: FastifyReply, payload: unknown): Promise<unknown> {
    reply.header('x-request-id', request.id)
    if (!writer) return payload
    const ctx = request.ctx
    const answeredAtMs = clock.nowMs()
    const nowMono = clock.monotonicMs()
    const t0 = arrived.get(request)
    const status = reply.statusCode
    let client = ctx ? { address: ctx.client.address, tlsVersion: ctx.client.tlsVersion } : null
    if (!client) {
      const socket = request.raw.socket as Partial<TLSSocket> | null
      client = { address: request.ip, tlsVersion: typeof socket?.getProtocol === 'function' ? socket.getProtocol() : null }
    }
    const declared = Number(request.headers['content-length'])
    const record = buildAuditRecord(ctx, {
      id: request.id,
      method: request.method,
      path: request.url.split('?', 1)[0]!,
      receivedAtMs: ctx?.receivedAtMs ?? t0?.wallMs ?? answeredAtMs,
      answeredAtMs,
      durationMs: nowMono - (ctx?.startedMs ?? t0?.monoMs ?? nowMono),
      client,
      status,
      bytesIn: Number.isSafeInteger(declared) ? declared : null,
      bytesOut: byteLength(payload),
      sentError: status >= 400 && !ctx?.error ? sentError(payload) : null,
      rawBody: Buffer.isBuffer(request.body) ? request.body : null,
    })
    try {
      await writer.append(serializeAuditRecord(record))
      return payload
    } catch (err) {
      const e = isBulwarkError(err) ? err : new BulwarkError('audit_unavailable', 'the audit log cannot be written; retry later', { cause: err })
      if (ctx) {
        ctx.error = e
        ctx.failedStage = 'audit-log'
      }
      reply.code(e.status).headers(e.headers)
      reply.removeHeader(BINARY_HEADER)
      reply.removeHeader('content-length')
      reply.type('application/json; charset=utf-8')
      return JSON.stringify(errorBody(e))
    }
  }

  function clientError(err: Error & { code?: string }, socket: Socket): void {
    if (err.code === 'ECONNRESET' || socket.destroyed) return
    const [status, message] =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Client Timeout'] : err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Exceeded maximum allowed HTTP header size'] : [400, 'Client Error']
    const respond = (code: number, body: string) => {
      if (socket.writable) socket.write(`HTTP/1.1 ${code} ${STATUS_CODES[code]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\n\r\n${body}`)
      socket.destroy(err)
    }
    const body = JSON.stringify({ error: STATUS_CODES[status], message, statusCode: status })
    if (!writer) return respond(status, body)
    const nowMs = clock.nowMs()
    const tls = socket as Partial<TLSSocket>
    const record = buildAuditRecord(null, {
      id: deps.random.uuid(),
      method: '-',
      path: '-',
      receivedAtMs: nowMs,
      answeredAtMs: nowMs,
      durationMs: 0,
      client: { address: socket.remoteAddress ?? '', tlsVersion: typeof tls.getProtocol === 'function' ? tls.getProtocol() : null },
      status,
      bytesIn: null,
      bytesOut: Buffer.byteLength(body),
      sentError: null,
      rawBody: null,
      parserError: `${err.code ?? 'client error'}: ${err.message}`,
    })
    writer.append(serializeAuditRecord(record)).then(
      () => respond(status, body),
      (e: BulwarkError) => respond(e.status, JSON.stringify(errorBody(e))),
    )
  }

  return {
    name: 'audit-log',
    writer,
    clientError,
    recordUnhooked: onSend,
    register(app) {
      app.addHook('onRequest', (request, _reply, done) => {
        arrived.set(request, { wallMs: clock.nowMs(), monoMs: clock.monotonicMs() })
        done()
      })
      app.addHook('onSend', onSend)
    },
    readinessCheck: () => ({ name: 'audit', problem: writer?.problem ?? null }),
    close: async () => {
      await writer?.close()
    },
  }
}
