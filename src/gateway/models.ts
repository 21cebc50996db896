// The models: the registry (in-process ONNX sessions behind dynamic batchers, or upstream
// model pods behind circuit breakers), the transport-neutral inference service, and the
// counters of the upstream calls, and the model folder's poll (models.poll).

import type { Tracer } from '@opentelemetry/api'
import type { Config } from '../config/schema.ts'
import type { Clock, Logger, RandomSource } from '../deps.ts'
import path from 'node:path'
import { ModelRegistry } from '../inference/registry.ts'
import { ModelRepositoryPoller } from '../inference/repository-poll.ts'
import type { AdminDeps } from '../routes/admin.ts'
import { createRepositoryApi } from '../routes/repository-api.ts'
import type { Principal } from '../types.ts'
import { InferenceService } from '../inference/service.ts'
import type { ModelStatistics } from '../oip/stats.ts'
import { Counter, Gauge, Histogram, type GatewayMetrics, type Labels } from '../telemetry/metrics.ts'

export interface Models {
  registry: ModelRegistry
  service: InferenceService
  /** The model folder's poll (models.poll); null when off. */
  poller: ModelRepositoryPoller | null
  /** Loads the models (and, polling, every folder found), then starts the poll. */
  load(): Promise<void>
  close(): void
}

export function buildModels(
  config: Config['models'],
  baseDir: string,
  deps: { clock: Clock; log: Logger; random: RandomSource; metrics: GatewayMetrics; tracer: Tracer; statistics?: ModelStatistics; onChange?: (model: string) => void },
): Models {
  let registry: ModelRegistry | null = null
  const upstreams = () => registry?.upstreams() ?? []
  const calls = new Counter('bulwark_upstream_calls_total', 'Calls to upstream model endpoints, by model, endpoint and outcome (ok, failed: counted by the breaker, refused: the upstream refused the request, deadline: the client\'s deadline ran out).')
  const seconds = new Histogram('bulwark_upstream_call_duration_seconds', 'Duration of calls to upstream model endpoints, by model and endpoint.', [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
  const retries = new Counter('bulwark_upstream_retries_total', 'Calls retried on another endpoint (or the same one) after the connection failed before the request was sent, by model and endpoint.')
  const transitions = new Counter('bulwark_upstream_breaker_transitions_total', 'Circuit breaker state changes of each upstream endpoint, by the state entered (open, half-open, closed); flapping shows here even between scrapes.')
  const breakerState = new Gauge('bulwark_upstream_breaker_state', 'Circuit breaker of each upstream endpoint: 1 for its current state (closed, open, half-open), 0 for the others.', function* () {
    for (const u of upstreams()) {
      for (const e of u.backend.status()) for (const state of ['closed', 'open', 'half-open']) yield [{ model: u.model, endpoint: e.endpoint, state }, e.state === state ? 1 : 0] as [Labels, number]
    }
  })
  const outstanding = new Gauge('bulwark_upstream_outstanding_calls', 'Calls in flight to each upstream endpoint.', function* () {
    for (const u of upstreams()) for (const e of u.backend.status()) yield [{ model: u.model, endpoint: e.endpoint }, e.outstanding] as [Labels, number]
  })
  const tlsReloads = new Counter('bulwark_upstream_tls_reloads_total', 'Changes of the upstream TLS certificate, key or CA files on disk, by model and outcome (changed = new calls use them, failed = kept the old ones).')
  deps.metrics.add(calls, seconds, retries, transitions, breakerState, outstanding, tlsReloads)

  registry = new ModelRegistry(config, baseDir, {
    clock: deps.clock,
    log: deps.log,
    random: deps.random,
    tracer: deps.tracer,
    onBatch: (model, items) => deps.metrics.batchSize.observe({ model }, items),
    ...(deps.onChange ? { onChange: deps.onChange } : {}),
    onExecuted: (model, times, version) => deps.statistics?.executed(model, times, version),
    upstreamObserver: {
      call(model, endpoint, outcome, s) {
        calls.inc({ model, endpoint, outcome })
        seconds.observe({ model, endpoint }, s)
      },
      retry: (model, endpoint) => retries.inc({ model, endpoint }),
      breaker: (model, endpoint, state) => transitions.inc({ model, endpoint, state }),
      tlsReload: (model, outcome) => tlsReloads.inc({ model, outcome }),
    },
  })
  const polls = new Counter('bulwark_model_polls_total', 'Changes of the model folder acted on (models.poll), by model and action (loaded, replaced, unloaded; failed: the version served stays).')
  deps.metrics.add(polls)
  const poll = config.poll
  const poller = poll.enabled
    ? new ModelRepositoryPoller(path.resolve(baseDir, config.directory), poll.intervalMs, { registry, clock: deps.clock, log: deps.log, onAction: (model, action) => polls.inc({ model, action }) })
    : null
  const loaded = registry
  return {
    registry,
    service: new InferenceService(registry),
    poller,
    async load() {
      await poller?.baseline()
      await loaded.load()
      await poller?.poll()
      poller?.start()
    },
    close: () => poller?.close(),
  }
}

/** What stops the model controls from being used as configured (empty = fine), phrased as fixes. */
export function modelControlProblems(config: Pick<Config, 'models' | 'auth'>): string[] {
  const problems: string[] = []
  if (config.models.repositoryApi.enabled && !config.auth.enabled) problems.push('/models/repositoryApi/enabled: the repository API checks a bearer token, and auth is off; turn auth on or the API off')
  if (config.models.repositoryApi.enabled && config.models.poll.enabled) problems.push('/models/repositoryApi/enabled: with /models/poll/enabled on, the next poll would undo an explicit load or unload (as in Triton, poll and explicit control exclude each other); turn one off')
  return problems
}

/** The repository API's handler (models.repositoryApi), or undefined when it is off. */
export function repositoryHandler(config: Config['models'], baseDir: string, deps: { registry: ModelRegistry; verifyToken: ((authorization: string | undefined) => Promise<Principal>) | null; log: Logger }): AdminDeps['repository'] {
  if (!config.repositoryApi.enabled || !deps.verifyToken) return undefined
  return createRepositoryApi({ registry: deps.registry, directory: path.resolve(baseDir, config.directory), verify: deps.verifyToken, scope: config.repositoryApi.scope, log: deps.log })
}
