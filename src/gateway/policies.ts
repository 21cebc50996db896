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
  /**
   * Compiles the policies in force again, against the models as they are now served (a model
   * loaded, replaced or unloaded: screening and output policies are checked against manifests).
   * When they no longer compile, the generation in force stays and the policies are stale
   * until a change of the folder or of the models makes them compile.
   */
  recompile(log: Logger, why: string): Promise<void>
}

export async function buildPolicies(config: Config, policyDir: string): Promise<Policies> {
  const folder = await loadPolicyFolder(policyDir, { required: config.authorization.enabled })
  const live = new LivePolicies(folder.policies)
  let watcher: PolicyWatcher | null = null
  /** Why the policies in force no longer compile against the models served (empty: they do). */
  let modelProblems: string[] = []
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
        {
          live,
          clock,
          log,
          onReload(outcome) {
            reloads.inc({ outcome })
            if (outcome === 'applied') modelProblems = [] // compiled against the models served now
          },
        },
      )
      watcher.start()
      return watcher
    },
    status() {
      const s = watcher?.status() ?? { state: 'current', generation: live.generation, problems: [] }
      return modelProblems.length === 0 ? s : { state: 'stale', generation: s.generation, problems: [...s.problems, ...modelProblems] }
    },
    async recompile(log, why) {
      const problems = await live.propose(live.policies)
      modelProblems = problems
      if (problems.length > 0) log.error({ why, problems, generation: live.generation }, 'the policies in force no longer compile against the models served; they stay as they were until fixed')
      else log.info({ why, generation: live.generation }, 'policies compiled again for the models served')
    },
  }
}
