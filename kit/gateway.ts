// startGateway(): a real Bulwark gateway in this process, for tests and the evaluations,
// listening on 127.0.0.1 (random ports) with the full front door: mTLS and JWT from a
// development PKI written into a fresh temp dir, the repo's bundled policies (or the ones a
// test gives), and the repo's models.
//
//   const gw = await startGateway({ models: ['mnist'] })
//   t.teardown(() => gw.close())
//   const res = await gw.request('/v2/models/mnist/infer', { body: mnistRequest })
//   t.equal(res.status, 200)
//
// What it gives:
//   gw.url / gw.adminUrl   https://127.0.0.1:PORT (http:// with frontDoor: false) / admin http URL
//   gw.request(path, o)    one request through a real TLS connection with the dev client
//                          certificate and, unless `token: null`, a fresh dev token
//   gw.token(o)            a dev JWT (sub, scopes, ttl, audience, issuer, extra claims)
//   gw.agent               the undici Agent presenting the dev client certificate
//   gw.agentWith(tls)      an Agent with other credentials (foreign CA, expired cert, none)
//   gw.ca                  the dev CA, to issue more certificates (issueCertificate)
//   gw.pki.files           absolute paths of ca.pem, client.pem, jwt-key.pem, jwks.json...
//   gw.logs                every log line the gateway wrote, parsed (refusal reasons live here)
//   gw.logged(match)       the first log line `match` accepts, as soon as it is written (no polling)
//   gw.gateway             the Gateway itself (metrics, tls reloader, stages)
//   gw.close()             stops the gateway, closes the agents, removes the temp dir
//
// Everything lives in the temp dir `gw.dir` (the config's baseDir): `.bulwark/dev/` for the
// PKI, `policies/` for the policies; models are read from the repo's models/ folder.

