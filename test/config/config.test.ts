import t from 'tap'
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { buildConfig, ConfigError, defaultConfig, loadConfigFile } from '../../src/config/load.ts'

const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-config-'))
const write = (name: string, text: string) => {
  const file = path.join(dir, name)
  writeFileSync(file, text)
  return file
}

t.test('the embedded default serves both bundled models on loopback', async (t) => {
  const { config } = defaultConfig(dir)
  t.equal(config.server.listen, '127.0.0.1:8443')
  t.equal(config.server.admin, '127.0.0.1:9464')
  t.same(config.models.serve.map((m) => m.name), ['mnist', 'ocr-cls'])
  t.ok(Object.isFrozen(config.server), 'config is frozen')
})

t.test('a partial file keeps the defaults of what it leaves out', async (t) => {
  const { config, baseDir } = await loadConfigFile(write('partial.yaml', 'server:\n  listen: 0.0.0.0:9000\n'))
  t.equal(config.server.listen, '0.0.0.0:9000')
  t.equal(config.server.admin, '127.0.0.1:9464')
  t.equal(config.models.defaults.batching.maxQueueSize, 256)
  t.equal(baseDir, dir)
})

t.test('every problem is reported at once, naming file, path and fix', async (t) => {
  const file = write('bad.yaml', [
    'server:',
    '  lisen: 1.2.3.4:5', // typo
    '  bodyLimitBytes: -3',
    'models:',
    '  defaults:',
    '    executionProviders: [tpu]',
    'extra: 1',
  ].join('\n'))
  const err = await loadConfigFile(file).catch((e: unknown) => e)
  t.type(err, ConfigError)
  const msg = (err as ConfigError).message
  t.match(msg, file, 'names the file')
  t.match(msg, '/server/lisen: unknown key; allowed keys here are listen, admin', 'names the unknown key and the allowed ones')
  t.match(msg, '/server/bodyLimitBytes', 'names the bad value')
  t.match(msg, /\/models\/defaults\/executionProviders\/0: "tpu" is not allowed; use one of "cpu", "webgpu", "cuda"/)
  t.match(msg, '/extra: unknown key')
  t.equal((err as ConfigError).problems.length, 4)
})

t.test('YAML syntax errors and duplicate keys stop the start', async (t) => {
  await t.rejects(loadConfigFile(write('dup.yaml', 'server:\n  listen: a:1\n  listen: b:2\n')), ConfigError)
  await t.rejects(loadConfigFile(write('syntax.yaml', 'server: [\n')), ConfigError)
  await t.rejects(loadConfigFile(path.join(dir, 'missing.yaml')), /cannot read the file/)
})

t.test('a file that is not a mapping is refused', async (t) => {
  t.throws(() => buildConfig(['a'], 'list.yaml'), /must hold a mapping/)
  t.throws(() => buildConfig('text', 'text.yaml'), /must hold a mapping/)
})

t.test('a bad listen address says what a good one looks like', async (t) => {
  t.throws(() => buildConfig({ server: { listen: 'localhost' } }, 'x.yaml'), /127\.0\.0\.1:8443/)
})
