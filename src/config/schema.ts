// The gateway's configuration schema (bulwark.yaml). Every field has its default, unit and
// range next to it, and says why the default is safe. Defaults live in the schema itself
// (`default:`) so there is one place to read them; `defaultConfig()` materialises them.

import { Type, type Static, type TSchema } from '@sinclair/typebox'
import { AuthConfig, AuthorizationConfig, PoliciesConfig, RateLimitsConfig, TlsConfig } from './security.ts'
import { AuditConfig } from './audit.ts'
import { GrpcConfig } from './grpc.ts'
import { LoadSheddingConfig, RedisConfig, TelemetryConfig, UpstreamConfig } from './scaleout.ts'

const HostPort = (def: string, description: string) =>
  Type.String({
    pattern: '^(\\[[0-9a-fA-F:]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$',
    default: def,
    description,
    examples: ['127.0.0.1:8443', '0.0.0.0:8443'],
  })

export const ExecutionProvider = Type.Union([Type.Literal('cpu'), Type.Literal('webgpu'), Type.Literal('cuda')], {
  description: 'cpu | webgpu | cuda; unavailable providers fall back to cpu with a log line',
})

/** Settings a model can take; `models.defaults` gives them for every model. */
const ModelSettings = {
  /**
   * Worker threads, each with its own ONNX Runtime session (and its own copy of the model in
   * memory). Separate single-threaded sessions serve a small model faster than one session with
   * several intra-op threads: ocr-cls ran 26% faster with 2 x 1 than 1 x 2 on two cores (paired
   * bench rounds). Raise for hosts with more cores to spare.
   */
  workers: Type.Integer({ minimum: 1, maximum: 64, default: 2 }),
  /** ONNX Runtime intra-op threads per worker. 0 lets ONNX Runtime pick (all cores); a big model (ocr-det) may want 2 or more. */
  intraOpThreads: Type.Integer({ minimum: 0, maximum: 256, default: 1 }),
  /** Execution providers in order of preference; cpu is always the last resort. */
  executionProviders: Type.Array(ExecutionProvider, { minItems: 1, uniqueItems: true, default: ['cpu'] }),
  /**
   * Nice value (0-19) of the inference threads. Above 0, the event loop (TLS, auth, health
   * probes) preempts inference when cores are scarce, so a saturated model cannot starve the
   * rest of the gateway. Linux only.
   */
  threadNiceness: Type.Integer({ minimum: 0, maximum: 19, default: 5 }),
  /**
   * Whether ONNX Runtime's threads busy-wait between operators. Spinning saves microseconds
   * per run on idle dedicated cores and wastes CPU the event loop needs on shared ones.
   */
  intraOpSpinning: Type.Boolean({ default: false }),
  /**
   * Which versions of a model with version folders (models/<name>/<n>/manifest.json) are
   * served, as Triton's version_policy: the highest N, all, or the ones listed. A request
   * without a version gets the highest served. A model folder with its manifest at the top is
   * one version (the manifest's) whatever this says.
   */
  versionPolicy: Type.Optional(Type.Union(
    [
      Type.Object({ latest: Type.Integer({ minimum: 1, maximum: 64 }) }, { additionalProperties: false }),
      Type.Literal('all'),
      Type.Object({ specific: Type.Array(Type.Integer({ minimum: 0, maximum: 2 ** 53 - 1 }), { minItems: 1, maxItems: 64, uniqueItems: true }) }, { additionalProperties: false }),
    ],
    { description: '{ latest: N } | all | { specific: [versions] } (default { latest: 1 })' },
  )),
  batching: Type.Object(
    {
      /** Off: every request runs on its own. On: requests queued together run as one batch. */
      enabled: Type.Boolean({ default: true }),
      /** Largest batch in items; 0 means the manifest's maxBatchSize. */
      maxBatchSize: Type.Integer({ minimum: 0, maximum: 4096, default: 0 }),
      /** How long the first request of a batch may wait for others while a worker is idle. */
      maxQueueDelayMicros: Type.Integer({ minimum: 0, maximum: 1_000_000, default: 500 }),
      /** Requests allowed to wait; past it the gateway answers 503 at once instead of queueing into timeouts. */
      maxQueueSize: Type.Integer({ minimum: 1, maximum: 100_000, default: 256 }),
    },
    { additionalProperties: false, default: {} },
  ),
}

/** The setting without its default: a model's entry left without it takes models.defaults' (filling the schema default in would hide those). */
function override<T extends TSchema>(setting: T): T {
  const { default: _unused, ...rest } = setting as T & { default?: unknown }
  return rest as T
}

