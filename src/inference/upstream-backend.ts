// Upstream models: a model served by remote model pods that speak the Open Inference Protocol
// v2 (another Bulwark, Triton, KServe), over REST (src/inference/upstream-rest.ts) or gRPC
// (src/inference/upstream-grpc.ts) as upstream.protocol says, with Bulwark's own client
// certificate when the endpoints are https. The batcher above treats it like any backend: the
// whole pipeline runs here first, exactly as for a local model. The protocol only sends one
// call and reads its answer (an UpstreamChannel); everything below is the same for both.
//
// One opossum circuit breaker per endpoint. A call counts as a failure when the connection
// fails, the upstream answers 5xx, 401, 404, 408 or 429 (a gRPC status is read as the HTTP
// status it corresponds to: UNAVAILABLE 503, RESOURCE_EXHAUSTED 429, DEADLINE_EXCEEDED 504,
// INVALID_ARGUMENT 400, ...; src/inference/upstream-grpc.ts), the response breaks the protocol or
// the manifest, or it takes longer than breaker.callTimeoutMs. It does not count when the
// upstream refuses this particular request (other 4xx: the request's fault, not the pod's), or
// when the client's own deadline ran out first (a client with a short deadline must not be able
// to open the breaker for everyone). The breaker opens when more than errorThresholdPercentage
// of at least volumeThreshold calls in the rolling window failed; after resetTimeoutMs it lets
// one trial call through (half-open): success closes it, failure opens it again.
//
// Balancing: each call goes to the endpoint with the fewest outstanding calls among those
// whose breaker lets a call through (ties rotate). When every breaker is open (or half-open
// with its trial running), the call fails at once with 503 upstream_unavailable and a
// Retry-After of the seconds until the first breaker goes half-open.
//
// Retries: at most one, only when the connection failed before the request was sent (refused,
// unreachable, connect timeout, TLS handshake), after a random 0..maxJitterMs pause, on
// another endpoint when there is one. A request that may have reached the upstream is never
// sent twice.
//
// Deadlines: a call gets min(the batch's remaining deadline, callTimeoutMs), the batch's being
// the latest of its requests' (the batcher answers each request by its own); the upstream is
// told the same in the OIP `timeout` parameter (microseconds; over gRPC also as the call's
// deadline), and the call is aborted when it
// passes. That timer and the retry pause run on the injected clock; the breaker's rolling
// window and reset timeout run on opossum's own timers.
//
// Refusals: an upstream 4xx about the request (the last two cases of fromStatus) refuses the
// batch's content (refusesContent), and the batcher retries the batch's requests apart, so
// one poisoned item costs only its own request an answer.
//
// Request bodies: a lone request's tensors, views of its pooled body, are sent as they are
// (large ones part by part, as undici writes them). The call holds those bodies until it
// settles; one that ends without a whole answer (aborted, failed, refused) may have left body
// bytes queued on its socket, which undici is not told to drop, so it retires them: they are
// never pooled again, and another request can never be read out in their place.
//
// Tensors go out as binary data (REST) or raw contents (gRPC), as validation left them;
// outputs come back the same way and are checked against the manifest
// (src/inference/upstream-codec.ts). A batch never exceeds the manifest's maxBatchSize
// (InferenceService splits larger requests), so each batch is one call. Each call is a client
// span whose W3C traceparent (and tracestate) goes with it, as headers or gRPC metadata.

import { ROOT_CONTEXT, SpanKind, SpanStatusCode, type Span, type Tracer } from '@opentelemetry/api'
import CircuitBreaker from 'opossum'
import type { UpstreamConfig } from '../config/scaleout.ts'
import { BulwarkError, errorStatus, isBulwarkError, type ErrorCode } from '../errors.ts'
import { randomUnit, type Clock, type Logger, type RandomSource } from '../deps.ts'
import { formatTraceparent } from '../telemetry/tracing.ts'
import type { Backend, BatchCall } from './backend.ts'
import { holdBodies } from './buffer-pool.ts'
import type { Manifest, TensorSpec } from './manifest.ts'
import type { Tensor } from './tensor.ts'
import { GrpcChannel } from './upstream-grpc.ts'
import { RestChannel } from './upstream-rest.ts'
import { UpstreamTlsWatcher, type UpstreamTlsSource } from './upstream-tls.ts'

export type BreakerState = 'closed' | 'open' | 'half-open'

/** How calls end, for metrics. */
export type CallOutcome = 'ok' | 'failed' | 'refused' | 'deadline'

