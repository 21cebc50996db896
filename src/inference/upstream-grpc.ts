// The gRPC protocol of upstream calls (upstream.protocol: grpc): inference.GRPCInferenceService/
// ModelInfer (proto/grpc_service.proto, as Triton and KServe serve it) over @grpc/grpc-js,
// inputs as raw_input_contents (the tensors' own little-endian bytes, no JSON), outputs read
// from raw_output_contents (or typed contents, from servers that send those) and checked
// against the manifest as REST answers are (src/inference/upstream-codec.ts). It only sends
// one call and reads its answer; breakers, retries, deadlines and how an answer counts are
// the backend's (src/inference/upstream-backend.ts).
//
// Per call: the gRPC deadline is the call's budget (the pod takes it as its request deadline;
// the OIP `timeout` parameter says the same), traceparent and tracestate go as metadata, and
// the backend's abort cancels the call. Endpoints are http(s)://host:port of the pods' gRPC
// listeners: https with the upstream's TLS files (the pod's CA, Bulwark's client certificate),
// http as plaintext HTTP/2. Calls are spread over connectionsPerEndpoint channels, each with
// its own HTTP/2 connection. TLS material that changed on disk (src/inference/upstream-tls.ts)
// gets new channels with new credentials for new calls; the old ones close when their calls end.
//
// A status from the pod is read as the HTTP status REST would have had (statusOf), so both
// protocols share one table of what is the pod's fault and what the request's. A Bulwark pod
// names its code in the `bulwark-code` trailer; that code's own HTTP status is used when it
// agrees with the gRPC status. A call that failed because no connection could be made (grpc-js
// says so locally, with UNAVAILABLE "No connection established") was never sent: it rejects
// with code NO_CONNECTION, which the backend may retry on another endpoint.

import * as grpc from '@grpc/grpc-js'
import { errorGrpcStatus, errorStatus, type ErrorCode } from '../errors.ts'
import { inferenceServiceClient } from '../transport/grpc.ts'
import type { InferRequestMessage, InferResponseMessage } from '../transport/grpc-codec.ts'
import type { TensorSpec } from './manifest.ts'
import { tensorBytes, type Tensor } from './tensor.ts'
import { NO_CONNECTION, type ChannelAnswer, type ChannelCall, type UpstreamChannel, type UpstreamChannelOptions, type UpstreamTlsMaterial } from './upstream-backend.ts'
import { checkedOutput, inOrder, problem } from './upstream-codec.ts'

const SERVICE = 'inference.GRPCInferenceService'
const METHOD = `/${SERVICE}/ModelInfer`

/** The HTTP status each gRPC status corresponds to (as Triton and grpc-gateway map them). */
const HTTP_OF_GRPC: Record<number, number> = {
  [grpc.status.CANCELLED]: 500,
  [grpc.status.UNKNOWN]: 500,
  [grpc.status.INVALID_ARGUMENT]: 400,
  [grpc.status.DEADLINE_EXCEEDED]: 504,
  [grpc.status.NOT_FOUND]: 404,
  [grpc.status.ALREADY_EXISTS]: 409,
  [grpc.status.PERMISSION_DENIED]: 403,
  [grpc.status.RESOURCE_EXHAUSTED]: 429,
  [grpc.status.FAILED_PRECONDITION]: 400,
  [grpc.status.ABORTED]: 409,
  [grpc.status.OUT_OF_RANGE]: 400,
  [grpc.status.UNIMPLEMENTED]: 501,
  [grpc.status.INTERNAL]: 500,
  [grpc.status.UNAVAILABLE]: 503,
  [grpc.status.DATA_LOSS]: 500,
  [grpc.status.UNAUTHENTICATED]: 401,
}

/** The HTTP status a gRPC refusal stands for: the Bulwark code's own when the trailer names one that agrees with the status. */
export function statusOf(code: grpc.status, bulwarkCode: string | null): number {
  if (bulwarkCode !== null && Object.hasOwn(errorStatus, bulwarkCode) && grpc.status[errorGrpcStatus[bulwarkCode as ErrorCode]] === code) {
    return errorStatus[bulwarkCode as ErrorCode]
  }
  return HTTP_OF_GRPC[code] ?? 500
}

let serialize: ((m: unknown) => Buffer) | null = null
let deserialize: ((b: Buffer) => unknown) | null = null

/** The ModelInfer message codecs, from the same .proto the gRPC listener serves (loaded once). */
function codecs(): { serialize: (m: unknown) => Buffer; deserialize: (b: Buffer) => unknown } {
  if (!serialize || !deserialize) {
    const m = inferenceServiceClient().service.ModelInfer!
    serialize = m.requestSerialize
    deserialize = m.responseDeserialize
  }
  return { serialize, deserialize }
}

/** The ModelInferRequest of one call: raw inputs, the wanted outputs, the budget as OIP `timeout` (µs). */
export function grpcInferRequest(model: string, inputs: readonly Tensor[], outputNames: readonly string[], timeoutMicros: number): InferRequestMessage {
  return {
    model_name: model,
    model_version: '',
    id: '',
    parameters: { timeout: { int64_param: Math.max(1, Math.floor(timeoutMicros)) } },
    inputs: inputs.map((t) => ({ name: t.name, datatype: t.datatype, shape: t.shape, parameters: {}, contents: null })),
    outputs: outputNames.map((name) => ({ name, parameters: {} })),
    raw_input_contents: inputs.map((t) => tensorBytes(t.data) as Buffer),
  }
}

