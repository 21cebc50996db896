// The upstream TLS files' watch on its own, with real certificates in real files and the
// watcher's clock faked: a change that no file event reported is applied by the periodic
// check when the clock says, once; nothing is checked after close. Reading the files refuses
// a key that does not belong to its certificate and a CA file without a certificate, naming
// the files and what to do.

import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { realDeps, silentLogger } from '../../src/deps.ts'
import { createCa, issueCertificate, writeFileAtomic } from '../../src/dev/pki.ts'
import type { UpstreamTlsMaterial } from '../../src/inference/upstream-backend.ts'
import { readUpstreamTls, UpstreamTlsWatcher, type UpstreamTlsFiles } from '../../src/inference/upstream-tls.ts'
import { FakeClock } from '../helpers/fake-clock.ts'

const ca = await createCa(realDeps, { commonName: 'Upstream client CA' })
const issue = () => issueCertificate(ca, realDeps, { commonName: 'gateway', usage: 'client' })

async function folder(t: { teardown(fn: () => unknown): void }): Promise<UpstreamTlsFiles & { caFile: string; certFile: string; keyFile: string }> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-upstream-tls-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return { caFile: path.join(dir, 'ca.pem'), certFile: path.join(dir, 'client.pem'), keyFile: path.join(dir, 'client-key.pem') }
}

async function write(files: { caFile: string; certFile: string; keyFile: string }, pair: { certPem: string; keyPem: string }): Promise<void> {
  await writeFileAtomic(files.caFile, ca.certPem)
  await writeFileAtomic(files.keyFile, pair.keyPem, 0o600)
  await writeFileAtomic(files.certFile, pair.certPem)
}

t.test('the periodic check applies a change no file event reported, when the clock says; none after close', async (t) => {
  const files = await folder(t)
  const first = await issue()
  await write(files, first)
  const initial = await readUpstreamTls(files, undefined)
  // Rotated before the watch starts: no file event reports it, only the periodic check.
  const second = await issue()
  await write(files, second)

  const clock = new FakeClock()
  const applied: UpstreamTlsMaterial[] = []
  const watcher = new UpstreamTlsWatcher(
    { files, intervalMs: 1000, material: initial.material, digest: initial.digest },
    { model: 'mnist', clock, log: silentLogger, apply: (m) => void applied.push(m) },
  )
  t.teardown(() => watcher.close())
  const checks: Promise<string>[] = []
  const check = watcher.check.bind(watcher)
  watcher.check = () => {
    const run = check()
    checks.push(run)
    return run
  }
  watcher.start()

  await clock.tick(999)
  t.equal(checks.length, 0, 'no check before the interval is up')
  await clock.tick(1)
  t.equal(checks.length, 1, 'one when it is')
  t.equal(await checks[0], 'changed', 'which applies the rotated files')
  t.same(applied.map((m) => m.cert), [second.certPem], 'the backend gets the new certificate')
  t.same(applied.map((m) => m.key), [second.keyPem], 'with its key')
  t.equal(watcher.generation, 1)
  t.equal(await check(), 'unchanged', 'a check with nothing new applies nothing')
  t.equal(applied.length, 1)

  watcher.close()
  t.notOk(watcher.watching)
  await clock.tick(5000)
  t.equal(checks.length, 1, 'no check after close')
})

t.test('reading refuses a key that is not the certificate\'s, and a CA file without a certificate', async (t) => {
  const files = await folder(t)
  const [a, b] = [await issue(), await issue()]
  await write(files, { certPem: a.certPem, keyPem: b.keyPem })
  await t.rejects(readUpstreamTls(files, undefined), { message: new RegExp(`upstream TLS files ${files.certFile}, ${files.keyFile}, ${files.caFile} cannot be used: .*the key must belong to the certificate`) })

  await write(files, a)
  await writeFileAtomic(files.caFile, 'not a certificate\n')
  await t.rejects(readUpstreamTls(files, undefined), { message: /the CA file holds no PEM certificate/ })

  await writeFileAtomic(files.caFile, ca.certPem)
  const ok = await readUpstreamTls(files, 'pods.example')
  t.same(ok.material, { ca: ca.certPem, cert: a.certPem, key: a.keyPem, servername: 'pods.example' }, 'a usable set is read whole')
  await t.rejects(readUpstreamTls({ ...files, certFile: `${files.certFile}.missing` }, undefined), { message: /cannot read upstream TLS file .*client\.pem\.missing/ })
})
