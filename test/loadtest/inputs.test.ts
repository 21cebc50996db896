// The bench's inputs: generated tensors take the batch into the variable first dimension,
// stay in --range (or the metadata's range without it), and are the same for the same seed and differ for another; integer and
// boolean datatypes get their typed arrays; a variable inner dimension or a batch for a
// model without one is refused with what to do. Bodies decode with the gateway's own codec
// (binary: the header length and the tensor bytes; JSON: the values). Request files are read
// from a folder in name order, sent as written, or re-encoded with --binary; a file that is
// not a request is named in the error. A raw tensor file is the model's one input, its batch
// read from its length; a length that is not whole items, or a model with more inputs, is refused.

import t from 'tap'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { HEADER_LENGTH, splitBody } from '../../src/oip/codec.ts'
import { BenchInputError, encodeRequest, generateTensors, hasRawTensors, inputFiles, inputSpecs, poolSize, readRequestFiles } from '../../src/loadtest/inputs.ts'

const image = [{ name: 'input', datatype: 'FP32', shape: [-1, 1, 2, 2] }]

t.test('generated tensors: batch, range, seed', async (t) => {
  const [a] = generateTensors(image, { batch: 3, seed: 7, range: [-1, 1], n: 1 })
  t.same(a![0]!.shape, [3, 1, 2, 2], 'the batch fills the variable first dimension')
  t.equal(a![0]!.data.length, 12)
  t.ok([...(a![0]!.data as Float32Array)].every((v) => v >= -1 && v <= 1), 'values in --range')
  const [again] = generateTensors(image, { batch: 3, seed: 7, range: [-1, 1], n: 1 })
  t.same([...again![0]!.data], [...a![0]!.data], 'the same seed, the same values')
  const [other] = generateTensors(image, { batch: 3, seed: 8, range: [-1, 1], n: 1 })
  t.not([...other![0]!.data].join(), [...a![0]!.data].join(), 'another seed, other values')
  const pool = generateTensors(image, { batch: 1, seed: 7, range: [0, 1], n: 4 })
  t.equal(new Set(pool.map((p) => [...p[0]!.data].join())).size, 4, 'a pool of distinct bodies')
  const [ints] = generateTensors([{ name: 'ids', datatype: 'INT64', shape: [-1, 4] }, { name: 'mask', datatype: 'BOOL', shape: [-1, 4] }], { batch: 2, seed: 1, range: [0, 9], n: 1 })
  t.ok(ints![0]!.data instanceof BigInt64Array && [...ints![0]!.data].every((v) => v >= 0n && v <= 9n), 'INT64 as BigInt64Array in range')
  t.ok([...ints![1]!.data].every((v) => v === 0 || v === 1), 'BOOL as 0/1')
  const specs = inputSpecs({ inputs: [{ name: 'x', datatype: 'FP32', shape: [-1, 64], parameters: { range: [-1, 1] } }] }, 'm')
  const [ranged] = generateTensors(specs, { batch: 1, seed: 1, range: undefined, n: 1 })
  const values = [...(ranged![0]!.data as Float32Array)]
  t.ok(values.every((v) => v >= -1 && v <= 1) && values.some((v) => v < 0), 'without --range, the range the metadata gives')
  t.ok(poolSize(110_000) >= 1 && poolSize(110_000) <= 64 && poolSize(100 * 2 ** 20) === 1, 'the pool is bounded in count and bytes')
})

t.test('what cannot be generated is refused with what to do', async (t) => {
  t.throws(() => generateTensors([{ name: 'seq', datatype: 'FP32', shape: [-1, -1] }], { batch: 1, seed: 1, range: [0, 1], n: 1 }), new BenchInputError('input seq has a variable dimension 1 (shape [-1,-1]); give request files with --input'))
  t.throws(() => generateTensors([{ name: 'x', datatype: 'FP32', shape: [1, 4] }], { batch: 2, seed: 1, range: [0, 1], n: 1 }), /fixed first dimension .* drop --batch/)
  t.throws(() => generateTensors([{ name: 's', datatype: 'BYTES', shape: [-1] }], { batch: 1, seed: 1, range: [0, 1], n: 1 }), /datatype BYTES, which the bench cannot generate/)
})