/** The response's outputs named `wanted`, in that order, checked against their specs. Throws upstream_unavailable. */
export function decodeGrpcResponse(m: InferResponseMessage, wanted: readonly TensorSpec[], items: number): Tensor[] {
  const raw = m.raw_output_contents ?? []
  if (raw.length > 0 && raw.length !== m.outputs.length) throw problem(`raw_output_contents has ${raw.length} entries for ${m.outputs.length} outputs`)
  const found = new Map<string, Tensor>()
  m.outputs.forEach((o, i) => {
    const spec = wanted.find((s) => s.name === o.name)
    if (!spec) return
    if (found.has(spec.name)) throw problem(`output "${spec.name}" appears twice`)
    // Typed contents: the one non-empty field (its datatype's), read as a JSON data array would be.
    const typed = Object.values(o.contents ?? {}).filter((v) => Array.isArray(v) && v.length > 0)
    if (raw.length === 0 && typed.length > 1) throw problem(`output "${spec.name}" has values in ${typed.length} contents fields`)
    found.set(spec.name, checkedOutput(o, spec, items, raw.length > 0 ? raw[i]! : (typed[0] ?? [])))
  })
  return inOrder(found, wanted)
}

/** The channels of one set of TLS material, and how many calls are on them. */
interface ClientSet {
  clients: grpc.Client[]
  active: number
  /** Replaced by newer material: closed once `active` is 0. */
  retired: boolean
}

export class GrpcChannel implements UpstreamChannel {
  readonly spanAttributes: Record<string, string>
  private current: ClientSet
  private readonly o: UpstreamChannelOptions
  private next = 0

  constructor(o: UpstreamChannelOptions) {
    this.o = o
    const { port } = new URL(o.url)
    this.current = this.clientsFor(o.tls)
    this.spanAttributes = { 'rpc.system': 'grpc', 'rpc.service': SERVICE, 'rpc.method': 'ModelInfer', 'server.address': new URL(o.url).hostname, 'server.port': port }
  }

  private clientsFor(tls: UpstreamTlsMaterial | null): ClientSet {
    const o = this.o
    const { host } = new URL(o.url)
    const credentials = o.url.startsWith('https://')
      ? grpc.credentials.createSsl(tls?.ca ? Buffer.from(tls.ca) : null, tls?.key ? Buffer.from(tls.key) : null, tls?.cert ? Buffer.from(tls.cert) : null)
      : grpc.credentials.createInsecure()
    const options: grpc.ChannelOptions = {
      // Each channel its own connection: without it, channels to one address share one.
      'grpc.use_local_subchannel_pool': 1,
      'grpc.max_receive_message_length': o.config.maxResponseBytes,
      'grpc.max_send_message_length': -1,
      // A pod that comes back is reached again within a second (the breaker's trial needs a
      // connection); grpc-js's default backoff grows to two minutes.
      'grpc.initial_reconnect_backoff_ms': 100,
      'grpc.max_reconnect_backoff_ms': 1000,
      ...(tls?.servername ? { 'grpc.ssl_target_name_override': tls.servername, 'grpc.default_authority': tls.servername } : {}),
    }
    return { clients: Array.from({ length: o.config.connectionsPerEndpoint }, () => new grpc.Client(host, credentials, options)), active: 0, retired: false }
  }

  /**
   * New channels (new credentials) for new calls. The old ones are closed only once their
   * calls are done: grpc-js cancels a call still waiting for its connection when its channel closes.
   */
  useTls(tls: UpstreamTlsMaterial): void {
    const old = this.current
    this.current = this.clientsFor(tls)
    old.retired = true
    if (old.active === 0) closeSet(old)
  }

  send(c: ChannelCall): Promise<ChannelAnswer> {
    const { serialize, deserialize } = codecs()
    const message = grpcInferRequest(this.o.remoteName, c.inputs, c.outputNames, c.budgetMs * 1000)
    const metadata = new grpc.Metadata()
    for (const [k, v] of Object.entries(c.trace)) metadata.set(k, v)
    const set = this.current
    const client = set.clients[this.next++ % set.clients.length]!
    set.active++
    return new Promise<ChannelAnswer>((resolve, reject) => {
      const call = client.makeUnaryRequest<unknown, unknown>(METHOD, serialize, deserialize, message, metadata, { deadline: this.o.clock.nowMs() + c.budgetMs }, (err, res) => {
        c.signal.removeEventListener('abort', cancel)
        if (--set.active === 0 && set.retired) closeSet(set)
        if (!err) {
          c.span.setAttribute('rpc.grpc.status_code', grpc.status.OK)
          try {
            resolve({ outputs: decodeGrpcResponse(res as InferResponseMessage, c.wanted, c.items) })
          } catch (e) {
            reject(e)
          }
          return
        }
        c.span.setAttribute('rpc.grpc.status_code', err.code)
        if (c.signal.aborted) return reject(err)
        if (err.code === grpc.status.UNAVAILABLE && /^No connection established/.test(err.details)) {
          return reject(Object.assign(new Error(`no connection: ${err.details}`), { code: NO_CONNECTION, cause: err }))
        }
        const first = (key: string) => {
          const v = err.metadata?.get(key)[0]
          return typeof v === 'string' ? v : null
        }
        const code = first('bulwark-code')
        resolve({ status: statusOf(err.code, code), code: code?.slice(0, 64) ?? null, message: `${grpc.status[err.code] ?? err.code} ${err.details.slice(0, 300)}`, retryAfter: first('retry-after') ?? undefined })
      })
      const cancel = () => call.cancel()
      c.signal.addEventListener('abort', cancel, { once: true })
    })
  }

  async close(): Promise<void> {
    // Retired sets with calls still running close as those end (the backend's close comes after its calls).
    closeSet(this.current)
  }
}

function closeSet(set: ClientSet): void {
  for (const c of set.clients) c.close()
}
