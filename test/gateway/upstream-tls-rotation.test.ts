// The upstream calls' client certificate rotates without a restart. A gateway serves mnist from
// a real model pod (a second Bulwark in this process, serving mnist over mTLS on REST and gRPC,
// its client-CA bundle rotated on disk as the test says) with upstream.tls pointing at files
// the test rewrites atomically. Over REST and over gRPC: the pod first trusts the old and the
// new client CA, the gateway's certificate and key are replaced by ones from the new CA, then
// the pod drops the old CA (a client with the old certificate is refused): the gateway answers
// 200 at every step, and its reload is logged and applied once. A
// certificate written without its key (a rotation caught half-way) is not applied: the
// gateway logs an error naming the files and keeps answering with the certificate in use;
// once the key arrives the pair is applied; bulwark_upstream_tls_reloads_total counts each
// applied change and each bad state once, by model. Reloading or unloading the model stops the old
// backend's watch.
// Against a pod that holds calls until the test answers: a call in flight when the certificate
// changes is answered, and a call sent after the change presents the new certificate; over
// REST the new call is on a new connection and the old connection closes once its call is done
// (over gRPC connections and channel closing are not observed).

import { X509Certificate } from 'node:crypto'
import { once } from 'node:events'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import type { TLSSocket } from 'node:tls'
import * as grpc from '@grpc/grpc-js'
import t, { type Test } from 'tap'
import { startGateway, type TestGateway } from '../../kit/gateway.ts'
import { Changes } from '../../kit/wait.ts'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { realDeps } from '../../src/deps.ts'
import { createCa, issueCertificate, writeFileAtomic, type CertificateAuthority } from '../../src/dev/pki.ts'
import type { UpstreamBackend } from '../../src/inference/upstream-backend.ts'
import type { UpstreamTlsWatcher } from '../../src/inference/upstream-tls.ts'
import { HEADER_LENGTH } from '../../src/oip/codec.ts'
import { inferenceServiceClient } from '../../src/transport/grpc.ts'
import type { InferResponseMessage } from '../../src/transport/grpc-codec.ts'
import { jsonBody, mnistDigits } from '../helpers/scaleout.ts'

const digits = mnistDigits(4)
const policy = { model: 'mnist', allow: [{ verbs: ['infer', 'metadata'], workloads: [DEV_WORKLOAD], scopes: ['mnist:infer'] }], rateLimit: { requestsPerWindow: 10_000, windowMs: 1000 } }
const APPLIED = 'upstream TLS files changed on disk; new upstream calls use them'
const REFUSED = 'upstream TLS files changed but cannot be used; upstream calls keep the certificate in use, and the files are checked again at the next change or reloadCheckIntervalMs: write the certificate and its key together'
// Checks on a timer would race the test's own: file events and the test's check() drive every reload here.
const NO_TICK = 3_600_000

/** The model pod: mnist over mTLS (its client certificates must chain to its CA bundle), no token or policy checks. */
async function startPod(t: { teardown(fn: () => unknown): void }): Promise<{ pod: TestGateway; grpcPort: number }> {
  const pod = await startGateway({
    models: ['mnist'],
    policies: { mnist: policy },
    config: { auth: { enabled: false }, authorization: { enabled: false }, rateLimits: { enabled: false }, outputPrivacy: { enabled: false }, audit: { enabled: false }, tls: { reloadCheckIntervalMs: NO_TICK } },
  })
  t.teardown(() => pod.close())
  const grpcPort = await pod.gateway.grpc!.listen('127.0.0.1', 0)
  return { pod, grpcPort }
}

/** Until every file written so far is applied: a check that finds nothing newer (a file event may have applied it first). */
async function settled(check: () => Promise<string>): Promise<void> {
  while ((await check()) !== 'unchanged');
}

interface Front {
  gw: TestGateway
  files: { caFile: string; certFile: string; keyFile: string }
  backend: () => UpstreamBackend
  watcher: () => UpstreamTlsWatcher
  infer: (i: number) => Promise<number>
}

