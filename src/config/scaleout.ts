// The scale-out slices of bulwark.yaml (docs/scaleout.md): models served by remote model pods
// (`models.serve[].upstream`), shared state for several replicas (`state.redis`), load
// shedding (`loadShedding`) and tracing (`telemetry`), and the start-time check that replicas
// sharing nothing do not each keep their own budgets (`replicaProblems`). Each field has its
// default, unit and range next to it, and says why the default is safe. Exporters and
// sampling are not here: they come from the standard OTEL_* environment variables, which
// only src/cli.ts reads.

import { Type, type Static } from '@sinclair/typebox'

const PemFile = (description: string) => Type.String({ minLength: 1, description })

/** Client-side TLS for calls to upstream model pods: Bulwark's own certificate, and the CA it trusts. */
export const UpstreamTls = Type.Object(
  {
    /** CA bundle (PEM) the upstream's server certificate must chain to; default: the system CAs. */
    caFile: Type.Optional(PemFile('CA bundle for upstream server certificates, PEM')),
    /** Bulwark's client certificate chain (PEM), presented to upstreams that require mTLS. */
    certFile: Type.Optional(PemFile('client certificate chain, PEM')),
    /** Private key of certFile (PEM). */
    keyFile: Type.Optional(PemFile('client private key, PEM')),
    /** Name checked against the upstream certificate instead of the endpoint's host (SNI too). */
    serverName: Type.Optional(Type.String({ minLength: 1, maxLength: 253 })),
  },
  { additionalProperties: false },
)

/** The upstream calls' TLS: UpstreamTls, re-read when the files change (client certificates rotate). */
export const UpstreamCallTls = Type.Object(
  {
    ...UpstreamTls.properties,
    /** How often the files are checked for changes, besides file-system events (which miss
     *  some atomic swaps, as Kubernetes secret volumes make them); the longest a rotation waits. */
    reloadCheckIntervalMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 5_000 }),
  },
  { additionalProperties: false },
)

export const BreakerConfig = Type.Object(
  {
    /** The breaker opens when more than this share of calls in the rolling window failed... */
    errorThresholdPercentage: Type.Integer({ minimum: 1, maximum: 100, default: 50 }),
    /** ...and at least this many calls were made in it (no verdict on two unlucky calls). */
    volumeThreshold: Type.Integer({ minimum: 1, maximum: 100_000, default: 10 }),
    /** Length of the rolling window of call statistics. */
    rollingWindowMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 10_000 }),
    /** Buckets of the rolling window; rollingWindowMs must divide evenly by it. */
    rollingBuckets: Type.Integer({ minimum: 1, maximum: 100, default: 10 }),
    /** An open breaker lets one trial call through (half-open) after this long. */
    resetTimeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 5_000 }),
    /** A call slower than this counts as a failure (and is abandoned), whatever the client's deadline. */
    callTimeoutMs: Type.Integer({ minimum: 10, maximum: 600_000, default: 10_000 }),
  },
  { additionalProperties: false, default: {} },
)

