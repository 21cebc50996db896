// Replicas that share nothing must not multiply budgets. Without state.redis each gateway
// process keeps its own privacy budgets, so with output privacy on, a configuration that says
// more than one replica runs (state.maxReplicas), or a StatefulSet pod that is not the first
// (BULWARK_REPLICA_INDEX, from its pod-index label), stops the start with the fix: in the
// check itself, in buildGateway, and in `bulwark serve` as a pod runs it.

import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { stringify } from 'yaml'
import { buildConfig, ConfigError } from '../../src/config/load.ts'
import { replicaProblems } from '../../src/config/scaleout.ts'
import { realDeps } from '../../src/deps.ts'
import { buildGateway } from '../../src/server.ts'
import { repoRoot } from '../../kit/paths.ts'

const REDIS = { url: 'redis://redis.bulwark.svc:6379/0' }
const config = (raw: Record<string, unknown>) => buildConfig(raw, 'bulwark.yaml')

t.test('the check: who may run as more than one process, and who may not', async (t) => {
  const cases: { name: string; raw: Record<string, unknown>; index?: string; refused: RegExp | null }[] = [
    { name: 'the default: one process', raw: {}, refused: null },
    { name: 'one process, said so', raw: { state: { maxReplicas: 1 } }, refused: null },
    { name: 'two processes, no shared state', raw: { state: { maxReplicas: 2 } }, refused: /^\/state\/maxReplicas: 2 replicas without state\.redis .* could spend 2 budgets; set state\.redis .* or run one replica and set state\.maxReplicas: 1$/ },
    { name: 'eleven processes sharing Redis', raw: { state: { maxReplicas: 11, redis: REDIS } }, refused: null },
    { name: 'many processes, output privacy off (no budgets to multiply)', raw: { state: { maxReplicas: 10 }, outputPrivacy: { enabled: false } }, refused: null },
    { name: 'StatefulSet pod 0', raw: {}, index: '0', refused: null },
    { name: 'StatefulSet pod 1, no shared state', raw: {}, index: '1', refused: /^BULWARK_REPLICA_INDEX: this pod is number 1 of its StatefulSet \(from 0\), so at least 2 replicas run, .*kubectl scale statefulset NAME --replicas=1.* state\.redis/ },
    { name: 'StatefulSet pod 3 sharing Redis', raw: { state: { redis: REDIS } }, index: '3', refused: null },
    { name: 'a pod without the pod-index label (a Deployment\'s): not known', raw: {}, index: '', refused: null },
    { name: 'not an ordinal', raw: { state: { redis: REDIS } }, index: 'inference-1', refused: /^BULWARK_REPLICA_INDEX: "inference-1" is not a pod ordinal; set it from the pod's apps\.kubernetes\.io\/pod-index label/ },
    { name: 'a negative ordinal', raw: {}, index: '-1', refused: /is not a pod ordinal/ },
  ]
  for (const c of cases) {
    const problems = replicaProblems(config(c.raw), { replicaIndex: c.index })
    if (c.refused) t.match(problems, [c.refused], `${c.name}: refused, naming the fix`)
    else t.same(problems, [], `${c.name}: fine`)
    if (c.refused) t.equal(problems.length, 1, `${c.name}: one problem`)
  }
  t.throws(() => config({ state: { maxReplicas: 0 } }), /\/state\/maxReplicas/, 'at least 1')
})

t.test('buildGateway refuses a configuration of several replicas without shared state', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-replicas-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const loaded = { config: config({ models: { serve: [] }, tls: { enabled: false }, auth: { enabled: false }, authorization: { enabled: false }, audit: { enabled: false }, state: { directory: 'state', maxReplicas: 3 } }), baseDir: dir, source: 'k8s bulwark.yaml' }
  const err = await buildGateway(loaded, realDeps, { logLevel: 'silent' }).catch((e: unknown) => e)
  t.type(err, ConfigError)
  t.match((err as ConfigError).message, /^k8s bulwark\.yaml: 1 problem\(s\) in the configuration:\n {2}- \/state\/maxReplicas: 3 replicas without state\.redis/)
})

t.test('`bulwark serve` as StatefulSet pod 1 without shared state: refused before anything starts', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-replicas-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'bulwark.yaml')
  await writeFile(file, stringify({ state: { directory: 'state' } }))
  const serve = (index: string) =>
    promisify(execFile)(process.execPath, [path.join(repoRoot, 'bin', 'bulwark.js'), 'serve', '--config', file], {
      cwd: dir,
      env: { ...process.env, BULWARK_REPLICA_INDEX: index },
      timeout: 60_000,
    }).catch((e: { code?: number; stderr?: string }) => e)
  const refused = (await serve('1')) as { code?: number; stderr?: string }
  t.equal(refused.code, 2, 'exit status 2: a configuration error')
  t.match(refused.stderr, `bulwark: ${file}: 1 problem(s) in the configuration:`, 'names the file')
  t.match(refused.stderr, /BULWARK_REPLICA_INDEX: this pod is number 1 .*scale the StatefulSet back to 1 replica .*or set state\.redis/, 'says why and what to do')
  const garbled = (await serve('one')) as { code?: number; stderr?: string }
  t.equal(garbled.code, 2)
  t.match(garbled.stderr, /BULWARK_REPLICA_INDEX: "one" is not a pod ordinal/)
})
