// buildGateway(config, deps): the composition root. It loads what the configuration names,
// builds each subsystem from its slice (each declares its own counters), assembles the chain
// (src/pipeline.ts), and attaches it to the API listener. It never listens and never touches
// process state; src/cli.ts does that.

import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import type { TracerProvider } from '@opentelemetry/api'
import type { MetricReader } from '@opentelemetry/sdk-metrics'
import path from 'node:path'
import type { AddressInfo, Socket } from 'node:net'
import { ConfigError, type LoadedConfig } from './config/load.ts'
import type { PolicySet } from './config/policy.ts'
import type { PolicyWatcher } from './config/policy-watch.ts'
import { securityProblems } from './config/security.ts'
import { scaleoutProblems } from './config/scaleout.ts'
import { BulwarkError } from './errors.ts'
import type { Deps, Logger } from './deps.ts'
import type { ModelRegistry } from './inference/registry.ts'
import type { ModelRepositoryPoller } from './inference/repository-poll.ts'
import { buildAdmin, type ReadinessCheck } from './gateway/admin.ts'
import { buildFrontDoor } from './gateway/front-door.ts'
import { buildModels, modelControlProblems, repositoryHandler } from './gateway/models.ts'
import { buildPolicies } from './gateway/policies.ts'
import { buildObservability } from './gateway/observability.ts'
import { buildOutputPrivacy } from './gateway/output-privacy.ts'
import { buildScreeningLinks } from './gateway/screening.ts'
import { assembleChain } from './pipeline.ts'
import { registerOipRoutes } from './routes/inference-api.ts'
import { createAuditLogStage, type AuditLogDeps, type AuditLogStage } from './stages/audit-log.ts'
import { createBodyReadLink } from './stages/body-read.ts'
import { createCallerKeyLink } from './stages/caller-key.ts'
import { createClientLimitLink } from './stages/client-limit.ts'
import { createInputValidationStage } from './stages/input-validation.ts'
import { createLoadSheddingLink } from './stages/load-shedding.ts'
import { createMetricsLink } from './stages/metrics.ts'
import { createModelInferenceStage } from './stages/model-inference.ts'
import { createModelStatsLink } from './stages/model-stats.ts'
import { ModelStatistics } from './oip/stats.ts'
import { createTraceLink } from './stages/trace.ts'
import { SharedState } from './state/redis.ts'
import { Gauge, type GatewayMetrics } from './telemetry/metrics.ts'
import { limitConnections } from './transport/connection-limits.ts'
import { attachChain } from './transport/http-chain.ts'
import { createGrpcListener, type GrpcListener } from './transport/grpc.ts'
import { httpsServerOptions, loadTlsMaterial, type TlsMaterial, type TlsReloader } from './transport/tls.ts'
import type { Stage } from './types.ts'

export const SERVER_VERSION = '0.1.0'

export interface GatewayOptions {
  /** pino log level for both listeners; 'silent' in tests. */
  logLevel?: string
  /** Where log lines go (one JSON object per write); default stdout. Tests pass a memory sink. */
  logStream?: { write(line: string): void }
  /** The audit trail's outlets: where `audit.mirror: stdout` lines go (the CLI passes stdout), and the writer's file system and free-space reading (tests inject failures and a full disk). */
  audit?: Pick<AuditLogDeps, 'mirror' | 'fs' | 'statfs'>
  /**
   * OpenTelemetry: the tracer provider for request, stage and upstream spans (default: the
   * global one, which src/cli.ts sets up from the OTEL_* variables; no-op otherwise), and
   * metric readers besides the Prometheus one the admin listener serves (an OTLP exporter).
   */
  telemetry?: { tracerProvider?: TracerProvider; metricReaders?: MetricReader[] }
}

