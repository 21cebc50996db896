// Per-model policy files: policies/<model>.yaml. One file per model says who may call it
// (workload identities and token scopes/claims, per verb), how often, how inputs are
// screened and how outputs are protected. Default deny: a model without a policy file is
// not callable, and a policy with no `allow` rule admits nobody.
//
// A rule admits a request when all of its parts match: the verb is listed, the workload
// identity (from the client certificate) matches one of `workloads`, the token carries every
// scope in `scopes`, and every claim in `claims` has one of the listed values. So a rule
// always names a pair: a workload and a caller.
//
//   model: mnist
//   allow:
//     - verbs: [infer, metadata]
//       workloads: [spiffe://bulwark.local/ns/default/sa/dev, spiffe://prod.example/ns/fraud/*]
//       scopes: [mnist:infer]
//       claims: { tenant: [acme] }
//   rateLimit: { requestsPerWindow: 100, windowMs: 1000 }

import { createHash } from 'node:crypto'
import { readdir, readFile } from 'node:fs/promises'
import path from 'node:path'
import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { parseDocument } from 'yaml'
import { spiffeIdProblem, workloadSpiffeIdProblem } from '../auth/spiffe-id.ts'
import { ConfigError, schemaProblems } from './load.ts'
import { OutputPolicy, outputPolicyProblems } from './output-policy.ts'
import { ScreeningPolicy } from './screening-policy.ts'

/**
 * An exact SPIFFE ID (spiffe://trust-domain/path), a SPIFFE ID prefix ending in `/*` (every ID
 * under that path, e.g. a namespace: spiffe://td/ns/payments/*), or `cn:<subject CN>` for
 * certificates without a SPIFFE ID. The schema gives the shape; workloadPatternProblem() holds
 * the SPIFFE IDs to the standard (no `.` or `..` segments, ...) as mtls-identity holds the
 * certificates', so a prefix only ever compares IDs that mean what they spell.
 */
export const WorkloadPattern = Type.String({
  pattern: '^(spiffe://[a-z0-9._-]+(/[A-Za-z0-9._-]+)*(/\\*)?|cn:\\S.*)$',
  description: 'an exact SPIFFE ID, a SPIFFE ID prefix ending in /*, or cn:<subject CN>',
  examples: ['spiffe://bulwark.local/ns/default/sa/dev', 'spiffe://bulwark.local/ns/default/*', 'cn:legacy-client'],
})

/** An OAuth 2.0 scope token (RFC 6749 section 3.3: printable ASCII except space, " and \). */
const Scope = Type.String({ pattern: '^[\\x21\\x23-\\x5B\\x5D-\\x7E]+$', description: 'a scope token', examples: ['mnist:infer'] })

const ClaimValue = Type.Union([Type.String(), Type.Number(), Type.Boolean()])

export const PolicyRule = Type.Object(
  {
    /** What the rule allows: infer (POST .../infer) and/or metadata (model metadata and readiness). */
    verbs: Type.Array(Type.Union([Type.Literal('infer'), Type.Literal('metadata')]), { minItems: 1, uniqueItems: true }),
    /** Workloads (client certificates) the rule admits; at least one. */
    workloads: Type.Array(WorkloadPattern, { minItems: 1, uniqueItems: true }),
    /** Scopes the token must carry, all of them. */
    scopes: Type.Array(Scope, { uniqueItems: true, default: [] }),
    /** Claims the token must carry: claim name -> accepted values (a list-valued claim matches if it contains one). */
    claims: Type.Record(Type.String({ pattern: '^[A-Za-z0-9_:.-]{1,64}$' }), Type.Array(ClaimValue, { minItems: 1 }), { default: {} }),
  },
  { additionalProperties: false },
)

export const PolicyRateLimit = Type.Object(
  {
    /** Requests one principal (token subject and workload) may make to this model per window. */
    requestsPerWindow: Type.Integer({ minimum: 1, maximum: 10_000_000, default: 100 }),
    /** The window, fixed (counts reset at its end). */
    windowMs: Type.Integer({ minimum: 100, maximum: 86_400_000, default: 1_000 }),
  },
  { additionalProperties: false, default: {} },
)

