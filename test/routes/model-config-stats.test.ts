// Triton's model configuration and statistics extensions over REST, through a real gateway
// (mTLS, JWT, the bundled policies, the real models): a perf_analyzer-style client finds what
// it needs in /config for both bundled models; dynamic_batching follows the model's batching
// setting; /stats counts answered and refused inferences, model executions and their times;
// both are authorized like metadata (an unserved version is a 404), and listed in the server metadata's extensions.
import t from 'tap'
import { startGateway } from '../../kit/gateway.ts'
import { ocrImage } from '../../kit/payloads.ts'

const gw = await startGateway({
  models: ['mnist', 'ocr-cls'],
  config: { models: { serve: [{ name: 'mnist' }, { name: 'ocr-cls', batching: { enabled: false } }] } },
})
t.teardown(() => gw.close())

interface ParsedModel {
  maxBatchSize: number
  inputs: Map<string, { datatype: string; shape: number[] }>
  outputs: Map<string, { datatype: string; shape: number[] }>
}

/**
 * What perf_analyzer's Triton model parser (model_parser.cc, InitTriton) takes from the
 * metadata and the config: max_batch_size, and per input and output its datatype (the
 * config's data_type with TYPE_ stripped must agree with the metadata's) and its shape
 * (the config's dims, with the batch dimension in front when max_batch_size > 0).
 */
function parseLikePerfAnalyzer(metadata: any, config: any): ParsedModel {
  if (!Number.isInteger(config.max_batch_size)) throw new Error('max_batch_size is not an integer')
  const tensors = (fromConfig: any[], fromMetadata: any[]) => {
    const out = new Map<string, { datatype: string; shape: number[] }>()
    for (const c of fromConfig) {
      if (typeof c.data_type !== 'string' || !c.data_type.startsWith('TYPE_')) throw new Error(`${c.name}: data_type ${c.data_type}`)
      if (!Array.isArray(c.dims) || !c.dims.every(Number.isInteger)) throw new Error(`${c.name}: dims ${c.dims}`)
      const m = fromMetadata.find((x: any) => x.name === c.name)
      if (!m) throw new Error(`${c.name} is in the config but not the metadata`)
      const datatype = c.data_type.slice('TYPE_'.length)
      if (datatype !== m.datatype) throw new Error(`${c.name}: config says ${datatype}, metadata ${m.datatype}`)
      out.set(c.name, { datatype, shape: config.max_batch_size > 0 ? [-1, ...c.dims] : c.dims })
    }
    return out
  }
  return { maxBatchSize: config.max_batch_size, inputs: tensors(config.input, metadata.inputs), outputs: tensors(config.output, metadata.outputs) }
}

t.test('server metadata lists the configuration and statistics extensions', async (t) => {
  const res = await gw.request('/v2')
  t.equal(res.status, 200)
  t.ok(res.body.extensions.includes('model_configuration'))
  t.ok(res.body.extensions.includes('statistics'))
  t.ok(res.body.extensions.includes('binary_tensor_data'))
})

t.test('a perf_analyzer-style client finds max batch size, inputs, datatypes and dims of both bundled models', async (t) => {
  const want = {
    mnist: { maxBatchSize: 64, input: ['input', [-1, 1, 28, 28]], output: ['probabilities', [-1, 10]] },
    'ocr-cls': { maxBatchSize: 32, input: ['x', [-1, 3, 48, 192]], output: ['softmax_0.tmp_0', [-1, 2]] },
  } as const
  for (const [model, w] of Object.entries(want)) {
    for (const base of [`/v2/models/${model}`, `/v2/models/${model}/versions/1`]) {
      const [metadata, config] = await Promise.all([gw.request(base), gw.request(`${base}/config`)])
      t.equal(config.status, 200, `${base}/config`)
      t.equal(config.body.name, model)
      t.equal(config.body.platform, 'onnxruntime_onnx')
      t.equal(config.body.backend, 'onnxruntime')
      const parsed = parseLikePerfAnalyzer(metadata.body, config.body)
      t.equal(parsed.maxBatchSize, w.maxBatchSize, `${model} max_batch_size`)
      t.same([...parsed.inputs.entries()], [[w.input[0], { datatype: 'FP32', shape: w.input[1] }]], `${model} inputs`)
      t.same([...parsed.outputs.entries()], [[w.output[0], { datatype: 'FP32', shape: w.output[1] }]], `${model} outputs`)
    }
  }
})

