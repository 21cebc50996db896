// Link: audit-log (response phase, every verb: the ninth link). It runs for every answer
// on the API listener just before its bytes leave: answers, refusals by any link, and
// refusals by the transport itself (unknown route, body too large, unreadable body).
// Reads: the whole RequestContext except ctx.bearerToken; ctx.client.peerCertificate only
//        for the identity it proves (src/audit/record.ts); ctx.response (status and size of
//        the answer). Server-level requests (health, GET /v2, unknown routes) get a "server"
//        record.
// Writes: one record per answer, durable before the answer is sent; except a refusal
//         identical to one written in full less than audit.aggregation.windowMs before,
//         which is counted into one "aggregate" record instead (src/audit/aggregate.ts).
// Throws: audit_unavailable (503) when the record cannot be written: the transport then
//         answers that instead (fail closed).
//
// Requests that never become a request (refused by the HTTP parser) have no context: the
// transport's clientError hands them to `clientError`, which writes their record itself.
//
// It also watches the audit folder's free space (statfs on the clock's timer), for /readyz
// and bulwark_audit_disk_free_bytes: not ready below audit.minFreeBytes, before a full disk
// refuses everything.

import path from 'node:path'
import { statfs as nodeStatfs } from 'node:fs/promises'
import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import { TLSSocket } from 'node:tls'
import { aggregationKey, RefusalRuns } from '../audit/aggregate.ts'
import { AuditWriter } from '../audit/writer.ts'
import type { AuditFs } from '../audit/fs.ts'
import { loadSigningKey } from '../audit/keys.ts'
import { buildAuditRecord, serializeAuditRecord, type AuditRecord } from '../audit/record.ts'
import { DEV_AUDIT_KEY, type AuditConfig } from '../config/audit.ts'
import { ConfigError } from '../config/load.ts'
import type { Clock, Logger, RandomSource, Timer } from '../deps.ts'
import { BulwarkError, errorBody, isBulwarkError } from '../errors.ts'
import { Counter, Gauge, type Metric } from '../telemetry/metrics.ts'
import { tlsVersionOf } from '../transport/peer.ts'
import { verifiedPeerCertificate } from '../transport/tls.ts'
import type { RequestContext, Stage } from '../types.ts'

/** What the disk check needs of statfs(2): blocks free to unprivileged users, and their size. */
export type StatFs = (directory: string) => Promise<{ bavail: number | bigint; bsize: number | bigint }>

export interface AuditLogDeps {
  clock: Clock
  random: RandomSource
  log: Logger
  /** Where `mirror: stdout` lines go; the CLI passes standard output. */
  mirror?: { write(text: string): unknown } | undefined
  /** File-system calls of the writer (tests inject failures). */
  fs?: AuditFs | undefined
  /** Reads the audit folder's free space (default fs.statfs; tests make the disk look full). */
  statfs?: StatFs | undefined
}

export interface AuditLogStage {
  readonly name: 'audit-log'
  /** null when audit.enabled is false. */
  readonly writer: AuditWriter | null
  /** The response-phase link that writes each answer's record; absent when audit is off. */
  readonly link: Stage | undefined
  /** Free space on the audit disk, aggregated refusals. */
  readonly metrics: readonly Metric[]
  /** Bytes free on the audit folder's file system at the last check; null before one succeeded or with audit off. */
  diskFreeBytes(): number | null
  /**
   * The API listener's clientErrorHandler: requests the HTTP parser refuses (malformed, a
   * header section over server.maxHeaderBytes, too slow) never become requests. The answer
   * is Node's own (400, 431 or 408), sent after its record is written.
   */
  clientError(err: Error & { code?: string }, socket: Socket): void
  /** For /readyz: not ready while records cannot be written, or the disk is nearly full. */
  readinessCheck(): { name: string; problem: string | null }
  /** Writes the open aggregate records and the shutdown checkpoint, and closes the file. */
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

  const aggregated = new Counter('bulwark_audit_refusals_aggregated_total', 'Refusals counted into an aggregate audit record instead of a record of their own (audit.aggregation).')
  const runs = writer && config.aggregation.enabled ? new RefusalRuns({ ...config.aggregation, clock, log, write: (body) => writer.append(body) }) : null
  const record = writer ? recorder(writer, runs, aggregated) : null
  const disk = writer ? await watchDisk(writer, config, { clock, log, statfs: deps.statfs ?? nodeStatfs }) : null
  const diskFree = new Gauge('bulwark_audit_disk_free_bytes', 'Bytes free on the audit folder\'s file system at the last check (audit.diskCheckIntervalMs); /readyz fails below audit.minFreeBytes.', () => {
    const free = disk?.freeBytes() ?? null
    return free === null ? [] : [[{}, free]]
  })