const ModelEntry = Type.Object(
  {
    /** Folder name under models.directory holding manifest.json. */
    name: Type.String({ pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$' }),
    workers: Type.Optional(override(ModelSettings.workers)),
    intraOpThreads: Type.Optional(override(ModelSettings.intraOpThreads)),
    executionProviders: Type.Optional(override(ModelSettings.executionProviders)),
    threadNiceness: Type.Optional(override(ModelSettings.threadNiceness)),
    intraOpSpinning: Type.Optional(override(ModelSettings.intraOpSpinning)),
    versionPolicy: ModelSettings.versionPolicy,
    batching: Type.Optional(
      Type.Object(
        {
          enabled: Type.Optional(Type.Boolean()),
          maxBatchSize: Type.Optional(Type.Integer({ minimum: 0, maximum: 4096 })),
          maxQueueDelayMicros: Type.Optional(Type.Integer({ minimum: 0, maximum: 1_000_000 })),
          maxQueueSize: Type.Optional(Type.Integer({ minimum: 1, maximum: 100_000 })),
        },
        { additionalProperties: false },
      ),
    ),
    /**
     * Serve the model from remote model pods (OIP v2) instead of a local file (src/config/scaleout.ts,
     * docs/scaleout.md). The manifest under models.directory still describes it (validation needs
     * it); its file and digest are not read. workers, intraOpThreads, executionProviders and
     * threadNiceness do not apply; batching does (concurrent requests go upstream as one call).
     */
    upstream: Type.Optional(UpstreamConfig),
  },
  { additionalProperties: false },
)

export const ServerConfig = Type.Object(
  {
    /** API listener (OIP v2). Loopback by default: exposing it is a deliberate choice. */
    listen: HostPort('127.0.0.1:8443', 'API listener HOST:PORT'),
    /** Admin listener: health, readiness, metrics. Separate so probes need no client certificate. */
    admin: HostPort('127.0.0.1:9464', 'admin listener HOST:PORT'),
    /** Largest request body. 32 MiB fits a batch of 32 ocr-cls images as JSON. */
    bodyLimitBytes: Type.Integer({ minimum: 1024, maximum: 1024 * 1024 * 1024, default: 32 * 1024 * 1024 }),
    /** Default and largest per-request deadline; a client may ask for less (parameters.timeout). */
    requestTimeoutMs: Type.Integer({ minimum: 1, maximum: 600_000, default: 30_000 }),
    /** On SIGTERM: time to finish in-flight and queued requests before exiting. */
    shutdownGraceMs: Type.Integer({ minimum: 0, maximum: 600_000, default: 10_000 }),
    /** Largest accepted request header section; bounds work done before authentication. */
    maxHeaderBytes: Type.Integer({ minimum: 1024, maximum: 1024 * 1024, default: 16 * 1024 }),
    /**
     * Time for a request's whole header section to arrive. A client that trickles headers
     * holds a connection and a parser before anything can be checked; 10 s is ample on any
     * working network. Node answers 408 and closes.
     */
    headersTimeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 10_000 }),
    /**
     * Time for a whole request, headers and body, to arrive. Bounds how long any upload can
     * hold its buffer and its slots; 60 s carries the largest body (bodyLimitBytes) at about
     * 4 Mbit/s. Node answers 408 and closes. Must be at least headersTimeoutMs.
     */
    receiveTimeoutMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 60_000 }),
    /**
     * Longest pause between two pieces of a body being read: a stalled upload (one byte short
     * of its Content-Length, then silence) is answered 408 request_timeout and its connection
     * closed, so it cannot hold its buffer, its rate-limit slot or its load-shedding slot.
     */
    bodyIdleTimeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 10_000 }),
    /** Open connections on the API listener, all clients together; past it, new ones are closed at once. */
    maxConnections: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 4096 }),
    /**
     * Open connections per client: per client certificate with TLS on, per address with it
     * off. One client cannot take the connections every other client needs; 64 carries far
     * more than the per-caller in-flight limit.
     */
    maxConnectionsPerClient: Type.Integer({ minimum: 1, maximum: 100_000, default: 64 }),
    /**
     * New connections per second from one address, checked before the TLS handshake (a burst
     * of as many passes). Handshakes cost CPU; a client reconnecting in a loop would otherwise
     * spend what the others' requests need. Clients that keep their connections alive open
     * few; 200 a second leaves room for a restarted fleet behind one NAT address.
     */
    newConnectionsPerSecondPerAddress: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 200 }),
    /**
     * A connection the gateway closes because it refused a request before reading its body,
     * from a client that showed no valid token (none or a forged one, an unknown model), counts
     * as this many new connections from its address. Such a client, reconnecting after each
     * refusal, gets newConnectionsPerSecondPerAddress / closedOnRefusalCost handshakes a second
     * (10 at the defaults); a client whose requests are answered keeps its connections and
     * never pays, and a caller with a valid token answers for its refusals under its own limits.
     */
    closedOnRefusalCost: Type.Integer({ minimum: 1, maximum: 1_000_000, default: 20 }),
  },
  { additionalProperties: false, default: {} },
)

