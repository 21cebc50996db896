// Certificate rotation without a restart: the server certificate, its key and the CA bundle
// are replaced on disk (atomically, as cert-manager and SPIRE do) while a keep-alive client
// is connected. New handshakes use the new files; the open connection of a client whose CA
// left the bundle is closed (test/transport/ca-distrust.test.ts has the connections that
// stay). And the periodic check, on the reloader's clock, applies a rotation that no file
// event reported.

import t from 'tap'
import { once } from 'node:events'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import type { Server as HttpsServer } from 'node:https'
import os from 'node:os'
import path from 'node:path'
import { connect, type PeerCertificate } from 'node:tls'
import { Client } from 'undici'
import { buildConfig } from '../../src/config/load.ts'
import { createCa, issueCertificate, writeFileAtomic } from '../../src/dev/pki.ts'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { realDeps, silentLogger } from '../../src/deps.ts'
import { loadTlsMaterial, TlsReloader } from '../../src/transport/tls.ts'
import { FakeClock } from '../helpers/fake-clock.ts'
import { startGateway } from '../../kit/gateway.ts'

const gw = await startGateway({ config: { tls: { reloadCheckIntervalMs: 200 } } })
t.teardown(() => gw.close())
const { files } = gw.pki
const oldCa = await readFile(files.ca, 'utf8')
const oldClient = { cert: await readFile(files.clientCert, 'utf8'), key: await readFile(files.clientKey, 'utf8') }

/** The certificate the server presents to a new handshake (trusting `ca`), with our client cert. */
function serverCertificate(ca: string, client: { cert: string; key: string }): Promise<PeerCertificate> {
  return new Promise((resolve, reject) => {
    const port = Number(new URL(gw.url).port)
    const s = connect({ host: '127.0.0.1', port, ca, cert: client.cert, key: client.key, servername: 'localhost' }, () => {
      resolve(s.getPeerCertificate())
      s.end()
    })
    s.on('error', reject)
  })
}

/**
 * Waits until the gateway has applied every file written so far: the watcher or the periodic
 * check may catch a rotation between two files, so wait for a change and then for a check
 * that finds nothing newer.
 */
async function settled(generation: number): Promise<void> {
  // The gateway's own file watch (or its reload interval) picks up the files; its log line says when.
  await gw.logged((l) => l.msg === 'TLS certificate, key or CA changed on disk; new connections use them' && (l.generation as number) > generation)
  // Every file is on disk by now, so each check reads the final set: no pause between them.
  while ((await gw.gateway.tls!.check()) !== 'unchanged');
}

/** GET /v2/models/mnist through `client` with a fresh token: 2xx/5xx means the front door let it in. */
async function metadata(client: Client): Promise<number> {
  const res = await client.request({ path: '/v2/models/mnist', method: 'GET', headers: { authorization: `Bearer ${await gw.token()}` } })
  await res.body.dump()
  return res.statusCode
}

t.test('server certificate and CA replaced on disk while a keep-alive client is connected', async (t) => {
  let connects = 0
  let disconnects = 0
  const keepAlive = new Client(gw.url, { connect: { ca: oldCa, cert: oldClient.cert, key: oldClient.key }, keepAliveTimeout: 60_000, pipelining: 1 })
  keepAlive.on('connect', () => connects++)
  keepAlive.on('disconnect', () => disconnects++)
  t.teardown(() => keepAlive.destroy())

  const before = await serverCertificate(oldCa, oldClient)
  t.equal(await metadata(keepAlive), 404, 'the front door admits the dev client (no model is served: 404 from the core)')
  t.equal(connects, 1)

  // Rotate: a new CA, a server certificate from it, and a client certificate from it.
  const newCa = await createCa(realDeps, { commonName: 'Rotated CA' })
  const server = await issueCertificate(newCa, realDeps, { commonName: 'localhost', usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] })
  const newClient = await issueCertificate(newCa, realDeps, { commonName: 'dev', usage: 'client', uris: [DEV_WORKLOAD] })
  const generation = gw.gateway.tls!.generation
  const dropped = once(keepAlive, 'disconnect')
  await writeFileAtomic(files.serverKey, server.keyPem, 0o600)
  await writeFileAtomic(files.serverCert, server.certPem)
  await writeFileAtomic(files.ca, newCa.certPem)
  await settled(generation)
  t.ok(gw.logsWith('TLS certificate, key or CA changed on disk; new connections use them').length > 0, 'the reload is logged')

  // The open connection's client certificate chains to the old CA only, which the new bundle
  // no longer holds: it is closed, as a new handshake with that certificate would be refused.
  const [, , why] = (await dropped) as [unknown, unknown, Error & { code?: string }]
  t.equal(why.code, 'UND_ERR_SOCKET', `the keep-alive connection of a client of the removed CA is closed by the gateway (${why.message}), not by an idle timeout`)
  t.equal(disconnects, 1)
  t.ok(gw.logsWith('closed a connection whose client certificate no longer chains to the reloaded CA bundle').length > 0, 'and the log says why')
  t.equal(connects, 1)

  // New handshakes use the new server certificate and the new CA.
  const after = await serverCertificate(newCa.certPem, { cert: newClient.certPem, key: newClient.keyPem })
  t.not(after.fingerprint256, before.fingerprint256, 'a new handshake gets the new server certificate')
  const fresh = new Client(gw.url, { connect: { ca: newCa.certPem, cert: newClient.certPem, key: newClient.keyPem } })
  t.teardown(() => fresh.destroy())
  t.equal(await metadata(fresh), 404, 'a client of the new CA is admitted')

  await t.rejects(serverCertificate(oldCa, oldClient), 'a client trusting only the old CA no longer accepts the server')
  const stale = new Client(gw.url, { connect: { ca: newCa.certPem, cert: oldClient.cert, key: oldClient.key } })
  t.teardown(() => stale.destroy())
  // The gateway's own listener runs first (it is prepended): by this event its log line is written.
  const verified = once(gw.gateway.api.server, 'secureConnection')
  await t.rejects(metadata(stale), 'a client certificate of the old CA is refused')
  await verified
  t.ok(gw.logsWith('TLS handshake refused').some((l) => l.reason === 'UNABLE_TO_VERIFY_LEAF_SIGNATURE'), 'the refusal is logged with its reason')
})

