// Abuse alongside normal traffic: does what an abusive client can send leave the others'
// service alone? One gateway with the defended configuration (mTLS, JWT, policies, rate
// limits, audit on); normal traffic is mnist binary at a fixed concurrency with a valid
// token. Rounds alternate, so drift in machine load hits both alike:
//   quiet:  the normal traffic alone;
//   abused: the same, while one client with only a certificate keeps stalled unauthenticated
//           uploads open (30 MiB announced, 1 KiB sent; each closed one reopened after a
//           pause), sends requests for invented model names, and sends requests with forged
//           tokens, all from its own loopback address (127.0.0.2).
// The abusive client is as frugal as a real one with its own machine would be (one TLS context,
// TLS only on connections the gateway has not reset), since here it spends the same two cores.
// Reported: the normal traffic's items/s (abused as a ratio of quiet), p50/p99, how the abusive
// connections ended (reset before the handshake, or the HTTP status), the gateway's peak RSS,
// the /metrics size and the audit folder's growth, CPU per round, and a last round of the
// abuse alone (what it costs the gateway, and the abusive client itself). The abusive client
// runs at the lowest CPU priority, standing in for the machine of its own it would have;
// ABUSE_SAME_PRIORITY=1 runs it at the normal traffic's. ABUSE_CONN_RATE=N runs the gateway
// with server.newConnectionsPerSecondPerAddress N instead of its default, to see how much of
// that cost the handshakes are. Every load is bounded in time, targets 127.0.0.1 and stops by
// itself.

import { readFileSync } from 'node:fs'
import path from 'node:path'
import net from 'node:net'
import os from 'node:os'
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads'
import tls from 'node:tls'
import { realDeps } from '../src/deps.ts'
import { issueCertificate, loadCertificateAuthority } from '../src/dev/pki.ts'
import { closedLoop, type LoadResult } from './load.ts'
import { binaryRequest, type LoadRequest } from '../kit/payloads.ts'
import { noDefences, startGateway, type GatewayProcess } from '../kit/gateway-process.ts'
import { secureEnv, type SecureEnv } from './secure-env.ts'
import { mnistDigits, type BenchOptions } from './core.ts'
import type { Row } from './report.ts'
import { cpuSeconds, folderBytes, rssBytes } from './host.ts'

const STALLED_UPLOADS = 32
/** Each stalled-upload slot reconnects this long after the gateway closes it: about 640 attempts a second in all. */
const RECONNECT_PAUSE_MS = 50
/** How long the abusive client waits after its TCP connection is up, for a reset, before it starts TLS. */
const TCP_FIRST_MS = 5
const JUNK_RATE = 200
/** The abusive client's own loopback address, so per-address limits can tell it from the normal traffic. */
const ABUSER = '127.0.0.2'

/** How the abusive client's connections ended: `reset` (closed by the gateway before the TLS handshake), an HTTP status, or `closed` (after the handshake, unanswered). */
type Outcomes = Record<string, number>

interface Attacker {
  port: number
  secureContext: tls.SecureContext
  until: number
  outcomes: Outcomes
}

/**
 * One abusive connection: TCP first, and TLS only if the gateway has not reset it within a few
 * ms (an attacker spends no handshake of its own on a connection already refused), then
 * `request`. Resolves once the gateway closes it, or at the round's end.
 */
function attempt(a: Attacker, request: Buffer): Promise<void> {
  return new Promise<void>((resolve) => {
    let outcome = 'reset'
    const tcp = net.connect({ host: '127.0.0.1', port: a.port, localAddress: ABUSER })
    tcp.setTimeout(Math.max(1, a.until - Date.now()), () => tcp.destroy())
    tcp.on('error', () => {})
    tcp.once('close', () => {
      a.outcomes[outcome] = (a.outcomes[outcome] ?? 0) + 1
      resolve()
    })
    tcp.once('connect', () =>
      setTimeout(() => {
        if (tcp.destroyed) return
        // One TLS context for every connection, as an attacker who wants many would have: a
        // context per connection costs this machine's CPU, not the gateway's.
        const socket = tls.connect({ socket: tcp, secureContext: a.secureContext, servername: 'localhost' })
        socket.on('error', () => {})
        socket.once('secureConnect', () => {
          outcome = 'closed'
          socket.write(request)
        })
        socket.once('data', (d: Buffer) => (outcome = /^HTTP\/1\.1 (\d{3})/.exec(d.toString('latin1'))?.[1] ?? 'closed'))
      }, TCP_FIRST_MS),
    )
  })
}

