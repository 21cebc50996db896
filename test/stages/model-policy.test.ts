// Per-model policies: the files are checked like the config (every problem at once, with file,
// path and fix), the bundled ones admit the development identities, and the model-policy
// stage admits exactly the pairs a rule names, per verb, and nothing by default.

import t from 'tap'
import { mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { ConfigError } from '../../src/config/load.ts'
import { loadPolicies, parsePolicy, scopesFor, type PolicySet } from '../../src/config/policy.ts'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { isBulwarkError } from '../../src/errors.ts'
import { createModelPolicyStage } from '../../src/stages/model-policy.ts'
import type { Principal, Verb, WorkloadIdentity } from '../../src/types.ts'
import { fakeContext } from '../helpers/context.ts'
import { repoRoot } from '../../kit/paths.ts'

const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-policy-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))

t.test('the bundled policies load and let the development identities call the bundled models', async (t) => {
  const policies = await loadPolicies(path.join(repoRoot, 'policies'))
  t.same([...policies.keys()].sort(), ['mnist', 'ocr-cls'])
  t.same(scopesFor(policies, ['mnist', 'ocr-cls'], DEV_WORKLOAD).sort(), ['mnist:infer', 'mnist:metadata', 'ocr-cls:infer', 'ocr-cls:metadata'])
  const stage = createModelPolicyStage(policies)
  const dev = devCaller(['mnist:infer', 'mnist:metadata', 'ocr-cls:infer', 'ocr-cls:metadata'])
  for (const model of ['mnist', 'ocr-cls']) {
    for (const verb of ['infer', 'metadata'] as const) t.equal(decide(stage, model, verb, dev), 'allow', `dev may ${verb} ${model}`)
  }
})

t.test('a bad policy stops the start with every problem: file, path and fix', async (t) => {
  const bad = path.join(dir, 'bad')
  await mkdir(bad)
  await writeFile(
    path.join(bad, 'mnist.yaml'),
    [
      'model: mnist',
      'allow:',
      '  - verbs: [infer, delete]',
      '    workloads: [spiffe://Bad Domain/x, "spiffe://bulwark.local/ns/a/*"]',
      '    scopes: [mnist:infer]',
      '    color: blue',
      'rateLimit: { requestsPerWindow: 0 }',
    ].join('\n'),
  )
  await writeFile(path.join(bad, 'ocr-cls.yaml'), 'model: mnist\nallow:\n  - verbs: [infer]\n    workloads: [cn:legacy]\n')
  await writeFile(path.join(bad, 'broken.yaml'), 'model: [unclosed\n')
  const err = await loadPolicies(bad).then(
    () => null,
    (e: unknown) => e,
  )
  t.ok(err instanceof ConfigError, 'a ConfigError')
  const problems = (err as ConfigError).problems
  t.comment(problems.join('\n'))
  const has = (re: RegExp, what: string) => t.ok(problems.some((p) => re.test(p)), what)
  has(/mnist\.yaml \/allow\/0\/verbs\/1: "delete" is not allowed; use one of "infer", "metadata"/, 'a bad verb, with the choices')
  has(/mnist\.yaml \/allow\/0\/workloads\/0: .*SPIFFE ID/, 'a bad workload pattern, with what is expected')
  has(/mnist\.yaml \/allow\/0\/color: unknown key/, 'an unknown key')
  has(/mnist\.yaml \/rateLimit\/requestsPerWindow: /, 'a value out of range')
  has(/ocr-cls\.yaml \/model: "mnist" does not match the file name/, 'a policy in the wrong file')
  has(/broken\.yaml: YAML syntax/, 'a YAML syntax error')
})

t.test('a rule must name the caller, not only the workload', async (t) => {
  const { problems } = parsePolicy('model: m\nallow:\n  - verbs: [infer]\n    workloads: [cn:x]\n', 'm.yaml')
  t.match(problems.join('\n'), /m\.yaml \/allow\/0: names no scope and no claim/)
})

t.test('a workload pattern must name SPIFFE IDs the standard allows, so no prefix can be walked out of', async (t) => {
  const doc = (workloads: string[]) => `model: m\nallow:\n  - verbs: [infer]\n    scopes: [m:infer]\n    workloads: ${JSON.stringify(workloads)}\n`
  const good = ['spiffe://bulwark.local/ns/default/sa/dev', 'spiffe://bulwark.local/ns/default/*', 'spiffe://bulwark.local/*', 'cn:legacy-batch', 'cn:a/../b']
  t.same(parsePolicy(doc(good), 'm.yaml').problems, [], 'exact IDs, prefixes and CNs pass (a CN is a name, not a path)')
  const bad: [pattern: string, rule: RegExp][] = [
    ['spiffe://bulwark.local/ns/default/../../ns/evil/sa/x', /the path has a dot segment \(\.\.\)/],
    ['spiffe://bulwark.local/ns/default/../*', /the path has a dot segment \(\.\.\)/],
    ['spiffe://bulwark.local/ns/./default/*', /the path has a dot segment \(\.\)/],
    ['spiffe://bulwark.local', /names a trust domain only/],
    [`spiffe://bulwark.local/${'a'.repeat(2048)}`, /the limit is 2048/],
  ]
  for (const [pattern, rule] of bad) {
    const { policy, problems } = parsePolicy(doc(['cn:ok', pattern]), 'm.yaml')
    t.equal(policy, null, `${pattern.slice(0, 60)}: the policy is not loaded`)
    t.match(problems.join('\n'), new RegExp(`m\\.yaml /allow/0/workloads/1: .* is not a valid SPIFFE ID pattern: .*${rule.source}`), `${pattern.slice(0, 60)}: the problem names the entry and the rule`)
  }
})