t.test('a rotation caught half-way (new certificate, old key) keeps the old files until the key arrives', async (t) => {
  const ca = await createCa(realDeps, { commonName: 'Half-way CA' })
  const server = await issueCertificate(ca, realDeps, { commonName: 'localhost', usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] })
  const client = await issueCertificate(ca, realDeps, { commonName: 'dev', usage: 'client', uris: [DEV_WORKLOAD] })
  const generation = gw.gateway.tls!.generation
  await writeFileAtomic(files.serverCert, server.certPem)
  t.equal(await gw.gateway.tls!.check(), 'failed', 'certificate without its key: not applied')
  t.equal(gw.gateway.tls!.generation, generation)
  t.ok(gw.logsWith('TLS files changed but cannot be used yet; keeping the current ones and retrying').length > 0, 'a warning says so')
  t.match(await gw.gateway.metrics.render(), /bulwark_tls_reloads_total\{outcome="failed"\} \d+/)

  await writeFileAtomic(files.serverKey, server.keyPem, 0o600)
  await writeFileAtomic(files.ca, ca.certPem)
  await settled(generation)
  const c = new Client(gw.url, { connect: { ca: ca.certPem, cert: client.certPem, key: client.keyPem } })
  t.teardown(() => c.destroy())
  t.equal(await metadata(c), 404, 'the completed set is served')
})

t.test('the periodic check applies a rotation no file event reported, when the clock says', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-rotation-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const config = buildConfig({ tls: { certFile: 'server.pem', keyFile: 'server-key.pem', caFile: 'ca.pem', reloadCheckIntervalMs: 1000 } }, 'test').tls
  const write = async (ca: Awaited<ReturnType<typeof createCa>>) => {
    const server = await issueCertificate(ca, realDeps, { commonName: 'localhost', usage: 'server', dnsNames: ['localhost'] })
    await writeFileAtomic(path.join(dir, 'server-key.pem'), server.keyPem, 0o600)
    await writeFileAtomic(path.join(dir, 'server.pem'), server.certPem)
    await writeFileAtomic(path.join(dir, 'ca.pem'), ca.certPem)
  }
  await write(await createCa(realDeps, { commonName: 'First CA' }))
  const initial = await loadTlsMaterial(config, dir)
  // Rotated before the watch starts: no file event will report it, only the periodic check.
  const rotated = await createCa(realDeps, { commonName: 'Second CA' })
  await write(rotated)

  const clock = new FakeClock()
  let reloaded: (outcome: string) => void = () => {}
  const reload = () => new Promise<string>((resolve) => (reloaded = resolve))
  const reloader = new TlsReloader(config, dir, initial, { log: silentLogger, clock, onReload: (outcome) => reloaded(outcome) })
  t.teardown(() => reloader.close())
  const applied: string[] = []
  reloader.attach({ setSecureContext: (o: { ca: string }) => void applied.push(o.ca), prependListener() {} } as unknown as HttpsServer)
  let checks = 0
  const check = reloader.check.bind(reloader)
  reloader.check = () => (checks++, check())

  await clock.tick(999)
  t.equal(checks, 0, 'no check before the interval is up')
  const first = reload()
  await clock.tick(1)
  t.equal(checks, 1, 'one when it is')
  t.equal(await first, 'changed', 'which applies the rotated files')
  t.same(applied, [rotated.certPem], 'the server gets a secure context with the new CA')
  t.equal(reloader.generation, 1)

  await clock.tick(1000)
  t.equal(checks, 2, 'and again a period later')
  t.equal(await check(), 'unchanged', 'which finds nothing new (the call joins its reload when still running)')
  reloader.close()
  await clock.tick(5000)
  t.equal(checks, 2, 'none after close')
})
