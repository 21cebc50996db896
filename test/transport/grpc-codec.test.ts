// The gRPC transport's translations, on their own: a ModelInferRequest becomes the body the
// REST transport would have read (JSON header, raw bytes behind it at an 8-byte boundary);
// typed contents must come in their datatype's field; a caller's parameter named __proto__
// stays a plain own key; answers go back raw or typed as asked; the gRPC deadline becomes the
// request's deadline, capped by server.requestTimeoutMs.
import t from 'tap'
import { inferBody, inferResponse, type InferRequestMessage } from '../../src/transport/grpc-codec.ts'
import { callDeadlineMs } from '../../src/transport/grpc-chain.ts'
import { splitBody } from '../../src/oip/codec.ts'

const message = (o: Partial<InferRequestMessage>): InferRequestMessage => ({ model_name: 'm', model_version: '', id: '', parameters: {}, inputs: [], outputs: [], raw_input_contents: [], ...o })

t.test('raw inputs: a JSON header with binary_data_size, the bytes behind it, aligned', async (t) => {
  const bytes = Buffer.from(new Float32Array([1, 2, 3]).buffer)
  const body = inferBody(message({ id: 'r1', inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3], parameters: {}, contents: null }], raw_input_contents: [bytes] }))
  t.ok(body.headerLength !== undefined)
  const split = splitBody(body.bytes as Buffer, body.headerLength)
  t.same(split.header, { id: 'r1', parameters: { binary_data_output: true }, inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3], parameters: { binary_data_size: 12 } }] })
  t.same(Buffer.from(split.binary!), bytes)
  t.equal(split.binary!.byteOffset % 8, 0, 'the tensor bytes start at an 8-byte boundary')
})

t.test('typed inputs: the JSON data of their field; another field is refused with what to use', async (t) => {
  const typed = inferBody(message({ inputs: [{ name: 'x', datatype: 'INT32', shape: [2], parameters: {}, contents: { int_contents: [4, 5] } }] }))
  t.equal(typed.headerLength, undefined, 'a plain JSON body')
  t.same(JSON.parse(String(typed.bytes)).inputs[0].data, [4, 5])
  t.throws(() => inferBody(message({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1], parameters: {}, contents: { int_contents: [1] } }] })), { code: 'bad_request', message: /contents\.fp32_contents/ })
  t.throws(() => inferBody(message({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1], parameters: {}, contents: null }, { name: 'y', datatype: 'FP32', shape: [1], parameters: {}, contents: null }], raw_input_contents: [Buffer.alloc(4)] })), { code: 'bad_request', message: /one per input/ })
})

t.test('a parameter named __proto__ is an own key, not a prototype', async (t) => {
  const body = inferBody(message({ parameters: { ['__proto__']: { string_param: 'x', parameter_choice: 'string_param' } }, inputs: [{ name: 'x', datatype: 'FP32', shape: [1], parameters: {}, contents: { fp32_contents: [0] } }] }))
  const header = JSON.parse(String(body.bytes)) as { parameters: Record<string, unknown> }
  t.equal(Object.getPrototypeOf(header.parameters), Object.prototype)
  t.ok(Object.hasOwn(header.parameters, '__proto__'), 'kept as data')
})

t.test('answers: raw bytes when binary was asked for, typed contents otherwise; parameters typed', async (t) => {
  const result = { modelName: 'm', modelVersion: '1', outputs: [{ name: 'y', datatype: 'FP32' as const, shape: [1, 2], data: new Float32Array([0.25, 0.75]) }], parameters: { k: 3, f: 0.5, s: 'x', b: true } }
  const request = { parameters: {}, inputs: [], outputs: [], batchSize: 1 }
  const rawAnswer = inferResponse(result, { ...request, binaryOutputs: true }, 'id')
  t.same(Array.from(new Float32Array(rawAnswer.raw_output_contents[0]!.buffer.slice(rawAnswer.raw_output_contents[0]!.byteOffset, rawAnswer.raw_output_contents[0]!.byteOffset + 8))), [0.25, 0.75])
  t.equal(rawAnswer.outputs[0]!.contents, undefined)
  const typed = inferResponse(result, { ...request, binaryOutputs: false }, 'id')
  t.same(typed.outputs[0]!.contents, { fp32_contents: [0.25, 0.75] })
  t.same(typed.raw_output_contents, [])
  t.same(typed.parameters, { k: { int64_param: 3 }, f: { double_param: 0.5 }, s: { string_param: 'x' }, b: { bool_param: true } })
})

t.test('the gRPC deadline is the request deadline, never past server.requestTimeoutMs', async (t) => {
  // Arrived at wall 1000 ms, monotonic 50 ms; the server allows 30 s.
  t.equal(callDeadlineMs(new Date(1200), 1000, 50, 30_000), 250, 'a 200 ms deadline')
  t.equal(callDeadlineMs(Infinity, 1000, 50, 30_000), 30_050, 'no deadline: the server\'s')
  t.equal(callDeadlineMs(1000 + 60_000, 1000, 50, 30_000), 30_050, 'a longer deadline is capped')
  t.equal(callDeadlineMs(new Date(900), 1000, 50, 30_000), 50, 'already past: due now')
})