/**
 * The per-client limit before authentication (the client-limit link): a token bucket per
 * client, its certificate with TLS on, its address with it off. Every request, a junk one
 * without a token included, costs the gateway work and an audit record; this bounds what one
 * client can make it do before any credential is checked.
 */
export const ClientLimitsConfig = Type.Object(
  {
    /** Off: only the per-principal limits (rateLimits), which apply after the token check. */
    enabled: Type.Boolean({ default: true }),
    /** Sustained requests per second one client may send without a valid token (a request
     *  whose caller shows one gives its token back). 1000: far below what floods the audit disk. */
    requestsPerSecond: Type.Number({ exclusiveMinimum: 0, maximum: 1_000_000, default: 1000 }),
    /** Requests a client may send at once above the sustained rate (the bucket's size). */
    burst: Type.Integer({ minimum: 1, maximum: 10_000_000, default: 2000 }),
    /** Clients tracked (LRU, about 100 bytes each); past it the one idle longest is
     *  forgotten, and starts again with a full bucket if it returns. */
    maxClients: Type.Integer({ minimum: 1, maximum: 10_000_000, default: 10_000 }),
  },
  { additionalProperties: false, default: {} },
)

export type ClientLimitsConfig = Static<typeof ClientLimitsConfig>

export const ModelsConfig = Type.Object(
  {
    /** Folder holding one sub-folder per model; relative paths are from the config file's folder. */
    directory: Type.String({ minLength: 1, default: 'models' }),
    defaults: Type.Object(ModelSettings, { additionalProperties: false, default: {} }),
    /** Models to serve. A model not listed is not loaded (unless `poll` is on). */
    serve: Type.Array(ModelEntry, { default: [{ name: 'mnist' }, { name: 'ocr-cls' }] }),
    /**
     * Poll the folder, as Triton's --model-control-mode=poll: every intervalMs, a new model
     * folder (with its manifest) is loaded and then served (with the defaults' settings unless
     * `serve` lists it); a changed manifest or model file is loaded beside the version served,
     * which new requests leave once the new one is ready and which closes when its last request
     * is done; a removed folder is served no more and closes the same way. A change that cannot
     * be loaded keeps what is served. Off: the `serve` list, loaded once at start.
     */
    poll: Type.Object(
      {
        enabled: Type.Boolean({ default: false }),
        intervalMs: Type.Integer({ minimum: 100, maximum: 3_600_000, default: 5_000 }),
      },
      { additionalProperties: false, default: {} },
    ),
    /**
     * Triton's model repository extension on the admin listener, as its explicit model control:
     * POST /v2/repository/index, /v2/repository/models/{name}/load and .../unload, each with a
     * bearer token (checked as the API's: issuer, audience, keys) that carries `scope`. Off by
     * default; needs auth on, and excludes `poll` (the poll would undo an explicit unload).
     */
    repositoryApi: Type.Object(
      {
        enabled: Type.Boolean({ default: false }),
        scope: Type.String({ minLength: 1, pattern: '^[\\x21\\x23-\\x5B\\x5D-\\x7E]+$', default: 'bulwark:models' }),
      },
      { additionalProperties: false, default: {} },
    ),
    /**
     * Serve a model only if its signature (<model>/model.sig.json, made by `bulwark model sign`:
     * OpenSSF model signing over the manifest and the model bytes) verifies with
     * signingPublicKeyFile. An unsigned, re-signed or altered model is then reported not ready.
     * Off by default so `npm start` serves the unsigned bundled models; on in the Kubernetes overlays.
     */
    requireSignature: Type.Boolean({ default: false }),
    /** Public key (PEM, ECDSA P-256/P-384/P-521) that model signatures must verify with; needed when requireSignature is on. Relative paths are from the config file's folder. */
    signingPublicKeyFile: Type.Optional(Type.String({ minLength: 1, description: 'PEM public key that model signatures must verify with' })),
  },
  { additionalProperties: false, default: {} },
)

/**
 * The privacy-budget journal under `state.directory` (src/privacy/file-accountant.ts). Its
 * defaults are the journal's only defaults: the accountant fills what it is not given from here.
 */
