// Output privacy: each model's output policy compiled at start (checked against the model's
// outputs where it passes some through), the accountant that keeps the budgets (a durable
// journal under state.directory, or Redis when replicas share budgets), and the two links
// either side of screen-output: privacy-charge and output-privacy.

import path from 'node:path'
import { passedBesideProtected } from '../config/output-policy.ts'
import { ConfigError } from '../config/load.ts'
import type { PolicySet } from '../config/policy.ts'
import { LivePolicies, type PolicyView } from '../config/policy-store.ts'
import type { Config } from '../config/schema.ts'
import type { Clock, Logger, RandomSource } from '../deps.ts'
import { readManifest } from '../inference/manifest.ts'
import { modelManifestPath } from '../inference/model-versions.ts'
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
  /** The view the output policies are compiled in (screening reads a proposal's), and the policy of a model without one. */
  view: PolicyView<ReadonlyMap<string, CompiledOutputPolicy>>
  fallback: CompiledOutputPolicy
}

/** A served model's output names, from its manifest; null when it cannot be read (the registry then refuses to serve it). */
async function outputNames(modelsDir: string, model: string): Promise<string[] | null> {
  try {
    return (await readManifest(await modelManifestPath(modelsDir, model))).outputs.map((o) => o.name)
  } catch {
    return null
  }
}

/** Compiles every policy's output section; throws a ConfigError listing every problem. */
async function compileAll(
  policies: PolicySet,
  where: { policyDir: string; modelsDir: string; served: ReadonlySet<string>; retentionMs: number },
  log: Logger,
): Promise<Map<string, CompiledOutputPolicy>> {
  const compiled = new Map<string, CompiledOutputPolicy>()
  const problems: string[] = []
  for (const [model, policy] of policies) {
    const file = path.join(where.policyDir, `${model}.yaml`)
    try {
      // Passing outputs through is judged against the outputs the model really has.
      const outputs = where.served.has(model) && policy.output.passThrough.length > 0 ? await outputNames(where.modelsDir, model) : null
      const c = compileOutputPolicy(policy.output, file, outputs ?? undefined)
      // Charges are kept for the retention the accountant opened with: a longer window could not see them all.
      if (where.served.has(model) && c.budget.windowMs > where.retentionMs) {
        problems.push(`${file} /output/budget/windowMs: ${c.budget.windowMs} is longer than the ${where.retentionMs} ms the running gateway keeps charges for; restart the gateway to lengthen a budget window past the longest it started with`)
        continue
      }
      compiled.set(model, c)
      const beside = outputs && passedBesideProtected(policy.output, outputs)
      if (beside) {
        log.warn(
          { model, passThrough: beside.passed, protected: beside.protected, reason: policy.output.passThroughReason },
          'outputs pass through beside a protected one: the privacy guarantee does not cover this model (output.passThroughReason)',
        )
      }
    } catch (err) {
      if (err instanceof ConfigError) problems.push(...err.problems.map((p) => `${file} ${p}`))
      else problems.push(`${file} /output: ${(err as Error).message}`)
    }
  }
  if (problems.length > 0) throw new ConfigError(where.policyDir, problems)
  return compiled
}

export async function buildOutputPrivacy(
  config: Config,
  where: { baseDir: string; policyDir: string },
  deps: { policies: PolicySet | LivePolicies; registry: ModelRegistry; sharedState: SharedState | null; clock: Clock; random: RandomSource; log: Logger },
): Promise<OutputPrivacy | null> {
  if (!config.outputPrivacy.enabled) return null
  const { clock, random } = deps
  const live = deps.policies instanceof LivePolicies ? deps.policies : new LivePolicies(deps.policies)
  // Every policy is checked here, at start: a bad one stops the start, never a request.
  const fallback = compileOutputPolicy(defaultOutputPolicy)
  const served = new Set([...deps.registry.list()].map((m) => m.name))
  const modelsDir = path.resolve(where.baseDir, config.models.directory)
  const initial = await compileAll(live.policies, { policyDir: where.policyDir, modelsDir, served, retentionMs: Infinity }, deps.log)

  // Keep charges as long as the longest budget window in use at start: memory (here, or in
  // Redis) stays proportional to what the budgets allow per window, not to a week of traffic.
  // A reload may shorten a window, never lengthen one past this (compileAll refuses it). This
  // is a floor: the accountants keep each charge for the window it was made under, so a window
  // shortened or a model removed since does not drop charges that still count.
  const windows = [...deps.registry.list()].map((m) => (initial.get(m.name) ?? fallback).budget.windowMs)
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
  let first: Map<string, CompiledOutputPolicy> | null = initial
  const view = await live.view<ReadonlyMap<string, CompiledOutputPolicy>>((policies) => {
    if (first) {
      const c = first
      first = null
      return c
    }
    return compileAll(policies, { policyDir: where.policyDir, modelsDir, served, retentionMs }, deps.log)
  })
  const policies: CompiledPolicySource = (model, request) => (request ? view.for(request) : view.now()).get(model) ?? fallback
  return { links: createOutputPrivacyLinks(policies, { accountant, random }), policies, accountant, view, fallback }
}
