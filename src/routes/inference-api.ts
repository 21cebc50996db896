// Thin HTTP adapters for the Open Inference Protocol v2 endpoints (KServe/Triton). Each
// route only translates the request context, after the chain's body phase has run
// (src/transport/http-chain.ts), into the protocol's answer. Server health and metadata name
// no model, so only the arrival and response links apply to them.

import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { BulwarkError } from '../errors.ts'
import { encodeInferResponse, HEADER_LENGTH } from '../oip/codec.ts'
import type { ModelRegistry } from '../inference/registry.ts'
import type { RequestContext } from '../types.ts'

export interface OipRouteDeps {
  registry: ModelRegistry
  serverVersion: string
  isShuttingDown: () => boolean
}

/** The OIP v2 extensions this server implements. */
export const EXTENSIONS = ['binary_tensor_data']

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
  const metadata = async (request: FastifyRequest) => {
    const ctx = ctxOf(request)
    const m = registry.get(ctx.target.model, ctx.target.version)
    if (!m.manifest) throw new BulwarkError('model_not_ready', `model "${m.name}" failed to load; its metadata is unavailable`, { reason: m.reason ?? '' })
    const tensor = (t: { name: string; datatype: string; shape: number[] }) => ({ name: t.name, datatype: t.datatype, shape: t.shape })
    return {
      name: m.name,
      versions: [m.manifest.version],
      platform: m.manifest.platform,
      inputs: m.manifest.inputs.map(tensor),
      outputs: m.manifest.outputs.map(tensor),
    }
  }
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

  for (const prefix of ['/v2/models/:model', '/v2/models/:model/versions/:version']) {
    app.get(prefix, { config: { verb: 'metadata' } }, metadata)
    app.get(`${prefix}/ready`, { config: { verb: 'metadata' } }, modelReady)
    app.post(`${prefix}/infer`, { config: { verb: 'infer' } }, infer)
  }
}
