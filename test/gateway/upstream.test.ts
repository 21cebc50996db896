// Upstream models: a model served by a real second process speaking OIP v2 (Bulwark itself,
// serving mnist locally with its defences off), called by a gateway with its whole pipeline
// on. Answers through the gateway equal the upstream's own; the pipeline treats an upstream
// model exactly as a local one; mTLS with the gateway's own client certificate works and a
// wrong certificate is a clean 503. Against a slow mnist pod over mTLS that the test
// controls: one caller's short deadline or poisoned item, batched with another caller's
// requests, costs only its own request an answer.

import { readFileSync } from 'node:fs'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import https from 'node:https'
import type { AddressInfo } from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { parse } from 'yaml'
import t from 'tap'
import { request } from 'undici'
import { mnistRequest, startGateway, type RequestOptions, type TestGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { realDeps } from '../../src/deps.ts'
import { writeDevPki } from '../../src/dev/pki.ts'
import type { DynamicBatcher } from '../../src/inference/batcher.ts'
import { HEADER_LENGTH } from '../../src/oip/codec.ts'
import { binaryBody, jsonBody, mnistDigits, splitBinaryResponse, startUpstream } from '../helpers/scaleout.ts'

const digits = mnistDigits(10)

async function direct(port: number, body: { headers: Record<string, string>; body: Buffer | string }) {
  const res = await request(`http://127.0.0.1:${port}/v2/models/mnist/infer`, { method: 'POST', headers: body.headers, body: body.body })
  return { status: res.statusCode, headers: res.headers, body: Buffer.from(await res.body.arrayBuffer()) }
}

async function viaGateway(gw: TestGateway, body: { headers: Record<string, string>; body: Buffer | string }) {
  const res = await request(`${gw.url}/v2/models/mnist/infer`, {
    method: 'POST',
    headers: { ...body.headers, authorization: `Bearer ${await gw.token()}` },
    body: body.body,
    dispatcher: gw.agent,
  })
  return { status: res.statusCode, headers: res.headers, body: Buffer.from(await res.body.arrayBuffer()) }
}

t.test('through the gateway, an upstream model answers exactly what the upstream answers', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.stop())
  const gw = await startGateway({
    models: ['mnist'],
    config: {
      models: { serve: [{ name: 'mnist', upstream: { endpoints: [`http://127.0.0.1:${up.apiPort}`] } }] },
      // Compare raw scores: output protection off here (the next test keeps it on).
      outputPrivacy: { enabled: false },
    },
  })
  t.teardown(() => gw.close())

  for (const [i, d] of digits.entries()) {
    const bin = binaryBody([d])
    const a = await direct(up.apiPort, bin)
    const b = await viaGateway(gw, bin)
    t.equal(b.status, 200, `digit ${i}: 200 through the full front door`)
    const ra = splitBinaryResponse(a.body, a.headers['inference-header-content-length'] as string)
    const rb = splitBinaryResponse(b.body, b.headers['inference-header-content-length'] as string)
    t.same(rb.outputs.probabilities, ra.outputs.probabilities, `digit ${i}: the same float32 bytes`)
  }
  // JSON in, JSON out, a batch of 4: the gateway sends binary upstream and encodes JSON back.
  const batch = JSON.stringify(jsonBody(digits.slice(0, 4)))
  const a = await direct(up.apiPort, { headers: { 'content-type': 'application/json' }, body: batch })
  const b = await viaGateway(gw, { headers: { 'content-type': 'application/json' }, body: batch })
  t.equal(b.status, 200)
  t.same(JSON.parse(b.body.toString()).outputs[0].data, JSON.parse(a.body.toString()).outputs[0].data, 'JSON batch: the same numbers')

  const meta = await gw.request('/v2/models/mnist', { token: await gw.token({ scopes: ['mnist:metadata'] }) })
  t.equal(meta.status, 200, 'metadata comes from the manifest')
  t.same(meta.body.outputs, [{ name: 'probabilities', datatype: 'FP32', shape: [-1, 10] }])
  const ready = await request(`${gw.adminUrl}/readyz`)
  const readyBody = (await ready.body.json()) as any
  t.equal(ready.statusCode, 200)
  t.same(readyBody.upstreams.mnist, [{ endpoint: `http://127.0.0.1:${up.apiPort}`, state: 'closed', outstanding: 0 }], '/readyz lists the endpoint and its breaker')
  t.equal(readyBody.checks['upstream:mnist'], 'ok')
})