t.test('bodies decode with the gateway\'s codec', async (t) => {
  const [tensors] = generateTensors(image, { batch: 2, seed: 1, range: [0, 1], n: 1 })
  const bin = encodeRequest('mnist', undefined, tensors!, true)
  t.equal(bin.path, '/v2/models/mnist/infer')
  t.equal(bin.items, 2)
  const split = splitBody(bin.body as Buffer, bin.headers![HEADER_LENGTH])
  t.equal(split.contentType, 'binary')
  t.match(split.header, { inputs: [{ name: 'input', datatype: 'FP32', shape: [2, 1, 2, 2], parameters: { binary_data_size: 32 } }], parameters: { binary_data_output: true } })
  t.same([...new Float32Array(new Uint8Array(split.binary!).buffer)], [...tensors![0]!.data], 'the tensor bytes follow the header')
  const json = encodeRequest('mnist', '1', tensors!, false)
  t.equal(json.path, '/v2/models/mnist/versions/1/infer')
  const parsed = JSON.parse(json.body as string) as { inputs: { data: number[] }[] }
  t.same(parsed.inputs[0]!.data.map(Math.fround), [...tensors![0]!.data], 'JSON values read back as the same float32s')
})

t.test('request files: a folder in name order, as written or re-encoded', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-inputs-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const request = (v: number) => JSON.stringify({ id: `r${v}`, inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 2], data: [v, v] }] })
  await writeFile(path.join(dir, 'b.json'), request(2))
  await writeFile(path.join(dir, 'a.json'), request(1))
  await writeFile(path.join(dir, 'notes.txt'), 'not a request')
  const files = await inputFiles(dir)
  t.same(files.map((f) => path.basename(f)), ['a.json', 'b.json'], 'request files in name order, nothing else')
  const asJson = await readRequestFiles(files, { model: 'm', version: undefined, binary: false })
  t.same(asJson.map((r) => r.body), [request(1), request(2)], 'bodies as written')
  const asBinary = await readRequestFiles(files, { model: 'm', version: undefined, binary: true })
  t.same(asBinary.map((r) => r.headers![HEADER_LENGTH] !== undefined), [true, true], '--binary re-encodes')
  await writeFile(path.join(dir, 'c.json'), '{"inputs": 3}')
  await t.rejects(readRequestFiles(await inputFiles(dir), { model: 'm', version: undefined, binary: false }), new BenchInputError(`${path.join(dir, 'c.json')} is not an OIP v2 inference request: it has no "inputs" array`))
  await t.rejects(inputFiles(path.join(dir, 'missing')), /cannot read --input .*missing: ENOENT/)
})

t.test('raw tensor files: the model\'s one input, the batch from the length', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-raw-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const values = Float32Array.from({ length: 2 * 4 }, (_, i) => i / 8)
  await writeFile(path.join(dir, 'two.bin'), Buffer.from(values.buffer))
  await writeFile(path.join(dir, 'odd.raw'), Buffer.alloc(6))
  const files = await inputFiles(dir)
  t.ok(hasRawTensors(files))
  const inputs = [{ name: 'input', datatype: 'FP32', shape: [-1, 1, 2, 2] }]
  const [req] = await readRequestFiles([files[1]!], { model: 'm', version: undefined, binary: true, inputs })
  t.equal(req!.items, 2, 'two items of 16 bytes')
  const split = splitBody(req!.body as Buffer, req!.headers![HEADER_LENGTH])
  t.match(split.header, { inputs: [{ name: 'input', datatype: 'FP32', shape: [2, 1, 2, 2] }] })
  t.same([...new Float32Array(new Uint8Array(split.binary!).buffer)], [...values], 'the file\'s bytes are the tensor')
  await t.rejects(readRequestFiles([files[0]!], { model: 'm', version: undefined, binary: true, inputs }), /odd\.raw has 6 bytes; input input \(FP32, shape \[-1,1,2,2\]\) takes whole items of 16 bytes/)
  await t.rejects(readRequestFiles([files[1]!], { model: 'm', version: undefined, binary: true, inputs: [...inputs, { name: 'mask', datatype: 'BOOL', shape: [-1, 4] }] }), /needs a model with one numeric input \(this one has 2 inputs\)/)
})
