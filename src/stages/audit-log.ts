// Link: audit-log (response phase, every verb: the ninth link). It runs for every answer
// on the API listener just before its bytes leave: answers, refusals by any link, and
// refusals by the transport itself (unknown route, body too large, unreadable body).
// Reads: the whole RequestContext except ctx.bearerToken and ctx.client.peerCertificate;
//        ctx.response (status and size of the answer). Server-level requests (health, GET
//        /v2, unknown routes) get a "server" record.
// Writes: one record per answer, durable before the answer is sent.
// Throws: audit_unavailable (503) when the record cannot be written: the transport then
//         answers that instead (fail closed).
//
// Requests that never become a request (refused by the HTTP parser) have no context: the
// transport's clientError hands them to `clientError`, which writes their record itself.

import path from 'node:path'
import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import { AuditWriter } from '../audit/writer.ts'
import type { AuditFs } from '../audit/fs.ts'
import { loadSigningKey } from '../audit/keys.ts'
import { buildAuditRecord, serializeAuditRecord } from '../audit/record.ts'
import { DEV_AUDIT_KEY, type AuditConfig } from '../config/audit.ts'
import { ConfigError } from '../config/load.ts'
import type { Clock, Logger, RandomSource } from '../deps.ts'
import { BulwarkError, errorBody, isBulwarkError } from '../errors.ts'
import { tlsVersionOf } from '../transport/peer.ts'
import type { RequestContext, Stage } from '../types.ts'

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
  /** The response-phase link that writes each answer's record; absent when audit is off. */
  readonly link: Stage | undefined
  /**
   * The API listener's clientErrorHandler: requests the HTTP parser refuses (malformed, a
   * header section over server.maxHeaderBytes, too slow) never become requests. The answer
   * is Node's own (400, 431 or 408), sent after its record is written.
   */
  clientError(err: Error & { code?: string }, socket: Socket): void
  /** For /readyz: not ready while records cannot be written. */
  readinessCheck(): { name: string; problem: string | null }
  /** Writes the shutdown checkpoint and closes the file. */
  close(): Promise<void>
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

  const link: Stage | undefined = writer ? auditLink(writer, clock) : undefined

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
    const record = buildAuditRecord(null, {
      id: deps.random.uuid(),
      method: '-',
      path: '-',
      receivedAtMs: nowMs,
      answeredAtMs: nowMs,
      durationMs: 0,
      client: { address: socket.remoteAddress ?? '', tlsVersion: tlsVersionOf(socket) },
      status,
      bytesIn: null,
      bytesOut: Buffer.byteLength(body),
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
    link,
    clientError,
    readinessCheck: () => ({ name: 'audit', problem: writer?.problem ?? null }),
    close: async () => {
      await writer?.close()
    },
  }
}

function auditLink(writer: AuditWriter, clock: Clock): Stage {
  return {
    name: 'audit-log',
    phase: 'response',
    verbs: ['infer', 'metadata', 'server'],
    async run(ctx: RequestContext) {
      const record = buildAuditRecord(ctx, {
        id: ctx.id,
        method: ctx.exchange.method,
        path: ctx.exchange.path,
        receivedAtMs: ctx.receivedAtMs,
        answeredAtMs: clock.nowMs(),
        durationMs: clock.monotonicMs() - ctx.startedMs,
        client: { address: ctx.client.address, tlsVersion: ctx.client.tlsVersion },
        status: ctx.response?.status ?? 0,
        bytesIn: ctx.exchange.declaredBytes,
        bytesOut: ctx.response?.bytesOut ?? null,
        rawBody: ctx.bodyBytes,
      })
      try {
        await writer.append(serializeAuditRecord(record))
      } catch (err) {
        throw isBulwarkError(err) ? err : new BulwarkError('audit_unavailable', 'the audit log cannot be written; retry later', { cause: err })
      }
    },
  }
}