export const UpstreamConfig = Type.Object(
  {
    /** OIP v2 base URLs of the model pods (no path); calls are balanced over them by least outstanding requests. */
    endpoints: Type.Array(
      Type.String({ pattern: '^https?://[A-Za-z0-9.\\-\\[\\]:]+$', description: 'http(s)://host:port, no path', examples: ['https://mnist-0.models:8443'] }),
      { minItems: 1, maxItems: 64, uniqueItems: true },
    ),
    /**
     * How the pods are called: `rest` (OIP v2 over HTTP/1.1, binary tensor data) or `grpc`
     * (inference.GRPCInferenceService/ModelInfer over HTTP/2, raw tensor bytes). With grpc the
     * endpoints name the pods' gRPC listeners: https:// for TLS (with `tls` below), http:// for
     * plaintext HTTP/2. Breakers, retries, deadlines and refusals behave the same either way.
     */
    protocol: Type.Union([Type.Literal('rest'), Type.Literal('grpc')], { default: 'rest' }),
    /** The model's name at the upstream; default: the same name. */
    model: Type.Optional(Type.String({ pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$' })),
    /** Required for https endpoints that ask for a client certificate; ignored (refused) for http ones. Re-read when the files change. */
    tls: Type.Optional(UpstreamCallTls),
    /** Keep-alive connections per endpoint (with grpc: HTTP/2 connections, calls multiplexed over them). */
    connectionsPerEndpoint: Type.Integer({ minimum: 1, maximum: 1024, default: 16 }),
    /** Calls in flight to this model over all endpoints; more wait in the model's queue (batching.maxQueueSize). */
    maxConcurrentCalls: Type.Integer({ minimum: 1, maximum: 100_000, default: 64 }),
    /** Time to open a connection (TCP and TLS). */
    connectTimeoutMs: Type.Integer({ minimum: 10, maximum: 60_000, default: 2_000 }),
    /** Largest upstream response accepted; a larger one is a failed call. */
    maxResponseBytes: Type.Integer({ minimum: 1024, maximum: 1024 * 1024 * 1024, default: 64 * 1024 * 1024 }),
    breaker: BreakerConfig,
    retry: Type.Object(
      {
        /** One retry, on another endpoint when there is one, only when the connection failed before the request was sent. */
        enabled: Type.Boolean({ default: true }),
        /** The retry waits a random 0..maxJitterMs, so callers that failed together do not retry together. */
        maxJitterMs: Type.Integer({ minimum: 0, maximum: 10_000, default: 20 }),
      },
      { additionalProperties: false, default: {} },
    ),
  },
  { additionalProperties: false },
)

/** Redis, shared by every replica: rate-limit counters, privacy budgets and screening state. */
export const RedisConfig = Type.Object(
  {
    /** redis://host:port/db or rediss://host:port/db (TLS). Put no password here: use passwordFile. */
    url: Type.String({ pattern: '^rediss?://[^\\s@]+$', description: 'redis://host:port[/db] or rediss://...; no credentials in the URL', examples: ['redis://redis.bulwark:6379/0'] }),
    username: Type.Optional(Type.String({ minLength: 1 })),
    /** File holding the password (a mounted secret); relative paths are from the config file's folder. */
    passwordFile: Type.Optional(Type.String({ minLength: 1 })),
    /** CA bundle for rediss:// (default: the system CAs), and an optional client certificate. */
    tls: Type.Optional(UpstreamTls),
    /** Prefix of every key Bulwark writes; replicas of one gateway must share it, other gateways must not. */
    keyPrefix: Type.String({ pattern: '^[A-Za-z0-9:_.-]{1,64}$', default: 'bulwark:' }),
    /** Time to (re)connect. */
    connectTimeoutMs: Type.Integer({ minimum: 10, maximum: 60_000, default: 2_000 }),
    /** A command that takes longer fails (and so fails its request closed); bounds what a hung Redis costs. */
    commandTimeoutMs: Type.Integer({ minimum: 5, maximum: 60_000, default: 500 }),
    /** Redis unreachable: refuse (503 state_unavailable) or allow requests past the rate limit. Budgets always refuse. */
    rateLimitsWhenUnavailable: Type.Union([Type.Literal('refuse'), Type.Literal('allow')], { default: 'refuse' }),
    /**
     * Redis unreachable: refuse screened requests (503 state_unavailable), or allow them to be
     * judged without the stateful and extraction detectors and the cool-down check (the
     * stateless detectors still judge; each skip is counted). Refuse: an attacker who can
     * knock Redis over must not get unwatched queries.
     */
    screeningWhenUnavailable: Type.Union([Type.Literal('refuse'), Type.Literal('allow')], { default: 'refuse' }),
    /**
     * How long a caller's screening state (query history, extraction sets) is kept after its
     * last query; bounds Redis memory to the callers active within it. Long enough that a
     * slow attack (a query every few hours) stays in view. Default one day.
     */
    screeningStateTtlMs: Type.Integer({ minimum: 60_000, maximum: 30 * 86_400_000, default: 86_400_000 }),
  },
  { additionalProperties: false },
)

export const LoadSheddingConfig = Type.Object(
  {
    /** Off: no global bound (each model's queue still has its own, batching.maxQueueSize). */
    enabled: Type.Boolean({ default: true }),
    /** Inference and model requests in flight at once over the whole gateway; past it, 503 overloaded at once. Health, metrics and server metadata are never counted or refused. */
    maxInFlightRequests: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 1024 }),
    /** Retry-After sent with a refusal. */
    retryAfterSeconds: Type.Integer({ minimum: 1, maximum: 3600, default: 1 }),
    /**
     * `bulwark serve` answers the admin listener (health, readiness, metrics) from a thread of
     * its own, so probes stay prompt while the API's event loop is saturated; /healthz then
     * fails when that event loop stops reporting for livenessTimeoutMs. Off: the admin routes
     * run on the API's event loop.
     */
    isolateAdmin: Type.Boolean({ default: true }),
    livenessTimeoutMs: Type.Integer({ minimum: 1_000, maximum: 600_000, default: 10_000 }),
  },
  { additionalProperties: false, default: {} },
)

export const TelemetryConfig = Type.Object(
  {
    /** Continue a client's trace (W3C traceparent) instead of starting a new one. Off when clients are not trusted to choose sampling. */
    acceptTraceContext: Type.Boolean({ default: true }),
    /** Most label sets (series) one metric keeps, its overflow series included; past it, new ones
     *  are counted in `otel_metric_overflow="true"`. Label values come from the configuration
     *  (served models, endpoints, detectors), so this is a backstop against unbounded growth of
     *  memory and scrape size; 2000 is the OpenTelemetry SDK's default. */
    maxSeriesPerMetric: Type.Integer({ minimum: 10, maximum: 100_000, default: 2000 }),
  },
  { additionalProperties: false, default: {} },
)

export type UpstreamConfig = Static<typeof UpstreamConfig>
export type BreakerConfig = Static<typeof BreakerConfig>
export type UpstreamTls = Static<typeof UpstreamTls>
export type RedisConfig = Static<typeof RedisConfig>
export type LoadSheddingConfig = Static<typeof LoadSheddingConfig>
export type TelemetryConfig = Static<typeof TelemetryConfig>

/** The slices the replica check reads. */
interface ReplicaSlices {
  state: { redis?: RedisConfig | undefined; maxReplicas: number }
  outputPrivacy: { enabled: boolean }
}

/** What the deployment says about a process as it starts (src/cli.ts reads it from the environment). */
export interface ReplicaFacts {
  /**
   * This pod's ordinal in its StatefulSet, as text (BULWARK_REPLICA_INDEX, which the sidecar
   * overlay sets from the pod's `apps.kubernetes.io/pod-index` label): pod N runs only while
   * the StatefulSet has at least N + 1 replicas. Unset or empty: not known.
   */
  replicaIndex?: string | undefined
}

/**
 * Several processes that share nothing, phrased as fixes (empty = fine). Without state.redis
 * each process keeps its own privacy budgets, so a caller spread over N of them spends N
 * budgets; with output privacy on, a configuration or a deployment that runs more than one
 * such process stops the start instead of serving N times what the policies allow.
 */
export function replicaProblems(config: ReplicaSlices, facts: ReplicaFacts = {}): string[] {
  const problems: string[] = []
  const raw = facts.replicaIndex
  let index: number | null = null
  if (raw !== undefined && raw !== '') {
    if (/^(0|[1-9][0-9]{0,5})$/.test(raw)) index = Number(raw)
    else problems.push(`BULWARK_REPLICA_INDEX: ${JSON.stringify(raw)} is not a pod ordinal; set it from the pod's apps.kubernetes.io/pod-index label (0, 1, ...) or leave it unset`)
  }
  if (!config.outputPrivacy.enabled || config.state.redis) return problems
  const n = config.state.maxReplicas
  if (n > 1) {
    problems.push(
      `/state/maxReplicas: ${n} replicas without state.redis would each keep their own privacy budgets, so a caller spread over them could spend ${n} budgets; ` +
        'set state.redis so they share one (docs/scaleout.md), or run one replica and set state.maxReplicas: 1',
    )
  } else if (index !== null && index >= 1) {
    problems.push(
      `BULWARK_REPLICA_INDEX: this pod is number ${index} of its StatefulSet (from 0), so at least ${index + 1} replicas run, and without state.redis each keeps its own privacy budgets; ` +
        'scale the StatefulSet back to 1 replica (kubectl scale statefulset NAME --replicas=1), or set state.redis so replicas share budgets (docs/scaleout.md)',
    )
  }
  return problems
}

/** Cross-field problems the schema cannot express, phrased as fixes (empty = fine). */
export function scaleoutProblems(config: {
  models: { serve: readonly { name: string; upstream?: UpstreamConfig | undefined }[] }
} & ReplicaSlices): string[] {
  const problems: string[] = []
  config.models.serve.forEach((m, i) => {
    const u = m.upstream
    if (!u) return
    const where = `/models/serve/${i}/upstream`
    const https = u.endpoints.filter((e) => e.startsWith('https://')).length
    if (https !== 0 && https !== u.endpoints.length) problems.push(`${where}/endpoints: mix of http:// and https://; use one scheme for every endpoint of a model`)
    if (u.tls && https === 0) problems.push(`${where}/tls: only used with https:// endpoints; remove it or use https://`)
    if (u.tls && (u.tls.certFile === undefined) !== (u.tls.keyFile === undefined)) problems.push(`${where}/tls: give both certFile and keyFile, or neither`)
    if (u.breaker.rollingWindowMs % u.breaker.rollingBuckets !== 0) problems.push(`${where}/breaker/rollingWindowMs: must divide evenly by rollingBuckets (${u.breaker.rollingBuckets})`)
  })
  const r = config.state.redis
  if (r?.tls && !r.url.startsWith('rediss://')) problems.push('/state/redis/tls: only used with a rediss:// URL; remove it or use rediss://')
  if (r?.tls && (r.tls.certFile === undefined) !== (r.tls.keyFile === undefined)) problems.push('/state/redis/tls: give both certFile and keyFile, or neither')
  problems.push(...replicaProblems(config))
  return problems
}