/** The stalled uploads: `STALLED_UPLOADS` slots, each reopened RECONNECT_PAUSE_MS after the gateway closes it. */
async function stalledUploads(a: Attacker): Promise<void> {
  const upload = Buffer.from(`POST /v2/models/mnist/infer HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: ${30 * 1024 * 1024}\r\n\r\n${' '.repeat(1024)}`)
  await Promise.all(
    Array.from({ length: STALLED_UPLOADS }, async () => {
      while (Date.now() < a.until) {
        await attempt(a, upload)
        await new Promise((r) => setTimeout(r, RECONNECT_PAUSE_MS))
      }
    }),
  )
}

/** JUNK_RATE requests a second, each on a connection of its own (the gateway closes it after the refusal anyway). */
async function junkRequests(a: Attacker, request: (i: number) => Buffer): Promise<void> {
  const sent: Promise<void>[] = []
  for (let i = 0; Date.now() < a.until; i++) {
    sent.push(attempt(a, request(i)))
    await new Promise((r) => setTimeout(r, 1000 / JUNK_RATE))
  }
  await Promise.all(sent)
}

/** `r` as raw HTTP/1.1 bytes, to send as is. */
function rawRequest(r: LoadRequest): Buffer {
  const body = r.body === undefined ? Buffer.alloc(0) : Buffer.from(r.body)
  const headers = Object.entries({ host: 'localhost', ...r.headers, 'content-length': String(body.length) }).map(([k, v]) => `${k}: ${v}\r\n`)
  return Buffer.concat([Buffer.from(`${r.method} ${r.path} HTTP/1.1\r\n${headers.join('')}\r\n`), body])
}

/** TLS client credentials: the CA to trust, and a client certificate and key. */
interface Creds {
  ca: string
  cert: string
  key: string
}

/** A client certificate of its own for the abusive client, from the bench's dev CA. */
async function abuserCreds(env: SecureEnv): Promise<Creds> {
  const ca = await loadCertificateAuthority(readFileSync(env.pki.files.ca, 'utf8'), readFileSync(env.pki.files.caKey, 'utf8'))
  const issued = await issueCertificate(ca, realDeps, { commonName: 'abuser', usage: 'client', uris: ['spiffe://bulwark.local/ns/default/sa/abuser'] })
  return { ca: env.connect.ca, cert: issued.certPem, key: issued.keyPem }
}

interface Round {
  normal: LoadResult
  junk?: Outcomes
  stalled?: Outcomes
  peakRssBytes: number
  /** CPU seconds per wall second: the gateway's, and this bench process's (normal load and abuse threads together). */
  gatewayCpu?: number
  benchCpu?: number
}

type Mode = 'quiet' | 'abused' | 'abuse alone'

async function round(gw: GatewayProcess, env: SecureEnv, abuser: Creds, opts: BenchOptions, mode: Mode, digits: Float32Array[]): Promise<Round> {
  const origin = `https://127.0.0.1:${gw.apiPort}`
  const good = digits.map((d) => binaryRequest('mnist', 'input', [1, 1, 28, 28], d, { authorization: `Bearer ${env.token}` }))
  let peak = rssBytes(gw.child.pid!)
  const sampler = setInterval(() => (peak = Math.max(peak, rssBytes(gw.child.pid!))), 100)
  const until = Date.now() + opts.warmupMs + opts.durationMs
  try {
    const normal = closedLoop({ origin, connect: env.connect, concurrency: mode === 'abuse alone' ? 1 : 16, maxRequests: mode === 'abuse alone' ? 1 : undefined, durationMs: opts.durationMs, warmupMs: opts.warmupMs, next: (i) => good[i % good.length]! })
    if (mode === 'quiet') return { normal: await normal, peakRssBytes: peak }
    // The abuse runs on a thread of its own: in the load generator's event loop its client-side
    // handshakes would slow the normal traffic's own client, and the figure would blame the gateway.
    const abuse = runAbuseThread({ origin, port: gw.apiPort, abuser, token: env.token, request: good[0]!, durationMs: opts.durationMs, warmupMs: opts.warmupMs, until })
    const [n, a] = await Promise.all([normal, abuse])
    return { normal: n, junk: a.junk, stalled: a.stalled, peakRssBytes: peak }
  } finally {
    clearInterval(sampler)
  }
}