t.test('a missing policy directory stops the start when authorization is on, and not otherwise', async (t) => {
  await t.rejects(loadPolicies(path.join(dir, 'nope')), /cannot read the policy directory/)
  t.equal((await loadPolicies(path.join(dir, 'nope'), { required: false })).size, 0)
})

// --- the stage ---

const rule = (o: Record<string, unknown>) => ({ verbs: ['infer'], scopes: [], claims: {}, ...o })
const policy = (model: string, allow: unknown[]) => ({ model, allow, rateLimit: { requestsPerWindow: 10, windowMs: 1000 }, screening: {}, output: {} })
const set = (...ps: ReturnType<typeof policy>[]): PolicySet => new Map(ps.map((p) => [p.model, p])) as unknown as PolicySet

function caller(id: string, scopes: string[], claims: Record<string, unknown> = {}): { identity: WorkloadIdentity; principal: Principal } {
  return {
    identity: { id, kind: id.startsWith('spiffe://') ? 'spiffe' : 'cn' },
    principal: { subject: 'alice', issuer: 'i', scopes, claims, expiresAtMs: Infinity },
  }
}
const devCaller = (scopes: string[]) => caller(DEV_WORKLOAD, scopes)

function decide(stage: ReturnType<typeof createModelPolicyStage>, model: string, verb: Verb, who: Partial<ReturnType<typeof caller>>): string {
  const ctx = fakeContext({ target: { model, verb }, identity: who.identity ?? null, principal: who.principal ?? null })
  try {
    stage.run(ctx)
    return 'allow'
  } catch (err) {
    if (isBulwarkError(err) && err.code === 'forbidden') return `deny: ${err.reason}`
    throw err
  }
}

const stage = createModelPolicyStage(
  set(
    policy('fraud', [
      rule({ verbs: ['infer', 'metadata'], workloads: ['spiffe://prod.example/ns/payments/sa/api'], scopes: ['fraud:infer'] }),
      rule({ verbs: ['metadata'], workloads: ['spiffe://prod.example/ns/payments/*'], scopes: ['fraud:read'] }),
      rule({ verbs: ['infer'], workloads: ['cn:batch-job'], scopes: ['fraud:infer'], claims: { tenant: ['acme', 'globex'], tier: [2] } }),
    ]),
    policy('closed', []),
  ),
)

const cases: { name: string; model: string; verb: Verb; who: Partial<ReturnType<typeof caller>>; expect: 'allow' | RegExp }[] = [
  { name: 'exact workload with the scope', model: 'fraud', verb: 'infer', who: caller('spiffe://prod.example/ns/payments/sa/api', ['fraud:infer']), expect: 'allow' },
  { name: 'exact workload, scope for another model', model: 'fraud', verb: 'infer', who: caller('spiffe://prod.example/ns/payments/sa/api', ['mnist:infer']), expect: /lacks scope\(s\) fraud:infer/ },
  { name: 'namespace prefix, metadata only', model: 'fraud', verb: 'metadata', who: caller('spiffe://prod.example/ns/payments/sa/ui', ['fraud:read']), expect: 'allow' },
  { name: 'namespace prefix does not grant infer', model: 'fraud', verb: 'infer', who: caller('spiffe://prod.example/ns/payments/sa/ui', ['fraud:read', 'fraud:infer']), expect: /not listed/ },
  { name: 'a prefix does not match a longer namespace name', model: 'fraud', verb: 'metadata', who: caller('spiffe://prod.example/ns/payments-evil/sa/x', ['fraud:read']), expect: /not listed/ },
  { name: 'another trust domain with the same path', model: 'fraud', verb: 'infer', who: caller('spiffe://evil.example/ns/payments/sa/api', ['fraud:infer']), expect: /not listed/ },
  { name: 'CN identity with matching claims', model: 'fraud', verb: 'infer', who: caller('cn:batch-job', ['fraud:infer'], { tenant: 'globex', tier: 2 }), expect: 'allow' },
  { name: 'a list-valued claim containing an accepted value', model: 'fraud', verb: 'infer', who: caller('cn:batch-job', ['fraud:infer'], { tenant: ['x', 'acme'], tier: 2 }), expect: 'allow' },
  { name: 'CN identity with a wrong claim', model: 'fraud', verb: 'infer', who: caller('cn:batch-job', ['fraud:infer'], { tenant: 'initech', tier: 2 }), expect: /claim "tenant"/ },
  { name: 'a claim of the wrong type', model: 'fraud', verb: 'infer', who: caller('cn:batch-job', ['fraud:infer'], { tenant: 'acme', tier: '2' }), expect: /claim "tier"/ },
  { name: 'no policy for the model', model: 'mnist', verb: 'infer', who: devCaller(['mnist:infer']), expect: /no policy for this model \(default deny\)/ },
  { name: 'a policy with no rules', model: 'closed', verb: 'infer', who: devCaller(['closed:infer']), expect: /no rule for this verb/ },
  { name: 'no workload identity (tls off)', model: 'fraud', verb: 'infer', who: { principal: caller('x', ['fraud:infer']).principal }, expect: /no workload identity/ },
  { name: 'no principal (auth off)', model: 'fraud', verb: 'infer', who: { identity: caller('spiffe://prod.example/ns/payments/sa/api', []).identity }, expect: /no verified token/ },
]

for (const c of cases) {
  t.test(`policy: ${c.name}`, async (t) => {
    const got = decide(stage, c.model, c.verb, c.who)
    if (c.expect === 'allow') t.equal(got, 'allow')
    else t.match(got, c.expect)
  })
}
