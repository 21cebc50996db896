// Output privacy: each model's output policy compiled at start (checked against the model's
// outputs where it passes some through), the accountant that keeps the budgets (a durable
// journal under state.directory, or Redis when replicas share budgets), and the two links
// either side of screen-output: privacy-charge and output-privacy.

import path from 'node:path'
import { passedBesideProtected } from '../config/output-policy.ts'
import type { PolicySet } from '../config/policy.ts'
import type { Config } from '../config/schema.ts'
import type { Clock, Logger, RandomSource } from '../deps.ts'
import { readManifest } from '../inference/manifest.ts'
import type { ModelRegistry } from '../inference/registry.ts'
import type { PrivacyAccountant } from '../privacy/accountant.ts'
import { FileAccountant } from '../privacy/file-accountant.ts'
import { RedisAccountant } from '../privacy/redis-accountant.ts'
import type { SharedState } from '../state/redis.ts'
import {
  compileOutputPolicy,
  createOutputPrivacyLinks,
  defaultOutputPolicy,
  type CompiledOutputPolicy,
  type CompiledPolicySource,
  type OutputPrivacyLinks,
} from '../stages/output-privacy.ts'

export interface OutputPrivacy {
  links: OutputPrivacyLinks
  /** Each model's compiled policy (screening checks that what it reads is paid for). */
  policies: CompiledPolicySource
  accountant: PrivacyAccountant & { close(): Promise<void> }
}

/** A served model's output names, from its manifest; null when it cannot be read (the registry then refuses to serve it). */
async function outputNames(modelsDir: string, model: string): Promise<string[] | null> {
  try {
    return (await readManifest(path.join(modelsDir, model, 'manifest.json'))).outputs.map((o) => o.name)
  } catch {
    return null
  }
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
  const served = new Set([...deps.registry.list()].map((m) => m.name))
  const modelsDir = path.resolve(where.baseDir, config.models.directory)
  for (const [model, policy] of deps.policies) {
    // Passing outputs through is judged against the outputs the model really has.
    const outputs = served.has(model) && policy.output.passThrough.length > 0 ? await outputNames(modelsDir, model) : null
    compiled.set(model, compileOutputPolicy(policy.output, path.join(where.policyDir, `${model}.yaml`), outputs ?? undefined))
    const beside = outputs && passedBesideProtected(policy.output, outputs)
    if (beside) {
      deps.log.warn(
        { model, passThrough: beside.passed, protected: beside.protected, reason: policy.output.passThroughReason },
        'outputs pass through beside a protected one: the privacy guarantee does not cover this model (output.passThroughReason)',
      )
    }
  }

  // Keep charges as long as the longest budget window in use: memory (here, or in Redis)
  // stays proportional to what the budgets allow per window, not to a week of traffic.
  // (Policies are read once at start, so no window can grow past it while the gateway runs.)
  // This is a floor: the accountants keep each charge for the window it was made under, so a
  // window shortened or a model removed since does not drop charges that still count.
  const windows = [...deps.registry.list()].map((m) => (compiled.get(m.name) ?? fallback).budget.windowMs)
  const retentionMs = Math.max(1000, ...windows)
  // Not this replica's clock: replicas sharing budgets share the Redis server's.
  const accountant = deps.sharedState
    ? new RedisAccountant({ redis: deps.sharedState.client, random, retentionMs })
    : await FileAccountant.open({
        directory: path.join(path.resolve(where.baseDir, config.state.directory), 'privacy'),
        clock,
        log: deps.log,
        retentionMs,
        ...config.state.journal,
      })
  const policies: CompiledPolicySource = (model) => compiled.get(model) ?? fallback
  return { links: createOutputPrivacyLinks(policies, { accountant, random }), policies, accountant }
}
