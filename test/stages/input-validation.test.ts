// Every malformed request gets the right code and a message that says what is wrong.
import t from 'tap'
import { decodeInferRequest } from '../../src/stages/input-validation.ts'
import { splitBody } from '../../src/oip/codec.ts'
import type { Manifest } from '../../src/inference/manifest.ts'

const manifest: Manifest = {
  name: 'toy',
  version: '1',
  platform: 'onnxruntime_onnx',
  file: 'model.onnx',
  sha256: '0'.repeat(64),
  maxBatchSize: 4,
  inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 2, 3], range: [0, 1] }],
  outputs: [{ name: 'y', datatype: 'FP32', shape: [-1, 2] }],
}

const json = (body: unknown) => splitBody(Buffer.from(JSON.stringify(body)), undefined)
const input = (over: Record<string, unknown> = {}) => ({ name: 'x', datatype: 'FP32', shape: [1, 2, 3], data: [0, 0.1, 0.2, 0.3, 0.4, 0.5], ...over })

function binary(header: object, payload: Buffer, lengthOverride?: string) {
  const head = Buffer.from(JSON.stringify(header))
  return splitBody(Buffer.concat([head, payload]), lengthOverride ?? String(head.length))
}
const f32 = (...v: number[]) => Buffer.from(new Float32Array(v).buffer)

t.test('accepts flat and nested JSON data and reads them alike', async (t) => {
  const flat = decodeInferRequest(json({ id: 'a', inputs: [input()] }), manifest)
  const nested = decodeInferRequest(json({ inputs: [input({ data: [[[0, 0.1, 0.2], [0.3, 0.4, 0.5]]] })] }), manifest)
  t.same([...flat.inputs[0]!.data], [...nested.inputs[0]!.data])
  t.equal(flat.id, 'a')
  t.equal(flat.batchSize, 1)
  t.type(flat.inputs[0]!.data, Float32Array)
})

t.test('accepts binary tensor data and output selection', async (t) => {
  const req = decodeInferRequest(
    binary({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: 24 } }], outputs: [{ name: 'y', parameters: { binary_data: true } }] }, f32(0, 0.1, 0.2, 0.3, 0.4, 0.5)),
    manifest,
  )
  t.same(Array.from(req.inputs[0]!.data as Float32Array).map((v) => Math.round(v * 10) / 10), [0, 0.1, 0.2, 0.3, 0.4, 0.5])
  t.same(req.outputs, [{ name: 'y', binary: true }])
})

