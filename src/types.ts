// The request context that stages share, and the stage interface. Stages talk to each
// other only through this object; each field says which stage sets it.

import type { X509Certificate } from 'node:crypto'
import type { BulwarkError } from './errors.ts'
import type { Tensor } from './inference/tensor.ts'

/** What a request asks of a model; 'server' for requests that name none (health, server metadata, unknown routes). */
export type Verb = ModelVerb | 'server'

/** The verbs a policy grants on a model. */
export type ModelVerb = 'infer' | 'metadata'

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

/** The inference result (set by model-inference; screen-output strips the variants; output-privacy changes it from what privacy-charge paid for). */
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
  /** The items (0-based, request order) of a batch this per-item detector withheld; absent when none. */
  withheld?: number[]
  /** The request was answered from the degraded mechanism (screening.onAlarm: degrade) because of this alarm or cool-down. */
  degraded?: true
  /** screening.onAlarm: delay: the caller's queries still answered before the 403 this alarm earned. */
  delayed?: number
}

export interface Exchange {
  method: string
  /** The path without the query string. */
  path: string
  /** The route template that matched (e.g. /v2/models/:model/infer); '' when none did. */
  route: string
  /** The body length the client declared, if it did. */
  declaredBytes: number | null
  /** The W3C traceparent the caller sent, if any. */
  traceparent: string | undefined
  /** The W3C tracestate the caller sent with it, if any (vendor entries, carried along upstream). */
  tracestate?: string | undefined
}

/** A request body as the transport delivers it, read in full. */
export interface IncomingBody {
  bytes: Buffer
  /** The JSON header's length for binary tensor requests, as the client sent it; undefined for JSON bodies. */
  headerLength: string | undefined
}

/** What the raw HTTP body looked like, before decoding (set by body-read). */
export interface RawBody {
  contentType: 'json' | 'binary'
  /** The parsed JSON header (whole body for JSON requests). */
  header: unknown
  /** Bytes after the JSON header in binary requests. */
  binary?: Uint8Array
  sizeBytes: number
}

/** The items screen-variants appended to the model's batch, for screen-output to judge and strip. */
export interface ScreeningVariants {
  /** Items of the caller's own request: the first rows of the batch. */
  originals: number
  /** Variants per original item, per variant-making detector in the model's detector order. */
  perDetector: number[]
  /** The output the output-side detectors read (privacy-charge pays for its rows too). */
  output: string
  /**
   * Verdicts on the model's raw scores this request may get: per enforcing detector that
   * judges the variants' scores, one per item (each item is answered or withheld on its own).
   * privacy-charge pays for each and draws its randomized-response flip
   * (ChargedRelease.verdictFlips, detector by detector, item by item).
   */
  verdicts: number
}

/** What privacy-charge paid for before any link read the model's output (docs/privacy.md). */
export interface ChargedRelease {
  /**
   * Each protected output that a later link reads, for the caller's items only: noised, in the
   * policy's mode. output-privacy releases these; screen-output judges the extraction detector
   * on the screened output's copy, never on the raw scores.
   */
  outputs: ReadonlyMap<string, Tensor>
  /** One randomized-response flip per paid verdict, in detector order (screen-output applies them). */
  verdictFlips: readonly boolean[]
  /** The response parameters that describe the charge (privacy_*). */
  parameters: Readonly<Record<string, unknown>>
}