t.test('the pipeline applies to an upstream model exactly as to a local one', async (t) => {
  const up = await startUpstream()
  t.teardown(() => up.stop())
  // The repo's mnist policy (screening, label-only output), with the output noise off so that
  // two gateways' answers can be compared exactly (with noise, two labels may differ by chance).
  const repoPolicy = parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8')) as { output: Record<string, unknown> }
  const policies = { mnist: { ...repoPolicy, output: { ...repoPolicy.output, noise: { mechanism: 'none' } } } }
  const remote = await startGateway({ models: ['mnist'], policies, config: { models: { serve: [{ name: 'mnist', upstream: { endpoints: [`http://127.0.0.1:${up.apiPort}`] } }] } } })
  t.teardown(() => remote.close())
  const local = await startGateway({ models: ['mnist'], policies })
  t.teardown(() => local.close())

  const body = await mnistRequest()
  const [r, l] = [await remote.request('/v2/models/mnist/infer', { body }), await local.request('/v2/models/mnist/infer', { body })]
  t.equal(r.status, 200)
  t.same(r.body.outputs, l.body.outputs, 'the same protected answer (label-only, rounded)')
  t.same(r.body.parameters, l.body.parameters)

  const cases: [string, (gw: TestGateway) => Promise<RequestOptions>][] = [
    ['no token', async () => ({ body, token: null })],
    ['a token without the scope', async (gw) => ({ body, token: await gw.token({ scopes: ['ocr-cls:infer'] }) })],
    ['a bad shape', async () => ({ body: { inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 28, 28], data: [] }] } })],
    ['an out-of-range pixel', async () => ({ body: jsonBody([digits[0]!.map((v, i) => (i === 5 ? 3 : v))]) })],
  ]
  for (const [name, req] of cases) {
    const rr = await remote.request('/v2/models/mnist/infer', await req(remote))
    const lr = await local.request('/v2/models/mnist/infer', await req(local))
    t.equal(rr.status, lr.status, `${name}: same status (${lr.status})`)
    t.equal(rr.body.code, lr.body.code, `${name}: same code`)
  }
  // Screening ran on the gateway: its stages are timed on the upstream model too.
  t.ok(remote.gateway.metrics.stageSeconds.count({ stage: 'screen-input' }) > 0, 'screening ran')
  t.ok(remote.gateway.metrics.stageSeconds.count({ stage: 'output-privacy' }) > 0, 'output protection ran')
  // And the audit trail has the upstream-served request.
  const audit = remote.gateway.audit.writer
  t.ok(audit, 'audit is on')
})