import { mkdtemp, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { Agent, request as undiciRequest, type Dispatcher } from 'undici'
import { stringify } from 'yaml'
import type { JWTPayload } from 'jose'
import { loadSigningKey, mintToken, type SigningKey } from '../src/dev/mint-token.ts'
import { buildConfig } from '../src/config/load.ts'
import { scopesFor, type PolicySet } from '../src/config/policy.ts'
import { DEV_AUDIENCE, DEV_DIR, DEV_ISSUER, DEV_WORKLOAD } from '../src/config/security.ts'
import { realDeps, type Deps } from '../src/deps.ts'
import { loadCertificateAuthority, writeDevPki, type CertificateAuthority, type DevPki } from '../src/dev/pki.ts'
import { buildGateway, type Gateway } from '../src/server.ts'
import { repoRoot } from './paths.ts'
import { Changes } from './wait.ts'

export interface StartOptions {
  /** Models to serve from the repo's models/ folder (default: none; the front door needs no model). */
  models?: string[]
  /** Policies to write into <dir>/policies, by model name (objects, written as YAML); default: the repo's policies/. */
  policies?: Record<string, unknown>
  /** Config merged (deeply) over the test config; e.g. { rateLimits: { maxInFlightPerPrincipal: 1 } }. */
  config?: Record<string, unknown>
  /** false: plain HTTP with tls, auth, authorization and rate limits off (the benchmark baseline). Default true. */
  frontDoor?: boolean
  /** Clock and random source of the gateway (default: the real ones). */
  deps?: Deps
}

export interface TokenOptions {
  sub?: string
  /** Scopes; default: what the gateway's policies grant the dev workload on every served model. */
  scopes?: string[]
  ttlSeconds?: number
  audience?: string | string[]
  issuer?: string
  notBeforeSeconds?: number
  /** Extra or overriding claims (exp, iat, nbf... to craft bad tokens). */
  claims?: JWTPayload
}

export interface RequestOptions {
  method?: 'GET' | 'POST'
  /** The bearer token; undefined: a fresh dev token; null: no Authorization header. */
  token?: string | null
  /** Raw Authorization header value (overrides token). */
  authorization?: string
  /** A JSON body (POST). */
  body?: unknown
  headers?: Record<string, string>
  /** Another client (agentWith(...)); default: the dev client certificate. */
  dispatcher?: Dispatcher
}

export interface TestResponse {
  status: number
  headers: Record<string, string | string[] | undefined>
  /** The parsed JSON body (or the text, when it is not JSON). */
  body: any
}

export interface TestGateway {
  readonly dir: string
  readonly url: string
  readonly adminUrl: string
  readonly gateway: Gateway
  readonly pki: DevPki
  readonly ca: CertificateAuthority
  readonly agent: Agent
  readonly logs: Record<string, unknown>[]
  token(o?: TokenOptions): Promise<string>
  request(urlPath: string, o?: RequestOptions): Promise<TestResponse>
  agentWith(tls: { cert?: string; key?: string; ca?: string }): Agent
  /** Log lines whose msg matches, e.g. logsWith('request refused'). */
  logsWith(msg: string): Record<string, unknown>[]
  /** The first log line from index `since` (default 0) that `match` accepts; waits for it to be written. */
  logged(match: (line: Record<string, unknown>) => boolean, since?: number): Promise<Record<string, unknown>>
  close(): Promise<void>
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v)

/** `over` merged into `base`, objects recursively, anything else replaced. */
export function deepMerge(base: Record<string, unknown>, over: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = { ...base }
  for (const [k, v] of Object.entries(over)) out[k] = isObject(v) && isObject(out[k]) ? deepMerge(out[k] as Record<string, unknown>, v) : v
  return out
}

/** Config keys that switch the whole front door off (plain HTTP, no stages). */
export const frontDoorOff = {
  tls: { enabled: false },
  auth: { enabled: false },
  authorization: { enabled: false },
  rateLimits: { enabled: false },
}

export type LogLine = Record<string, unknown>

/** A pino stream that keeps every line, parsed, and lets a test wait for one. */
export interface LogSink {
  readonly lines: LogLine[]
  readonly stream: { write(line: string): void }
  /** The first line from index `since` (default 0) that `match` accepts: now, or when it is written. */
  next(match: (line: LogLine) => boolean, since?: number): Promise<LogLine>
}

export function logSink(): LogSink {
  const lines: LogLine[] = []
  const written = new Changes()
  return {
    lines,
    stream: {
      write(line) {
        lines.push(JSON.parse(line) as LogLine)
        written.notify()
      },
    },
    next: (match, since = 0) => written.until(() => lines.slice(since).find(match)),
  }
}

async function writePolicies(dir: string, policies: Record<string, unknown> | undefined): Promise<void> {
  const target = path.join(dir, 'policies')
  await mkdir(target, { recursive: true })
  if (policies === undefined) {
    const source = path.join(repoRoot, 'policies')
    for (const name of await readdir(source)) await writeFile(path.join(target, name), await readFile(path.join(source, name)))
    return
  }
  for (const [model, policy] of Object.entries(policies)) await writeFile(path.join(target, `${model}.yaml`), stringify(policy))
  // Screening calibrations that policies refer to travel with them.
  const source = path.join(repoRoot, 'policies')
  for (const name of (await readdir(source)).filter((n) => n.endsWith('.screening.json'))) {
    await writeFile(path.join(target, name), await readFile(path.join(source, name)))
  }
}

export async function startGateway(o: StartOptions = {}): Promise<TestGateway> {
  const deps = o.deps ?? realDeps
  const frontDoor = o.frontDoor ?? true
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-test-'))
  const pki = await writeDevPki(path.join(dir, DEV_DIR), deps)
  const ca = await loadCertificateAuthority(await readFile(pki.files.ca, 'utf8'), await readFile(pki.files.caKey, 'utf8'))
  await writePolicies(dir, o.policies)

  let raw: Record<string, unknown> = {
    // Every test client connects from 127.0.0.1: at the default closedOnRefusalCost, a test's
    // run of refusals without a token would cost the next tests their connections. The
    // connection limits' own tests set it back.
    server: { listen: '127.0.0.1:0', admin: '127.0.0.1:0', closedOnRefusalCost: 1 },
    // One inference worker per model (the default is two): half the threads to start per test
    // gateway on a 2-core machine; the tests that are about workers say how many.
    models: { directory: path.join(repoRoot, 'models'), defaults: { workers: 1 }, serve: (o.models ?? []).map((name) => ({ name })) },
    // Audit records, when the audit part is present, go to the temp dir too (its defaults are relative).
  }
  if (!frontDoor) raw = deepMerge(raw, frontDoorOff)
  if (o.config) raw = deepMerge(raw, o.config)
  const config = buildConfig(raw, 'test config')

  const sink = logSink()
  const logs = sink.lines
  const gateway = await buildGateway({ config, baseDir: dir, source: 'test config' }, deps, { logLevel: 'info', logStream: sink.stream })
  await gateway.load()
  await gateway.api.listen({ host: '127.0.0.1', port: 0 })
  await gateway.admin.listen({ host: '127.0.0.1', port: 0 })
  const port = (gateway.api.server.address() as AddressInfo).port
  const adminPort = (gateway.admin.server.address() as AddressInfo).port
  const tls = config.tls.enabled
  const url = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`

  const [caPem, clientCert, clientKey] = await Promise.all([
    readFile(pki.files.ca, 'utf8'),
    readFile(pki.files.clientCert, 'utf8'),
    readFile(pki.files.clientKey, 'utf8'),
  ])
  const agents: Agent[] = []
  const agentWith = (c: { cert?: string; key?: string; ca?: string }) => {
    const a = new Agent({ connect: { ca: c.ca ?? caPem, ...(c.cert ? { cert: c.cert } : {}), ...(c.key ? { key: c.key } : {}) } })
    agents.push(a)
    return a
  }
  const agent = agentWith({ cert: clientCert, key: clientKey })

  let signing: SigningKey | null = null
  const defaultScopes = scopesFor(gateway.policies as PolicySet, o.models ?? [...gateway.policies.keys()], DEV_WORKLOAD)
  const token = async (t: TokenOptions = {}) => {
    signing ??= await loadSigningKey(pki.files.jwtKey, pki.files.jwks)
    return mintToken(
      signing,
      {
        issuer: t.issuer ?? DEV_ISSUER,
        audience: t.audience ?? DEV_AUDIENCE,
        subject: t.sub ?? 'dev',
        scopes: t.scopes ?? defaultScopes,
        ttlSeconds: t.ttlSeconds ?? 300,
        ...(t.notBeforeSeconds !== undefined ? { notBeforeSeconds: t.notBeforeSeconds } : {}),
        ...(t.claims ? { claims: t.claims } : {}),
      },
      deps,
    )
  }

  const request = async (urlPath: string, r: RequestOptions = {}): Promise<TestResponse> => {
    const headers: Record<string, string> = { ...r.headers }
    const bearer = r.token === undefined ? (config.auth.enabled ? await token() : null) : r.token
    if (r.authorization !== undefined) headers.authorization = r.authorization
    else if (bearer !== null) headers.authorization = `Bearer ${bearer}`
    let body: string | undefined
    if (r.body !== undefined) {
      body = JSON.stringify(r.body)
      headers['content-type'] ??= 'application/json'
    }
    const res = await undiciRequest(`${url}${urlPath}`, {
      method: r.method ?? (body === undefined ? 'GET' : 'POST'),
      headers,
      ...(body !== undefined ? { body } : {}),
      dispatcher: r.dispatcher ?? (tls ? agent : undefined),
    })
    const text = await res.body.text()
    let parsed: unknown = text
    try {
      parsed = JSON.parse(text)
    } catch {}
    return { status: res.statusCode, headers: res.headers, body: parsed }
  }

  return {
    dir,
    url,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    gateway,
    pki,
    ca,
    agent,
    logs,
    token,
    request,
    agentWith,
    logsWith: (msg) => logs.filter((l) => l.msg === msg),
    logged: sink.next,
    async close() {
      await gateway.close(2_000)
      await Promise.all(agents.map((a) => a.destroy()))
      await rm(dir, { recursive: true, force: true })
    },
  }
}

/** The mnist request body of the first-request example (a handwritten 7). */
export async function mnistRequest(): Promise<unknown> {
  return JSON.parse(await readFile(path.join(repoRoot, 'test', 'fixtures', 'mnist-request.json'), 'utf8'))
}
