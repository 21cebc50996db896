// Screening: per-model detectors compiled from each policy's `screening:` (with shared state,
// the per-caller state lives in Redis), their counters, and the three links around inference
// (src/stages/screening.ts). Where the model's answers carry noise, the start also checks that
// what screening reads after inference can be paid for (docs/privacy.md).

import path from 'node:path'
import { ConfigError } from '../config/load.ts'
import type { PolicySet } from '../config/policy.ts'
import { LivePolicies, type PolicyView } from '../config/policy-store.ts'
import type { Config } from '../config/schema.ts'
import type { Clock, Logger, RandomSource } from '../deps.ts'
import type { ModelRegistry } from '../inference/registry.ts'
import { costFits } from '../privacy/accountant.ts'
import { buildScreening, type ModelScreening } from '../screening/build.ts'
import { redisCooldowns } from '../screening/cooldowns.ts'
import type { SharedState } from '../state/redis.ts'
import { requestCost, type CompiledOutputPolicy, type CompiledPolicySource } from '../stages/output-privacy.ts'
import { createScreeningLinks, paidVerdicts, type ScreeningLinks } from '../stages/screening.ts'
import { Counter, Gauge, Histogram, type GatewayMetrics, type Labels } from '../telemetry/metrics.ts'

/**
 * What stops a model's screening from being paid for by its output policy, when its answers
 * carry noise: the output the detectors read must be one privacy-charge noises and charges,
 * and a one-item request with its screening verdicts must fit in the budget.
 */
export function screeningPrivacyProblems(s: ModelScreening, c: CompiledOutputPolicy): string[] {
  if (!c.noise || !s.needsModel) return []
  const problems: string[] = []
  if (!c.protect.has(s.outputName)) {
    problems.push(
      `/screening/output: screening reads output "${s.outputName}" after inference, and /output/outputs does not protect it; with noise on, its verdicts would answer from un-noised scores. Protect "${s.outputName}" or screen a protected output`,
    )
  }
  const verdicts = paidVerdicts(s)
  const cost = requestCost(c, 1, verdicts)
  if (!costFits(cost, c.budget)) {
    problems.push(
      `/output/budget/epsilon: a one-item request costs one answer and ${verdicts} screening verdicts (${JSON.stringify(cost)}), more than the whole budget; no screened request could be answered. Raise the budget or lower /output/noise/epsilon`,
    )
  }
  return problems
}

export async function buildScreeningLinks(
  config: Config,
  where: { baseDir: string; source: string },
  deps: {
    policies: PolicySet | LivePolicies
    registry: ModelRegistry
    sharedState: SharedState | null
    clock: Clock
    random: RandomSource
    log: Logger
    metrics: GatewayMetrics
    /** The compiled output policies, when output privacy is on. */
    outputPolicies?: CompiledPolicySource | undefined
    /** With live policies: the view the output policies are compiled in, and the policy of a model without one. */
    outputView?: { view: PolicyView<ReadonlyMap<string, CompiledOutputPolicy>>; fallback: CompiledOutputPolicy } | undefined
  },
): Promise<ScreeningLinks | null> {
  const redis = deps.sharedState && config.state.redis
  const policyDir = path.resolve(where.baseDir, config.policies.directory)
  const sources = {
    policyDir,
    modelsDir: path.resolve(where.baseDir, config.models.directory),
    random: deps.random,
    clock: deps.clock,
    ...(redis ? { shared: { redis: deps.sharedState!.client, ttlMs: redis.screeningStateTtlMs } } : {}),
  }
  const live = deps.policies instanceof LivePolicies ? deps.policies : null
  // At start the problems name the configuration; at a reload, the policy folder.
  const compile = async (policies: PolicySet, previous: ReadonlyMap<string, ModelScreening> | undefined, outputFor: ((model: string) => CompiledOutputPolicy) | null, source: string) => {
    const screening = await buildScreening(policies, sources, previous)
    for (const s of outputFor ? screening.models.values() : []) {
      for (const problem of screeningPrivacyProblems(s, outputFor!(s.model))) screening.problems.push(`${path.join(policyDir, `${s.model}.yaml`)} ${problem}`)
    }
    if (screening.problems.length > 0) throw new ConfigError(source, screening.problems)
    return screening.models
  }
  const outputs = deps.outputPolicies
  let models: ReadonlyMap<string, ModelScreening> | ((request: object) => ReadonlyMap<string, ModelScreening>)
  let current: () => ReadonlyMap<string, ModelScreening>
  if (live) {
    // The output policies of the same proposal: its screening must be paid for by them.
    const out = deps.outputView
    const view = await live.view<ReadonlyMap<string, ModelScreening>>((policies, previous, peer) => {
      const paid = out ? peer(out.view) : undefined
      // (When the output policies of this proposal failed, the proposal fails with their problems.)
      return compile(policies, previous, paid ? (model) => paid.get(model) ?? out!.fallback : null, previous ? policyDir : where.source)
    })
    models = (request) => view.for(request)
    current = () => view.now()
  } else {
    const fixed = await compile(deps.policies as PolicySet, undefined, outputs ?? null, where.source)
    models = fixed
    current = () => fixed
  }

  const alarms = new Counter('bulwark_screening_alarms_total', 'Screening alarms, by detector, action (refused = enforce, flagged = observe; degraded / delayed = enforce under screening.onAlarm degrade / delay) and model.')
  const scores = new Histogram('bulwark_screening_score', 'Screening scores, by detector and model (each detector has its own scale: docs/screening.md).', [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 1, 1.5, 2])
  const state = new Gauge('bulwark_screening_state_entries', 'Queries held by stateful screening detectors, by detector and model.', function* () {
    for (const s of current().values()) for (const d of s.detectors) if (d.memory) yield [{ detector: d.name, model: s.model }, d.memory().stored] as [Labels, number]
  })
  const skipped = new Counter('bulwark_screening_skipped_total', 'Shared screening detectors and cool-down checks skipped because Redis was unreachable (state.redis.screeningWhenUnavailable: allow), by detector and model.')
  deps.metrics.add(alarms, scores, state, skipped)

  for (const m of deps.registry.list()) if (!current().has(m.name)) deps.log.warn({ model: m.name }, 'model has no screening configured (policy screening:)')
  // With live policies the links stay in the chain: a reload may screen a model later.
  if (!live && current().size === 0) return null
  return createScreeningLinks({
    models,
    clock: deps.clock,
    random: deps.random,
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