t.test('https upstream with mTLS: the gateway presents its own client certificate', async (t) => {
  // The upstream requires client certificates from its dev CA; token auth off there.
  const up = await startUpstream({ tls: { enabled: true }, auth: { enabled: false }, authorization: { enabled: false } })
  t.teardown(() => up.stop())
  const dev = path.join(up.dir, '.bulwark/dev')
  const endpoint = `https://127.0.0.1:${up.apiPort}`
  const tls = { caFile: path.join(dev, 'ca.pem'), certFile: path.join(dev, 'client.pem'), keyFile: path.join(dev, 'client-key.pem') }
  // Raw scores, so the answer can be checked exactly: the bundled policy's noisy label is
  // wrong about 1% of the time even for a confident digit (docs/privacy.md), and the
  // protected path to an upstream is tested above.
  const gw = await startGateway({ models: ['mnist'], config: { models: { serve: [{ name: 'mnist', upstream: { endpoints: [endpoint], tls } }] }, outputPrivacy: { enabled: false } } })
  t.teardown(() => gw.close())
  const ok = await gw.request('/v2/models/mnist/infer', { body: await mnistRequest() })
  t.equal(ok.status, 200, 'served over mTLS')
  const scores: number[] = ok.body.outputs[0].data
  t.equal(scores.indexOf(Math.max(...scores)), 7, 'the handwritten 7')

  // Without a client certificate the upstream refuses the handshake: a clean 503, never a hang.
  const anon = await startGateway({
    models: ['mnist'],
    config: { models: { serve: [{ name: 'mnist', upstream: { endpoints: [endpoint], tls: { caFile: tls.caFile }, retry: { enabled: false } } }] } },
  })
  t.teardown(() => anon.close())
  const refused = await anon.request('/v2/models/mnist/infer', { body: await mnistRequest() })
  t.equal(refused.status, 503)
  t.equal(refused.body.code, 'upstream_unavailable')
  t.ok(refused.headers['retry-after'], 'with Retry-After')
  // Screening runs the model first (feature squeezing), so the refusal comes from its stage.
  t.match(anon.logsWith('request not served').at(-1), { code: 'upstream_unavailable', stage: 'model-inference' })

  // A server certificate from a CA the gateway does not trust: refused before anything is sent.
  const foreign = await startGateway({
    models: ['mnist'],
    config: { models: { serve: [{ name: 'mnist', upstream: { endpoints: [endpoint], tls: { caFile: gw.pki.files.ca, certFile: tls.certFile, keyFile: tls.keyFile } } }] } },
  })
  t.teardown(() => foreign.close())
  const untrusted = await foreign.request('/v2/models/mnist/infer', { body: await mnistRequest() })
  t.equal(untrusted.status, 503)
  t.match(foreign.logsWith('request not served').at(-1), { code: 'upstream_unavailable', reason: /UNABLE_TO_VERIFY_LEAF_SIGNATURE|self.signed|unable to verify/i })
})

t.test('the config names every upstream problem at once', async (t) => {
  const { buildConfig } = await import('../../src/config/load.ts')
  const { scaleoutProblems } = await import('../../src/config/scaleout.ts')
  t.throws(() => buildConfig({ models: { serve: [{ name: 'mnist', upstream: { endpoints: ['ftp://x'] } }] } }, 'c'), /\/models\/serve\/0\/upstream\/endpoints\/0/)
  const config = buildConfig(
    {
      models: { serve: [{ name: 'mnist', upstream: { endpoints: ['http://a:1', 'https://b:2'], tls: { certFile: 'c.pem' }, breaker: { rollingWindowMs: 1000, rollingBuckets: 3 } } }] },
      state: { redis: { url: 'redis://r:6379', tls: { caFile: 'ca.pem' } } },
    },
    'c',
  )
  const problems = scaleoutProblems(config)
  t.match(problems, [/mix of http/, /give both certFile and keyFile/, /divide evenly/, /rediss/])
})

/** One call the pod received, waiting for the test to answer or refuse it. */
interface PodCall {
  /** Each item's first pixel (the tests mark each request there). */
  firsts: number[]
  /** Whether the gateway's side closed the call before it was answered (an aborted call). */
  closed: boolean
  /** 200, each item's probabilities [x0, 1 - x0, 0, ...] with x0 its first pixel. */
  answer(): void
  refuse(status: number, body: unknown): void
}

interface Pod {
  endpoint: string
  /** The gateway's TLS settings for the pod: the pod's CA, and a client certificate it accepts. */
  tls: { caFile: string; certFile: string; keyFile: string }
  calls: PodCall[]
  /** Resolves with the next call the pod receives. */
  nextCall(): Promise<PodCall>
}

