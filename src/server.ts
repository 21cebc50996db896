// buildGateway(config, deps): assembles the API and admin servers, their routes and the
// pipeline. It never listens and never touches process state; src/cli.ts does that.

import type { IncomingMessage } from 'node:http'
import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import rateLimitPlugin from '@fastify/rate-limit'
import { trace, type TracerProvider } from '@opentelemetry/api'
import type { MetricReader } from '@opentelemetry/sdk-metrics'
import type { Server as HttpsServer } from 'node:https'
import path from 'node:path'
import type { AddressInfo, Socket } from 'node:net'
import type { TLSSocket } from 'node:tls'
import { JwksKeySet } from './auth/jwks.ts'
import { TokenCache } from './auth/token-cache.ts'
import { ConfigError } from './config/load.ts'
import { loadPolicies, type PolicySet } from './config/policy.ts'
import { securityProblems } from './config/security.ts'
import { scaleoutProblems } from './config/scaleout.ts'
import { BulwarkError, errorBody, type ErrorCode } from './errors.ts'
import type { Deps, Logger } from './deps.ts'
import type { LoadedConfig } from './config/load.ts'
import { ModelRegistry } from './inference/registry.ts'
import { InferenceService } from './inference/service.ts'
import { Counter, Gauge, GatewayMetrics, Histogram } from './metrics.ts'
import { asBulwarkError, assemblePipeline, runPhase } from './pipeline.ts'
import { readiness, registerAdminRoutes, type AdminDeps } from './routes/admin.ts'
import { AdminThread } from './routes/admin-thread.ts'
import { registerOipRoutes } from './routes/oip.ts'
import { createAuditLogStage, type AuditLogDeps, type AuditLogStage } from './stages/audit-log.ts'
import { createInputValidationStage } from './stages/input-validation.ts'
import { createModelInferenceStage } from './stages/model-inference.ts'
import { createOutputPrivacyStage, defaultOutputPolicy } from './stages/output-privacy.ts'
import { FileAccountant } from './privacy/file-accountant.ts'
import { RedisAccountant } from './privacy/redis-accountant.ts'
import { SharedState } from './state/redis.ts'
import { createPipelineTracing } from './telemetry/tracing.ts'
import { createJwtAuthStage } from './stages/jwt-auth.ts'
import { createModelPolicyStage } from './stages/model-policy.ts'
import { createMtlsIdentityStage } from './stages/mtls-identity.ts'
import { createRateLimitStage } from './stages/rate-limit.ts'
import { createAdversarialScreenStage } from './stages/adversarial-screen.ts'
import { buildScreening } from './screening/build.ts'
import { redisCooldowns } from './screening/cooldowns.ts'
import { fastifyLimiter, redisRateLimitStore } from './transport/rate-limiter.ts'
import { handshakeFailureReason, httpsServerOptions, loadTlsMaterial, requireClientCertificates, TlsReloader, verifiedPeerCertificate } from './transport/tls.ts'
import { readBody, releaseBody } from './protocol/body.ts'
import { newRequestContext, type RequestContext, type Stage } from './types.ts'

export const SERVER_VERSION = '0.1.0'

declare module 'fastify' {
  interface FastifyRequest {
    /** The pipeline's request context; null on routes that run no pipeline. */
    ctx: RequestContext | null
  }
}

