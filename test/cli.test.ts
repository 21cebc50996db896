// `bulwark dev-pki` and `bulwark token`, run as a user runs them: the PKI files with their
// modes, kept unless --force; one JWT on stdout and nothing else, carrying by default the
// scopes the bundled policies require for every bundled model, and verifying against jwks.json.

import t from 'tap'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { createLocalJWKSet, jwtVerify } from 'jose'
import { repoRoot } from '../kit/paths.ts'

const run = promisify(execFile)
const bulwark = (...args: string[]) => run(process.execPath, [path.join(repoRoot, 'bin', 'bulwark.js'), ...args], { cwd: repoRoot })
const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-cli-'))
t.teardown(() => rm(dir, { recursive: true, force: true }))
const pki = path.join(dir, 'dev')

t.test('dev-pki writes the files, private keys 0600, and keeps a valid set', async (t) => {
  const first = await bulwark('dev-pki', '--dir', pki)
  t.match(first.stdout, /wrote the development PKI/)
  for (const f of ['ca.pem', 'server.pem', 'client.pem', 'jwks.json']) t.equal((await stat(path.join(pki, f))).mode & 0o777, 0o644, f)
  for (const f of ['ca-key.pem', 'server-key.pem', 'client-key.pem', 'jwt-key.pem']) t.equal((await stat(path.join(pki, f))).mode & 0o777, 0o600, f)
  t.equal((await stat(pki)).mode & 0o777, 0o700, 'the folder is private too')
  const ca = await readFile(path.join(pki, 'ca.pem'), 'utf8')
  const again = await bulwark('dev-pki', '--dir', pki)
  t.match(again.stdout, /complete and valid/)
  t.equal(await readFile(path.join(pki, 'ca.pem'), 'utf8'), ca, 'unchanged')
  await bulwark('dev-pki', '--dir', pki, '--force')
  t.not(await readFile(path.join(pki, 'ca.pem'), 'utf8'), ca, '--force writes a new one')
})

const decode = (jwt: string) => JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>

t.test('token prints one signed JWT and nothing else', async (t) => {
  const { stdout, stderr } = await bulwark('token', '--dir', pki)
  t.match(stdout, /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\n$/, 'one line: a compact JWS')
  t.equal(stderr.replace(/npm warn[^\n]*\n/g, ''), '', 'nothing on stderr either')
  const jwks = JSON.parse(await readFile(path.join(pki, 'jwks.json'), 'utf8'))
  const { payload, protectedHeader } = await jwtVerify(stdout.trim(), createLocalJWKSet(jwks), { issuer: 'https://bulwark.local/dev', audience: 'bulwark' })
  t.equal(protectedHeader.alg, 'ES256')
  t.equal(payload.sub, 'dev')
  t.same(String(payload.scope).split(' ').sort(), ['mnist:infer', 'mnist:metadata', 'ocr-cls:infer', 'ocr-cls:metadata'], 'the scopes of the bundled policies for the bundled models')
  t.equal(payload.exp! - payload.iat!, 3600)
})

t.test('token --sub --scope --ttl --aud', async (t) => {
  const { stdout } = await bulwark('token', '--dir', pki, '--sub', 'svc-fraud', '--scope', 'fraud:infer  fraud:metadata', '--ttl', '60', '--aud', 'other')
  const p = decode(stdout.trim())
  t.match(p, { sub: 'svc-fraud', scope: 'fraud:infer fraud:metadata', aud: 'other' })
  t.equal((p.exp as number) - (p.iat as number), 60)
})

t.test('token refuses a bad --ttl with a message and no token', async (t) => {
  const err = await bulwark('token', '--dir', pki, '--ttl', '0').then(
    () => null,
    (e: { code: number; stdout: string; stderr: string }) => e,
  )
  t.equal(err?.code, 2)
  t.equal(err?.stdout, '')
  t.match(err?.stderr, /--ttl must be whole seconds/)
})