/** The answer as the transport is about to send it (set by the transport before the response links run). */
export interface AnswerFacts {
  status: number
  /** Bytes of the body sent, when known. */
  bytesOut: number | null
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
  /** What the transport knows of the exchange, for the trace and the audit record (set by the transport). */
  readonly exchange: Exchange
  identity: WorkloadIdentity | null
  principal: Principal | null
  /** Raw credentials, readable only by jwt-auth; never logged or audited. */
  readonly bearerToken: string | null
  /**
   * The key of the caller for per-caller state (rate limits, screening state, privacy
   * budgets): set once by the caller-key link from the identity and principal
   * (callerKeyOf); '' before it runs.
   */
  callerKey: string
  /** Reads the request body (supplied by the transport, called by the body-read link); null when there is none. */
  readonly readBody: (() => Promise<IncomingBody>) | null
  /** The body's bytes as read, before decoding (set by body-read; its digest is audited when decoding fails). */
  bodyBytes: Uint8Array | null
  body: RawBody | null
  request: InferenceRequest | null
  /**
   * What the inference link sends to the model (set by input-validation to the request;
   * screen-variants appends the squeezed variants and asks for the screened output too).
   */
  modelRequest: InferenceRequest | null
  /** The variants in modelRequest beyond the caller's items (set by screen-variants). */
  variants: ScreeningVariants | null
  result: InferenceResult | null
  flags: ScreeningFlag[]
  /**
   * Items of a batch refused one by one by a per-item detector, with the detector that refused
   * each (set by screen-input and screen-output; screen-output zeroes their rows in the answer).
   */
  withheldItems?: Map<number, string>
  /** Privacy accounting for this answer (set by privacy-charge). */
  privacy: { epsilonSpent: number; epsilonLeft: number; deltaSpent?: number } | null
  /** The noised answer and verdict flips, paid for (set by privacy-charge when the model's answers carry noise). */
  charged: ChargedRelease | null
  /** Milliseconds spent in each stage, keyed by stage name (set by the pipeline runner). */
  stageMs: Record<string, number>
  /** The refusal that ended the request, if any (set by the pipeline runner, or by the transport for its own). */
  error: BulwarkError | null
  /** The link (or 'transport', 'router') that produced `error` (set with it). */
  failedStage: string | null
  /** The answer about to be sent (set by the transport before the response links). */
  response: AnswerFacts | null
}

/** What is known when a request arrives; every other field starts empty. */
export type ContextOrigin = Pick<RequestContext, 'id' | 'receivedAtMs' | 'startedMs' | 'deadlineMs' | 'client' | 'target' | 'bearerToken'> &
  Partial<Pick<RequestContext, 'exchange' | 'readBody'>>

/** A request context with nothing set yet but what the transport knows at arrival. */
export function newRequestContext(origin: ContextOrigin): RequestContext {
  return {
    exchange: { method: 'POST', path: '', route: '', declaredBytes: null, traceparent: undefined },
    readBody: null,
    ...origin,
    identity: null,
    principal: null,
    callerKey: '',
    bodyBytes: null,
    body: null,
    request: null,
    modelRequest: null,
    variants: null,
    result: null,
    flags: [],
    privacy: null,
    charged: null,
    stageMs: {},
    error: null,
    failedStage: null,
    response: null,
  }
}

/**
 * The caller a per-caller limit, detector state or budget applies to: token issuer and
 * subject with the workload identity; the workload alone when no token was checked; and one
 * shared key for callers with neither (front door off), which is conservative: they share
 * one rate limit, one screening history and one budget.
 */
export function callerKeyOf(ctx: Pick<RequestContext, 'principal' | 'identity'>): string {
  const p = ctx.principal
  if (p) return JSON.stringify(['jwt', p.issuer, p.subject, ctx.identity?.id ?? ''])
  if (ctx.identity) return JSON.stringify(['workload', ctx.identity.id])
  return JSON.stringify(['anonymous'])
}

/**
 * When a link runs. 'arrival': as the request arrives, before any credential is checked
 * (admission). 'headers': with only the headers, so unauthenticated callers cannot make the
 * gateway read a body. 'body': the body, the model and what follows it. 'response': once the
 * answer (or refusal) is final, before its bytes leave: what is recorded about the exchange.
 */
export type Phase = 'arrival' | 'headers' | 'body' | 'response'

/**
 * One link of the chain. A link rejects by throwing a BulwarkError (response links do not
 * reject: they record). `onDestroy` runs once when the exchange ends, whatever ended it (the
 * answer sent, a refusal, the connection lost), for links that hold something per request.
 */
export interface Stage {
  readonly name: string
  readonly phase: Phase
  /** Which verbs the link applies to. */
  readonly verbs: readonly Verb[]
  run(ctx: RequestContext): void | Promise<void>
  onDestroy?(ctx: RequestContext): void
}
