// Thin HTTP adapters for the Open Inference Protocol v2 endpoints (KServe/Triton). Each
// route only translates the request context, after the chain's body phase has run
// (src/transport/http-chain.ts), into the protocol's answer. Server health and metadata name
// no model, so only the arrival and response links apply to them.

import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { BulwarkError } from '../errors.ts'
import { encodeInferResponse, HEADER_LENGTH } from '../oip/codec.ts'
import type { ModelRegistry } from '../inference/registry.ts'
import { EXTENSIONS, modelConfiguration, modelMetadata, modelStatistics } from '../oip/model-info.ts'
import type { ModelStatistics } from '../oip/stats.ts'
import type { RequestContext } from '../types.ts'

export interface OipRouteDeps {
  registry: ModelRegistry
  statistics: ModelStatistics
  serverVersion: string
  isShuttingDown: () => boolean
}


function ctxOf(request: FastifyRequest): RequestContext {
  if (!request.ctx) throw new BulwarkError('internal', 'request context missing')
  return request.ctx
}

export function registerOipRoutes(app: FastifyInstance, deps: OipRouteDeps): void {
  const { registry } = deps

  // --- server level: no model, no pipeline ---
  app.get('/v2/health/live', async () => ({ live: true }))
  app.get('/v2/health/ready', async (_req, reply) => {
    const ready = registry.allReady() && !deps.isShuttingDown()
    return reply.code(ready ? 200 : 503).send({ ready })
  })
  app.get('/v2', async () => ({ name: 'bulwark', version: deps.serverVersion, extensions: EXTENSIONS }))

  // --- model level: the chain's links for the route's verb have run ---
  const metadata = async (request: FastifyRequest) => modelMetadata(registry, ctxOf(request))
  // Triton's model configuration and statistics extensions, authorized as metadata.
  const config = async (request: FastifyRequest) => modelConfiguration(registry, ctxOf(request))
  const stats = async (request: FastifyRequest) => modelStatistics(registry, deps.statistics, ctxOf(request))
  const modelReady = async (request: FastifyRequest, reply: FastifyReply) => {
    const ctx = ctxOf(request)
    const m = registry.get(ctx.target.model, ctx.target.version)
    const ready = m.state === 'ready' && !deps.isShuttingDown()
    return reply.code(ready ? 200 : 503).send({ name: m.name, ready })
  }
  const infer = async (request: FastifyRequest, reply: FastifyReply) => {
    const ctx = ctxOf(request)
    const encoded = encodeInferResponse(ctx.result!, ctx.request!)
    reply.type(encoded.contentType)
    if (encoded.headerLength !== undefined) reply.header(HEADER_LENGTH, encoded.headerLength)
    return reply.send(encoded.payload)
  }

  // Every served model's statistics: the request names no model (see modelStatistics).
  app.get('/v2/models/stats', { config: { verb: 'metadata' } }, stats)
  for (const prefix of ['/v2/models/:model', '/v2/models/:model/versions/:version']) {
    app.get(prefix, { config: { verb: 'metadata' } }, metadata)
    app.get(`${prefix}/ready`, { config: { verb: 'metadata' } }, modelReady)
    app.get(`${prefix}/config`, { config: { verb: 'metadata' } }, config)
    app.get(`${prefix}/stats`, { config: { verb: 'metadata' } }, stats)
    app.post(`${prefix}/infer`, { config: { verb: 'infer' } }, infer)
  }
}
