// Screening: per-model detectors compiled from each policy's `screening:` (with shared state,
// the per-caller state lives in Redis), their counters, and the three links around inference
// (src/stages/screening.ts).

import path from 'node:path'
import { ConfigError } from '../config/load.ts'
import type { PolicySet } from '../config/policy.ts'
import type { Config } from '../config/schema.ts'
import type { Clock, Logger, RandomSource } from '../deps.ts'
import type { ModelRegistry } from '../inference/registry.ts'
import { buildScreening } from '../screening/build.ts'
import { redisCooldowns } from '../screening/cooldowns.ts'
import type { SharedState } from '../state/redis.ts'
import { createScreeningLinks, type ScreeningLinks } from '../stages/screening.ts'
import { Counter, Gauge, Histogram, type GatewayMetrics, type Labels } from '../telemetry/metrics.ts'

export async function buildScreeningLinks(
  config: Config,
  where: { baseDir: string; source: string },
  deps: { policies: PolicySet; registry: ModelRegistry; sharedState: SharedState | null; clock: Clock; random: RandomSource; log: Logger; metrics: GatewayMetrics },
): Promise<ScreeningLinks | null> {
  const redis = deps.sharedState && config.state.redis
  const screening = await buildScreening(deps.policies, {
    policyDir: path.resolve(where.baseDir, config.policies.directory),
    modelsDir: path.resolve(where.baseDir, config.models.directory),
    random: deps.random,
    clock: deps.clock,
    ...(redis ? { shared: { redis: deps.sharedState!.client, ttlMs: redis.screeningStateTtlMs } } : {}),
  })
  if (screening.problems.length > 0) throw new ConfigError(where.source, screening.problems)

  const alarms = new Counter('bulwark_screening_alarms_total', 'Screening alarms, by detector, action (refused = enforce, flagged = observe) and model.')
  const scores = new Histogram('bulwark_screening_score', 'Screening scores, by detector and model (each detector has its own scale: docs/screening.md).', [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1, 1.5, 2])
  const state = new Gauge('bulwark_screening_state_entries', 'Queries held by stateful screening detectors, by detector and model.', function* () {
    for (const s of screening.models.values()) for (const d of s.detectors) if (d.memory) yield [{ detector: d.name, model: s.model }, d.memory().stored] as [Labels, number]
  })
  const skipped = new Counter('bulwark_screening_skipped_total', 'Shared screening detectors and cool-down checks skipped because Redis was unreachable (state.redis.screeningWhenUnavailable: allow), by detector and model.')
  deps.metrics.add(alarms, scores, state, skipped)

  for (const m of deps.registry.list()) if (!screening.models.has(m.name)) deps.log.warn({ model: m.name }, 'model has no screening configured (policy screening:)')
  if (screening.models.size === 0) return null
  return createScreeningLinks({
    models: screening.models,
    clock: deps.clock,
    observer: {
      scored(model, detector, result, action) {
        if (action !== 'passed') alarms.inc({ detector, action, model })
        if (detector !== 'cooldown') scores.observe({ detector, model }, result.score)
      },
      skipped: (model, detector) => skipped.inc({ detector, model }),
    },
    ...(redis ? { cooldowns: redisCooldowns(deps.sharedState!.client), whenStateUnavailable: redis.screeningWhenUnavailable } : {}),
  })
}