/** A gateway serving mnist from `endpoint` over `protocol`, its upstream TLS files (`initial`) in a folder of their own. */
async function frontOf(t: { teardown(fn: () => unknown): void }, endpoint: string, protocol: 'rest' | 'grpc', initial: { ca: string; cert: string; key: string }): Promise<Front> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-upstream-tls-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const files = { caFile: path.join(dir, 'ca.pem'), certFile: path.join(dir, 'client.pem'), keyFile: path.join(dir, 'client-key.pem') }
  await writeFile(files.caFile, initial.ca)
  await writeFile(files.certFile, initial.cert)
  await writeFile(files.keyFile, initial.key, { mode: 0o600 })
  const upstream = { protocol, endpoints: [endpoint], tls: { ...files, reloadCheckIntervalMs: NO_TICK }, retry: { enabled: false }, connectionsPerEndpoint: 1 }
  const gw = await startGateway({
    models: ['mnist'],
    policies: { mnist: policy },
    config: { outputPrivacy: { enabled: false }, audit: { durability: 'relaxed' }, models: { serve: [{ name: 'mnist', upstream }] } },
  })
  t.teardown(() => gw.close())
  const backend = () => gw.gateway.registry.upstreams()[0]!.backend
  return {
    gw,
    files,
    backend,
    watcher: () => backend().tlsWatcher!,
    infer: async (i) => (await gw.request('/v2/models/mnist/infer', { body: jsonBody([digits[i % digits.length]!]) })).status,
  }
}

/** A gateway serving mnist from the pod over `protocol`, first with the pod's dev client certificate. */
async function startFront(t: { teardown(fn: () => unknown): void }, pod: TestGateway, protocol: 'rest' | 'grpc', port: number): Promise<Front> {
  const [ca, cert, key] = await Promise.all([readFile(pod.pki.files.ca, 'utf8'), readFile(pod.pki.files.clientCert, 'utf8'), readFile(pod.pki.files.clientKey, 'utf8')])
  return frontOf(t, `https://127.0.0.1:${port}`, protocol, { ca, cert, key })
}

/** The pod's client-CA bundle replaced by `cas`, and applied by the pod. */
async function podTrusts(pod: TestGateway, cas: CertificateAuthority[] | string[]): Promise<void> {
  await writeFileAtomic(pod.pki.files.ca, cas.map((c) => (typeof c === 'string' ? c : c.certPem)).join(''))
  await settled(() => pod.gateway.tls!.check())
}

/** A client certificate (and key) from `ca`, as the pod's policy would name it. */
const clientOf = (ca: CertificateAuthority) => issueCertificate(ca, realDeps, { commonName: 'gateway', usage: 'client', uris: [DEV_WORKLOAD] })

async function rotation(t: Test, protocol: 'rest' | 'grpc'): Promise<void> {
  const { pod, grpcPort } = await startPod(t)
  const front = await startFront(t, pod, protocol, protocol === 'grpc' ? grpcPort : Number(new URL(pod.url).port))
  const oldCa = await readFile(pod.pki.files.ca, 'utf8')
  const oldClient = { cert: await readFile(front.files.certFile, 'utf8'), key: await readFile(front.files.keyFile, 'utf8') }
  t.equal(await front.infer(0), 200, 'served with the first client certificate')
  t.ok(front.watcher().watching, 'the upstream TLS files are watched')

  // SPIRE's next SVID comes from a new CA; the pod trusts both while the clients rotate.
  const newCa = await createCa(realDeps, { commonName: 'Rotated client CA' })
  await podTrusts(pod, [oldCa, newCa.certPem])
  t.equal(await front.infer(1), 200, 'served while the pod trusts both CAs')

  const next = await clientOf(newCa)
  const since = front.gw.logs.length
  // Key first, as SPIRE's helper and cert-manager's csi driver write them.
  await writeFileAtomic(front.files.keyFile, next.keyPem, 0o600)
  await writeFileAtomic(front.files.certFile, next.certPem)
  const applied = await front.gw.logged((l) => l.msg === APPLIED, since)
  t.equal(applied.certFile, front.files.certFile, 'the reload is logged with the files')
  await settled(() => front.watcher().check())
  t.equal(front.watcher().generation, 1, 'applied once: the key without its certificate was not')
  t.equal(await front.infer(2), 200, 'served with the new client certificate')

  // The pod drops the old CA: it accepts only the new certificate now.
  await podTrusts(pod, [newCa])
  const stale = pod.agentWith({ cert: oldClient.cert, key: oldClient.key })
  await t.rejects(pod.request('/v2/models/mnist', { dispatcher: stale }), 'the pod refuses the old client certificate')
  for (let i = 0; i < 4; i++) t.equal(await front.infer(i), 200, `digit ${i}: still served after the pod dropped the old CA`)
}

t.test('REST: the gateway keeps answering across a client-certificate rotation the pod enforces', (t) => rotation(t, 'rest'))
t.test('gRPC: the gateway keeps answering across a client-certificate rotation the pod enforces', (t) => rotation(t, 'grpc'))

