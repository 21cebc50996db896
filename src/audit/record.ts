// What one audit record holds, built from the request context and the response that left.
// Pure: no I/O, no clock; the caller passes the times.
//
// A record says who asked (workload identity, token subject and issuer, client address, TLS
// version; the identity is the client certificate's even when no link read it: server-level
// routes, unknown ones, refusals before the identity link), what (model, version, verb, method and path without the query string), what the
// gateway decided and why (decision, stage, status, code, the precise reason), how long each
// stage took, and SHA-256 digests of every input and output tensor (over the tensor's
// little-endian element bytes, so JSON and binary requests of the same tensor digest alike).
// Never raw tensor data, never the bearer token, never a certificate or key, never the query
// string (where clients sometimes put credentials).

import type { X509Certificate } from 'node:crypto'
import type { ErrorCode } from '../errors.ts'
import { tensorBytes, type Tensor } from '../inference/tensor.ts'
import { workloadIdentity } from '../stages/mtls-identity.ts'
import type { RequestContext, ScreeningFlag, Verb, WorkloadIdentity } from '../types.ts'
import { sha256 } from './chain.ts'

export interface TensorDigest {
  name: string
  datatype: string
  shape: number[]
  sha256: string
}

export interface AuditRecord {
  type: 'request'
  /** The gateway's request id (also sent to the client as x-request-id). */
  id: string
  receivedAt: string
  answeredAt: string
  durationMs: number
  method: string
  path: string
  client: { address: string; tls: string | null }
  /** The client certificate's workload (kind "none", id "" when it names none usable) and its SHA-256; null without one (TLS off). */
  identity: AuditIdentity | null
  principal: { sub: string; iss: string } | null
  model: string | null
  version: string | null
  /** The pipeline verb; "server" for routes that run no pipeline (health, GET /v2, unknown routes). */
  verb: Verb | 'server'
  /** allowed: answered as asked. denied: refused (4xx). error: the gateway could not serve (5xx). */
  decision: 'allowed' | 'denied' | 'error'
  /** The stage that refused or failed; "complete" when none did. */
  stage: string
  status: number
  code: ErrorCode | null
  /** The precise, operator-facing reason (never sent to the client). */
  reason: string | null
  stageMs: Record<string, number>
  bytesIn: number | null
  bytesOut: number | null
  /** SHA-256 of the raw body when it was read but not decoded into tensors (refused input). */
  bodySha256: string | null
  inputs: TensorDigest[] | null
  outputs: TensorDigest[] | null
  flags: ScreeningFlag[]
  privacy: { epsilonSpent: number; epsilonLeft: number; deltaSpent?: number } | null
}

export interface AuditIdentity {
  id: string
  kind: string
  certSha256: string | null
}

/** The facts about one exchange that the context does not hold. */
export interface ResponseFacts {
  id: string
  method: string
  /** URL without the query string. */
  path: string
  receivedAtMs: number
  answeredAtMs: number
  durationMs: number
  client: { address: string; tlsVersion: string | null }
  status: number
  bytesIn: number | null
  bytesOut: number | null
  /** The raw request body, if one was read. */
  rawBody: Uint8Array | null
  /** Why the HTTP parser refused the request (no route, no context, no error body of ours). */
  parserError?: string
  /** The connection's verified client certificate, for a request without a context (refused by the HTTP parser). */
  peerCertificate?: X509Certificate | null
}

const MAX_REASON = 1000
const MAX_PATH = 256

const round3 = (ms: number) => Math.round(ms * 1000) / 1000

