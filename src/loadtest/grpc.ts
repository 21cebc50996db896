// The bench over gRPC (`--protocol grpc`): inference.GRPCInferenceService from proto/, with
// the gateway's own service definition. The load goes through the load generator's gRPC
// client (src/transport/grpc-client.ts: prepared calls sent as bytes over HTTP/2
// connections, each refusal counted by its `bulwark-code` trailer); this module prepares
// ModelInfer calls from the same tensors the REST bench sends (raw_input_contents with
// --binary, typed contents otherwise), reads the model's inputs with ModelMetadata, and
// gives each caller its own client, since that client sends one token per connection.

import * as grpc from '@grpc/grpc-js'
import type { Clock } from '../deps.ts'
import { tensorBytes } from '../inference/tensor.ts'
import { grpcLoadClient, grpcRequest } from '../transport/grpc-client.ts'
import { typedContents } from '../transport/grpc-codec.ts'
import { inferenceServiceClient } from '../transport/grpc.ts'
import { roundRobin, type LoadClient, type LoadRequest } from './client.ts'
import type { TensorSpec } from './inputs.ts'
import { BenchTargetError } from './target.ts'

/** No call waits longer (as undici's default timeouts bound a REST request): a stalled gateway cannot hold a step open. */
const CALL_DEADLINE_MS = 300_000
const METADATA_DEADLINE_MS = 30_000

/** HOST:PORT of a gRPC target kept as a URL (src/loadtest/options.ts). */
export function grpcAddress(url: URL): string {
  return url.host
}

export interface GrpcTarget {
  address: string
  /** PEM material; absent: plain HTTP/2 (a listener with tls off). */
  tls?: { ca?: string; cert?: string; key?: string }
  clock: Clock
}

/** One ModelInfer call for a set of tensors: raw bytes (binary) or typed contents. */
export function encodeGrpcRequest(model: string, version: string | undefined, tensors: TensorSpec[], binary: boolean): LoadRequest {
  const inputs = tensors.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape, ...(binary ? {} : { contents: typedContents(t) }) }))
  const raw = binary
    ? tensors.map((t) => {
        const bytes = tensorBytes(t.data)
        return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
      })
    : []
  return grpcRequest('ModelInfer', { model_name: model, model_version: version ?? '', inputs, raw_input_contents: raw }, tensors[0]?.shape[0] ?? 1)
}

/**
 * The load client for a step: one grpc-js client per caller (its token in every call's
 * metadata), the connections split between them, requests to each caller in turn.
 */
export function grpcBenchClient(target: GrpcTarget, connections: number, tokens: string[]): LoadClient {
  const callers = tokens.length > 0 ? tokens : [undefined]
  const each = Math.max(1, Math.ceil(connections / callers.length))
  // grpc-client.ts reads an absent CA as the system's roots, as a REST client does.
  const tls = target.tls ? { ...target.tls, ca: target.tls.ca as string } : undefined
  return roundRobin(callers.map((token) => grpcLoadClient({ address: target.address, connections: each, ...(tls ? { tls } : {}), ...(token !== undefined ? { token } : {}), deadlineMs: CALL_DEADLINE_MS, clock: target.clock })))
}

export type MetadataAnswer = { ok: true; body: unknown } | { ok: false; code: string; unreachable: boolean; details: string }

/** The channel credentials of a target; throws a BenchTargetError naming the flags when the PEM material is not usable. */
export function grpcCredentials(target: GrpcTarget): grpc.ChannelCredentials {
  if (!target.tls) return grpc.credentials.createInsecure()
  const asBuffer = (pem: string | undefined) => (pem === undefined ? null : Buffer.from(pem))
  try {
    return grpc.credentials.createSsl(asBuffer(target.tls.ca), asBuffer(target.tls.key), asBuffer(target.tls.cert))
  } catch (err) {
    throw new BenchTargetError(`the TLS files (--cacert, --cert, --key) are not usable for gRPC: ${(err as Error).message}; give PEM files: the CA bundle, the client certificate and its key`)
  }
}

/** The model's metadata by ModelMetadata (its answer has the fields GET /v2/models/NAME has). */
export async function grpcModelMetadata(target: GrpcTarget, bearer: string | undefined, model: string, version: string | undefined): Promise<MetadataAnswer> {
  const credentials = grpcCredentials(target)
  const Service = inferenceServiceClient()
  const client = new Service(target.address, credentials) as unknown as grpc.Client & Record<string, (req: unknown, md: grpc.Metadata, o: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res: unknown) => void) => void>
  const metadata = new grpc.Metadata()
  if (bearer !== undefined) metadata.set('authorization', `Bearer ${bearer}`)
  try {
    return await new Promise<MetadataAnswer>((resolve) => {
      client.ModelMetadata!({ name: model, version: version ?? '' }, metadata, { deadline: target.clock.nowMs() + METADATA_DEADLINE_MS }, (err, res) => {
        if (!err) return resolve({ ok: true, body: res })
        const details = err.details.replace(/\s*Resolution note:\s*$/, '')
        const code = err.metadata?.get('bulwark-code')[0]
        if (typeof code === 'string') return resolve({ ok: false, code, unreachable: false, details })
        resolve({ ok: false, code: `grpc_${grpc.status[err.code] ?? err.code}`, unreachable: err.code === grpc.status.UNAVAILABLE || err.code === grpc.status.DEADLINE_EXCEEDED, details })
      })
    })
  } finally {
    client.close()
  }
}
