// buildGateway(config, deps): assembles the API and admin servers, their routes and the
// pipeline. It never listens and never touches process state; src/cli.ts does that.

import Fastify, { LogController, type FastifyError, type FastifyInstance, type FastifyRequest } from 'fastify'
import type { ServerOptions as HttpsServerOptions } from 'node:https'
import type { TLSSocket } from 'node:tls'
import { BulwarkError, errorBody, type ErrorCode } from './errors.ts'
import type { Deps, Logger } from './deps.ts'
import type { LoadedConfig } from './config/load.ts'
import { ModelRegistry } from './inference/registry.ts'
import { InferenceService } from './inference/service.ts'
import { GatewayMetrics } from './metrics.ts'
import { asBulwarkError, assemblePipeline, runPhase } from './pipeline.ts'
import { registerAdminRoutes, type AdminDeps } from './routes/admin.ts'
import { registerOipRoutes } from './routes/oip.ts'
import { createInputValidationStage } from './stages/input-validation.ts'
import { createModelInferenceStage } from './stages/model-inference.ts'
import type { RequestContext, Stage } from './types.ts'

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
  /** TLS settings for the API listener; absent = plain HTTP (tests, or TLS terminated in front). */
  https?: HttpsServerOptions
}

export interface Gateway {
  readonly api: FastifyInstance
  readonly admin: FastifyInstance
  readonly registry: ModelRegistry
  readonly metrics: GatewayMetrics
  readonly stages: readonly Stage[]
  readonly log: Logger
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

  const api = Fastify({
    logger: { level: options.logLevel ?? 'info' },
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
    ...(options.https ? { https: options.https } : {}),
  } as Parameters<typeof Fastify>[0]) as unknown as FastifyInstance
  const log = api.log as unknown as Logger
  const admin = Fastify({
    loggerInstance: api.log,
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => random.uuid(),
  })

  let registry: ModelRegistry
  const metrics = new GatewayMetrics({
    *queueDepth() {
      for (const m of registry.list()) yield [m.name, m.batcher?.queueDepth ?? 0]
    },
  })
  registry = new ModelRegistry(config.models, loaded.baseDir, {
    clock,
    log,
    onBatch: (model, items) => metrics.batchSize.observe({ model }, items),
  })
  const service = new InferenceService(registry)
  const stages = assemblePipeline({
    inputValidation: createInputValidationStage({ models: registry }),
    modelInference: createModelInferenceStage({ service }),
  })

  // The protocol's bodies are JSON or JSON + raw tensor bytes; read both as bytes and
  // decode in the pipeline, after the headers-phase stages have accepted the caller.
  api.removeAllContentTypeParsers()
  api.addContentTypeParser('*', { parseAs: 'buffer' }, (_req, body, done) => done(null, body))
  api.decorateRequest('ctx', null)

  api.addHook('onRequest', async (request: FastifyRequest) => {
    const verb = request.routeOptions.config.verb
    if (!verb) return
    const params = request.params as { model?: string; version?: string }
    const startedMs = clock.monotonicMs()
    const socket = request.raw.socket as Partial<TLSSocket>
    const auth = request.headers.authorization
    request.ctx = {
      id: request.id,
      receivedAtMs: clock.nowMs(),
      startedMs,
      deadlineMs: startedMs + config.server.requestTimeoutMs,
      client: { address: request.ip, tlsVersion: typeof socket.getProtocol === 'function' ? socket.getProtocol() : null },
      target: { model: params.model ?? '', version: params.version ?? null, verb },
      identity: null,
      principal: null,
      bearerToken: typeof auth === 'string' ? auth : null,
      body: null,
      request: null,
      result: null,
      flags: [],
      privacy: null,
      stageMs: {},
      error: null,
      failedStage: null,
    }
    await runPhase(stages, 'headers', request.ctx, clock)
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
    const ctx = request.ctx
    const model = ctx?.target.model ?? ''
    const code = ctx?.error?.code ?? (reply.statusCode < 400 ? 'ok' : 'error')
    metrics.requests.inc({ model, verb: ctx?.target.verb ?? 'server', status: String(reply.statusCode), code })
    if (ctx) {
      metrics.requestSeconds.observe({ model }, (clock.monotonicMs() - ctx.startedMs) / 1000)
      for (const [stage, ms] of Object.entries(ctx.stageMs)) metrics.stageSeconds.observe({ stage }, ms / 1000)
    }
  })

  const isShuttingDown = () => shuttingDown
  registerOipRoutes(api, { registry, stages, clock, serverVersion: SERVER_VERSION, isShuttingDown })
  const adminDeps: AdminDeps = { registry, metrics, isShuttingDown, readinessChecks: [] }
  registerAdminRoutes(admin, adminDeps)

  return {
    api,
    admin,
    registry,
    metrics,
    stages,
    log,
    load: () => registry.load(),
    async close(graceMs = config.server.shutdownGraceMs) {
      shuttingDown = true
      // Stop accepting; requests already received (and those queued behind them) finish.
      const drained = Promise.all([api.close(), registry.drain()])
      let timer: NodeJS.Timeout | undefined
      const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)))
      const outcome = await Promise.race([drained.then(() => 'drained' as const), timedOut])
      clearTimeout(timer)
      if (outcome === 'timeout') log.warn({ graceMs }, 'shutdown grace period ended with requests still in flight')
      await registry.close()
      await admin.close()
    },
  }
}