export interface Gateway {
  readonly api: FastifyInstance
  readonly admin: FastifyInstance
  readonly registry: ModelRegistry
  readonly metrics: GatewayMetrics
  readonly stages: readonly Stage[]
  readonly log: Logger
  /** The audit trail (src/stages/audit-log.ts); its writer is null when audit is off. */
  readonly audit: AuditLogStage
  /** The per-model policies in force (policies/<model>.yaml); a reload replaces them. */
  readonly policies: PolicySet
  /** The policy folder's reloads; null when policies.watch is off or there is no folder. */
  readonly policyReload: PolicyWatcher | null
  /** The model folder's poll; null when models.poll is off. */
  readonly modelPoll: ModelRepositoryPoller | null
  /** The API listener's TLS files and their reloads; null when tls is off (plain HTTP). */
  readonly tls: TlsReloader | null
  /** The Redis connection replicas share state through; null without state.redis. */
  readonly sharedState: SharedState | null
  /** The gRPC listener (grpc.enabled), not yet listening: src/cli.ts (or a test) calls its listen(). */
  readonly grpc: GrpcListener | null
  /** Requests counted against loadShedding.maxInFlightRequests right now. */
  readonly inFlight: () => number
  /**
   * Starts the admin listener: on its own thread (loadShedding.isolateAdmin, the default) or
   * as `admin` on this event loop. Returns the bound address. (Tests may listen on `admin`
   * themselves instead, or inject into it.)
   */
  serveAdmin(listen: { host: string; port: number }): Promise<AddressInfo>
  /** Loads the models. Resolves when each one is ready or has failed. */
  load(): Promise<void>
  /** Stops accepting, lets in-flight and queued requests finish (at most graceMs), releases the models. */
  close(graceMs?: number): Promise<void>
}


