// Output privacy: each model's output policy compiled at start, the accountant that keeps
// the budgets (a durable journal under state.directory, or Redis when replicas share
// budgets), and the output-privacy link.

import path from 'node:path'
import type { PolicySet } from '../config/policy.ts'
import type { Config } from '../config/schema.ts'
import type { Clock, Logger, RandomSource } from '../deps.ts'
import type { ModelRegistry } from '../inference/registry.ts'
import type { PrivacyAccountant } from '../privacy/accountant.ts'
import { FileAccountant } from '../privacy/file-accountant.ts'
import { RedisAccountant } from '../privacy/redis-accountant.ts'
import type { SharedState } from '../state/redis.ts'
import { compileOutputPolicy, createOutputPrivacyStage, defaultOutputPolicy, type CompiledOutputPolicy } from '../stages/output-privacy.ts'
import type { Stage } from '../types.ts'

export interface OutputPrivacy {
  link: Stage
  accountant: PrivacyAccountant & { close(): Promise<void> }
}

export async function buildOutputPrivacy(
  config: Config,
  where: { baseDir: string; policyDir: string },
  deps: { policies: PolicySet; registry: ModelRegistry; sharedState: SharedState | null; clock: Clock; random: RandomSource; log: Logger },
): Promise<OutputPrivacy | null> {
  if (!config.outputPrivacy.enabled) return null
  const { clock, random } = deps
  // Every policy is checked here, at start: a bad one stops the start, never a request.
  const fallback = compileOutputPolicy(defaultOutputPolicy)
  const compiled = new Map<string, CompiledOutputPolicy>()
  for (const [model, policy] of deps.policies) compiled.set(model, compileOutputPolicy(policy.output, path.join(where.policyDir, `${model}.yaml`)))

  // Keep charges only as long as the longest budget window in use: memory (here, or in Redis)
  // stays proportional to what the budgets allow per window, not to a week of traffic.
  // (Policies are read once at start, so no window can grow past it while the gateway runs.)
  const windows = [...deps.registry.list()].map((m) => (compiled.get(m.name) ?? fallback).budget.windowMs)
  const retentionMs = Math.max(1000, ...windows)
  const accountant = deps.sharedState
    ? new RedisAccountant({ redis: deps.sharedState.client, clock, random, retentionMs })
    : await FileAccountant.open({
        directory: path.join(path.resolve(where.baseDir, config.state.directory), 'privacy'),
        clock,
        log: deps.log,
        retentionMs,
        ...config.state.journal,
      })
  const link = createOutputPrivacyStage((model) => compiled.get(model) ?? fallback, { accountant, random })
  return { link, accountant }
}