interface AbuseJob {
  origin: string
  port: number
  abuser: Creds
  token: string
  request: LoadRequest
  durationMs: number
  warmupMs: number
  until: number
}

/** The abusive client's traffic for one round: junk requests and stalled uploads, side by side. */
async function abuse(job: AbuseJob): Promise<AbuseOutcomes> {
  const forged = `Bearer ${job.token.slice(0, -8)}AAAAAAAA`
  const { authorization: _, ...anonymous } = job.request.headers ?? {}
  const secureContext = tls.createSecureContext(job.abuser)
  const junk: Attacker = { port: job.port, secureContext, until: job.until, outcomes: {} }
  const stalled: Attacker = { port: job.port, secureContext, until: job.until, outcomes: {} }
  // Two kinds, alternately: an invented model name with no token, and a real model with a forged token.
  const withForged = rawRequest({ ...job.request, headers: { ...job.request.headers, authorization: forged } })
  const request = (i: number) => (i % 2 === 0 ? rawRequest({ ...job.request, path: `/v2/models/junk-${i}/infer`, headers: anonymous }) : withForged)
  await Promise.all([junkRequests(junk, request), stalledUploads(stalled)])
  return { junk: junk.outcomes, stalled: stalled.outcomes }
}

interface AbuseOutcomes {
  junk: Outcomes
  stalled: Outcomes
}

function runAbuseThread(job: AbuseJob): Promise<AbuseOutcomes> {
  const worker = new Worker(new URL(import.meta.url), { workerData: { abuse: job } })
  return new Promise((resolve, reject) => {
    worker.once('message', resolve)
    worker.once('error', reject)
  })
}

// On the abuse thread: run the job, report, and end.
if (!isMainThread && (workerData as { abuse?: AbuseJob } | null)?.abuse) {
  // The attacker would have a machine of its own: at the lowest priority its own work takes
  // only CPU the gateway and the normal traffic leave idle (on Linux the nice value is per
  // thread). The kernel's work for its packets still lands on these cores.
  if (!process.env.ABUSE_SAME_PRIORITY) os.setPriority(19)
  const result = await abuse((workerData as { abuse: AbuseJob }).abuse)
  parentPort!.postMessage(result)
}

/** Outcomes summed over rounds: `N connections: {outcome: count}`. */
function describe(rounds: Outcomes[]): string {
  const sum: Outcomes = {}
  for (const r of rounds) for (const [k, n] of Object.entries(r)) sum[k] = (sum[k] ?? 0) + n
  return `${Object.values(sum).reduce((a, b) => a + b, 0)} connections: ${JSON.stringify(sum)}`
}

