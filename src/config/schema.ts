// The gateway's configuration schema (bulwark.yaml). Every field has its default, unit and
// range next to it, and says why the default is safe. Defaults live in the schema itself
// (`default:`) so there is one place to read them; `defaultConfig()` materialises them.

import { Type, type Static, type TSchema } from '@sinclair/typebox'

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
  /** Worker threads, each with its own ONNX Runtime session. 1 keeps memory low; raise for big multi-core hosts. */
  workers: Type.Integer({ minimum: 1, maximum: 64, default: 1 }),
  /** ONNX Runtime intra-op threads per worker. 0 lets ONNX Runtime pick (all cores). */
  intraOpThreads: Type.Integer({ minimum: 0, maximum: 256, default: 2 }),
  /** Execution providers in order of preference; cpu is always the last resort. */
  executionProviders: Type.Array(ExecutionProvider, { minItems: 1, uniqueItems: true, default: ['cpu'] }),
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

const ModelEntry = Type.Object(
  {
    /** Folder name under models.directory holding manifest.json. */
    name: Type.String({ pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$' }),
    workers: Type.Optional(ModelSettings.workers),
    intraOpThreads: Type.Optional(ModelSettings.intraOpThreads),
    executionProviders: Type.Optional(ModelSettings.executionProviders),
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
  },
  { additionalProperties: false, default: {} },
)

export const ModelsConfig = Type.Object(
  {
    /** Folder holding one sub-folder per model; relative paths are from the config file's folder. */
    directory: Type.String({ minLength: 1, default: 'models' }),
    defaults: Type.Object(ModelSettings, { additionalProperties: false, default: {} }),
    /** Models to serve. A model not listed is not loaded. */
    serve: Type.Array(ModelEntry, { default: [{ name: 'mnist' }, { name: 'ocr-cls' }] }),
  },
  { additionalProperties: false, default: {} },
)

export const ConfigSchema = Type.Object(
  {
    server: ServerConfig,
    models: ModelsConfig,
  },
  { additionalProperties: false, default: {} },
)

export type Config = Static<typeof ConfigSchema>
export type ModelEntry = Static<typeof ModelEntry>
export type ModelSettings = Config['models']['defaults']
export type AnySchema = TSchema