export interface GatewayOptions {
  /** pino log level for both listeners; 'silent' in tests. */
  logLevel?: string
  /** Where log lines go (one JSON object per write); default stdout. Tests pass a memory sink. */
  logStream?: { write(line: string): void }
  /** The audit trail's outlets: where `audit.mirror: stdout` lines go (the CLI passes stdout), and the writer's file system (tests inject failures). */
  audit?: Pick<AuditLogDeps, 'mirror' | 'fs'>
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
  /** The per-model policies (policies/<model>.yaml), for the stages that read their slices. */
  readonly policies: PolicySet
  /** The API listener's TLS files and their reloads; null when tls is off (plain HTTP). */
  readonly tls: TlsReloader | null
  /** The Redis connection replicas share state through; null without state.redis. */
  readonly sharedState: SharedState | null
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

export async function buildGateway(loaded: LoadedConfig, deps: Deps, options: GatewayOptions = {}): Promise<Gateway> {
  const { config } = loaded
  const { clock, random } = deps
  let shuttingDown = false

  // The front door's files are read before anything starts: what cannot be used stops the start.
  const frontDoorProblems = [...securityProblems(config), ...scaleoutProblems(config)]
  if (frontDoorProblems.length > 0) throw new ConfigError(loaded.source, frontDoorProblems)
  const policies = await loadPolicies(path.resolve(loaded.baseDir, config.policies.directory), { required: config.authorization.enabled })
  const tlsMaterial = config.tls.enabled ? await loadTlsMaterial(config.tls, loaded.baseDir) : null

  // Requests the HTTP parser refuses are audited too (set below, before anything listens).
  let clientError: ((err: Error & { code?: string }, socket: Socket) => void) | null = null
  let recordUnhooked: AuditLogStage['recordUnhooked'] | null = null
  const api = Fastify({
    clientErrorHandler: (err: Error & { code?: string }, socket: Socket) => (clientError ? clientError(err, socket) : socket.destroy(err)),
    // Router errors (a URL that is not valid percent-encoding, a path segment over the limit)
    // get our error body and code like every other refusal; the reply still passes the
    // onSend hooks, so it is audited.
    frameworkErrors: (err: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
      const e = new BulwarkError(
        'bad_request',
        err.code === 'FST_ERR_MAX_PARAM_LENGTH' ? 'a path segment is longer than 128 characters; use a model name from GET /v2/models/{name}' : 'the URL is not valid (bad percent-encoding); encode the path as RFC 3986 says',
        { cause: err },
      )
      const body = JSON.stringify(errorBody(e))
      reply.code(e.status).type('application/json; charset=utf-8')
      // Fastify runs no hooks for router errors, so the audit record is written here.
      if (!recordUnhooked) return reply.send(body)
      recordUnhooked(request, reply, body).then((payload) => reply.send(payload), (fail: unknown) => reply.code(500).send(String(fail)))
    },
    logger: { level: options.logLevel ?? 'info', ...(options.logStream ? { stream: options.logStream } : {}) },
    // Per-request logs would double the work on the hot path; refusals are logged with their reason instead.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.server.bodyLimitBytes,
    routerOptions: { maxParamLength: 128 },
    genReqId: () => random.uuid(),
    requestIdHeader: false,
    return503OnClosing: true,
    forceCloseConnections: 'idle',
    keepAliveTimeout: 65_000,
    http: { maxHeaderSize: config.server.maxHeaderBytes },
    ...(tlsMaterial ? { https: httpsServerOptions(config.tls, tlsMaterial, { maxHeaderSize: config.server.maxHeaderBytes }) } : {}),
  } as Parameters<typeof Fastify>[0]) as unknown as FastifyInstance
  const log = api.log as unknown as Logger
  const admin = Fastify({
    loggerInstance: api.log,
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => random.uuid(),
  })

  let registry: ModelRegistry
  const metrics = new GatewayMetrics(
    {
      *queueDepth() {
        for (const m of registry.list()) yield [m.name, m.batcher?.queueDepth ?? 0]
      },
    },
    { readers: options.telemetry?.metricReaders ?? [] },
  )
  const tracerProvider = options.telemetry?.tracerProvider ?? trace.getTracerProvider()
  const tracing = createPipelineTracing(tracerProvider, { acceptTraceContext: config.telemetry.acceptTraceContext })

  // --- upstream models (src/inference/upstream-backend.ts): calls, retries, breaker states ---
  const upstreamCalls = new Counter('bulwark_upstream_calls_total', 'Calls to upstream model endpoints, by model, endpoint and outcome (ok, failed: counted by the breaker, refused: the upstream refused the request, deadline: the client\'s deadline ran out).')
  const upstreamSeconds = new Histogram('bulwark_upstream_call_duration_seconds', 'Duration of calls to upstream model endpoints, by model and endpoint.', [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
  const upstreamRetries = new Counter('bulwark_upstream_retries_total', 'Calls retried on another endpoint (or the same one) after the connection failed before the request was sent, by model and endpoint.')
  const breakerTransitions = new Counter('bulwark_upstream_breaker_transitions_total', 'Circuit breaker state changes of each upstream endpoint, by the state entered (open, half-open, closed); flapping shows here even between scrapes.')
  const breakerState = new Gauge('bulwark_upstream_breaker_state', 'Circuit breaker of each upstream endpoint: 1 for its current state (closed, open, half-open), 0 for the others.', function* () {
    for (const u of registry.upstreams()) {
      for (const e of u.backend.status()) for (const state of ['closed', 'open', 'half-open']) yield [{ model: u.model, endpoint: e.endpoint, state }, e.state === state ? 1 : 0] as [Record<string, string>, number]
    }
  })
  const upstreamOutstanding = new Gauge('bulwark_upstream_outstanding_calls', 'Calls in flight to each upstream endpoint.', function* () {
    for (const u of registry.upstreams()) for (const e of u.backend.status()) yield [{ model: u.model, endpoint: e.endpoint }, e.outstanding] as [Record<string, string>, number]
  })
  for (const m of [upstreamCalls, upstreamSeconds, upstreamRetries, breakerTransitions, breakerState, upstreamOutstanding]) metrics.add(m)
  registry = new ModelRegistry(config.models, loaded.baseDir, {
    clock,
    log,
    onBatch: (model, items) => metrics.batchSize.observe({ model }, items),
    random,
    tracer: tracerProvider.getTracer('bulwark'),
    upstreamObserver: {
      call(model, endpoint, outcome, seconds) {
        upstreamCalls.inc({ model, endpoint, outcome })
        upstreamSeconds.observe({ model, endpoint }, seconds)
      },
      retry: (model, endpoint) => upstreamRetries.inc({ model, endpoint }),
      breaker: (model, endpoint, state) => breakerTransitions.inc({ model, endpoint, state }),
    },
  })
  const service = new InferenceService(registry)

  // --- shared state (src/state/redis.ts): rate limits, budgets and screening state across replicas ---
  const sharedState = config.state.redis ? await SharedState.open(config.state.redis, loaded.baseDir, log) : null
  if (sharedState) {
    metrics.add(new Gauge('bulwark_state_store_up', 'Whether the shared state store (Redis) is connected: 1 yes, 0 no (budgets refused; rate limits and screening as configured).', () => [[{ store: 'redis' }, sharedState.up ? 1 : 0]]))
  }
  // Privacy budgets survive restarts: the accountant journals every charge under
  // state.directory, or in Redis when replicas share budgets.
  // Keep charges only as long as the longest budget window in use: memory (here, or in Redis)
  // stays proportional to what the budgets allow per window, not to a week of traffic.
  // (Policies are read once at start, so no window can grow past it while the gateway runs.)
  const retentionMs = Math.max(1000, ...[...registry.list()].map((m) => (policies.get(m.name)?.output ?? defaultOutputPolicy).budget.windowMs))
  const accountant = !config.outputPrivacy.enabled
    ? null
    : sharedState
      ? new RedisAccountant({ redis: sharedState.client, clock, random, retentionMs })
      : await FileAccountant.open({
          directory: path.join(path.resolve(loaded.baseDir, config.state.directory), 'privacy'),
          clock,
          log,
          retentionMs,
          ...config.state.journal,
        })

  // --- the front door: mTLS, JWT, policies, rate limits (each can be switched off) ---
  const handshakeFailures = new Counter('bulwark_tls_handshake_failures_total', 'TLS handshakes refused or failed (no or untrusted client certificate, protocol, timeout), by reason.')
  const tlsReloads = new Counter('bulwark_tls_reloads_total', 'Changes of the TLS certificate, key or CA files on disk, by outcome (changed = applied, failed = kept the old ones).')
  const jwksRefreshes = new Counter('bulwark_jwks_refreshes_total', 'Re-reads of the JSON Web Key Set, by outcome.')
  for (const m of [handshakeFailures, tlsReloads, jwksRefreshes]) metrics.add(m)
  const off = (['tls', 'auth', 'authorization', 'rateLimits'] as const).filter((k) => !config[k].enabled)
  if (off.length > 0) log.warn({ off }, 'front door partly or wholly switched off by the configuration')

  let tls: TlsReloader | null = null
  if (tlsMaterial) {
    tls = new TlsReloader(config.tls, loaded.baseDir, tlsMaterial, { log, onReload: (outcome) => tlsReloads.inc({ outcome }) })
    tls.attach(api.server as HttpsServer)
    // A refused handshake has no HTTP request: count it, and log why for the operator.
    const refused = (reason: string, socket: TLSSocket, err?: string) => {
      handshakeFailures.inc({ reason })
      log.info({ reason, ...(err ? { err } : {}), remote: socket.remoteAddress }, 'TLS handshake refused')
    }
    requireClientCertificates(api.server as HttpsServer, refused)
    api.server.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => refused(handshakeFailureReason(err), socket, err.message))
  }
  const tokenCache = new TokenCache(config.auth.tokenCacheEntries)
  const keys = config.auth.enabled
    ? await JwksKeySet.open(config.auth.jwks, loaded.baseDir, { clock, log, onChange: () => tokenCache.clear(), onRefresh: (outcome) => jwksRefreshes.inc({ outcome }) })
    : null
  if (config.rateLimits.enabled) {
    await api.register(rateLimitPlugin, {
      global: false,
      ...(sharedState ? { store: redisRateLimitStore(sharedState.client), skipOnError: config.state.redis!.rateLimitsWhenUnavailable === 'allow' } : {}),
    })
  }
  const rateLimit = config.rateLimits.enabled
    ? createRateLimitStage({ rateLimits: config.rateLimits, policies }, { limiterFor: (limits) => fastifyLimiter(api, limits, config.rateLimits.storeEntries) })
    : undefined
  for (const m of registry.list()) if (config.authorization.enabled && !policies.has(m.name)) log.warn({ model: m.name }, 'model has no policy: nobody may call it (default deny)')

  // --- screening (src/stages/adversarial-screen.ts): per-model detectors from each policy's `screening:` ---
  // With shared state, the per-principal state (histories, extraction sets, cool-downs) is in Redis.
  const screening = await buildScreening(policies, {
    policyDir: path.resolve(loaded.baseDir, config.policies.directory),
    modelsDir: path.resolve(loaded.baseDir, config.models.directory),
    random,
    ...(sharedState ? { shared: { redis: sharedState.client, ttlMs: config.state.redis!.screeningStateTtlMs } } : {}),
  })
  if (screening.problems.length > 0) throw new ConfigError(loaded.source, screening.problems)
  const screeningAlarms = new Counter('bulwark_screening_alarms_total', 'Screening alarms, by detector, action (refused = enforce, flagged = observe) and model.')
  const screeningScores = new Histogram('bulwark_screening_score', 'Screening scores, by detector and model (each detector has its own scale: docs/screening.md).', [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1, 1.5, 2])
  const screeningState = new Gauge('bulwark_screening_state_entries', 'Queries held by stateful screening detectors, by detector and model.', function* () {
    for (const s of screening.models.values()) for (const d of s.detectors) if (d.memory) yield [{ detector: d.name, model: s.model }, d.memory().stored] as [Record<string, string>, number]
  })
  const screeningSkipped = new Counter('bulwark_screening_skipped_total', 'Shared screening detectors and cool-down checks skipped because Redis was unreachable (state.redis.screeningWhenUnavailable: allow), by detector and model.')
  for (const m of [screeningAlarms, screeningScores, screeningState, screeningSkipped]) metrics.add(m)
  for (const m of registry.list()) if (!screening.models.has(m.name)) log.warn({ model: m.name }, 'model has no screening configured (policy screening:)')
  const adversarialScreen = screening.models.size > 0
    ? createAdversarialScreenStage({
        models: screening.models,
        inference: service,
        clock,
        observer: {
          scored(model, detector, result, action) {
            if (action !== 'passed') screeningAlarms.inc({ detector, action, model })
            if (detector !== 'cooldown') screeningScores.observe({ detector, model }, result.score)
          },
          skipped: (model, detector) => screeningSkipped.inc({ detector, model }),
        },
        ...(sharedState ? { cooldowns: redisCooldowns(sharedState.client), whenStateUnavailable: config.state.redis!.screeningWhenUnavailable } : {}),
      })
    : undefined

  const stages = assemblePipeline({
    mtlsIdentity: config.tls.enabled ? createMtlsIdentityStage() : undefined,
    jwtAuth: keys ? createJwtAuthStage(config.auth, { clock, getKey: keys.getKey, cache: tokenCache }) : undefined,
    modelPolicy: config.authorization.enabled ? createModelPolicyStage(policies) : undefined,
    rateLimit,
    inputValidation: createInputValidationStage({ models: registry }),
    adversarialScreen,
    modelInference: createModelInferenceStage({ service }),
    outputPrivacy: accountant ? createOutputPrivacyStage((model) => policies.get(model)?.output, { accountant, random }) : undefined,
  })

  // The protocol's bodies are JSON or JSON + raw tensor bytes; read both as bytes and
  // decode in the pipeline, after the headers-phase stages have accepted the caller.
  api.removeAllContentTypeParsers()
  api.addContentTypeParser('*', (_request: FastifyRequest, payload: IncomingMessage) => readBody(payload, config.server.bodyLimitBytes))
  api.decorateRequest('ctx', null)
  // Audit wraps every exchange on the API listener; its hooks go first (see src/stages/audit-log.ts).
  const audit = await createAuditLogStage(config.audit, loaded, { clock, random, log, ...options.audit })
  audit.register(api)
  clientError = audit.clientError
  recordUnhooked = audit.recordUnhooked

  // Load shedding (loadShedding): a global bound on model requests in flight, and each model's
  // queue bound checked on arrival; past either, 503 at once (overloaded, queue_full) rather
  // than queueing into timeouts, before the body is read or any credential checked. Counted
  // from arrival to the end of the response (or of the connection); health, server metadata
  // and the admin listener are never counted or refused.
  let inFlight = 0
  const shed = config.loadShedding
  const shedCount = new Counter('bulwark_shed_requests_total', 'Requests refused on arrival, before their body is read, by reason: overloaded (loadShedding.maxInFlightRequests in flight) or queue_full (the model\'s queue is full).')
  metrics.add(shedCount)
  metrics.add(new Gauge('bulwark_inflight_requests', 'Model requests in flight (counted against loadShedding.maxInFlightRequests).', () => [[{}, inFlight]]))

  /** Records a load-shedding refusal on the context, as runPhase does for a stage's. */
  const shedding = (ctx: RequestContext, err: BulwarkError): BulwarkError => {
    ctx.error = err
    ctx.failedStage = 'load-shedding'
    return err
  }
  /** Runs `fn` once the response is done or the connection dies ('close' fires in both cases). */
  const whenClosed = (reply: FastifyReply, fn: () => void) => {
    if (reply.raw.closed) fn()
    else reply.raw.once('close', fn)
  }

  api.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
    const verb = request.routeOptions.config.verb
    if (!verb) return
    const params = request.params as { model?: string; version?: string }
    const startedMs = clock.monotonicMs()
    const socket = request.raw.socket as Partial<TLSSocket>
    const auth = request.headers.authorization
    request.ctx = newRequestContext({
      id: request.id,
      receivedAtMs: clock.nowMs(),
      startedMs,
      deadlineMs: startedMs + config.server.requestTimeoutMs,
      client: {
        address: request.ip,
        tlsVersion: typeof socket.getProtocol === 'function' ? socket.getProtocol() : null,
        peerCertificate: tls ? verifiedPeerCertificate(socket as TLSSocket) : null,
      },
      target: { model: params.model ?? '', version: params.version ?? null, verb },
      bearerToken: typeof auth === 'string' ? auth : null,
    })
    const traceparent = request.headers.traceparent
    tracing.startRequest(request.ctx, { method: request.method, route: request.routeOptions.url ?? '', traceparent: typeof traceparent === 'string' ? traceparent : undefined })
    if (shed.enabled) {
      if (inFlight >= shed.maxInFlightRequests) {
        shedCount.inc({ reason: 'overloaded' })
        const err = new BulwarkError('overloaded', 'the gateway is at capacity; retry after the Retry-After delay', {
          reason: `${inFlight} requests in flight (loadShedding.maxInFlightRequests ${shed.maxInFlightRequests})`,
          headers: { 'retry-after': String(shed.retryAfterSeconds) },
        })
        throw shedding(request.ctx, err)
      }
      // The model's queue is full already: refuse now, before reading the body, rather than
      // after decoding and validating it (the batcher would refuse it then anyway).
      if (verb === 'infer' && registry.queueFull(request.ctx.target.model)) {
        shedCount.inc({ reason: 'queue_full' })
        const err = new BulwarkError('queue_full', `model ${request.ctx.target.model.slice(0, 64)} is at capacity; retry after the Retry-After delay`, {
          reason: 'model queue full on arrival (batching.maxQueueSize)',
          headers: { 'retry-after': String(shed.retryAfterSeconds) },
        })
        throw shedding(request.ctx, err)
      }
      inFlight++
      whenClosed(reply, () => inFlight--)
    }
    await runPhase(stages, 'headers', request.ctx, clock)
    // The in-flight slot taken by the rate-limit stage is freed with the exchange.
    const ctx = request.ctx
    if (rateLimit) whenClosed(reply, () => rateLimit.release(ctx))
  })

