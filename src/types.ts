// The request context that stages share, and the stage interface. Stages talk to each
// other only through this object; each field says which stage sets it.

import type { X509Certificate } from 'node:crypto'
import type { BulwarkError } from './errors.ts'
import type { Tensor } from './inference/tensor.ts'

export type Verb = 'infer' | 'metadata'

/** The workload that opened the TLS connection (set by mtls-identity). */
export interface WorkloadIdentity {
  /** SPIFFE ID from the certificate's URI SAN, else `cn:<subject CN>`. */
  id: string
  kind: 'spiffe' | 'cn' | 'none'
  /** SHA-256 of the client certificate (DER), hex, for audit. */
  certSha256?: string
}

/** The caller proven by a verified JWT (set by jwt-auth). */
export interface Principal {
  subject: string
  issuer: string
  scopes: string[]
  claims: Readonly<Record<string, unknown>>
  expiresAtMs: number
}

/** A decoded OIP v2 inference request (set by input-validation). */
export interface InferenceRequest {
  id?: string
  parameters: Record<string, unknown>
  inputs: Tensor[]
  /** Names of requested outputs, with per-output binary preference; empty = all. */
  outputs: { name: string; binary: boolean }[]
  /** Whether outputs not listed in `outputs` should be binary (request-level parameter). */
  binaryOutputs: boolean
  /** Batch size (first dimension), equal across inputs. */
  batchSize: number
}

/** The inference result (set by model-inference, changed by output-privacy). */
export interface InferenceResult {
  modelName: string
  modelVersion: string
  outputs: Tensor[]
  parameters: Record<string, unknown>
}

export interface ScreeningFlag {
  detector: string
  score: number
  threshold: number
  alarm: boolean
}

/** What the raw HTTP body looked like, before decoding (set by the route). */
export interface RawBody {
  contentType: 'json' | 'binary'
  /** The parsed JSON header (whole body for JSON requests). */
  header: unknown
  /** Bytes after the JSON header in binary requests. */
  binary?: Uint8Array
  sizeBytes: number
}

export interface RequestContext {
  /** Request id, unique per request (set by the server). */
  readonly id: string
  /** Wall time the request arrived, ms since epoch (set by the server). */
  readonly receivedAtMs: number
  /** Monotonic time the request arrived, ms (set by the server). */
  readonly startedMs: number
  /** Absolute monotonic deadline, ms (set by the server from config and the client's timeout). */
  deadlineMs: number
  readonly client: {
    address: string
    tlsVersion: string | null
    /** The verified client certificate of the TLS connection; null over plain HTTP (set by the server, read by mtls-identity). */
    peerCertificate: X509Certificate | null
  }
  readonly target: { model: string; version: string | null; verb: Verb }
  identity: WorkloadIdentity | null
  principal: Principal | null
  /** Raw credentials, readable only by jwt-auth; never logged or audited. */
  readonly bearerToken: string | null
  body: RawBody | null
  request: InferenceRequest | null
  result: InferenceResult | null
  flags: ScreeningFlag[]
  /** Privacy accounting for this answer (set by output-privacy). */
  privacy: { epsilonSpent: number; epsilonLeft: number; deltaSpent?: number } | null
  /** Milliseconds spent in each stage, keyed by stage name (set by the pipeline runner). */
  stageMs: Record<string, number>
  /** The error that ended the request, if any (set by the pipeline runner). */
  error: BulwarkError | null
  /** The stage that produced `error` (set by the pipeline runner). */
  failedStage: string | null
}

/** What is known when a request arrives; every other field starts empty. */
export type ContextOrigin = Pick<RequestContext, 'id' | 'receivedAtMs' | 'startedMs' | 'deadlineMs' | 'client' | 'target' | 'bearerToken'>

/** A request context with nothing set yet but what the transport knows at arrival. */
export function newRequestContext(origin: ContextOrigin): RequestContext {
  return {
    ...origin,
    identity: null,
    principal: null,
    body: null,
    request: null,
    result: null,
    flags: [],
    privacy: null,
    stageMs: {},
    error: null,
    failedStage: null,
  }
}

/**
 * One link of the pipeline. `phase: 'headers'` stages run before the body is read, so
 * unauthenticated callers cannot make the gateway parse large bodies; `phase: 'body'`
 * stages run after. A stage rejects by throwing a BulwarkError.
 */
export interface Stage {
  readonly name: string
  readonly phase: 'headers' | 'body'
  /** Which verbs the stage applies to. */
  readonly verbs: readonly Verb[]
  run(ctx: RequestContext): void | Promise<void>
}