export async function abuseBench(opts: BenchOptions, log: (s: string) => void): Promise<{ rows: Row[]; raw: unknown }> {
  const group = 'abuse'
  const env = await secureEnv()
  const config = {
    ...noDefences,
    tls: { enabled: true },
    auth: { enabled: true },
    authorization: { enabled: true },
    rateLimits: { enabled: true, maxInFlightPerPrincipal: 1024 },
    audit: { enabled: true, directory: path.join(env.dir, 'audit') },
    policies: { directory: env.policies() },
    models: { serve: [{ name: 'mnist', workers: 1, intraOpThreads: 1 }] },
    ...(process.env.ABUSE_CONN_RATE ? { server: { newConnectionsPerSecondPerAddress: Number(process.env.ABUSE_CONN_RATE) } } : {}),
  }
  const gw = await startGateway(config, { cwd: env.dir })
  const digits = mnistDigits(100)
  const abuser = await abuserCreds(env)
  const rounds: { mode: Mode; r: Round; metricsBytes: number; auditBytes: number }[] = []
  try {
    for (const mode of ['quiet', 'abused', 'quiet', 'abused', 'abuse alone'] as const) {
      log(`${mode} round`)
      const auditBefore = folderBytes(config.audit.directory)
      const cpu0 = cpuSeconds(gw.child.pid!)
      const own0 = process.cpuUsage()
      const t0 = Date.now()
      const r = await round(gw, env, abuser, opts, mode, digits)
      const wall = (Date.now() - t0) / 1000
      const own = process.cpuUsage(own0)
      r.gatewayCpu = (cpuSeconds(gw.child.pid!) - cpu0) / wall
      r.benchCpu = (own.user + own.system) / 1e6 / wall
      const metricsBytes = (await (await fetch(`http://127.0.0.1:${gw.adminPort}/metrics`)).text()).length
      rounds.push({ mode, r, metricsBytes, auditBytes: folderBytes(config.audit.directory) - auditBefore })
    }
  } finally {
    await gw.stop()
  }
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length
  const quiet = rounds.filter((x) => x.mode === 'quiet')
  const abused = rounds.filter((x) => x.mode === 'abused')
  const alone = rounds.filter((x) => x.mode === 'abuse alone')
  const quietRate = mean(quiet.map((x) => x.r.normal.itemsPerSec))
  const rows: Row[] = []
  for (const [name, set] of [['normal traffic, quiet', quiet], ['normal traffic, under abuse', abused]] as const) {
    const rate = mean(set.map((x) => x.r.normal.itemsPerSec))
    const junk = set.flatMap((x) => (x.r.junk ? [x.r.junk] : []))
    const stalled = set.flatMap((x) => (x.r.stalled ? [x.r.stalled] : []))
    const notes = [
      `CPU: gateway ${mean(set.map((x) => x.r.gatewayCpu ?? NaN)).toFixed(2)}, load and abuse ${mean(set.map((x) => x.r.benchCpu ?? NaN)).toFixed(2)} cores`,
      `peak RSS ${(Math.max(...set.map((x) => x.r.peakRssBytes)) / 2 ** 20).toFixed(0)} MiB`,
      `/metrics ${(Math.max(...set.map((x) => x.metricsBytes)) / 1024).toFixed(0)} KB`,
      `audit +${(mean(set.map((x) => x.auditBytes)) / 1024).toFixed(0)} KB/round`,
      ...(junk.length ? [`junk requests ${describe(junk)}`] : []),
      ...(stalled.length ? [`stalled uploads ${describe(stalled)}`] : []),
    ]
    rows.push({
      group,
      scenario: `mnist binary c16: ${name}`,
      concurrency: 16,
      itemsPerSec: rate,
      p50: mean(set.map((x) => x.r.normal.p50)),
      p99: mean(set.map((x) => x.r.normal.p99)),
      ratio: rate / quietRate,
      ratioTo: 'quiet',
      errors: set.reduce((n, x) => n + x.r.normal.requests - x.r.normal.ok, 0),
      note: notes.join('; '),
    })
  }
  const a = alone[0]!.r
  rows.push({
    group,
    scenario: 'the abuse alone: what it costs the gateway',
    concurrency: 'open',
    itemsPerSec: NaN,
    note: `gateway CPU ${(a.gatewayCpu ?? NaN).toFixed(2)} cores (quiet normal traffic: ${mean(quiet.map((x) => x.r.gatewayCpu ?? NaN)).toFixed(2)}); the abusive client's own CPU ${(a.benchCpu ?? NaN).toFixed(2)} cores; junk requests ${describe([a.junk ?? {}])}; stalled uploads ${describe([a.stalled ?? {}])}`,
  })
  return { rows, raw: rounds }
}