function clip(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}...(${text.length - max} more)`
}

export function tensorDigest(t: Tensor): TensorDigest {
  return { name: t.name, datatype: t.datatype, shape: [...t.shape], sha256: sha256(tensorBytes(t.data)).toString('hex') }
}

// The server hands every request of a connection the same X509Certificate object: read it once.
const certIdentities = new WeakMap<X509Certificate, AuditIdentity>()

/**
 * Who the record names: the identity the mtls-identity link proved, else what the verified
 * client certificate says, read here, so a 404, a server-level route and a refusal before
 * that link (or by it: an expired certificate) still say which workload asked.
 */
function identityOf(proved: WorkloadIdentity | null, cert: X509Certificate | null | undefined): AuditIdentity | null {
  if (proved) return { id: proved.id, kind: proved.kind, certSha256: proved.certSha256 ?? null }
  if (!cert) return null
  let found = certIdentities.get(cert)
  if (found === undefined) {
    const w = workloadIdentity(cert)
    found = 'problem' in w ? { id: '', kind: 'none', certSha256: cert.fingerprint256.replace(/:/g, '').toLowerCase() } : { id: w.id, kind: w.kind, certSha256: w.certSha256 ?? null }
    certIdentities.set(cert, Object.freeze(found))
  }
  return { ...found }
}

export function buildAuditRecord(ctx: RequestContext | null, f: ResponseFacts): AuditRecord {
  const error = ctx?.error ?? null
  const parserError = f.parserError ?? null
  const refused = error !== null || parserError !== null
  const decision = !refused ? 'allowed' : f.status >= 500 ? 'error' : 'denied'
  const stage = ctx?.failedStage ?? (!refused ? 'complete' : 'transport')
  // A server-level request names no model.
  const modelCtx = ctx && ctx.target.verb !== 'server' ? ctx : null
  const stageMs: Record<string, number> = {}
  // eslint-disable-next-line bulwark/object-injection -- k is a stage name the pipeline wrote (own keys of ctx.stageMs), never request data
  if (ctx) for (const [k, v] of Object.entries(ctx.stageMs)) stageMs[k] = round3(v)
  const inputs = ctx?.request ? ctx.request.inputs.map(tensorDigest) : null
  const outputs = ctx?.result && f.status < 400 ? ctx.result.outputs.map(tensorDigest) : null
  const identity = identityOf(ctx?.identity ?? null, ctx ? ctx.client.peerCertificate : f.peerCertificate)
  const principal = ctx?.principal ? { sub: ctx.principal.subject, iss: ctx.principal.issuer } : null
  const reason = error ? error.reason : parserError
  return {
    type: 'request',
    id: f.id,
    receivedAt: new Date(f.receivedAtMs).toISOString(),
    answeredAt: new Date(f.answeredAtMs).toISOString(),
    durationMs: round3(f.durationMs),
    method: f.method,
    path: clip(f.path, MAX_PATH),
    client: { address: f.client.address, tls: f.client.tlsVersion },
    identity,
    principal,
    model: modelCtx ? modelCtx.target.model : null,
    // The version that answered, else the one asked for.
    version: modelCtx ? (modelCtx.result?.modelVersion ?? modelCtx.target.version) : null,
    verb: ctx ? ctx.target.verb : 'server',
    decision,
    stage,
    status: f.status,
    code: error?.code ?? null,
    reason: reason === null ? null : clip(reason, MAX_REASON),
    stageMs,
    bytesIn: ctx?.body?.sizeBytes ?? f.bytesIn,
    bytesOut: f.bytesOut,
    bodySha256: inputs === null && f.rawBody && f.rawBody.byteLength > 0 ? sha256(f.rawBody).toString('hex') : null,
    inputs,
    outputs,
    flags: ctx ? ctx.flags.map((fl) => ({ detector: fl.detector, score: fl.score, threshold: fl.threshold, alarm: fl.alarm, ...(fl.withheld ? { withheld: fl.withheld } : {}), ...(fl.degraded ? { degraded: fl.degraded } : {}), ...(fl.delayed !== undefined ? { delayed: fl.delayed } : {}) })) : [],
    privacy: ctx?.privacy ? { ...ctx.privacy } : null,
  }
}

/** The record as the JSON object text the writer chains (fixed key order). */
export function serializeAuditRecord(r: AuditRecord): string {
  return JSON.stringify(r)
}