export interface UpstreamObserver {
  call?(model: string, endpoint: string, outcome: CallOutcome, seconds: number): void
  retry?(model: string, endpoint: string): void
  breaker?(model: string, endpoint: string, state: BreakerState): void
  /** The upstream TLS files changed: applied (changed) or not usable, the old ones kept (failed). */
  tlsReload?(model: string, outcome: 'changed' | 'failed'): void
}

/** TLS material for https endpoints, already read from the files the config names. */
export interface UpstreamTlsMaterial {
  ca?: string
  cert?: string
  key?: string
  servername?: string
}

export interface UpstreamBackendOptions {
  /** The model's name here (labels, logs). */
  model: string
  manifest: Manifest
  config: UpstreamConfig
  /** The TLS files (null: none), read at start and watched while the backend lives: a change reaches new calls (src/inference/upstream-tls.ts). */
  tls: UpstreamTlsSource | null
  clock: Clock
  random: RandomSource
  log: Logger
  tracer: Tracer
  observer?: UpstreamObserver
}

/** One call to one endpoint, as the backend hands it to the protocol. */
export interface ChannelCall {
  inputs: Tensor[]
  outputNames: readonly string[]
  /** The specs of outputNames, in that order. */
  wanted: TensorSpec[]
  /** The batch size. */
  items: number
  /** The call's time budget (ms), told to the pod. */
  budgetMs: number
  /** W3C traceparent and tracestate, when the call is traced. */
  trace: Record<string, string>
  /** Aborted when the budget is spent: the channel gives up the call. */
  signal: AbortSignal
  span: Span
}

/** How the pod answered: the outputs, or its refusal as REST would have put it (HTTP status, Bulwark code, message, Retry-After). */
export type ChannelAnswer = { outputs: Tensor[] } | { status: number; code: string | null; message: string; retryAfter: string | undefined }

/** A protocol's way to reach one endpoint. */
export interface UpstreamChannel {
  /** Span attributes that name the call (method, address). */
  readonly spanAttributes: Record<string, string>
  /**
   * Sends one call. Rejects with a BulwarkError (upstream_unavailable) for an answer that
   * breaks the protocol or the manifest, or with the client library's error when no answer
   * came (connection failed, aborted; its `code`, or its cause's, says whether it was sent).
   */
  send(call: ChannelCall): Promise<ChannelAnswer>
  /**
   * New TLS material (rotated files): calls sent from now on use it, over new connections;
   * calls in flight finish on theirs, which close once they are done.
   */
  useTls(tls: UpstreamTlsMaterial): void
  close(): Promise<void>
}

export interface UpstreamChannelOptions {
  url: string
  /** The model's name at the upstream. */
  remoteName: string
  config: UpstreamConfig
  tls: UpstreamTlsMaterial | null
  clock: Clock
}

export interface EndpointStatus {
  endpoint: string
  state: BreakerState
  outstanding: number
}

/** The code of a gRPC call that failed before any connection carried it (src/inference/upstream-grpc.ts). */
export const NO_CONNECTION = 'EGRPC_NO_CONNECTION'

/** Connection errors that prove the request was never sent: safe to retry elsewhere. */
const NOT_SENT = new Set([
  'ECONNREFUSED',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  'UND_ERR_CONNECT_TIMEOUT',
  'ERR_TLS_CERT_ALTNAME_INVALID',
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_HAS_EXPIRED',
  'EOPENBREAKER',
  NO_CONNECTION,
])

/** Retry-After of a failed call while other calls may still succeed (a breaker not yet open). */
const RETRY_SOON = Object.freeze({ 'retry-after': '1' })

/** Upstream statuses that say the pod (or our access to it) is broken, not the request. */
const FAILURE_STATUSES = new Set([401, 404, 408, 429])

interface Attempt {
  inputs: Tensor[]
  outputNames: readonly string[]
  call: BatchCall
  retry: boolean
}

class Endpoint {
  readonly url: string
  readonly channel: UpstreamChannel
  breaker!: CircuitBreaker<[Attempt], Tensor[]>
  outstanding = 0
  /** Monotonic ms the breaker opened (null unless open). */
  openedAtMs: number | null = null
  constructor(url: string, channel: UpstreamChannel) {
    this.url = url
    this.channel = channel
  }
  get state(): BreakerState {
    return this.breaker.opened ? 'open' : this.breaker.halfOpen ? 'half-open' : 'closed'
  }
  /** Whether the breaker lets a call through now (closed, or half-open with no trial running). */
  get admits(): boolean {
    return this.breaker.closed || (this.breaker.halfOpen && this.breaker.pendingClose)
  }
}

