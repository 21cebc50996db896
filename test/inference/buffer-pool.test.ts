// The pools behind request bodies and batch tensors (src/inference/buffer-pool.ts): the pool's
// own rules (a buffer given back while someone reads it waits for the last reader; a retired
// one never comes back), and, through the gateway with the real models, that reuse never
// lets one request's bytes reach another's answer.
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { BufferPool, batchBuffers, bodyBuffers } from '../../src/inference/buffer-pool.ts'
import { HEADER_LENGTH } from '../../src/oip/codec.ts'
import { coreGateway } from '../gateway/core-gateway.ts'

t.test('capacities are powers of two from 4 KiB; a buffer given back is handed out again', async (t) => {
  const pool = new BufferPool({ maxBytes: 1 << 20 })
  t.equal(BufferPool.capacityFor(1), 4096)
  t.equal(BufferPool.capacityFor(4097), 8192)
  t.equal(BufferPool.capacityFor(110_600), 131_072)
  const a = pool.take(5000)
  t.equal(a.byteLength, 8192)
  t.ok(pool.issued(a), 'take() marks the buffer as its holder\'s')
  pool.give(a)
  t.notOk(pool.issued(a), 'given back: no longer held')
  t.equal(pool.heldBytes, 8192)
  t.equal(pool.take(6000), a, 'the same buffer for a request of the same class')
  t.equal(pool.heldBytes, 0)
})

t.test('a buffer given back twice is handed out once', async (t) => {
  const pool = new BufferPool({ maxBytes: 1 << 20 })
  const a = pool.take(4096)
  pool.give(a)
  pool.give(a)
  const first = pool.take(4096)
  const second = pool.take(4096)
  t.equal(first, a)
  t.not(second, a, 'the second take gets a fresh buffer')
})

t.test('a buffer given back while held is reused only after its last reader lets go', async (t) => {
  const pool = new BufferPool({ maxBytes: 1 << 20 })
  const a = pool.take(4096)
  t.ok(pool.hold(a), 'an issued buffer can be held')
  t.ok(pool.hold(a), 'by several readers')
  pool.give(a)
  t.equal(pool.heldBytes, 0, 'given back while held: not in the pool yet')
  t.not(pool.take(4096), a, 'so another taker gets another buffer')
  pool.release(a)
  t.not(pool.take(4096), a, 'nor after the first reader lets go')
  pool.release(a)
  t.equal(pool.take(4096), a, 'after the last, it is reused')
  pool.release(a)
  pool.give(a)
  t.equal(pool.take(4096), a, 'a release without a hold changes nothing')
  t.notOk(pool.hold(new ArrayBuffer(4096)), 'a buffer the pool did not issue is not held')
})

t.test('a retired buffer is never handed out again', async (t) => {
  const pool = new BufferPool({ maxBytes: 1 << 20 })
  const a = pool.take(4096)
  pool.hold(a)
  pool.hold(a)
  pool.retire(a)
  pool.give(a)
  pool.release(a)
  t.equal(pool.heldBytes, 0, 'not pooled, whatever order its owner and other readers let go in')
  t.not(pool.take(4096), a)
  t.notOk(pool.issued(a), 'and no longer counted as issued')
  t.notOk(pool.hold(a), 'nor held again')
})

t.test('the pool is bounded, and keeps only its own size classes', async (t) => {
  const pool = new BufferPool({ maxBytes: 4 * 4096, maxPerClass: 2 })
  const bufs = [pool.take(4096), pool.take(4096), pool.take(4096)]
  for (const b of bufs) pool.give(b)
  t.equal(pool.heldBytes, 2 * 4096, 'at most maxPerClass per class')
  pool.give(new ArrayBuffer(8192))
  t.equal(pool.heldBytes, 4 * 4096, 'a returned buffer of another class fits under maxBytes')
  pool.give(new ArrayBuffer(8192))
  t.equal(pool.heldBytes, 4 * 4096, 'past maxBytes, buffers are left to the GC')
  const roomy = new BufferPool({ maxBytes: 1 << 20 })
  roomy.give(new ArrayBuffer(5000))
  roomy.give(new ArrayBuffer(0))
  t.equal(roomy.heldBytes, 0, 'odd sizes and detached buffers are not kept')
})

// Distinct inputs, each a recognisable function of its index, sent in overlapping waves so
// that bodies and batch buffers are reused while other requests are in flight.
function input(i: number, n: number): Float32Array {
  const x = new Float32Array(n)
  for (let k = 0; k < n; k++) x[k] = ((i * 7919 + k * 104729) % 1000) / 1000
  return x
}

for (const [model, name, shape, output] of [
  ['mnist', 'input', [1, 1, 28, 28], 'probabilities'],
  ['ocr-cls', 'x', [1, 3, 48, 192], 'softmax_0.tmp_0'],
] as const) {
  t.test(`${model}: with bodies and batches pooled, every answer is its own request's`, async (t) => {
    // No policies: these synthetic inputs are not digits, and screening would refuse them.
    const policies = mkdtempSync(path.join(tmpdir(), 'bulwark-no-policies-'))
    const gateway = await coreGateway({ policies: { directory: policies }, models: { serve: [{ name: model, batching: { enabled: true, maxBatchSize: 8 } }] } })
    t.teardown(() => gateway.close(1000))
    const n = shape.reduce((a: number, b: number) => a * b, 1)
    const send = async (x: Float32Array): Promise<number[]> => {
      const head = Buffer.from(JSON.stringify({
        inputs: [{ name, datatype: 'FP32', shape, parameters: { binary_data_size: x.byteLength } }],
        outputs: [{ name: output, parameters: { binary_data: true } }],
      }))
      const res = await gateway.api.inject({
        method: 'POST',
        url: `/v2/models/${model}/infer`,
        headers: { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.length) },
        payload: Buffer.concat([head, Buffer.from(x.buffer)]),
      })
      if (res.statusCode !== 200) throw new Error(`status ${res.statusCode}: ${res.payload}`)
      const h = Number(res.headers[HEADER_LENGTH])
      const bytes = res.rawPayload.subarray(h)
      return Array.from(new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)))
    }
    const COUNT = 48
    // Alone, one at a time: the reference answers.
    const alone: number[][] = []
    for (let i = 0; i < COUNT; i++) alone.push(await send(input(i, n)))
    const bodiesBefore = bodyBuffers.heldBytes
    // Three waves of 16 at once, twice over: buffers come back and go out again.
    let worst = 0
    for (let pass = 0; pass < 2; pass++) {
      for (let w = 0; w < COUNT; w += 16) {
        const got = await Promise.all(Array.from({ length: 16 }, (_, j) => send(input(w + j, n))))
        got.forEach((out, j) => out.forEach((v, k) => (worst = Math.max(worst, Math.abs(v - alone[w + j]![k]!)))))
      }
    }
    t.ok(worst < 1e-5, `${COUNT * 2} concurrent answers equal their own request's answer alone (max diff ${worst.toExponential(1)})`)
    t.ok(bodyBuffers.heldBytes > 0 || bodiesBefore > 0, 'request bodies went back to the pool')
    t.ok(batchBuffers.heldBytes > 0, 'batch buffers came back from the worker to the pool')
  })
}