/** An mnist model pod speaking OIP v2 over mTLS (a development PKI of its own); `onCall` sees each call first. */
async function fakePod(t: { teardown(fn: () => unknown): void }, onCall: (call: PodCall) => void = () => {}): Promise<Pod> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-pod-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const pki = await writeDevPki(dir, realDeps)
  const [ca, cert, key] = await Promise.all([readFile(pki.files.ca, 'utf8'), readFile(pki.files.serverCert, 'utf8'), readFile(pki.files.serverKey, 'utf8')])
  const calls: PodCall[] = []
  let waiters: ((c: PodCall) => void)[] = []
  const server = https.createServer({ ca, cert, key, requestCert: true, rejectUnauthorized: true }, (req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      const body = Buffer.concat(chunks)
      const n = Number(req.headers[HEADER_LENGTH])
      const items = JSON.parse(body.subarray(0, n).toString()).inputs[0].shape[0] as number
      const pixels = new Float32Array(body.buffer.slice(body.byteOffset + n, body.byteOffset + body.byteLength))
      const firsts = Array.from({ length: items }, (_, i) => pixels[i * 784]!)
      const call: PodCall = {
        firsts,
        closed: false,
        answer() {
          const out = new Float32Array(items * 10)
          firsts.forEach((x, i) => out.set([x, 1 - x], i * 10))
          const head = Buffer.from(JSON.stringify({ model_name: 'mnist', outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [items, 10], parameters: { binary_data_size: out.byteLength } }] }))
          res.writeHead(200, { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.byteLength) }).end(Buffer.concat([head, Buffer.from(out.buffer)]))
        },
        refuse(status, body) {
          res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body))
        },
      }
      res.once('close', () => (call.closed = !res.writableFinished))
      calls.push(call)
      for (const w of waiters.splice(0)) w(call)
      onCall(call)
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise<void>((r) => {
    server.closeAllConnections()
    server.close(() => r())
  }))
  return {
    endpoint: `https://127.0.0.1:${(server.address() as AddressInfo).port}`,
    tls: { caFile: pki.files.ca, certFile: pki.files.clientCert, keyFile: pki.files.clientKey },
    calls,
    nextCall: () => new Promise((r) => waiters.push(r)),
  }
}

/** Resolves once `batcher` holds `n` queued requests, checked at each submission. */
function queued(batcher: DynamicBatcher, n: number): Promise<void> {
  const submit = batcher.submit.bind(batcher)
  return new Promise((resolve) => {
    batcher.submit = (...args) => {
      const p = submit(...args)
      if (batcher.queueDepth >= n) {
        batcher.submit = submit
        resolve()
      }
      return p
    }
  })
}

/**
 * A gateway (full front door, no screening, raw scores) serving mnist from `pod` with one
 * upstream call at a time, so that requests sent while the first call is held queue into
 * one batch; and a client that marks each request's digit by its first pixel.
 */
async function gatewayFor(t: { teardown(fn: () => unknown): void }, pod: Pod) {
  const policy = { model: 'mnist', allow: [{ verbs: ['infer'], workloads: [DEV_WORKLOAD], scopes: ['mnist:infer'] }], rateLimit: { requestsPerWindow: 10_000, windowMs: 1000 } }
  const gw = await startGateway({
    models: ['mnist'],
    policies: { mnist: policy },
    config: {
      outputPrivacy: { enabled: false },
      audit: { durability: 'relaxed' },
      models: { serve: [{ name: 'mnist', upstream: { endpoints: [pod.endpoint], tls: pod.tls, maxConcurrentCalls: 1 } }] },
    },
  })
  t.teardown(() => gw.close())
  const digits = mnistDigits(10)
  const infer = async (token: string, marker: number, parameters?: Record<string, unknown>) => {
    const digit = digits[Math.round(marker * 100) % 10]!.slice()
    digit[0] = marker
    return gw.request('/v2/models/mnist/infer', { token, body: jsonBody([digit], parameters ? { parameters } : {}) })
  }
  return { gw, infer, batcher: gw.gateway.registry.ready('mnist', null).batcher! }
}