export const PolicySchema = Type.Object(
  {
    /** The model this policy governs; must match the file name. */
    model: Type.String({ pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$' }),
    /** Who may do what. Empty: nobody (the model is served but not callable). */
    allow: Type.Array(PolicyRule, { default: [] }),
    rateLimit: PolicyRateLimit,
    screening: ScreeningPolicy,
    output: OutputPolicy,
  },
  { additionalProperties: false },
)

export type Policy = Static<typeof PolicySchema>
export type PolicyRule = Static<typeof PolicyRule>

/** The loaded policies, by model name (read-only, frozen). */
export type PolicySet = ReadonlyMap<string, Readonly<Policy>>

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}

/**
 * Why a workload pattern names no workload a certificate can prove (null when it is fine): its
 * SPIFFE ID, or the ID before a trailing `/*`, must be one the SPIFFE-ID standard allows; an
 * exact ID must also have a path, as a workload's certificate does (X.509-SVID 3.1).
 */
export function workloadPatternProblem(pattern: string): string | null {
  if (!pattern.startsWith('spiffe://')) return null
  return pattern.endsWith('/*') ? spiffeIdProblem(pattern.slice(0, -2)) : workloadSpiffeIdProblem(pattern)
}

/** Checks the schema cannot express; each message names the path and the fix. */
function ruleProblems(policy: Policy): string[] {
  const problems: string[] = []
  policy.allow.forEach((rule, i) => {
    if (rule.scopes.length === 0 && Object.keys(rule.claims).length === 0) {
      problems.push(`/allow/${i}: names no scope and no claim, so any token would do; add scopes or claims`)
    }
    rule.workloads.forEach((w, j) => {
      const why = workloadPatternProblem(w)
      if (why !== null) problems.push(`/allow/${i}/workloads/${j}: ${JSON.stringify(w.slice(0, 200))} is not a valid SPIFFE ID pattern: ${why}; write the canonical ID (spiffe://trust-domain/segment/..., see the SPIFFE-ID standard)`)
    })
  })
  return problems
}

/** Parses and checks one policy document; `file` is used in messages and must be <model>.yaml. */
export function parsePolicy(text: string, file: string): { policy: Policy | null; problems: string[] } {
  const doc = parseDocument(text, { uniqueKeys: true })
  if (doc.errors.length > 0) return { policy: null, problems: doc.errors.map((e) => `${file}: YAML syntax: ${e.message.split('\n')[0]}`) }
  const raw: unknown = doc.toJS()
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) {
    return { policy: null, problems: [`${file} /: the file must hold a mapping with at least "model:"`] }
  }
  const value = Value.Default(PolicySchema, structuredClone(raw))
  const problems = schemaProblems(PolicySchema, value)
  if (problems.length === 0) problems.push(...ruleProblems(value as Policy), ...outputPolicyProblems((value as Policy).output))
  const expected = path.basename(file).replace(/\.ya?ml$/, '')
  const model = (value as { model?: unknown }).model
  if (typeof model === 'string' && model !== expected) problems.push(`/model: "${model}" does not match the file name; name the file ${model}.yaml or set model: ${expected}`)
  if (problems.length > 0) return { policy: null, problems: problems.map((p) => `${file} ${p}`) }
  return { policy: deepFreeze(value as Policy), problems: [] }
}

/** What a policy folder holds: its policies, every problem of every file, and a digest of its files to tell a change from a touch. */
export interface PolicyFolder {
  policies: Map<string, Readonly<Policy>>
  problems: string[]
  /** SHA-256 over the names and contents of the folder's policy and calibration files. */
  digest: string
  /** False when the folder does not exist (only tolerated when policies are not required). */
  exists: boolean
}

/** Files of a policy folder that matter: policies, and the screening calibrations they name. Hidden files (editor swap files, the kubelet's `..data`) are not policies. */
const policyFileName = (n: string) => !n.startsWith('.') && /\.(ya?ml|json)$/.test(n)

/**
 * Reads every <model>.yaml (or .yml) in `directory`, collecting every problem of every file
 * (each names the file, path and fix) rather than stopping at the first. Never throws for a
 * file's content; a folder that cannot be listed is one problem (none when it is missing and
 * `required` is false).
 */
export async function readPolicyFolder(directory: string, options: { required: boolean } = { required: true }): Promise<PolicyFolder> {
  const policies = new Map<string, Readonly<Policy>>()
  const hash = createHash('sha256')
  let names: string[]
  try {
    names = (await readdir(directory)).filter(policyFileName).sort()
  } catch (err) {
    const missing = (err as NodeJS.ErrnoException).code === 'ENOENT'
    if (!options.required && missing) return { policies, problems: [], digest: hash.digest('hex'), exists: false }
    return { policies, problems: [`${directory}: cannot read the policy directory: ${(err as Error).message}; create it or set policies.directory`], digest: hash.update('unreadable').digest('hex'), exists: !missing }
  }
  const problems: string[] = []
  for (const name of names) {
    const file = path.join(directory, name)
    let text: string
    try {
      text = await readFile(file, 'utf8')
    } catch (err) {
      // Gone since the listing, or a link left dangling by a ConfigMap swap (the kubelet removes
      // the links of deleted keys after the swap): not a policy. Anything else is a problem.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') problems.push(`${file}: cannot be read: ${(err as Error).message}`)
      continue
    }
    hash.update(name).update('\0').update(text).update('\0')
    if (!/\.ya?ml$/.test(name)) continue
    const { policy, problems: found } = parsePolicy(text, file)
    problems.push(...found)
    if (!policy) continue
    if (policies.has(policy.model)) problems.push(`${file}: a second policy for model "${policy.model}"; keep one file per model`)
    else policies.set(policy.model, policy)
  }
  return { policies, problems, digest: hash.digest('hex'), exists: true }
}

/**
 * Reads every <model>.yaml (or .yml) in `directory`. Every problem in every file is reported
 * at once, as one ConfigError naming each file, path and fix. A missing directory is an error
 * unless `required` is false (authorization off: no policies, no problem).
 */
export async function loadPolicyFolder(directory: string, options: { required: boolean } = { required: true }): Promise<PolicyFolder> {
  const folder = await readPolicyFolder(directory, options)
  if (folder.problems.length > 0) throw new ConfigError(directory, folder.problems)
  return folder
}

/** The policies of `directory` (loadPolicyFolder without the digest). */
export async function loadPolicies(directory: string, options: { required: boolean } = { required: true }): Promise<PolicySet> {
  return (await loadPolicyFolder(directory, options)).policies
}

/** Whether a workload identity matches a policy pattern (exact, or prefix for `.../*`). */
export function workloadMatches(pattern: string, id: string): boolean {
  return pattern.endsWith('/*') ? id.startsWith(pattern.slice(0, -1)) : id === pattern
}

/**
 * The scopes a workload needs to call every verb of every given model: the union, over each
 * model's policy, of the scopes of the rules that admit the workload. `bulwark token` uses it
 * for the default scopes of development tokens.
 */
export function scopesFor(policies: PolicySet, models: readonly string[], workload: string): string[] {
  const scopes = new Set<string>()
  for (const model of models) {
    for (const rule of policies.get(model)?.allow ?? []) {
      if (rule.workloads.some((w) => workloadMatches(w, workload))) for (const s of rule.scopes) scopes.add(s)
    }
  }
  return [...scopes]
}
