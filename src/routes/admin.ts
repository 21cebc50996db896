// The admin listener: liveness, readiness and metrics for kubelet and Prometheus. It is a
// separate listener with no client-certificate requirement and no model routes, and it is
// never shed: load shedding only counts requests on the API listener.

import type { FastifyInstance } from 'fastify'
import type { ModelRegistry } from '../inference/registry.ts'
import type { GatewayMetrics } from '../metrics.ts'

export interface AdminDeps {
  registry: ModelRegistry
  metrics: GatewayMetrics
  isShuttingDown: () => boolean
  /** Extra readiness checks added by later parts (audit log, shared state, upstreams); name -> problem or null. */
  readinessChecks: (() => { name: string; problem: string | null })[]
  /** More state for operators in the /readyz body (upstream breakers); never decides readiness. */
  details?: () => Record<string, unknown>
}

export function registerAdminRoutes(app: FastifyInstance, deps: AdminDeps): void {
  app.get('/healthz', async () => ({ status: 'ok' }))
  app.get('/readyz', async (_req, reply) => {
    const models = Object.fromEntries(deps.registry.list().map((m) => [m.name, m.state === 'ready' ? 'ready' : `${m.state}: ${m.reason ?? ''}`]))
    const checks = deps.readinessChecks.map((c) => c())
    const problems = checks.filter((c) => c.problem !== null)
    const ready = deps.registry.allReady() && problems.length === 0 && !deps.isShuttingDown()
    return reply.code(ready ? 200 : 503).send({
      ready,
      shuttingDown: deps.isShuttingDown(),
      models,
      checks: Object.fromEntries(checks.map((c) => [c.name, c.problem ?? 'ok'])),
      ...deps.details?.(),
    })
  })
  // The OpenTelemetry metrics in the Prometheus text format (src/metrics.ts).
  app.get('/metrics', async (_req, reply) => reply.type('text/plain; version=0.0.4; charset=utf-8').send(await deps.metrics.render()))
}
