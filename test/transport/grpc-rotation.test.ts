// Certificate rotation reaches the gRPC listener: when the server certificate, its key and
// the CA bundle are replaced on disk, a gRPC client that trusts only the new CA and presents a
// certificate from it is served, and a client of the old CA can no longer connect.

import t from 'tap'
import { readFile } from 'node:fs/promises'
import * as grpc from '@grpc/grpc-js'
import { startGateway } from '../../kit/gateway.ts'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { createCa, issueCertificate, writeFileAtomic } from '../../src/dev/pki.ts'
import { realDeps } from '../../src/deps.ts'
import { inferenceServiceClient } from '../../src/transport/grpc.ts'

const gw = await startGateway({ config: { tls: { reloadCheckIntervalMs: 200 } } })
const port = await gw.gateway.grpc!.listen('127.0.0.1', 0)
t.teardown(() => gw.close())
const { files } = gw.pki

// The client the gateway's own definition makes: the same .proto files.
const Service = inferenceServiceClient()
const clients: grpc.Client[] = []
t.teardown(() => clients.forEach((c) => c.close()))

/** ServerLive over a new channel that trusts `ca` and presents `cert`: the status code (0 when it answered). */
function live(ca: string, cert: string, key: string): Promise<grpc.status> {
  const client = new Service(`127.0.0.1:${port}`, grpc.credentials.createSsl(Buffer.from(ca), Buffer.from(key), Buffer.from(cert)))
  clients.push(client)
  return new Promise((resolve) => (client as any).ServerLive({}, { deadline: Date.now() + 5000 }, (err: grpc.ServiceError | null) => resolve(err ? err.code : grpc.status.OK)))
}

t.test('a rotated certificate and CA bundle are used by the gRPC listener', async (t) => {
  const [oldCa, oldCert, oldKey] = await Promise.all([files.ca, files.clientCert, files.clientKey].map((f) => readFile(f, 'utf8')))
  t.equal(await live(oldCa!, oldCert!, oldKey!), grpc.status.OK, 'the dev client is served before the rotation')

  const newCa = await createCa(realDeps, { commonName: 'Rotated CA' })
  const server = await issueCertificate(newCa, realDeps, { commonName: 'localhost', usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] })
  const client = await issueCertificate(newCa, realDeps, { commonName: 'dev', usage: 'client', uris: [DEV_WORKLOAD] })
  const generation = gw.gateway.tls!.generation
  await writeFileAtomic(files.serverKey, server.keyPem, 0o600)
  await writeFileAtomic(files.serverCert, server.certPem)
  await writeFileAtomic(files.ca, newCa.certPem)
  await gw.logged((l) => l.msg === 'TLS certificate, key or CA changed on disk; new connections use them' && (l.generation as number) > generation)
  // Every file is on disk by now: each check reads the final set.
  while ((await gw.gateway.tls!.check()) !== 'unchanged');

  t.equal(await live(newCa.certPem, client.certPem, client.keyPem), grpc.status.OK, 'a client of the new CA is served')
  t.equal(await live(oldCa!, oldCert!, oldKey!), grpc.status.UNAVAILABLE, 'a client of the old CA cannot connect')
})
