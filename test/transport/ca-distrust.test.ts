// A CA taken out of the bundle is distrusted for connections already open, not only for new
// handshakes: when the CA file changes, each open connection whose client certificate no
// longer chains to the new bundle is closed (and logged, and counted), and a handshake that
// began under the old bundle is checked as it completes. A connection whose certificate still
// chains (the old CA kept beside the new one, as rotations overlap) is left alone.

import t from 'tap'
import { webcrypto, X509Certificate } from 'node:crypto'
import { EventEmitter, once } from 'node:events'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import type { Server as HttpsServer } from 'node:https'
import os from 'node:os'
import path from 'node:path'
import type { DetailedPeerCertificate, TLSSocket } from 'node:tls'
import { Client } from 'undici'
import { createCa, issueCertificate, writeFileAtomic, type CertificateAuthority } from '../../src/dev/pki.ts'
import * as x509 from '@peculiar/x509'
import { buildConfig } from '../../src/config/load.ts'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { realDeps, type Logger } from '../../src/deps.ts'
import { chainsToBundle, loadTlsMaterial, parseBundle, TlsReloader } from '../../src/transport/tls.ts'
import { startGateway } from '../../kit/gateway.ts'
import { FakeClock } from '../helpers/fake-clock.ts'

const DAY_MS = 86_400_000
const SIGNING = { name: 'ECDSA', hash: 'SHA-256' }

/** A CA signed by `parent` (an intermediate), to issue leaves from. */
async function intermediate(parent: CertificateAuthority, name: string): Promise<CertificateAuthority> {
  const keys = (await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: '0' + Buffer.from(crypto.getRandomValues(new Uint8Array(15))).toString('hex'),
    subject: `CN=${name}`,
    issuer: parent.cert.subject,
    notBefore: new Date(Date.now() - 60_000),
    notAfter: new Date(Date.now() + 30 * DAY_MS),
    publicKey: keys.publicKey,
    signingKey: parent.keys.privateKey,
    signingAlgorithm: SIGNING,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(parent.keys.publicKey),
    ],
  })
  return { cert, keys, certPem: cert.toString('pem') + '\n', keyPem: '' } as CertificateAuthority
}

const leafOf = async (ca: CertificateAuthority, cn = 'dev') => issueCertificate(ca, realDeps, { commonName: cn, usage: 'client', uris: [DEV_WORKLOAD] })
const cert = (pem: string) => new X509Certificate(pem)

t.test('chainsToBundle: a chain counts when it reaches a self-signed, current certificate of the bundle', async (t) => {
  const root = await createCa(realDeps, { commonName: 'Root' })
  const other = await createCa(realDeps, { commonName: 'Other root' })
  const mid = await intermediate(root, 'Intermediate')
  const direct = cert((await leafOf(root)).certPem)
  const viaMid = cert((await leafOf(mid)).certPem)
  const now = Date.now()
  const [r, o, m] = [cert(root.certPem), cert(other.certPem), cert(mid.certPem)]

  t.ok(chainsToBundle([direct], [r], now), 'leaf issued by a root of the bundle')
  t.ok(chainsToBundle([direct, r], [o, r], now), 'the root among others')
  t.notOk(chainsToBundle([direct, r], [o], now), 'the root left the bundle: the chain the peer showed (ending at it) does not count')
  t.ok(chainsToBundle([viaMid, m, r], [r], now), 'leaf, intermediate sent by the peer, root in the bundle')
  t.ok(chainsToBundle([viaMid], [r, m], now), 'the intermediate from the bundle')
  t.notOk(chainsToBundle([viaMid, m], [m], now), 'an intermediate alone is no trust anchor (no partial chains, as OpenSSL by default)')
  t.notOk(chainsToBundle([viaMid, m, r], [o], now), 'another root')
  t.notOk(chainsToBundle([direct], [r], r.validToDate.getTime() + 1), 'a root past its notAfter anchors nothing')
  t.notOk(chainsToBundle([], [r], now), 'no chain at all: not trusted')

  // A certificate that names the root as issuer but was signed by another key.
  const impostor = await createCa(realDeps, { commonName: 'Root' })
  const forged = cert((await leafOf(impostor)).certPem)
  t.notOk(chainsToBundle([forged], [r], now), 'the issuer name alone does not do: the signature must verify')
  t.same(parseBundle(root.certPem + other.certPem).map((c) => c.subject), ['CN=Root', 'CN=Other root'], 'a PEM bundle is read in full')
})

