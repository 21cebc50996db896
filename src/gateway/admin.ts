// The admin listener: liveness, readiness and the Prometheus scrape, apart from the API so
// that kubelet probes need no client certificate. On its own thread by default
// (loadShedding.isolateAdmin), so probes are answered even when the API's event loop is busy.

import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify'
import type { AddressInfo } from 'node:net'
import type { Config } from '../config/schema.ts'
import type { Logger, RandomSource } from '../deps.ts'
import type { ModelRegistry } from '../inference/registry.ts'
import { readiness, registerAdminRoutes, type AdminDeps } from '../routes/admin.ts'
import { AdminThread } from './admin-thread.ts'
import type { GatewayMetrics } from '../telemetry/metrics.ts'

export type ReadinessCheck = AdminDeps['readinessChecks'][number]

export interface AdminListener {
  /** The admin routes on this event loop (tests inject into it; `serve` listens on it when not isolated). */
  readonly app: FastifyInstance
  serve(listen: { host: string; port: number }): Promise<AddressInfo>
  close(): Promise<void>
}

export function buildAdmin(
  config: Config,
  deps: { logger: FastifyBaseLogger; log: Logger; random: RandomSource; registry: ModelRegistry; metrics: GatewayMetrics; isShuttingDown: () => boolean; readinessChecks: ReadinessCheck[]; details?: () => Record<string, unknown>; repository?: AdminDeps['repository'] },
): AdminListener {
  const { registry, metrics } = deps
  const app = Fastify({
    loggerInstance: deps.logger,
    logController: new LogController({ disableRequestLogging: true }),
    genReqId: () => deps.random.uuid(),
  })
  const adminDeps: AdminDeps = {
    registry,
    metrics,
    isShuttingDown: deps.isShuttingDown,
    readinessChecks: deps.readinessChecks,
    details: () => ({ upstreams: Object.fromEntries(registry.upstreams().map((u) => [u.model, u.backend.status()])), ...deps.details?.() }),
    repository: deps.repository,
  }
  registerAdminRoutes(app, adminDeps)
  let thread: AdminThread | null = null
  return {
    app,
    async serve(listen) {
      if (!config.loadShedding.isolateAdmin) {
        await app.listen(listen)
        return app.server.address() as AddressInfo
      }
      thread = await AdminThread.start({
        ...listen,
        readiness: () => readiness(adminDeps),
        metrics: () => metrics.render(),
        repository: deps.repository,
        log: deps.log,
        livenessTimeoutMs: config.loadShedding.livenessTimeoutMs,
      })
      return thread.address
    },
    async close() {
      await thread?.close()
      await app.close()
    },
  }
}