export const JournalConfig = Type.Object(
  {
    /** strict: an answer is released only after its charge, or a reservation covering it,
     *  is on disk (one synced write per group of lines). relaxed: after that line is
     *  written to the OS (survives a killed process, not a power cut), the file synced
     *  every relaxedSyncIntervalMs: a power cut or kernel crash can forget that window's
     *  charges. */
    durability: Type.Union([Type.Literal('strict'), Type.Literal('relaxed')], { default: 'strict' }),
    /** With durability relaxed: how often the journal is synced; the loss window on a power cut. */
    relaxedSyncIntervalMs: Type.Integer({ minimum: 1, maximum: 60_000, default: 200 }),
    /** Shortest time between two writes: charges made in between share the next one, so a
     *  busy gateway makes at most 1000/N writes a second, and an answer waits up to N ms
     *  more. 0: write as soon as the previous write is done. */
    commitIntervalMs: Type.Integer({ minimum: 0, maximum: 100, default: 0 }),
    /** Charge ahead: a busy caller's charges are covered by one durable reservation of up
     *  to this fraction of its budget, instead of one write per answer (see
     *  file-accountant.ts). What a crash or restart costs a caller: at most the unused part
     *  of its last reservations, counted as spent until they expire. 0: one write per
     *  group of answers, no reservations. */
    reserveFraction: Type.Number({ minimum: 0, maximum: 0.25, default: 0.02 }),
    /** How long a reservation may be drawn on; its record is stamped at its end, so after a
     *  restart a budget frees at most this much later than it would have. */
    reserveLeaseMs: Type.Integer({ minimum: 10, maximum: 60_000, default: 1000 }),
  },
  { additionalProperties: false, default: {} },
)

export type JournalConfig = Static<typeof JournalConfig>

/** Where the gateway keeps state that must survive a restart (privacy budgets under `privacy/`). */
export const StateConfig = Type.Object(
  {
    /**
     * Folder for durable state; relative paths are from the config file's folder. On a
     * persistent volume in Kubernetes: an emptyDir would reset privacy budgets on every
     * pod restart. One gateway process per folder.
     */
    directory: Type.String({ minLength: 1, default: '.bulwark/state', description: 'folder for durable state (privacy budgets)' }),
    /** The privacy-budget journal under `directory` (src/privacy/file-accountant.ts). */
    journal: JournalConfig,
    /**
     * Shared state for several replicas (src/config/scaleout.ts): rate-limit counters,
     * privacy budgets and screening's per-caller state live in Redis instead of this process
     * and `directory`. Absent: one replica, the embedded stores.
     */
    redis: Type.Optional(RedisConfig),
    /**
     * The most gateway processes that serve callers with this configuration at once (for an
     * autoscaler, its maxReplicas plus the rollout's surge). Without `redis` each process
     * keeps its own privacy budgets, so a caller whose requests are spread over N processes
     * gets N budgets: with output privacy on, more than 1 without `redis` stops the start
     * (src/config/scaleout.ts). Default 1: one process, which the journal's folder lock
     * enforces per folder.
     */
    maxReplicas: Type.Integer({ minimum: 1, maximum: 10_000, default: 1 }),
  },
  { additionalProperties: false, default: {} },
)

/** Output protection (the output-privacy stage); what it does per model is in each policy's `output:`. */
export const OutputPrivacyConfig = Type.Object(
  {
    /** Off: outputs leave exactly as the model produced them and no budget is kept. Only for a benchmark baseline. */
    enabled: Type.Boolean({ default: true }),
  },
  { additionalProperties: false, default: {} },
)

export const ConfigSchema = Type.Object(
  {
    server: ServerConfig,
    // The gRPC form of the API (src/config/grpc.ts): its listener, message and stream limits, keepalive.
    grpc: GrpcConfig,
    models: ModelsConfig,
    state: StateConfig,
    outputPrivacy: OutputPrivacyConfig,
    // Before authentication: the per-client limit (the client-limit link).
    clientLimits: ClientLimitsConfig,
    // The front door (src/config/security.ts): mTLS, JWT, per-model policies, rate limits.
    tls: TlsConfig,
    auth: AuthConfig,
    authorization: AuthorizationConfig,
    rateLimits: RateLimitsConfig,
    policies: PoliciesConfig,
    // The audit trail (src/config/audit.ts): where records go, durability, rotation, signing.
    audit: AuditConfig,
    // Scale-out (src/config/scaleout.ts): global load shedding, tracing.
    loadShedding: LoadSheddingConfig,
    telemetry: TelemetryConfig,
  },
  { additionalProperties: false, default: {} },
)

export type Config = Static<typeof ConfigSchema>
export type ModelEntry = Static<typeof ModelEntry>
export type ModelSettings = Config['models']['defaults']
export type AnySchema = TSchema