/** The error code the cause carries (undici, node:net and TLS errors put it on `code`, some on their cause). */
function causeCode(err: unknown): string | undefined {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, i = 0; e && i < 4; e = e.cause as typeof e, i++) {
    if (typeof e.code === 'string' && NOT_SENT.has(e.code)) return e.code
  }
  return undefined
}

function wasNotSent(err: unknown): boolean {
  return isBulwarkError(err) && err.code === 'upstream_unavailable' && causeCode(err.cause) !== undefined
}

export class UpstreamBackend implements Backend {
  readonly concurrency: number
  readonly executionProvider = 'upstream'
  readonly borrowsInputs = true
  private readonly opts: UpstreamBackendOptions
  private readonly endpoints: Endpoint[]
  private readonly remoteName: string
  private readonly outputSpecs: Manifest['outputs']
  private rotate = 0
  private closed = false
  /** The upstream's refusals of a request's content (fromStatus), for refusesContent. */
  private readonly refusals = new WeakSet<BulwarkError>()
  private readonly breakerListeners = new Set<(endpoint: string, state: BreakerState) => void>()
  /** Watches the TLS files while the backend lives (null: no tls, or plain http). */
  readonly tlsWatcher: UpstreamTlsWatcher | null

  constructor(opts: UpstreamBackendOptions) {
    this.opts = opts
    const { config } = opts
    this.concurrency = config.maxConcurrentCalls
    this.remoteName = config.model ?? opts.model
    this.outputSpecs = opts.manifest.outputs
    this.endpoints = config.endpoints.map((url) => {
      const o: UpstreamChannelOptions = { url, remoteName: this.remoteName, config, tls: opts.tls?.material ?? null, clock: opts.clock }
      const ep = new Endpoint(url, config.protocol === 'grpc' ? new GrpcChannel(o) : new RestChannel(o))
      ep.breaker = this.breakerFor(ep)
      return ep
    })
    this.tlsWatcher = opts.tls
      ? new UpstreamTlsWatcher(opts.tls, {
          model: opts.model,
          clock: opts.clock,
          log: opts.log,
          apply: (tls) => this.endpoints.forEach((e) => e.channel.useTls(tls)),
          onReload: (outcome) => opts.observer?.tlsReload?.(opts.model, outcome),
        })
      : null
    this.tlsWatcher?.start()
  }

  private breakerFor(ep: Endpoint): CircuitBreaker<[Attempt], Tensor[]> {
    const b = this.opts.config.breaker
    const breaker = new CircuitBreaker<[Attempt], Tensor[]>((attempt) => this.send(ep, attempt), {
      timeout: false,
      errorThresholdPercentage: b.errorThresholdPercentage,
      volumeThreshold: b.volumeThreshold,
      rollingCountTimeout: b.rollingWindowMs,
      rollingCountBuckets: b.rollingBuckets,
      rollingPercentilesEnabled: false,
      enableSnapshots: false,
      resetTimeout: b.resetTimeoutMs,
      // Not the pod's fault: the client's deadline ran out first, or the pod refused this one request.
      errorFilter: (err) => isBulwarkError(err) && err.code !== 'upstream_unavailable',
      name: `${this.opts.model} ${ep.url}`,
    })
    const { model, log, observer, clock } = this.opts
    const changed = (state: BreakerState) => {
      observer?.breaker?.(model, ep.url, state)
      for (const listener of this.breakerListeners) listener(ep.url, state)
    }
    breaker.on('open', () => {
      ep.openedAtMs = clock.monotonicMs()
      log.warn({ model, endpoint: ep.url, resetTimeoutMs: b.resetTimeoutMs }, 'upstream circuit breaker opened')
      changed('open')
    })
    breaker.on('halfOpen', () => {
      ep.openedAtMs = null
      changed('half-open')
    })
    breaker.on('close', () => {
      ep.openedAtMs = null
      log.info({ model, endpoint: ep.url }, 'upstream circuit breaker closed')
      changed('closed')
    })
    return breaker
  }

  /**
   * Calls `listener` at each breaker transition, as it happens (after the observer), so a test
   * can wait for one instead of polling status(): the reset timeout runs on opossum's own
   * timers, which no fake clock moves. Returns the function that removes it.
   */
  onBreakerChange(listener: (endpoint: string, state: BreakerState) => void): () => void {
    this.breakerListeners.add(listener)
    return () => void this.breakerListeners.delete(listener)
  }

  /** Each endpoint's breaker state and outstanding calls (readiness, metrics). */
  status(): EndpointStatus[] {
    return this.endpoints.map((e) => ({ endpoint: e.url, state: e.state, outstanding: e.outstanding }))
  }

