// The gRPC listener (src/transport/grpc.ts): the Open Inference Protocol v2 over gRPC,
// `inference.GRPCInferenceService`, a second transport into the same chain as REST. It shares
// the REST listener's TLS files, client-certificate rules, tokens, policies and limits; only
// what is particular to HTTP/2 and gRPC is configured here.

import { Type, type Static } from '@sinclair/typebox'

const HOST_PORT = '^(\\[[0-9a-fA-F:]+\\]|[A-Za-z0-9.-]+):[0-9]{1,5}$'

export const GrpcConfig = Type.Object(
  {
    /** Off: no gRPC listener (the REST listener is unaffected). */
    enabled: Type.Boolean({ default: true }),
    /** gRPC listener HOST:PORT. Loopback by default, as the REST listener; Triton's own default port is 8001. */
    listen: Type.String({ pattern: HOST_PORT, default: '127.0.0.1:8444', description: 'gRPC listener HOST:PORT', examples: ['127.0.0.1:8444', '0.0.0.0:8444'] }),
    /**
     * Largest request message. 32 MiB, as server.bodyLimitBytes: a batch of 32 ocr-cls images
     * as raw bytes is 3.5 MiB. gRPC refuses a larger one itself (RESOURCE_EXHAUSTED) before
     * decoding it.
     */
    maxReceiveMessageBytes: Type.Integer({ minimum: 1024, maximum: 1024 * 1024 * 1024, default: 32 * 1024 * 1024 }),
    /** Largest answer message; the bundled models' answers are a few KiB. */
    maxSendMessageBytes: Type.Integer({ minimum: 1024, maximum: 1024 * 1024 * 1024, default: 32 * 1024 * 1024 }),
    /**
     * Calls in flight on one connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). Bounds what
     * one connection can make the gateway hold; the per-caller limits still apply per call.
     */
    maxConcurrentStreams: Type.Integer({ minimum: 1, maximum: 100_000, default: 128 }),
    keepalive: Type.Object(
      {
        /** The server pings a connection idle this long, to find peers that vanished (gRPC's default: 2 h). */
        timeMs: Type.Integer({ minimum: 1000, maximum: 86_400_000, default: 7_200_000 }),
        /** A ping unanswered this long closes the connection. */
        timeoutMs: Type.Integer({ minimum: 100, maximum: 600_000, default: 20_000 }),
        /**
         * Enforcement: the shortest interval between a client's pings while it has no call in
         * flight (gRPC's default: 5 min). A ping sooner is a strike; past maxPingStrikes the
         * connection is closed with GOAWAY ENHANCE_YOUR_CALM, as gRPC servers do, so pings
         * cannot keep the gateway busy.
         */
        minPingIntervalMs: Type.Integer({ minimum: 1000, maximum: 86_400_000, default: 300_000 }),
        maxPingStrikes: Type.Integer({ minimum: 0, maximum: 1000, default: 2 }),
        /** A connection with no call for this long is closed (clients reconnect on their next call). */
        maxConnectionIdleMs: Type.Integer({ minimum: 1000, maximum: 86_400_000, default: 1_800_000 }),
      },
      { additionalProperties: false, default: {} },
    ),
  },
  { additionalProperties: false, default: {} },
)

export type GrpcConfig = Static<typeof GrpcConfig>