const cases: [string, () => unknown, string, RegExp][] = [
  ['malformed JSON', () => splitBody(Buffer.from('{"inputs": ['), undefined), 'invalid_json', /not valid JSON/],
  ['empty body', () => splitBody(Buffer.alloc(0), undefined), 'invalid_json', /empty/],
  ['not an object', () => decodeInferRequest(json([1, 2]), manifest), 'bad_request', /JSON object/],
  ['unknown top-level field', () => decodeInferRequest(json({ inputs: [input()], extra: 1 }), manifest), 'bad_request', /unknown field "extra"/],
  ['no inputs', () => decodeInferRequest(json({ inputs: [] }), manifest), 'bad_request', /non-empty array/],
  ['unknown input', () => decodeInferRequest(json({ inputs: [input({ name: 'z' })] }), manifest), 'unknown_input', /takes "x"/],
  ['duplicate input', () => decodeInferRequest(json({ inputs: [input(), input()] }), manifest), 'bad_request', /twice/],
  ['wrong dtype', () => decodeInferRequest(json({ inputs: [input({ datatype: 'INT32' })] }), manifest), 'datatype_mismatch', /INT32 does not match the model's FP32/],
  ['bogus dtype', () => decodeInferRequest(json({ inputs: [input({ datatype: 'FLOAT' })] }), manifest), 'bad_request', /datatype/],
  ['wrong rank', () => decodeInferRequest(json({ inputs: [input({ shape: [1, 6] })] }), manifest), 'shape_mismatch', /expects 3/],
  ['wrong fixed dim', () => decodeInferRequest(json({ inputs: [input({ shape: [1, 3, 2] })] }), manifest), 'shape_mismatch', /dimension 1 is 3/],
  ['negative dim', () => decodeInferRequest(json({ inputs: [input({ shape: [1, -2, 3] })] }), manifest), 'bad_request', /non-negative integers/],
  ['zero batch', () => decodeInferRequest(json({ inputs: [input({ shape: [0, 2, 3], data: [] })] }), manifest), 'shape_mismatch', /at least 1/],
  ['batch too large', () => decodeInferRequest(json({ inputs: [input({ shape: [5, 2, 3] })] }), manifest), 'batch_too_large', /maximum of 4/],
  ['too few elements', () => decodeInferRequest(json({ inputs: [input({ data: [0, 0] })] }), manifest), 'data_length_mismatch', /2 elements but shape implies 6/],
  ['too many elements', () => decodeInferRequest(json({ inputs: [input({ data: new Array(7).fill(0) })] }), manifest), 'data_length_mismatch', /more than the 6/],
  ['string element', () => decodeInferRequest(json({ inputs: [input({ data: [0, 0, 0, 0, 0, 'a'] })] }), manifest), 'bad_request', /element 5 is string/],
  ['null element', () => decodeInferRequest(json({ inputs: [input({ data: [0, 0, null, 0, 0, 0] })] }), manifest), 'bad_request', /element 2 is null/],
  ['out of range', () => decodeInferRequest(json({ inputs: [input({ data: [0, 0, 0, 2, 0, 0] })] }), manifest), 'value_out_of_range', /element 3 is 2, outside the model's range \[0, 1\]/],
  ['NaN in binary', () => decodeInferRequest(binary({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: 24 } }] }, f32(0, 0, NaN, 0, 0, 0)), manifest), 'non_finite_value', /element 2 is NaN/],
  ['Infinity in binary', () => decodeInferRequest(binary({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: 24 } }] }, f32(0, 0, 0, 0, 0, Infinity)), manifest), 'non_finite_value', /Infinity/],
  ['binary size disagrees with shape', () => decodeInferRequest(binary({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: 20 } }] }, f32(0, 0, 0, 0, 0)), manifest), 'data_length_mismatch', /needs 24/],
  ['header length longer than body', () => binary({ inputs: [] }, Buffer.alloc(0), '9999'), 'invalid_binary_header', /body has/],
  ['header length not a number', () => binary({ inputs: [] }, Buffer.alloc(0), '12abc'), 'invalid_binary_header', /non-negative integer/],
  ['header length cuts the JSON', () => binary({ inputs: [input()] }, Buffer.alloc(0), '10'), 'invalid_json', /JSON header/],
  ['binary shorter than claimed', () => decodeInferRequest(binary({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: 24 } }] }, f32(0, 0)), manifest), 'invalid_binary_header', /only 8 bytes/],
  ['leftover binary bytes', () => decodeInferRequest(binary({ inputs: [input()] }, f32(1)), manifest), 'invalid_binary_header', /belong to no input/],
  ['binary_data_size without the header', () => decodeInferRequest(json({ inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 2, 3], parameters: { binary_data_size: 24 } }] }), manifest), 'invalid_binary_header', /no Inference-Header-Content-Length/],
  ['unknown output', () => decodeInferRequest(json({ inputs: [input()], outputs: [{ name: 'nope' }] }), manifest), 'unknown_output', /returns "y"/],
  ['huge claimed shape', () => decodeInferRequest(json({ inputs: [input({ shape: [1, 2, 3e9] })] }), manifest), 'shape_mismatch', /dimension 2/],
  ['deep nesting', () => decodeInferRequest(json({ inputs: [input({ data: JSON.parse('['.repeat(40) + ']'.repeat(40)) })] }), manifest), 'bad_request', /nested/],
]

for (const [name, run, code, message] of cases) {
  t.test(`refuses ${name} with ${code}`, async (t) => {
    t.throws(run, { code, message })
  })
}

t.test('a missing input is named', async (t) => {
  const two: Manifest = { ...manifest, inputs: [...manifest.inputs, { name: 'w', datatype: 'FP32', shape: [-1, 1] }] }
  t.throws(() => decodeInferRequest(json({ inputs: [input()] }), two), { code: 'missing_input', message: /"w"/ })
})

t.test('inputs with different batch sizes are refused', async (t) => {
  const two: Manifest = { ...manifest, inputs: [...manifest.inputs, { name: 'w', datatype: 'FP32', shape: [-1, 1] }] }
  t.throws(() => decodeInferRequest(json({ inputs: [input(), { name: 'w', datatype: 'FP32', shape: [2, 1], data: [0, 0] }] }), two), { code: 'shape_mismatch', message: /differs/ })
})

t.test('a value out of range or NaN is found at every position, in every lane of the fast check', async (t) => {
  // 2 × 3 × 3 = 18 elements: four groups of four and a tail of two.
  const big: Manifest = { ...manifest, inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 3, 3], range: [0, 1] }] }
  const send = (values: number[]) =>
    decodeInferRequest(binary({ inputs: [{ name: 'x', datatype: 'FP32', shape: [2, 3, 3], parameters: { binary_data_size: 72 } }] }, f32(...values)), big)
  const ok = Array.from({ length: 18 }, (_, i) => (i % 5) / 4)
  t.doesNotThrow(() => send(ok), 'all inside [0, 1], the edges included')
  let found = 0
  for (let i = 0; i < 18; i++) {
    for (const [bad, code] of [[1.5, 'value_out_of_range'], [-0.25, 'value_out_of_range'], [NaN, 'non_finite_value']] as const) {
      const values = [...ok]
      values[i] = bad
      try {
        send(values)
      } catch (err) {
        if ((err as { code?: string }).code === code && new RegExp(`element ${i} is`).test((err as Error).message)) found++
      }
    }
  }
  t.equal(found, 54, 'each of 18 positions × 3 bad values refused, naming the element')
})
