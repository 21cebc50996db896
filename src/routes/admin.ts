// The admin listener: liveness, readiness and metrics for kubelet and Prometheus. It is a
// separate listener with no client-certificate requirement and no model routes, and it is
// never shed: load shedding only counts requests on the API listener.
//
// Two ways to serve it, with the same answers: these Fastify routes on the gateway's event
// loop (tests inject into them), or, in `bulwark serve` by default, a thread of its own
// (src/gateway/admin-thread.ts) so probes are answered promptly while the API's event loop is
// saturated or pausing for garbage collection; that thread serves the readiness computed here.

import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { ModelRegistry } from '../inference/registry.ts'
import type { GatewayMetrics } from '../telemetry/metrics.ts'
import type { RepositoryAnswer, RepositoryRequest } from './repository-api.ts'

export interface AdminDeps {
  registry: ModelRegistry
  metrics: GatewayMetrics
  isShuttingDown: () => boolean
  /** Extra readiness checks added by later parts (audit log, shared state, upstreams); name -> problem or null. */
  readinessChecks: (() => { name: string; problem: string | null })[]
  /** More state for operators in the /readyz body (upstream breakers); never decides readiness. */
  details?: () => Record<string, unknown>
  /** The model repository extension (models.repositoryApi; src/routes/repository-api.ts), when on. */
  repository?: ((req: RepositoryRequest) => Promise<RepositoryAnswer>) | undefined
}

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

/** The /readyz answer: 200 when every model is ready, every check passes and no shutdown is under way; else 503. */
export function readiness(deps: AdminDeps): { status: number; body: Record<string, unknown> } {
  const models = Object.fromEntries(deps.registry.list().map((m) => [m.name, m.state === 'ready' ? 'ready' : `${m.state}: ${m.reason ?? ''}`]))
  const checks = deps.readinessChecks.map((c) => c())
  const problems = checks.filter((c) => c.problem !== null)
  const ready = deps.registry.allReady() && problems.length === 0 && !deps.isShuttingDown()
  return {
    status: ready ? 200 : 503,
    body: {
      ready,
      shuttingDown: deps.isShuttingDown(),
      models,
      checks: Object.fromEntries(checks.map((c) => [c.name, c.problem ?? 'ok'])),
      ...deps.details?.(),
    },
  }
}

export function registerAdminRoutes(app: FastifyInstance, deps: AdminDeps): void {
  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/readyz', async (_req, reply) => {
    const r = readiness(deps)
    return reply.code(r.status).send(r.body)
  })
  // The OpenTelemetry metrics in the Prometheus text format (src/telemetry/metrics.ts).
  app.get('/metrics', async (_req, reply) => reply.type(PROMETHEUS_CONTENT_TYPE).send(await deps.metrics.render()))
  const repository = deps.repository
  if (repository) {
    const handle = async (req: FastifyRequest, reply: FastifyReply) => {
      const body = req.body === undefined ? '' : typeof req.body === 'string' ? req.body : JSON.stringify(req.body)
      const auth = req.headers.authorization
      const r = await repository({ method: req.method, path: req.url.split('?')[0]!, authorization: typeof auth === 'string' ? auth : undefined, body })
      return reply.code(r.status).send(r.body)
    }
    app.post('/v2/repository/index', handle)
    app.post('/v2/repository/models/:name/:action', handle)
  }
}
