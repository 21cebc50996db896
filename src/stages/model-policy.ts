// Stage: model-policy.
// Reads: ctx.target (model, verb), ctx.identity (mtls-identity), ctx.principal (jwt-auth),
//        the per-model policies (policies/<model>.yaml, src/config/policy.ts).
// Writes: nothing; it admits or refuses.
// Throws: forbidden (403) when no rule of the model's policy admits this workload and this
//         caller for this verb. Default deny: a model without a policy, a request without an
//         identity or principal, a rule that does not match in every part, all refuse. The
//         reason says which part failed closest to matching, for the operator.
//
// The policies are compiled once per generation (a reload compiles them again): per model and verb, the rules with their exact workload IDs
// in a Set, their prefixes in a list, and their required scopes and claims. A request costs a
// walk over the few rules of its model and verb.

import { BulwarkError } from '../errors.ts'
import type { PolicySet } from '../config/policy.ts'
import { fixedView, type PolicyView } from '../config/policy-store.ts'
import type { ModelVerb, RequestContext, Stage } from '../types.ts'

interface CompiledRule {
  index: number
  exact: ReadonlySet<string>
  prefixes: readonly string[]
  scopes: readonly string[]
  claims: readonly [string, readonly (string | number | boolean)[]][]
}

function compile(index: number, rule: { workloads: readonly string[]; scopes: readonly string[]; claims: Readonly<Record<string, readonly (string | number | boolean)[]>> }): CompiledRule {
  return {
    index,
    exact: new Set(rule.workloads.filter((w) => !w.endsWith('/*'))),
    prefixes: rule.workloads.filter((w) => w.endsWith('/*')).map((w) => w.slice(0, -1)),
    scopes: [...rule.scopes],
    claims: Object.entries(rule.claims),
  }
}

function workloadOk(rule: CompiledRule, id: string): boolean {
  if (rule.exact.has(id)) return true
  for (const p of rule.prefixes) if (id.startsWith(p)) return true
  return false
}

function claimOk(value: unknown, accepted: readonly (string | number | boolean)[]): boolean {
  if (Array.isArray(value)) return value.some((v) => accepted.includes(v as string))
  return accepted.includes(value as string)
}

/** Why a rule does not admit a request (operator-facing), or null when it does. */
function mismatch(rule: CompiledRule, workload: string, scopes: readonly string[], claims: Readonly<Record<string, unknown>>): string | null {
  if (!workloadOk(rule, workload)) return `workload ${workload} is not listed`
  const missing = rule.scopes.filter((s) => !scopes.includes(s))
  if (missing.length > 0) return `workload listed, but the token lacks scope(s) ${missing.join(' ')} (it has: ${scopes.join(' ').slice(0, 200) || 'none'})`
  for (const [name, accepted] of rule.claims) {
    // eslint-disable-next-line bulwark/object-injection -- read-only: name is a claim the operator's policy lists; an inherited value ("constructor") never equals an accepted scalar, so it fails closed
    if (!claimOk(claims[name], accepted)) return `workload and scopes match, but claim "${name}" is ${JSON.stringify(claims[name])?.slice(0, 80)}, not one of ${JSON.stringify(accepted)}`
  }
  return null
}

/** The rule tables of every model, per verb. */
export type ModelRules = ReadonlyMap<string, Record<ModelVerb, CompiledRule[]>>

export function compileModelRules(policies: PolicySet): ModelRules {
  const compiled = new Map<string, Record<ModelVerb, CompiledRule[]>>()
  for (const [model, policy] of policies) {
    const byVerb: Record<ModelVerb, CompiledRule[]> = { infer: [], metadata: [] }
    policy.allow.forEach((rule, i) => {
      const c = compile(i, rule)
      for (const verb of rule.verbs) byVerb[verb].push(c)
    })
    compiled.set(model, byVerb)
  }
  return compiled
}

/**
 * The stage over fixed policies, or over a view of live ones (src/config/policy-store.ts):
 * then each request is judged by the generation pinned to it.
 */
export function createModelPolicyStage(policies: PolicySet | PolicyView<ModelRules>): Stage {
  const view = policies instanceof Map ? fixedView(compileModelRules(policies)) : (policies as PolicyView<ModelRules>)
  const refuse = (reason: string) => new BulwarkError('forbidden', 'this caller may not do this on this model', { reason })

  return {
    name: 'model-policy',
    phase: 'headers',
    verbs: ['infer', 'metadata'],
    run(ctx: RequestContext) {
      const { model, verb } = ctx.target
      const rules = verb === 'server' ? undefined : view.for(ctx).get(model)?.[verb]
      const what = `${verb} on model ${JSON.stringify(model.slice(0, 64))}`
      if (rules === undefined) throw refuse(`${what}: no policy for this model (default deny); add policies/${model.slice(0, 64)}.yaml`)
      if (rules.length === 0) throw refuse(`${what}: the model's policy has no rule for this verb`)
      if (ctx.identity === null) throw refuse(`${what}: the request has no workload identity (tls is off?)`)
      if (ctx.principal === null) throw refuse(`${what}: the request has no verified token (auth is off?)`)
      const { id } = ctx.identity
      const { scopes, claims, subject } = ctx.principal
      const reasons: string[] = []
      for (const rule of rules) {
        const why = mismatch(rule, id, scopes, claims)
        if (why === null) return
        reasons.push(`rule ${rule.index}: ${why}`)
      }
      throw refuse(`${what} by ${id} / sub ${JSON.stringify(subject.slice(0, 64))}: ${reasons.join('; ')}`)
    },
  }
}