/** A verified TLS connection as the reloader sees it: its peer chain (leaf first) and destroy(). */
function fakeConnection(chainPems: string[]): TLSSocket & { destroyed: boolean } {
  const der = chainPems.map((p) => cert(p))
  const links: DetailedPeerCertificate[] = der.map((c) => ({ raw: c.raw }) as DetailedPeerCertificate)
  links.forEach((l, i) => (l.issuerCertificate = links[i + 1] ?? l))
  const socket = Object.assign(new EventEmitter(), {
    authorized: true,
    destroyed: false,
    remoteAddress: '10.0.0.7',
    getPeerCertificate: () => links[0],
    getPeerX509Certificate: () => der[0],
    destroy() {
      socket.destroyed = true
      socket.emit('close')
    },
  })
  return socket as unknown as TLSSocket & { destroyed: boolean }
}

t.test('the reloader closes the open connections the new bundle no longer trusts, and checks handshakes begun before', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-distrust-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const config = buildConfig({ tls: { certFile: 'server.pem', keyFile: 'server-key.pem', caFile: 'ca.pem', handshakeTimeoutMs: 10_000 } }, 'test').tls
  const oldCa = await createCa(realDeps, { commonName: 'Old CA' })
  const newCa = await createCa(realDeps, { commonName: 'New CA' })
  const server = await issueCertificate(oldCa, realDeps, { commonName: 'localhost', usage: 'server', dnsNames: ['localhost'] })
  await writeFileAtomic(path.join(dir, 'server-key.pem'), server.keyPem, 0o600)
  await writeFileAtomic(path.join(dir, 'server.pem'), server.certPem)
  await writeFileAtomic(path.join(dir, 'ca.pem'), oldCa.certPem)

  const clock = new FakeClock()
  const warnings: object[] = []
  const log: Logger = { info() {}, error() {}, warn: (obj, msg) => void warnings.push({ ...obj, msg }) }
  const distrusted: number[] = []
  const reloader = new TlsReloader(config, dir, await loadTlsMaterial(config, dir), { log, clock, onDistrusted: (n) => distrusted.push(n) })
  t.teardown(() => reloader.close())
  const fakeServer = Object.assign(new EventEmitter(), { setSecureContext() {} })
  reloader.attach(fakeServer as unknown as HttpsServer)
  const connect = (pems: string[]) => {
    const s = fakeConnection(pems)
    fakeServer.emit('secureConnection', s)
    return s
  }

  const mid = await intermediate(oldCa, 'Old intermediate')
  const ofOld = connect([(await leafOf(oldCa)).certPem, oldCa.certPem])
  const viaOldMid = connect([(await leafOf(mid)).certPem, mid.certPem, oldCa.certPem])
  const ofNew = connect([(await leafOf(newCa)).certPem, newCa.certPem])
  const gone = connect([(await leafOf(oldCa)).certPem, oldCa.certPem])
  gone.destroy()
  gone.destroyed = false // a closed connection is forgotten: the change below must not touch it again

  // The old and new CA side by side: every connection still chains.
  await writeFileAtomic(path.join(dir, 'ca.pem'), oldCa.certPem + newCa.certPem)
  t.equal(await reloader.check(), 'changed')
  t.same([ofOld.destroyed, viaOldMid.destroyed, ofNew.destroyed], [false, false, false], 'a bundle that keeps the old CA keeps its connections')
  t.same(distrusted, [])

  // The old CA leaves the bundle.
  await writeFileAtomic(path.join(dir, 'ca.pem'), newCa.certPem)
  t.equal(await reloader.check(), 'changed')
  t.equal(ofOld.destroyed, true, 'a connection of the removed CA is closed')
  t.equal(viaOldMid.destroyed, true, 'and one whose chain goes through the removed CA')
  t.equal(ofNew.destroyed, false, 'a connection of the new CA stays')
  t.equal(gone.destroyed, false, 'a connection closed before is not touched')
  t.same(distrusted, [2], 'counted')
  t.equal(warnings.length, 2)
  t.match(warnings[0], { msg: 'closed a connection whose client certificate no longer chains to the reloaded CA bundle', remote: '10.0.0.7', subject: 'CN=dev', certSha256: /^[0-9a-f]{64}$/ })

  // A handshake accepted under the old context completes after the change: checked on arrival.
  clock.advance(config.handshakeTimeoutMs)
  const late = connect([(await leafOf(oldCa)).certPem, oldCa.certPem])
  t.equal(late.destroyed, true, 'a connection of the removed CA that completes its handshake within handshakeTimeoutMs of the change is closed')
  t.same(distrusted, [2, 1])
  const fresh = connect([(await leafOf(newCa)).certPem, newCa.certPem])
  t.equal(fresh.destroyed, false, 'one of the new CA is not')

  // The certificate, key or CA unchanged in content: no check, nothing closed.
  await writeFileAtomic(path.join(dir, 'ca.pem'), newCa.certPem)
  t.equal(await reloader.check(), 'unchanged')
  t.same(distrusted, [2, 1])
})

