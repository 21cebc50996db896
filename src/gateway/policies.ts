// The policies: read at start (every problem stops the start), held as live generations
// (src/config/policy-store.ts) that the front door, output privacy and screening compile their
// views in, and, with policies.watch on, reloaded from the folder without a restart
// (src/config/policy-watch.ts), each reload counted and the folder's state shown in /readyz.

import type { Config } from '../config/schema.ts'
import { loadPolicyFolder } from '../config/policy.ts'
import { LivePolicies } from '../config/policy-store.ts'
import { PolicyWatcher, type PolicyStatus } from '../config/policy-watch.ts'
import type { Clock, Logger } from '../deps.ts'
import { Counter, Gauge, type GatewayMetrics } from '../telemetry/metrics.ts'

export interface Policies {
  live: LivePolicies
  /** Starts the reloads (when policies.watch is on and the folder exists). */
  watch(deps: { clock: Clock; log: Logger; metrics: GatewayMetrics }): PolicyWatcher | null
  /** For the /readyz body: whether the served policies are the folder's, and why not. */
  status(): PolicyStatus
}

export async function buildPolicies(config: Config, policyDir: string): Promise<Policies> {
  const folder = await loadPolicyFolder(policyDir, { required: config.authorization.enabled })
  const live = new LivePolicies(folder.policies)
  let watcher: PolicyWatcher | null = null
  return {
    live,
    watch({ clock, log, metrics }) {
      const reloads = new Counter('bulwark_policy_reloads_total', 'Changes of the policy folder, by outcome (applied; failed = refused, the policies in force stay: the log names file, path and fix).')
      const stale = new Gauge('bulwark_policy_stale', 'Whether the policy folder holds a change that was refused (1: the served policies are older than the folder\'s; /readyz says why), else 0.', () => [[{}, watcher?.status().state === 'stale' ? 1 : 0]])
      const generation = new Gauge('bulwark_policy_generation', 'The generation of policies in force: 1 at start, one more for each applied reload.', () => [[{}, live.generation]])
      metrics.add(reloads, stale, generation)
      if (!config.policies.watch || !folder.exists) return null
      watcher = new PolicyWatcher(
        { directory: policyDir, intervalMs: config.policies.reloadCheckIntervalMs, digest: folder.digest, required: config.authorization.enabled },
        { live, clock, log, onReload: (outcome) => reloads.inc({ outcome }) },
      )
      watcher.start()
      return watcher
    },
    status: () => watcher?.status() ?? { state: 'current', generation: live.generation, problems: [] },
  }
}
