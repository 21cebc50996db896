// The accountant a gateway builds for its output policies (buildOutputPrivacy): the file journal
// under the state folder, or Redis when replicas share budgets; the retention computed from
// the served models' windows, the clock the gateway's.

import { Value } from '@sinclair/typebox/value'
import { defaultConfig } from '../../src/config/load.ts'
import { OutputPolicy } from '../../src/config/output-policy.ts'
import type { Policy, PolicySet } from '../../src/config/policy.ts'
import { cryptoRandom, silentLogger, type Clock } from '../../src/deps.ts'
import { buildOutputPrivacy } from '../../src/gateway/output-privacy.ts'
import type { ModelRegistry } from '../../src/inference/registry.ts'
import type { PrivacyAccountant } from '../../src/privacy/accountant.ts'
import type { SharedState } from '../../src/state/redis.ts'

export interface GatewayAccountantOptions {
  /** The state folder (and the folder the policies would come from). */
  dir: string
  clock: Clock
  /** Each model's budget window, ms; every budget is ε 1. */
  windows: Record<string, number>
  /** The models served (the others have a policy but are not in the registry). */
  served: string[]
  /** Replicas sharing budgets: this Redis client. */
  redis?: SharedState['client']
}

export async function gatewayAccountant(o: GatewayAccountantOptions): Promise<PrivacyAccountant> {
  const { config } = defaultConfig(o.dir)
  const policies: PolicySet = new Map(
    Object.entries(o.windows).map(([model, windowMs]) => [model, { output: Value.Default(OutputPolicy, { budget: { epsilon: 1, windowMs } }) } as unknown as Policy]),
  )
  const registry = { list: () => o.served.map((name) => ({ name })) } as unknown as ModelRegistry
  const sharedState = o.redis ? ({ client: o.redis } as unknown as SharedState) : null
  const built = await buildOutputPrivacy({ ...config, state: { ...config.state, directory: o.dir } }, { baseDir: o.dir, policyDir: o.dir }, {
    policies,
    registry,
    sharedState,
    clock: o.clock,
    random: cryptoRandom,
    log: silentLogger,
  })
  if (!built) throw new Error('output privacy is off in the default config')
  return built.accountant
}