  /** Why the model cannot be reached at all (every breaker open), or null. */
  problem(): string | null {
    if (this.endpoints.some((e) => e.state !== 'open')) return null
    return `every upstream endpoint of ${this.opts.model} has its circuit breaker open (${this.endpoints.map((e) => e.url).join(', ')})`
  }

  async execute(inputs: Tensor[], outputNames: readonly string[], call: BatchCall): Promise<Tensor[]> {
    if (this.closed) throw new BulwarkError('shutting_down', 'the gateway is shutting down')
    // Across the retry's pause too: a retry encodes the request again from these bytes.
    const bodies = holdBodies(inputs)
    try {
      const outputs = await this.callWithRetry(inputs, outputNames, call)
      bodies.release()
      return outputs
    } catch (err) {
      bodies.retire()
      throw err
    }
  }

  refusesContent(err: unknown): boolean {
    return err instanceof BulwarkError && this.refusals.has(err)
  }

  /** The endpoint for the next call: least outstanding among those admitting calls, `avoid` only if alone. */
  private pick(avoid: Endpoint | null): Endpoint | null {
    const n = this.endpoints.length
    const start = this.rotate++ % n
    let best: Endpoint | null = null
    for (let i = 0; i < n; i++) {
      const e = this.endpoints[(start + i) % n]!
      if (!e.admits || e === avoid) continue
      if (!best || e.outstanding < best.outstanding) best = e
    }
    return best ?? (avoid?.admits ? avoid : null)
  }

  private unavailable(reason: string): BulwarkError {
    const now = this.opts.clock.monotonicMs()
    const reset = this.opts.config.breaker.resetTimeoutMs
    let waitMs = reset
    for (const e of this.endpoints) if (e.openedAtMs !== null) waitMs = Math.min(waitMs, e.openedAtMs + reset - now)
    return new BulwarkError('upstream_unavailable', `model "${this.opts.model}" is unavailable upstream; retry after the Retry-After delay`, {
      reason,
      headers: { 'retry-after': String(Math.max(1, Math.ceil(waitMs / 1000))) },
    })
  }

  private async callWithRetry(inputs: Tensor[], outputNames: readonly string[], call: BatchCall): Promise<Tensor[]> {
    const first = this.pick(null)
    if (!first) throw this.unavailable('every circuit breaker is open or has its trial call running')
    try {
      return await this.attempt(first, { inputs, outputNames, call, retry: false })
    } catch (err) {
      const retry = this.opts.config.retry
      if (!retry.enabled || !wasNotSent(err)) throw err
      const pauseMs = randomUnit(this.opts.random) * retry.maxJitterMs
      if (this.opts.clock.monotonicMs() + pauseMs >= call.deadlineMs) throw err
      if (pauseMs >= 1) await this.opts.clock.sleep(pauseMs)
      const second = this.pick(first)
      if (!second) throw isBulwarkError(err) && err.code === 'upstream_unavailable' ? this.unavailable((err as BulwarkError).reason) : err
      this.opts.observer?.retry?.(this.opts.model, second.url)
      return await this.attempt(second, { inputs, outputNames, call, retry: true })
    }
  }

  private async attempt(ep: Endpoint, attempt: Attempt): Promise<Tensor[]> {
    ep.outstanding++
    try {
      return await ep.breaker.fire(attempt)
    } catch (err) {
      if (CircuitBreaker.isOurError(err)) {
        // Opened (or its trial began) between pick and fire: nothing was sent.
        throw new BulwarkError('upstream_unavailable', 'the upstream model is unavailable; retry later', { reason: `${ep.url}: circuit breaker open`, headers: RETRY_SOON, cause: err })
      }
      throw err
    } finally {
      ep.outstanding--
    }
  }

