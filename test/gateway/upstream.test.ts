// Upstream models: a model served by a real second process speaking OIP v2 (Bulwark itself,
// serving mnist locally with its defences off), called by a gateway with its whole pipeline
// on. Answers through the gateway equal the upstream's own; the pipeline treats an upstream
// model exactly as a local one; mTLS with the gateway's own client certificate works and a
// wrong certificate is a clean 503.

import { readFileSync } from 'node:fs'
import path from 'node:path'
import { parse } from 'yaml'
import t from 'tap'
import { request } from 'undici'
import { mnistRequest, startGateway, type RequestOptions, type TestGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
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