export async function buildGateway(loaded: LoadedConfig, deps: Deps, options: GatewayOptions = {}): Promise<Gateway> {
  const { config, baseDir, source } = loaded
  const { clock, random } = deps
  let shuttingDown = false
  const isShuttingDown = () => shuttingDown

  // --- load: what cannot be used stops the start, before anything is built ---
  const frontDoorProblems = [...securityProblems(config), ...scaleoutProblems(config), ...modelControlProblems(config)]
  if (frontDoorProblems.length > 0) throw new ConfigError(source, frontDoorProblems)
  const policyDir = path.resolve(baseDir, config.policies.directory)
  const livePolicies = await buildPolicies(config, policyDir)
  const { live } = livePolicies
  const policies = live.policies
  const tlsMaterial = config.tls.enabled ? await loadTlsMaterial(config.tls, baseDir) : null

  // --- build the subsystems ---
  const late: { audit: AuditLogStage | null; unrouted: ((err: BulwarkError, request: FastifyRequest, reply: FastifyReply) => void) | null } = { audit: null, unrouted: null }
  const api = apiServer(config, deps, options, tlsMaterial, late)
  const log = api.log as unknown as Logger
  let registry: ModelRegistry | null = null
  const observability = buildObservability(config.telemetry, options.telemetry ?? {}, {
    *queueDepth() {
      // One series per model (its versions' queues together): the label stays bounded by the models served.
      for (const m of registry?.list() ?? []) yield [m.name, registry!.versionsOf(m.name).reduce((n, v) => n + (v.batcher?.queueDepth ?? 0), 0)]
    },
  })
  const { metrics } = observability
  const statistics = new ModelStatistics((name, version) => registry?.statsVersion(name, version) ?? null, clock)
  // A model loaded, replaced or unloaded while serving: the policies are compiled again against it.
  const onChange = (model: string) => void livePolicies.recompile(log, `model ${model} changed`)
  const models = buildModels(config.models, baseDir, { clock, log, random, metrics, tracer: observability.tracerProvider.getTracer('bulwark'), statistics, onChange })
  registry = models.registry
  // What holds a folder lock, a connection or a watcher is closed again if a later part fails to start.
  const undo: Undo = []
  const sharedState = config.state.redis ? await opening(undo, () => SharedState.open(config.state.redis!, baseDir, log, clock), (s) => s.close()) : null
  if (sharedState) metrics.add(new Gauge('bulwark_state_store_up', 'Whether the shared state store (Redis) is connected: 1 yes, 0 no (budgets refused; rate limits and screening as configured).', () => [[{ store: 'redis' }, sharedState.up ? 1 : 0]]))
  const outputPrivacy = await opening(undo, () => buildOutputPrivacy(config, { baseDir, policyDir }, { policies: live, registry, sharedState, clock, random, log }), (p) => p?.accountant.close())
  const frontDoor = await opening(undo, () => buildFrontDoor(config, { baseDir }, { api, tlsMaterial, policies: live, sharedState, clock, log, metrics }), (f) => f.close())
  for (const m of registry.list()) if (config.authorization.enabled && !policies.has(m.name)) log.warn({ model: m.name }, 'model has no policy: nobody may call it (default deny)')
  const screening = await opening(undo, () => buildScreeningLinks(config, { baseDir, source }, { policies: live, registry, sharedState, clock, random, log, metrics, outputPolicies: outputPrivacy?.policies, outputView: outputPrivacy ?? undefined }), async () => {})
  const audit = await opening(undo, () => createAuditLogStage(config.audit, loaded, { clock, random, log, ...options.audit }), (a) => a.close())
  late.audit = audit
  metrics.add(...audit.metrics)
  const connections = limitConnections(api.server, {
    maxConnections: config.server.maxConnections,
    maxPerClient: config.server.maxConnectionsPerClient,
    newPerSecondPerAddress: config.server.newConnectionsPerSecondPerAddress,
    closedOnRefusalCost: config.server.closedOnRefusalCost,
    tls: tlsMaterial !== null,
    clock,
  })
  metrics.add(connections.refused)
  const loadShedding = config.loadShedding.enabled ? createLoadSheddingLink(config.loadShedding, { queueFull: (model, version) => registry.queueFull(model, version) }) : undefined
  if (loadShedding) metrics.add(...loadShedding.metrics)
  const clientLimit = config.clientLimits.enabled ? createClientLimitLink(config.clientLimits, { clock }) : undefined
  if (clientLimit) metrics.add(...clientLimit.metrics)

  // --- assemble the chain ---
  const chain = assembleChain({
    trace: createTraceLink(observability.tracing),
    loadShedding,
    clientLimit,
    ...frontDoor.links,
    callerKey: createCallerKeyLink(),
    bodyRead: createBodyReadLink(),
    inputValidation: createInputValidationStage({ models: registry }),
    ...(screening ?? {}),
    modelInference: createModelInferenceStage({ service: models.service }),
    privacyPrecheck: outputPrivacy?.links.privacyPrecheck,
    privacyCharge: outputPrivacy?.links.privacyCharge,
    outputPrivacy: outputPrivacy?.links.outputPrivacy,
    auditRecord: audit.link,
    modelStats: createModelStatsLink(statistics, clock),
    metrics: createMetricsLink(metrics, clock, (name) => registry.has(name)),
  })
  late.unrouted = attachChain(api, { chain, clock, log, server: config.server, tls: tlsMaterial !== null, closing: isShuttingDown, closedOnRefusal: connections.closedOnRefusal }).answerUnrouted
  registerOipRoutes(api, { registry, statistics, serverVersion: SERVER_VERSION, isShuttingDown })
  // The same chain behind a second transport.
  const grpc = config.grpc.enabled ? createGrpcListener({ config, tlsMaterial, tlsReloader: frontDoor.tls, metrics, chain, clock, random, log, registry, statistics, serverVersion: SERVER_VERSION, isShuttingDown, requestTimeoutMs: config.server.requestTimeoutMs }) : null

  const readinessChecks: ReadinessCheck[] = [audit.readinessCheck]
  if (sharedState) readinessChecks.push(() => ({ name: 'shared-state', problem: sharedState.problem() }))
  for (const m of registry.list()) {
    if (!m.upstream) continue
    // A model whose every upstream breaker is open cannot serve: not ready (some open: ready, listed under upstreams).
    readinessChecks.push(() => ({ name: `upstream:${m.name}`, problem: registry.upstreams().find((u) => u.model === m.name)?.backend.problem() ?? null }))
  }
  const admin = buildAdmin(config, { logger: api.log, log, random, registry, metrics, isShuttingDown, readinessChecks, details: () => ({ policies: livePolicies.status() }), repository: repositoryHandler(config.models, baseDir, { registry, verifyToken: frontDoor.verifyToken, log }) })
  const policyReload = livePolicies.watch({ clock, log, metrics })

  return {
    api,
    admin: admin.app,
    registry,
    metrics,
    stages: chain,
    log,
    audit,
    get policies() {
      return live.policies
    },
    policyReload,
    modelPoll: models.poller,
    tls: frontDoor.tls,
    sharedState,
    grpc,
    inFlight: () => loadShedding?.inFlight() ?? 0,
    serveAdmin: (listen) => admin.serve(listen),
    load: () => models.load(),
    async close(graceMs = config.server.shutdownGraceMs) {
      shuttingDown = true
      policyReload?.close()
      models.close()
      await frontDoor.close()
      // Stop accepting; requests already received (and those queued behind them) finish.
      const drained = Promise.all([api.close(), grpc?.close(graceMs), registry.drain()]).then(() => 'drained' as const)
      const timedOut = clock.sleep(graceMs).then(() => 'timeout' as const)
      if ((await Promise.race([drained, timedOut])) === 'timeout') log.warn({ graceMs }, 'shutdown grace period ended with requests still in flight')
      await registry.close()
      await outputPrivacy?.accountant.close()
      await sharedState?.close()
      await audit.close()
      await admin.close()
      await metrics.close()
    },
  }
}

