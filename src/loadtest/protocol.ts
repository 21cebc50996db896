// What differs between loading the REST API and the gRPC one: how the model's inputs are
// read (GET /v2/models/NAME or ModelMetadata), how a set of tensors becomes a request, and
// the client a step sends through. The rest of the bench sees only this.

import type { Clock } from '../deps.ts'
import { getJson, restClient, type LoadClient, type LoadRequest, type RestClientOptions } from './client.ts'
import { encodeGrpcRequest, grpcAddress, grpcCredentials, grpcBenchClient, grpcModelMetadata, type GrpcTarget } from './grpc.ts'
import { encodeRequest, inputSpecs, type MetadataTensor, type TensorSpec } from './inputs.ts'
import type { BenchOptions } from './options.ts'
import { BenchTargetError, type Credentials } from './target.ts'

export interface Protocol {
  /** The target as the results name it: the REST origin, or the gRPC HOST:PORT. */
  readonly target: string
  /** The model's inputs from its metadata. */
  inputs(): Promise<MetadataTensor[]>
  encode(tensors: TensorSpec[]): LoadRequest
  /** The client of one step: `clients` requests at most in flight at once (closed loop), or `connections` for an open loop. */
  client(step: { closedLoopClients: number } | { connections: number }): LoadClient
}

function restProtocol(o: BenchOptions, creds: Credentials): Protocol {
  const base: RestClientOptions = { origin: o.url.origin, connections: 1, ...(creds.tls ? { tls: creds.tls } : {}) }
  return {
    target: o.url.origin,
    async inputs() {
      const where = `/v2/models/${encodeURIComponent(o.model)}${o.modelVersion !== undefined ? `/versions/${encodeURIComponent(o.modelVersion)}` : ''}`
      let meta: { status: number; body: unknown }
      try {
        meta = await getJson({ ...base, ...(creds.tokens[0] !== undefined ? { token: creds.tokens[0] } : {}) }, where)
      } catch (err) {
        throw new BenchTargetError(`cannot reach ${o.url.origin}: ${(err as { code?: string }).code ?? (err as Error).message}; check --url, and --cacert/--cert/--key for an https gateway`)
      }
      if (meta.status !== 200) {
        const code = (meta.body as { code?: string })?.code ?? `HTTP ${meta.status}`
        throw new BenchTargetError(`cannot read the metadata of ${o.model} (GET ${where}): ${code}; the token needs the model's metadata scope, or give request files with --input`)
      }
      return inputSpecs(meta.body, o.model)
    },
    encode: (tensors) => encodeRequest(o.model, o.modelVersion, tensors, o.binary),
    // A closed loop's client each has its connection (HTTP/1.1: one request at a time on each).
    client: (step) => restClient({ ...base, connections: 'closedLoopClients' in step ? step.closedLoopClients : step.connections, tokens: creds.tokens }),
  }
}

/** Calls in flight per HTTP/2 connection in a closed loop (the listener allows 128 streams on one by default). */
const STREAMS_PER_CONNECTION = 16

function grpcProtocol(o: BenchOptions, creds: Credentials, clock: Clock): Protocol {
  const target: GrpcTarget = { address: grpcAddress(o.url), ...(creds.tls ? { tls: creds.tls } : {}), clock }
  // Checked once here: a step's client would fail on the same files, and request files skip the metadata call.
  grpcCredentials(target)
  return {
    target: target.address,
    async inputs() {
      const meta = await grpcModelMetadata(target, creds.tokens[0], o.model, o.modelVersion)
      if (meta.ok) return inputSpecs(meta.body, o.model)
      if (meta.unreachable) {
        throw new BenchTargetError(`cannot reach the gRPC listener at ${target.address} (${meta.code}: ${meta.details}); check --url (HOST:PORT, the gateway's grpc.listen), and --cacert/--cert/--key, or http://HOST:PORT for a listener without TLS`)
      }
      throw new BenchTargetError(`cannot read the metadata of ${o.model} (ModelMetadata): ${meta.code}; the token needs the model's metadata scope, or give request files with --input`)
    },
    encode: (tensors) => encodeGrpcRequest(o.model, o.modelVersion, tensors, o.binary),
    client: (step) => grpcBenchClient(target, 'closedLoopClients' in step ? Math.ceil(step.closedLoopClients / STREAMS_PER_CONNECTION) : step.connections, creds.tokens),
  }
}

export function openProtocol(o: BenchOptions, creds: Credentials, clock: Clock): Protocol {
  return o.protocol === 'grpc' ? grpcProtocol(o, creds, clock) : restProtocol(o, creds)
}
