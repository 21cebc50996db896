// The gRPC protocol's translations for upstream calls: a pod's gRPC status (and the Bulwark
// code in its trailer) read as the HTTP status REST would have had, which decides what is the
// pod's fault and what the request's; the ModelInferRequest sent (raw inputs, wanted outputs,
// OIP timeout); and answers checked against the manifest (raw or typed contents, datatype,
// batch size, byte count, missing outputs).

import * as grpc from '@grpc/grpc-js'
import t from 'tap'
import type { TensorSpec } from '../../src/inference/manifest.ts'
import { decodeGrpcResponse, grpcInferRequest, statusOf } from '../../src/inference/upstream-grpc.ts'
import type { InferResponseMessage } from '../../src/transport/grpc-codec.ts'

t.test('a gRPC status reads as the HTTP status REST would have had', async (t) => {
  const cases: [grpc.status, string | null, number][] = [
    [grpc.status.UNAVAILABLE, null, 503],
    [grpc.status.UNAVAILABLE, 'queue_full', 503],
    [grpc.status.RESOURCE_EXHAUSTED, null, 429],
    [grpc.status.RESOURCE_EXHAUSTED, 'rate_limited', 429],
    [grpc.status.DEADLINE_EXCEEDED, null, 504],
    [grpc.status.INVALID_ARGUMENT, null, 400],
    [grpc.status.INVALID_ARGUMENT, 'value_out_of_range', 400],
    [grpc.status.INVALID_ARGUMENT, 'suspicious_input', 422],
    [grpc.status.PERMISSION_DENIED, 'attack_suspected', 403],
    [grpc.status.UNAUTHENTICATED, null, 401],
    [grpc.status.NOT_FOUND, null, 404],
    [grpc.status.INTERNAL, null, 500],
    [grpc.status.UNIMPLEMENTED, null, 501],
    // A code that does not agree with the status is not trusted: the status decides.
    [grpc.status.UNAVAILABLE, 'suspicious_input', 503],
    [grpc.status.INVALID_ARGUMENT, 'no_such_code', 400],
  ]
  for (const [status, code, http] of cases) t.equal(statusOf(status, code), http, `${grpc.status[status]} ${code ?? '(no code)'} → ${http}`)
})

t.test('the request: raw input bytes, the wanted outputs, the timeout in µs', async (t) => {
  const x = Float32Array.from([1, 2, 3, 4, 5, 6])
  const m = grpcInferRequest('remote', [{ name: 'x', datatype: 'FP32', shape: [2, 3], data: x }], ['y'], 2_000_000.7)
  t.same(m.inputs, [{ name: 'x', datatype: 'FP32', shape: [2, 3], parameters: {}, contents: null }])
  t.same(Buffer.from(m.raw_input_contents[0]!), Buffer.from(x.buffer))
  t.same(m.outputs, [{ name: 'y', parameters: {} }])
  t.same(m.parameters, { timeout: { int64_param: 2_000_000 } })
  t.equal(m.model_name, 'remote')
})

t.test('answers are checked against the manifest', async (t) => {
  const wanted: TensorSpec[] = [{ name: 'y', datatype: 'FP32', shape: [-1, 2] }]
  const out = (o: Partial<InferResponseMessage['outputs'][number]>) => ({ name: 'y', datatype: 'FP32', shape: [2, 2], parameters: {}, ...o })
  const res = (outputs: InferResponseMessage['outputs'], raw: Buffer[] = []): InferResponseMessage => ({ model_name: 'toy', model_version: '1', id: '', parameters: {}, outputs, raw_output_contents: raw })
  const bytes = Buffer.from(Float32Array.from([1, 2, 3, 4]).buffer)

  const [y] = decodeGrpcResponse(res([out({ name: 'other', shape: [1] }), out({})], [Buffer.alloc(4), bytes]), wanted, 2)
  t.same([y!.shape, Array.from(y!.data as Float32Array)], [[2, 2], [1, 2, 3, 4]], 'raw contents, an output not asked for skipped')
  const [typed] = decodeGrpcResponse(res([out({ contents: { fp32_contents: [5, 6, 7, 8] } })]), wanted, 2)
  t.same(Array.from(typed!.data as Float32Array), [5, 6, 7, 8], 'typed contents')

  const broken: [string, InferResponseMessage, RegExp][] = [
    ['wrong datatype', res([out({ datatype: 'FP64' })], [bytes]), /datatype FP64, the manifest says FP32/],
    ['wrong batch', res([out({ shape: [3, 2] })], [bytes]), /batch dimension 3, the request had 2/],
    ['too few bytes', res([out({})], [bytes.subarray(4)]), /12 bytes of data, shape implies 16/],
    ['raw count', res([out({}), out({ name: 'z' })], [bytes]), /raw_output_contents has 1 entries for 2 outputs/],
    ['missing output', res([out({ name: 'z' })], [bytes]), /output "y" is missing/],
    ['twice', res([out({}), out({})], [bytes, bytes]), /appears twice/],
    ['typed count', res([out({ contents: { fp32_contents: [1] } })]), /1 elements but shape implies 4/],
  ]
  for (const [name, m, reason] of broken) t.throws(() => decodeGrpcResponse(m, wanted, 2), { code: 'upstream_unavailable', reason }, name)
})