t.test('dynamic_batching is present exactly when the model batches requests', async (t) => {
  const mnist = (await gw.request('/v2/models/mnist/config')).body
  t.same(mnist.dynamic_batching, { preferred_batch_size: [], max_queue_delay_microseconds: 500, preserve_ordering: false })
  t.same(mnist.input[0].dims, [1, 28, 28])
  t.equal(mnist.input[0].format, 'FORMAT_NONE')
  const ocr = (await gw.request('/v2/models/ocr-cls/config')).body
  t.notOk('dynamic_batching' in ocr, 'batching off: no dynamic_batching')
  t.same(ocr.instance_group, [{ name: 'ocr-cls', kind: 'KIND_CPU', count: 1 }])
})

t.test('config and stats are authorized like metadata, and name a version that does not exist', async (t) => {
  for (const path of ['/v2/models/mnist/config', '/v2/models/mnist/stats']) {
    const none = await gw.request(path, { token: null })
    t.equal(none.status, 401, `${path} without a token`)
    t.equal(none.body.code, 'unauthenticated')
    const inferOnly = await gw.request(path, { token: await gw.token({ scopes: ['mnist:infer'] }) })
    t.equal(inferOnly.status, 403, `${path} with an infer-only token`)
    t.equal(inferOnly.body.code, 'forbidden')
  }
  // Default deny: a model no policy names is refused before anything says whether it exists.
  t.equal((await gw.request('/v2/models/nope/config')).body.code, 'forbidden')
  t.equal((await gw.request('/v2/models/mnist/versions/7/config')).body.code, 'version_not_found')
  t.equal((await gw.request('/v2/models/mnist/versions/7/stats')).body.code, 'version_not_found')
  // A policy grants one model: the every-model form names none, so no policy admits it.
  const all = await gw.request('/v2/models/stats')
  t.equal(all.status, 403)
  t.equal(all.body.code, 'forbidden')
})

t.test('stats count answered and refused inferences, executions, items, queue and compute time', async (t) => {
  const before = (await gw.request('/v2/models/ocr-cls/stats')).body.model_stats[0]
  t.equal(before.name, 'ocr-cls')
  t.equal(before.version, '1')
  const image = (batch: number) => ({ inputs: [{ name: 'x', datatype: 'FP32', shape: [batch, 3, 48, 192], data: Array.from(ocrImage(batch)) }] })
  t.equal((await gw.request('/v2/models/ocr-cls/infer', { body: image(4) })).status, 200)
  t.equal((await gw.request('/v2/models/ocr-cls/infer', { body: image(1) })).status, 200)
  const bad = await gw.request('/v2/models/ocr-cls/infer', { body: { inputs: [{ name: 'x', datatype: 'FP32', shape: [1, 3], data: [0, 0, 0] }] } })
  t.equal(bad.body.code, 'shape_mismatch')
  const res = await gw.request('/v2/models/ocr-cls/versions/1/stats')
  t.equal(res.status, 200)
  const s = res.body.model_stats[0]
  const d = (k: string) => s.inference_stats[k].count - before.inference_stats[k].count
  t.equal(d('success'), 2, 'two answered')
  t.equal(d('fail'), 1, 'one refused')
  t.equal(s.inference_count - before.inference_count, 5, 'five items')
  t.equal(s.execution_count - before.execution_count, 2, 'two executions (batching off)')
  for (const k of ['queue', 'compute_input', 'compute_infer', 'compute_output']) t.equal(d(k), 2, `${k} counts each executed request`)
  t.ok(s.inference_stats.success.ns > before.inference_stats.success.ns, 'success time grows')
  t.ok(s.inference_stats.compute_infer.ns > before.inference_stats.compute_infer.ns, 'compute time grows')
  t.ok(s.last_inference > 0)
  t.same(s.batch_stats.map((b: any) => b.batch_size).filter((n: number) => n === 1 || n === 4), [1, 4], 'a row per batch size')
})
