// Passing an output through beside a protected one: the start is refused unless the policy
// says why (output.passThroughReason), judged against the outputs the model really has (its
// manifest), and the bundled policies and the benchmark's still start. Through
// buildOutputPrivacy, as the gateway builds it, with a real journal folder.
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import t, { type Test } from 'tap'
import { Value } from '@sinclair/typebox/value'
import { buildConfig, ConfigError } from '../../src/config/load.ts'
import { OutputPolicy } from '../../src/config/output-policy.ts'
import { loadPolicies, type Policy, type PolicySet } from '../../src/config/policy.ts'
import type { Logger } from '../../src/deps.ts'
import { buildOutputPrivacy } from '../../src/gateway/output-privacy.ts'
import type { ModelRegistry } from '../../src/inference/registry.ts'
import { compileOutputPolicy } from '../../src/stages/output-privacy.ts'
import { repoRoot } from '../../kit/paths.ts'
import { fakeClock, seededRandom, tempDir } from './helpers.ts'

const output = (partial: unknown) => Value.Default(OutputPolicy, structuredClone(partial)) as OutputPolicy

/** buildOutputPrivacy over `policies` for models read from `modelsDir`; the warnings it logged. */
async function build(t: Test, modelsDir: string, policies: Record<string, OutputPolicy>) {
  const dir = await tempDir(t)
  const warnings: { obj: object; msg?: string }[] = []
  const log: Logger = { info() {}, error() {}, warn: (obj, msg) => void warnings.push({ obj, ...(msg === undefined ? {} : { msg }) }) }
  const config = buildConfig({ models: { directory: modelsDir, serve: Object.keys(policies).map((name) => ({ name })) } }, 'test config')
  const registry = { list: () => Object.keys(policies).map((name) => ({ name })) } as unknown as ModelRegistry
  const set: PolicySet = new Map(Object.entries(policies).map(([model, o]) => [model, { output: o } as unknown as Policy]))
  const built = await buildOutputPrivacy(config, { baseDir: dir, policyDir: path.join(dir, 'policies') }, { policies: set, registry, sharedState: null, clock: fakeClock(), random: seededRandom('pass'), log })
  t.teardown(() => built?.accountant.close())
  return { built, warnings }
}

/** A models folder with one model `two` whose manifest lists outputs `probabilities` and `logits`. */
async function twoOutputModel(t: Test): Promise<string> {
  const dir = await tempDir(t)
  const manifest = JSON.parse(await readFile(path.join(repoRoot, 'models/mnist/manifest.json'), 'utf8'))
  manifest.name = 'two'
  manifest.outputs.push({ ...manifest.outputs[0], name: 'logits', range: undefined })
  await mkdir(path.join(dir, 'two'))
  await writeFile(path.join(dir, 'two', 'manifest.json'), JSON.stringify(manifest))
  return dir
}

t.test('an output passed through beside a protected one stops the start, naming the file and the way out', async (t) => {
  const models = await twoOutputModel(t)
  const err = await build(t, models, { two: output({ passThrough: ['logits'] }) }).then(() => null, (e: unknown) => e)
  t.ok(err instanceof ConfigError, String(err))
  t.match((err as Error).message, /two\.yaml/)
  t.match((err as Error).message, /\/output\/passThrough: "logits" would be released untouched beside the protected "probabilities".*passThroughReason/)
})

t.test('with passThroughReason the start goes on, and the log says the guarantee does not cover the model', async (t) => {
  const models = await twoOutputModel(t)
  const reason = 'logits are needed by the calibration client; this model is not a privacy target'
  const { built, warnings } = await build(t, models, { two: output({ passThrough: ['logits'], passThroughReason: reason }) })
  t.ok(built)
  t.match(warnings, [{ obj: { model: 'two', passThrough: ['logits'], protected: ['probabilities'], reason }, msg: /privacy guarantee does not cover this model/ }])
})

t.test('only outputs the model has count: passing one through where the protected one does not exist starts', async (t) => {
  const models = await twoOutputModel(t)
  const { built, warnings } = await build(t, models, { two: output({ outputs: ['scores'], passThrough: ['logits'] }) })
  t.ok(built)
  t.same(warnings, [])
  t.throws(() => compileOutputPolicy(output({ passThrough: ['logits'] }), 'x', ['probabilities', 'logits']), /passThroughReason/)
  t.doesNotThrow(() => compileOutputPolicy(output({ passThrough: ['logits'] })), 'without the model\'s outputs (the policy loader) it cannot be judged')
})

t.test('the bundled policies and the benchmark\'s pass-through policies (bench/secure-env.ts) still start', async (t) => {
  const models = path.join(repoRoot, 'models')
  const bundled = await loadPolicies(path.join(repoRoot, 'policies'))
  t.same([...bundled.keys()].sort(), (await readdir(path.join(repoRoot, 'policies'))).filter((f) => f.endsWith('.yaml')).map((f) => f.replace('.yaml', '')).sort())
  const { built } = await build(t, models, Object.fromEntries([...bundled].map(([m, p]) => [m, p.output])))
  t.ok(built, 'policies/')
  // The benchmark passes the ocr models' one output through and leaves `outputs` at its default.
  const bench = await build(t, models, { 'ocr-cls': output({ passThrough: ['softmax_0.tmp_0'] }), 'ocr-det': output({ passThrough: ['sigmoid_0.tmp_0'] }) })
  t.ok(bench.built, 'bench/secure-env.ts')
  t.same(bench.warnings, [], 'nothing protected beside them, nothing to warn about')
})