  /** One call to one endpoint (the breaker's action), over the model's protocol. Rejects with BulwarkError only. */
  private async send(ep: Endpoint, a: Attempt): Promise<Tensor[]> {
    const { clock, config, model, observer } = this.opts
    const t0 = clock.monotonicMs()
    const remaining = a.call.deadlineMs - t0
    if (remaining <= 0) throw new BulwarkError('deadline_exceeded', 'the request deadline passed', { reason: 'deadline passed before the upstream call' })
    // Which limit binds: the breaker's (a slow pod: a failure) or the client's (not one).
    const breakerBinds = remaining >= config.breaker.callTimeoutMs
    const budgetMs = Math.min(remaining, config.breaker.callTimeoutMs)
    const items = a.inputs[0]!.shape[0]!
    const wanted = a.outputNames.map((n) => this.outputSpecs.find((s) => s.name === n)!)
    const span = this.opts.tracer.startSpan(
      'upstream infer',
      {
        kind: SpanKind.CLIENT,
        attributes: {
          ...ep.channel.spanAttributes,
          'bulwark.model': model,
          'bulwark.upstream.model': this.remoteName,
          'bulwark.upstream.retry': a.retry,
          'bulwark.batch_size': items,
        },
      },
      a.call.trace ?? ROOT_CONTEXT,
    )
    const trace: Record<string, string> = {}
    const traceparent = formatTraceparent(span.spanContext())
    if (traceparent) trace.traceparent = traceparent
    const tracestate = traceparent ? span.spanContext().traceState?.serialize() : undefined
    if (tracestate) trace.tracestate = tracestate

    const ac = new AbortController()
    const timer = clock.setTimeout(() => ac.abort(), budgetMs)
    let outcome: CallOutcome = 'failed'
    try {
      const answer = await ep.channel.send({ inputs: a.inputs, outputNames: a.outputNames, wanted, items, budgetMs, trace, signal: ac.signal, span })
      if ('outputs' in answer) {
        outcome = 'ok'
        return answer.outputs
      }
      const err = this.fromStatus(ep, answer, breakerBinds)
      outcome = err.code === 'upstream_unavailable' ? 'failed' : err.code === 'deadline_exceeded' ? 'deadline' : 'refused'
      throw err
    } catch (err) {
      if (isBulwarkError(err)) throw failSpan(span, err)
      if (ac.signal.aborted) {
        if (breakerBinds) {
          throw failSpan(span, new BulwarkError('upstream_unavailable', 'the upstream model did not answer in time; retry later', { reason: `${ep.url}: no answer within callTimeoutMs ${config.breaker.callTimeoutMs}`, headers: RETRY_SOON, cause: err }))
        }
        outcome = 'deadline'
        throw failSpan(span, new BulwarkError('deadline_exceeded', 'the request deadline passed', { reason: `${ep.url}: deadline passed during the upstream call`, cause: err }))
      }
      const code = (err as { code?: unknown }).code
      throw failSpan(span, new BulwarkError('upstream_unavailable', 'the upstream model is unavailable; retry later', {
        reason: `${ep.url}: ${typeof code === 'string' ? `${code} ` : ''}${(err as Error).message}`,
        headers: RETRY_SOON,
        cause: err,
      }))
    } finally {
      timer.cancel()
      span.end()
      observer?.call?.(model, ep.url, outcome, (clock.monotonicMs() - t0) / 1000)
    }
  }

  /** An upstream error status as ours: the pod's fault (upstream_unavailable, a breaker failure) or the request's. */
  private fromStatus(ep: Endpoint, answer: Exclude<ChannelAnswer, { outputs: Tensor[] }>, breakerBinds: boolean): BulwarkError {
    const { status, code, message, retryAfter } = answer
    const reason = `${ep.url} answered ${status}${code ? ` ${code}` : ''}: ${message}`
    if (status === 504 && !breakerBinds) return new BulwarkError('deadline_exceeded', 'the request deadline passed', { reason })
    if (status >= 500 || FAILURE_STATUSES.has(status) || (status === 403 && code !== 'attack_suspected')) {
      const after = retryAfter !== undefined && /^[0-9]{1,5}$/.test(retryAfter) ? retryAfter : '1'
      return new BulwarkError('upstream_unavailable', 'the upstream model is unavailable; retry later', { reason, headers: { 'retry-after': after } })
    }
    // The pod refused this request. An upstream Bulwark's refusals of the caller's input or
    // pattern keep their code; anything else is a mismatch between our manifest and the pod.
    const known = code !== null && Object.hasOwn(errorStatus, code) ? (code as ErrorCode) : null
    const refusal =
      known && errorStatus[known] === status && status >= 400 && status < 500
        ? new BulwarkError(known, `the upstream model refused the request (${known})`, { reason })
        : new BulwarkError('internal', 'internal error; the operator can find details in the server log', { reason: `upstream refused a request this gateway validated (manifest mismatch?): ${reason}` })
    // A 4xx is about the request; another status (a 3xx, a 2xx other than 200) is not a refusal.
    if (status >= 400) this.refusals.add(refusal)
    return refusal
  }

  async close(): Promise<void> {
    this.closed = true
    this.tlsWatcher?.close()
    for (const e of this.endpoints) e.breaker.shutdown()
    await Promise.all(this.endpoints.map((e) => e.channel.close()))
  }
}

function failSpan(span: Span, err: BulwarkError): BulwarkError {
  span.setAttribute('bulwark.error.code', err.code)
  if (err.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR, message: err.code })
  return err
}
