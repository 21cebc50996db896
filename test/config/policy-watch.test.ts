// The policy folder's reloads, on a fake clock and real files laid out as the kubelet lays out
// a ConfigMap volume (a timestamped folder, `..data` linking to it, each file linking through
// `..data`, an update renaming a new `..data` over the old). With file-system events off,
// the periodic check alone applies a swap once the reload interval has passed, and not before.
// A request pinned to a generation reads it to its end, a later one reads the new one. A
// swap to an invalid policy keeps the old generation, reports the file and the path, is
// counted once, and the watcher says the served policies are stale until the folder is fixed.
// A removed policy (its link left dangling by the swap) leaves its model out of the next generation.

import t from 'tap'
import { mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { stringify } from 'yaml'
import { LivePolicies } from '../../src/config/policy-store.ts'
import { PolicyWatcher } from '../../src/config/policy-watch.ts'
import { loadPolicyFolder } from '../../src/config/policy.ts'
import { compileModelRules } from '../../src/stages/model-policy.ts'
import { FakeClock } from '../helpers/fake-clock.ts'

const DEV = 'spiffe://bulwark.local/ns/default/sa/dev'
const policy = (model: string, scope: string) => ({ model, allow: [{ verbs: ['infer'], workloads: [DEV], scopes: [scope] }] })

/** A ConfigMap volume at `dir` holding `files`, swapped in as the kubelet's atomic writer does. */
async function configMapUpdate(dir: string, files: Record<string, string>, version: number): Promise<void> {
  const stamp = `..2030_01_01_00_00_0${version}.000000001`
  await mkdir(path.join(dir, stamp))
  for (const [name, text] of Object.entries(files)) await writeFile(path.join(dir, stamp, name), text)
  await symlink(stamp, path.join(dir, '..data_tmp'))
  await rename(path.join(dir, '..data_tmp'), path.join(dir, '..data'))
  for (const name of Object.keys(files)) await symlink(path.join('..data', name), path.join(dir, name)).catch(() => {})
}

t.test('a ConfigMap swap found by the periodic check applies to requests that start after it', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-policy-watch-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await configMapUpdate(dir, { 'mnist.yaml': stringify(policy('mnist', 'mnist:infer')), 'ocr-cls.yaml': stringify(policy('ocr-cls', 'ocr:infer')) }, 1)

  const folder = await loadPolicyFolder(dir)
  t.same([...folder.policies.keys()].sort(), ['mnist', 'ocr-cls'], 'the links are read through; ..data and the timestamped folder are not policies')
  const live = new LivePolicies(folder.policies)
  const rules = await live.view(compileModelRules)
  const clock = new FakeClock()
  const outcomes: string[] = []
  const logs: { level: string; obj: Record<string, unknown>; msg: string | undefined }[] = []
  const log = {
    info: (obj: object, msg?: string) => logs.push({ level: 'info', obj: obj as Record<string, unknown>, msg }),
    warn: (obj: object, msg?: string) => logs.push({ level: 'warn', obj: obj as Record<string, unknown>, msg }),
    error: (obj: object, msg?: string) => logs.push({ level: 'error', obj: obj as Record<string, unknown>, msg }),
  }
  const watcher = new PolicyWatcher({ directory: dir, intervalMs: 1000, digest: folder.digest, required: true, events: false }, { live, clock, log, onReload: (o) => outcomes.push(o) })
  watcher.start()
  t.teardown(() => watcher.close())

  const early = {} // a request that read its policies before the swap
  t.same(rules.for(early).get('mnist')!.infer[0]!.scopes, ['mnist:infer'])

  // mnist now needs another scope.
  await configMapUpdate(dir, { 'mnist.yaml': stringify(policy('mnist', 'mnist:predict')), 'ocr-cls.yaml': stringify(policy('ocr-cls', 'ocr:infer')) }, 2)
  await clock.tick(999)
  t.equal(live.generation, 1, 'not before the interval has passed')
  t.same(outcomes, [])
  await clock.tick(1)
  await watcher.check() // the check the interval started (or a no-op after it)
  t.equal(live.generation, 2, 'the periodic check applied the swap once the interval passed')
  t.same(outcomes, ['applied'])
  t.same(rules.for({}).get('mnist')!.infer[0]!.scopes, ['mnist:predict'], 'a request that starts now reads the new policy')
  t.same(rules.for(early).get('mnist')!.infer[0]!.scopes, ['mnist:infer'], 'a request pinned before the swap keeps reading the one it started with')
  t.ok(logs.some((l) => l.msg?.startsWith('policies reloaded') && l.obj.generation === 2), 'the reload is logged with its generation')
  t.same(watcher.status(), { state: 'current', generation: 2, problems: [] })

  // An invalid policy: the generation in force stays.
  await configMapUpdate(dir, { 'mnist.yaml': 'model: mnist\nallow:\n  - verbs: [infer]\n    workloads: [spiffe://bulwark.local/ns/default/sa/dev]\n    scopes: [mnist:predict]\nrateLimit: { requestsPerWindow: 0 }\n', 'ocr-cls.yaml': stringify(policy('ocr-cls', 'ocr:infer')) }, 3)
  await clock.tick(1000)
  await watcher.check()
  t.equal(live.generation, 2, 'an invalid change is not applied')
  t.same(rules.for({}).get('mnist')!.infer[0]!.scopes, ['mnist:predict'], 'the policy in force stays')
  const status = watcher.status()
  t.equal(status.state, 'stale')
  t.match(status.problems.join('\n'), new RegExp(`${path.join(dir, 'mnist.yaml').replace(/[.]/g, '\\.')} /rateLimit/requestsPerWindow`), 'the problem names the file and the path')
  const refused = logs.filter((l) => l.level === 'error')
  t.equal(refused.length, 1, 'logged once')
  t.match(refused[0]!.msg, /policy change refused; the policies in force stay/)
  await clock.tick(3000)
  await watcher.check()
  t.equal(logs.filter((l) => l.level === 'error').length, 1, 'the same bad folder is not logged again at each check')
  t.same(outcomes, ['applied', 'failed'], 'and counted once')

  // Fixed by removing ocr-cls's policy altogether: applied, and ocr-cls is in no generation any more.
  // (The kubelet removes the link of a deleted key after the swap; until then it dangles, and a dangling link is no policy.)
  await configMapUpdate(dir, { 'mnist.yaml': stringify(policy('mnist', 'mnist:predict')) }, 4)
  await clock.tick(1000)
  await watcher.check()
  t.equal(live.generation, 3)
  t.equal(watcher.status().state, 'current', 'a valid folder is current again')
  t.equal(rules.for({}).get('ocr-cls'), undefined, 'a removed policy: its model has no rules (default deny)')
  t.same([...live.policies.keys()], ['mnist'])
})