t.test('a certificate without its key is not applied: logged, the old pair stays in use until the key arrives', async (t) => {
  const { pod } = await startPod(t)
  const front = await startFront(t, pod, 'rest', Number(new URL(pod.url).port))
  t.equal(await front.infer(0), 200)
  const newCa = await createCa(realDeps, { commonName: 'Half-way CA' })
  await podTrusts(pod, [await readFile(pod.pki.files.ca, 'utf8'), newCa.certPem])
  const next = await clientOf(newCa)

  const since = front.gw.logs.length
  await writeFileAtomic(front.files.certFile, next.certPem)
  t.equal(await front.watcher().check(), 'failed', 'a certificate whose key is not written yet is not applied')
  const refused = await front.gw.logged((l) => l.msg === REFUSED, since)
  t.equal(refused.level, 50, 'logged as an error')
  t.equal(refused.keyFile, front.files.keyFile, 'naming the files')
  t.match(refused.err, /key must belong to the certificate/, 'and what to do')
  t.equal(front.watcher().generation, 0)
  t.equal(await front.infer(1), 200, 'the old pair is still presented: served')
  t.equal(await front.watcher().check(), 'failed', 'checked again, still not usable')
  t.equal(front.gw.logsWith(REFUSED).length, 1, 'logged once per bad state')
  t.match(await front.gw.gateway.metrics.render(), /bulwark_upstream_tls_reloads_total\{model="mnist",outcome="failed"\} 1\n/, 'counted once per bad state, by model and outcome')

  await writeFileAtomic(front.files.keyFile, next.keyPem, 0o600)
  await settled(() => front.watcher().check())
  t.equal(front.watcher().generation, 1, 'the pair is applied once the key arrives')
  t.match(await front.gw.gateway.metrics.render(), /bulwark_upstream_tls_reloads_total\{model="mnist",outcome="changed"\} 1/, 'and counted')
  t.match(await front.gw.gateway.metrics.render(), /bulwark_upstream_tls_reloads_total\{model="mnist",outcome="failed"\} 1\n/, 'the bad state still counted once')
  await podTrusts(pod, [newCa])
  t.equal(await front.infer(2), 200, 'served with the new pair, which the pod alone accepts now')
})

t.test('reloading or unloading the model stops the old backend watching its files', async (t) => {
  const { pod } = await startPod(t)
  const front = await startFront(t, pod, 'rest', Number(new URL(pod.url).port))
  const old = front.watcher()
  t.ok(old.watching)
  const since = front.gw.logs.length
  t.equal(await front.gw.gateway.registry.loadVersion('mnist'), null, 'the model is loaded again')
  await front.gw.logged((l) => l.msg === 'model version closed: its last request is done', since)
  t.notOk(old.watching, 'the replaced backend no longer watches')
  t.not(front.watcher(), old)
  t.ok(front.watcher().watching, 'the new one does')
  t.equal(await front.infer(0), 200)

  const last = front.watcher()
  const unloading = front.gw.logs.length
  t.ok(front.gw.gateway.registry.unload('mnist'), 'the model is unloaded')
  await front.gw.logged((l) => l.msg === 'model version closed: its last request is done', unloading)
  t.notOk(last.watching, 'and its backend no longer watches')
})

/** A call the holding pod received, with the client certificate its connection presented. */
interface HeldCall {
  certSha256: string
  socket: TLSSocket
  /** Resolves when the call's connection closes. */
  closed: Promise<unknown>
  answer(): void
}

/** An mnist pod over mTLS that holds each call until the test answers it (200, scores from the first pixel). */
async function holdingPod(t: { teardown(fn: () => unknown): void }, ca: CertificateAuthority): Promise<{ endpoint: string; next: () => Promise<HeldCall> }> {
  const server = await issueCertificate(ca, realDeps, { commonName: 'localhost', usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] })
  const arrived: HeldCall[] = []
  const changes = new Changes()
  const pod = https.createServer({ ca: ca.certPem, cert: server.certPem, key: server.keyPem, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const socket = req.socket as TLSSocket
      const out = new Float32Array(10).fill(0.1)
      const head = Buffer.from(JSON.stringify({ model_name: 'mnist', outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [1, 10], parameters: { binary_data_size: out.byteLength } }] }))
      arrived.push({
        certSha256: socket.getPeerX509Certificate()!.fingerprint256,
        socket,
        closed: once(socket, 'close'),
        answer: () => res.writeHead(200, { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.byteLength) }).end(Buffer.concat([head, Buffer.from(out.buffer)])),
      })
      changes.notify()
    })
  })
  await new Promise<void>((r) => pod.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise<void>((r) => {
    pod.closeAllConnections()
    pod.close(() => r())
  }))
  let taken = 0
  return { endpoint: `https://127.0.0.1:${(pod.address() as AddressInfo).port}`, next: () => changes.until(() => arrived[taken] && arrived[taken++]) }
}