  const link: Stage | undefined = record ? auditLink(record, clock) : undefined

  function clientError(err: Error & { code?: string }, socket: Socket): void {
    if (err.code === 'ECONNRESET' || socket.destroyed) return
    const [status, message] =
      err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? [408, 'Client Timeout'] : err.code === 'HPE_HEADER_OVERFLOW' ? [431, 'Exceeded maximum allowed HTTP header size'] : [400, 'Client Error']
    const respond = (code: number, body: string) => {
      if (socket.writable) socket.write(`HTTP/1.1 ${code} ${STATUS_CODES[code]}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/json\r\n\r\n${body}`)
      socket.destroy(err)
    }
    const body = JSON.stringify({ error: STATUS_CODES[status], message, statusCode: status })
    if (!record) return respond(status, body)
    const nowMs = clock.nowMs()
    const refused = buildAuditRecord(null, {
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
      peerCertificate: socket instanceof TLSSocket ? verifiedPeerCertificate(socket) : null,
    })
    record(refused, '').then(
      () => respond(status, body),
      (e: BulwarkError) => respond(e.status, JSON.stringify(errorBody(e))),
    )
  }

  return {
    name: 'audit-log',
    writer,
    link,
    metrics: [aggregated, diskFree],
    diskFreeBytes: () => disk?.freeBytes() ?? null,
    clientError,
    readinessCheck: () => ({ name: 'audit', problem: writer?.problem ?? disk?.problem() ?? null }),
    close: async () => {
      disk?.stop()
      await runs?.flush()
      await writer?.close()
    },
  }
}

type Recorder = (record: AuditRecord, route: string) => Promise<void>

/**
 * Writes a record in full, or counts it into the open run of identical refusals
 * (src/audit/aggregate.ts); a refusal written in full opens a run. Rejects with
 * audit_unavailable when the record cannot be written.
 */
function recorder(writer: AuditWriter, runs: RefusalRuns | null, aggregated: Counter): Recorder {
  return async (record, route) => {
    const key = runs ? aggregationKey(record, route) : null
    // While the log cannot be written nothing is counted: the refusal fails closed like any other.
    if (key !== null && writer.problem === null && runs!.count(key, record)) {
      aggregated.inc()
      return
    }
    await writer.append(serializeAuditRecord(record))
    if (key !== null) runs!.opened(key, record, route)
  }
}

interface DiskWatch {
  freeBytes(): number | null
  /** Why the disk is nearly full, or null. */
  problem(): string | null
  stop(): void
}

/** Reads the audit folder's free space now and every diskCheckIntervalMs. */
async function watchDisk(writer: AuditWriter, config: AuditConfig, deps: { clock: Clock; log: Logger; statfs: StatFs }): Promise<DiskWatch> {
  const { log } = deps
  const directory = writer.directory
  const min = config.minFreeBytes
  let free: number | null = null
  let reading = false
  let unreadable = false
  const low = () => free !== null && free < min
  const check = async () => {
    if (reading) return
    reading = true
    try {
      const st = await deps.statfs(directory)
      const wasLow = low()
      free = Number(st.bavail) * Number(st.bsize)
      unreadable = false
      if (low() && !wasLow) log.warn({ directory, freeBytes: free, minFreeBytes: min }, 'audit disk nearly full: not ready until there is room (audit.minFreeBytes)')
    } catch (err) {
      // The writer reports a folder it cannot use; this only says why the figure is stale.
      if (!unreadable) log.warn({ err: err instanceof Error ? err.message : String(err), directory }, 'cannot read the audit disk\'s free space')
      unreadable = true
    } finally {
      reading = false
    }
  }
  await check()
  const timer: Timer = deps.clock.setInterval(() => void check(), config.diskCheckIntervalMs, { keepAlive: false })
  return {
    freeBytes: () => free,
    problem: () => (low() ? `audit disk nearly full: ${free} bytes free for ${directory}, under audit.minFreeBytes (${min}); free space or raise the volume before the gateway must refuse every request` : null),
    stop: () => timer.cancel(),
  }
}

function auditLink(record: Recorder, clock: Clock): Stage {
  return {
    name: 'audit-log',
    phase: 'response',
    verbs: ['infer', 'metadata', 'server'],
    async run(ctx: RequestContext) {
      const built = buildAuditRecord(ctx, {
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
        await record(built, ctx.exchange.route)
      } catch (err) {
        throw isBulwarkError(err) ? err : new BulwarkError('audit_unavailable', 'the audit log cannot be written; retry later', { cause: err })
      }
    },
  }
}
