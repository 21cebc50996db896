// A model's settings: what its models.serve entry says, else what models.defaults says, else
// the schema's default; the same for versionPolicy (which has no schema default: absent means
// the highest version folder). Read from the registry a real configuration builds (no model
// is loaded: the settings are fixed when the registry is made).

import t from 'tap'
import { buildConfig } from '../../src/config/load.ts'
import { ModelRegistry } from '../../src/inference/registry.ts'
import { systemClock } from '../../src/deps.ts'
import { repoRoot } from '../../kit/paths.ts'
import { memoryLogger } from '../audit/helpers.ts'

const settings = (models: Record<string, unknown>) => {
  const config = buildConfig({ models }, 'test config')
  const registry = new ModelRegistry(config.models, repoRoot, { clock: systemClock, log: memoryLogger() })
  return Object.fromEntries(registry.list().map((m) => [m.name, m.settings]))
}

t.test('models.defaults apply to a listed model that does not override them', async (t) => {
  const s = settings({ defaults: { workers: 3, threadNiceness: 0, versionPolicy: 'all' }, serve: [{ name: 'mnist' }, { name: 'ocr-cls', workers: 4, versionPolicy: { latest: 2 } }] })
  t.match(s.mnist, { workers: 3, threadNiceness: 0, intraOpThreads: 1, versionPolicy: 'all' }, 'the defaults, and the schema default where they say nothing')
  t.match(s['ocr-cls'], { workers: 4, threadNiceness: 0, versionPolicy: { latest: 2 } }, 'the entry overrides what it names')
})

t.test('with no defaults given, the schema defaults; versionPolicy stays unset (the highest version)', async (t) => {
  const s = settings({ serve: [{ name: 'mnist' }] })
  t.match(s.mnist, { workers: 2, intraOpThreads: 1, threadNiceness: 5 })
  t.notOk('versionPolicy' in s.mnist!)
})

t.test('a versionPolicy of another shape is refused with what it takes', async (t) => {
  t.throws(() => settings({ serve: [{ name: 'mnist', versionPolicy: { latest: 0 } }] }), /\/models\/serve\/0\/versionPolicy: \{"latest":0\} is not allowed; use \{ latest: N \} \| all \| \{ specific: \[versions\] \}/)
})