/**
 * A call held by the pod while the gateway's pair changes, then a call after the change: their
 * certificates are checked, both are answered 200. `beforeAnswer` sees both calls before they are answered.
 */
async function heldAcrossChange<C extends { certSha256: string; answer(): void }>(t: Test, protocol: 'rest' | 'grpc', pod: { endpoint: string; next: () => Promise<C> }, ca: CertificateAuthority, beforeAnswer: (held: C, fresh: C) => void): Promise<void> {
  const [first, second] = [await clientOf(ca), await clientOf(ca)]
  const front = await frontOf(t, pod.endpoint, protocol, { ca: ca.certPem, cert: first.certPem, key: first.keyPem })
  const inFlight = front.infer(0)
  const held = await pod.next()
  t.equal(held.certSha256, new X509Certificate(first.certPem).fingerprint256, 'the first call presents the first certificate')

  await writeFileAtomic(front.files.keyFile, second.keyPem, 0o600)
  await writeFileAtomic(front.files.certFile, second.certPem)
  await settled(() => front.watcher().check())
  t.equal(front.watcher().generation, 1, 'the new pair is applied while the first call is held')

  const after = front.infer(1)
  const fresh = await pod.next()
  t.equal(fresh.certSha256, new X509Certificate(second.certPem).fingerprint256, 'a call sent after the change presents the new certificate')
  beforeAnswer(held, fresh)
  fresh.answer()
  t.equal(await after, 200)
  held.answer()
  t.equal(await inFlight, 200, 'the call in flight across the change is answered')
}

t.test('REST: a call in flight when the certificate changes finishes on its connection, which closes after it', async (t) => {
  const ca = await createCa(realDeps, { commonName: 'Holding pod CA' })
  let held: HeldCall | null = null
  await heldAcrossChange(t, 'rest', await holdingPod(t, ca), ca, (first, fresh) => {
    t.not(fresh.socket, first.socket, 'on a new connection')
    held = first
  })
  await held!.closed
  t.pass('and the old connection closes once its call is done')
})

/** A gRPC mnist pod over mTLS that holds each ModelInfer until the test answers it; records the client certificate of each call. */
async function holdingGrpcPod(t: { teardown(fn: () => unknown): void }, ca: CertificateAuthority): Promise<{ endpoint: string; next: () => Promise<{ certSha256: string; answer(): void }> }> {
  const server = await issueCertificate(ca, realDeps, { commonName: 'localhost', usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] })
  const arrived: { certSha256: string; answer(): void }[] = []
  const changes = new Changes()
  const pod = new grpc.Server()
  pod.addService(inferenceServiceClient().service, {
    ModelInfer: (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<InferResponseMessage>) => {
      const out = Buffer.from(new Float32Array(10).fill(0.1).buffer)
      const response: InferResponseMessage = { model_name: 'mnist', model_version: '', id: '', parameters: {}, outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [1, 10], parameters: {} }], raw_output_contents: [out] }
      arrived.push({ certSha256: call.getAuthContext().sslPeerCertificate!.fingerprint256, answer: () => callback(null, response) })
      changes.notify()
    },
  })
  const credentials = grpc.ServerCredentials.createSsl(Buffer.from(ca.certPem), [{ cert_chain: Buffer.from(server.certPem), private_key: Buffer.from(server.keyPem) }], true)
  const port = await new Promise<number>((resolve, reject) => pod.bindAsync('127.0.0.1:0', credentials, (e, p) => (e ? reject(e) : resolve(p))))
  t.teardown(() => pod.forceShutdown())
  let taken = 0
  return { endpoint: `https://127.0.0.1:${port}`, next: () => changes.until(() => arrived[taken] && arrived[taken++]) }
}

t.test('gRPC: a call in flight when the certificate changes is answered; a call after it presents the new certificate', async (t) => {
  const ca = await createCa(realDeps, { commonName: 'Holding gRPC pod CA' })
  await heldAcrossChange(t, 'grpc', await holdingGrpcPod(t, ca), ca, () => {})
})