type Undo = (() => Promise<unknown>)[]

/** Opens one part of the gateway; if it fails, closes every part opened before it (newest first) and rethrows. */
async function opening<T>(undo: Undo, open: () => Promise<T>, close: (t: T) => Promise<unknown> | undefined): Promise<T> {
  try {
    const opened = await open()
    undo.push(async () => close(opened))
    return opened
  } catch (err) {
    for (const closeOne of undo.reverse()) await closeOne().catch(() => {})
    throw err
  }
}

/**
 * The API listener's fastify instance. Requests the HTTP parser refuses and router errors
 * run no hooks; they reach the audit log and the chain through `late`, set before anything
 * listens.
 */
function apiServer(
  config: LoadedConfig['config'],
  deps: Deps,
  options: GatewayOptions,
  tlsMaterial: TlsMaterial | null,
  late: { audit: AuditLogStage | null; unrouted: ((err: BulwarkError, request: FastifyRequest, reply: FastifyReply) => void) | null },
): FastifyInstance {
  // Node checks the header and request timeouts on this interval (30 s by default, which
  // would let a stalled client hold on that much past its timeout).
  const receiving = { maxHeaderSize: config.server.maxHeaderBytes, connectionsCheckingInterval: Math.min(1000, config.server.headersTimeoutMs) }
  const api = Fastify({
    clientErrorHandler: (err: Error & { code?: string }, socket: Socket) => (late.audit ? late.audit.clientError(err, socket) : socket.destroy(err)),
    // Router errors (a URL that is not valid percent-encoding, a path segment over the limit)
    // get our error body and code like every other refusal, and an audit record.
    frameworkErrors: (err: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
      const e = new BulwarkError(
        'bad_request',
        err.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 'a path segment is longer than 128 characters; use a model name from GET /v2/models/{name}' : 'the URL is not valid (bad percent-encoding); encode the path as RFC 3986 says',
        { cause: err },
      )
      if (late.unrouted) late.unrouted(e, request, reply)
      else reply.code(e.status).send({ error: e.message, code: e.code })
    },
    logger: { level: options.logLevel ?? 'info', ...(options.logStream ? { stream: options.logStream } : {}) },
    // Per-request logs would double the work on the hot path; refusals are logged with their reason instead.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.server.bodyLimitBytes,
    routerOptions: { maxParamLength: 128 },
    genReqId: () => deps.random.uuid(),
    requestIdHeader: false,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    keepAliveTimeout: 65_000,
    requestTimeout: config.server.receiveTimeoutMs,
    http: { ...receiving },
    ...(tlsMaterial ? { https: httpsServerOptions(config.tls, tlsMaterial, receiving) } : {}),
  } as Parameters<typeof Fastify>[0]) as unknown as FastifyInstance
  api.server.headersTimeout = config.server.headersTimeoutMs
  return api
}