  api.setErrorHandler((raw: FastifyError, request, reply) => {
    const err = raw instanceof BulwarkError ? raw : fromFastifyError(raw)
    const ctx = request.ctx
    if (ctx && !ctx.error) {
      ctx.error = err
      ctx.failedStage = 'transport'
    }
    const fields = { code: err.code, reason: err.reason, stage: ctx?.failedStage ?? 'transport' }
    if (err.code === 'internal') request.log.error({ ...fields, err: err.cause ?? err }, 'request failed')
    else if (err.status >= 500) request.log.warn(fields, 'request not served')
    else request.log.info(fields, 'request refused')
    return reply.code(err.status).headers(err.headers).send(errorBody(err))
  })
  api.setNotFoundHandler((request, reply) => {
    const err = new BulwarkError('not_found', `no route ${request.method} ${request.url.split('?')[0]!.slice(0, 100)}; see GET /v2 and the Open Inference Protocol v2 paths`)
    return reply.code(404).send(errorBody(err))
  })
  api.addHook('onResponse', async (request, reply) => {
    releaseBody(request.body)
    const ctx = request.ctx
    const model = ctx?.target.model ?? ''
    const code = ctx?.error?.code ?? (reply.statusCode < 400 ? 'ok' : 'error')
    metrics.requests.inc({ model, verb: ctx?.target.verb ?? 'server', status: String(reply.statusCode), code })
    if (ctx) {
      metrics.requestSeconds.observe({ model }, (clock.monotonicMs() - ctx.startedMs) / 1000)
      for (const [stage, ms] of Object.entries(ctx.stageMs)) metrics.stageSeconds.observe({ stage }, ms / 1000)
      tracing.endRequest(ctx, reply.statusCode)
    }
  })