t.test('over real TLS: an open keep-alive connection of a CA dropped from the bundle is closed; one of a kept CA is not', async (t) => {
  const gw = await startGateway()
  t.teardown(() => gw.close())
  const { files } = gw.pki
  const devCa = await readFile(files.ca, 'utf8')
  const reloader = gw.gateway.tls!
  /** Writes the CA bundle and waits until the gateway has applied it (a check joins a reload in flight). */
  const rotate = async (bundle: string) => {
    const before = reloader.generation
    await writeFileAtomic(files.ca, bundle)
    while (reloader.generation === before) await reloader.check()
  }
  const keepAlive = (c: { cert: string; key: string }) => {
    const client = new Client(gw.url, { connect: { ca: devCa, cert: c.cert, key: c.key }, keepAliveTimeout: 600_000, pipelining: 1 })
    t.teardown(() => client.destroy())
    return client
  }
  const metadata = async (client: Client) => {
    const res = await client.request({ path: '/v2/models/mnist', method: 'GET', headers: { authorization: `Bearer ${await gw.token()}` } })
    await res.body.dump()
    return res.statusCode
  }

  const other = await createCa(realDeps, { commonName: 'Other CA' })
  const otherLeaf = await leafOf(other)
  await rotate(devCa + other.certPem)
  const dev = keepAlive({ cert: await readFile(files.clientCert, 'utf8'), key: await readFile(files.clientKey, 'utf8') })
  const fromOther = keepAlive({ cert: otherLeaf.certPem, key: otherLeaf.keyPem })
  t.equal(await metadata(dev), 404, 'a client of the dev CA is admitted (404: no model is served)')
  t.equal(await metadata(fromOther), 404, 'and one of the other CA')

  const dropped = once(fromOther, 'disconnect')
  let devDisconnects = 0
  dev.on('disconnect', () => devDisconnects++)
  await rotate(devCa)
  await t.rejects(metadata(fromOther), 'the other CA left the bundle: its client\'s next request finds no connection to send on')
  const [, , why] = (await dropped) as [unknown, unknown, Error & { code?: string }]
  t.equal(why.code, 'UND_ERR_SOCKET', `because the gateway closed it (${why.message}), not an idle timeout`)
  t.ok(gw.logsWith('closed a connection whose client certificate no longer chains to the reloaded CA bundle').length === 1, 'logged once, for that connection')
  t.match(await gw.gateway.metrics.render(), /bulwark_tls_connections_distrusted_total(\{\})? 1\b/, 'and counted')
  t.equal(await metadata(dev), 404, 'the dev CA stayed: its connection serves on')
  t.equal(devDisconnects, 0, 'never dropped')
  await t.rejects(metadata(fromOther), 'and it cannot come back: a new handshake is refused')
})