t.test('one caller\'s short deadline gets its own 504; another caller\'s requests in the same upstream call all get their answers', async (t) => {
  const pod = await fakePod(t)
  const { gw, infer, batcher } = await gatewayFor(t, pod)
  const [victim, hostile] = [await gw.token({ sub: 'victim' }), await gw.token({ sub: 'hostile' })]

  const firstCall = pod.nextCall()
  const first = infer(victim, 0.005)
  const blocker = await firstCall
  const victimsQueued = queued(batcher, 24)
  const markers = Array.from({ length: 24 }, (_, i) => (i + 1) / 100)
  const victims = markers.map((m) => infer(victim, m))
  await victimsQueued
  // The hostile caller's `timeout`: 500 ms (OIP counts it in microseconds).
  const allQueued = queued(batcher, 25)
  const refused = infer(hostile, 0.5, { timeout: 500_000 })
  await allQueued
  const batchCall = pod.nextCall()
  blocker.answer()
  t.equal((await first).status, 200)
  const call = await batchCall
  t.same(call.firsts, [...markers, 0.5].map(Math.fround), 'the 24 requests and the hostile one went up as one call')

  const h = await refused
  t.equal(h.status, 504, 'the short deadline passes while the call runs')
  t.equal(h.body.code, 'deadline_exceeded')
  t.notOk(call.closed, 'the upstream call goes on')
  call.answer()
  const answers = await Promise.all(victims)
  t.same(answers.map((a) => a.status), markers.map(() => 200), 'all 24 of the other caller\'s requests answered')
  t.same(answers.map((a) => a.body.outputs?.[0]?.data[0]), markers, 'each with its own item\'s answer')
  t.equal(pod.calls.length, 2, 'and nothing was sent twice')
})

t.test('an upstream that refuses a batch for one poisoned item: the others are answered, the poisoned one gets the refusal', async (t) => {
  const POISON = 0.9
  let holdFirst = true
  // The pod refuses (an upstream Bulwark's 422) any call holding the poisoned item; the first call waits for the test.
  const pod = await fakePod(t, (call) => {
    if (holdFirst) return void (holdFirst = false)
    if (call.firsts.includes(Math.fround(POISON))) call.refuse(422, { error: 'the input looks adversarial', code: 'suspicious_input' })
    else call.answer()
  })
  const { gw, infer, batcher } = await gatewayFor(t, pod)
  const [victim, mallory] = [await gw.token({ sub: 'victim' }), await gw.token({ sub: 'mallory' })]

  const firstCall = pod.nextCall()
  const first = infer(victim, 0.005)
  const blocker = await firstCall
  const allQueued = queued(batcher, 9)
  const markers = Array.from({ length: 8 }, (_, i) => (i + 1) / 100)
  const victims = markers.map((m) => infer(victim, m))
  const poisoned = infer(mallory, POISON)
  await allQueued
  blocker.answer()
  t.equal((await first).status, 200)

  const answers = await Promise.all(victims)
  t.same(answers.map((a) => a.status), markers.map(() => 200), 'every other request answered')
  t.same(answers.map((a) => a.body.outputs?.[0]?.data[0]), markers, 'each with its own item\'s answer')
  const p = await poisoned
  t.equal(p.status, 422)
  t.equal(p.body.code, 'suspicious_input', 'the poisoned request gets the upstream\'s refusal')
  t.equal(pod.calls[1]!.firsts.length, 9, 'all nine went up as one call first')
  const extra = pod.calls.length - 2
  t.ok(extra >= 2 && extra <= 2 * 9 - 2, `then ${extra} smaller calls (at most 2n - 2 = 16)`)
  t.equal(gw.gateway.registry.upstreams()[0]!.backend.status()[0]!.state, 'closed', 'refusals are not the pod\'s faults: the breaker stays closed')
})