  const isShuttingDown = () => shuttingDown
  registerOipRoutes(api, { registry, stages, clock, serverVersion: SERVER_VERSION, isShuttingDown })
  const readinessChecks: AdminDeps['readinessChecks'] = [audit.readinessCheck]
  if (sharedState) readinessChecks.push(() => ({ name: 'shared-state', problem: sharedState.problem() }))
  for (const m of registry.list()) {
    if (!m.upstream) continue
    // A model whose every upstream breaker is open cannot serve: not ready (some open: ready, listed under upstreams).
    readinessChecks.push(() => ({ name: `upstream:${m.name}`, problem: registry.upstreams().find((u) => u.model === m.name)?.backend.problem() ?? null }))
  }
  const adminDeps: AdminDeps = {
    registry,
    metrics,
    isShuttingDown,
    readinessChecks,
    details: () => ({ upstreams: Object.fromEntries(registry.upstreams().map((u) => [u.model, u.backend.status()])) }),
  }
  registerAdminRoutes(admin, adminDeps)
  let adminThread: AdminThread | null = null

  return {
    api,
    admin,
    registry,
    metrics,
    stages,
    log,
    audit,
    policies,
    tls,
    sharedState,
    inFlight: () => inFlight,
    async serveAdmin(listen) {
      if (!config.loadShedding.isolateAdmin) {
        await admin.listen(listen)
        return admin.server.address() as AddressInfo
      }
      adminThread = await AdminThread.start({
        ...listen,
        readiness: () => readiness(adminDeps),
        metrics: () => metrics.render(),
        log,
        livenessTimeoutMs: config.loadShedding.livenessTimeoutMs,
      })
      return adminThread.address
    },
    load: () => registry.load(),
    async close(graceMs = config.server.shutdownGraceMs) {
      shuttingDown = true
      tls?.close()
      await keys?.close()
      // Stop accepting; requests already received (and those queued behind them) finish.
      const drained = Promise.all([api.close(), registry.drain()])
      let timer: NodeJS.Timeout | undefined
      const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)))
      const outcome = await Promise.race([drained.then(() => 'drained' as const), timedOut])
      clearTimeout(timer)
      if (outcome === 'timeout') log.warn({ graceMs }, 'shutdown grace period ended with requests still in flight')
      await registry.close()
      await accountant?.close()
      await sharedState?.close()
      await audit.close()
      await adminThread?.close()
      await admin.close()
      await metrics.close()
    },
  }
}
