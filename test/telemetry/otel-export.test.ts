// OpenTelemetry export from `bulwark serve`, configured only by the standard OTEL_* variables:
// off by default; with an OTLP endpoint, spans (and, with OTEL_METRICS_EXPORTER=otlp, metrics)
// reach a collector (here a fake one that records what it is sent).

import http from 'node:http'
import type { AddressInfo } from 'node:net'
import t from 'tap'
import { request } from 'undici'
import { noDefences, startGateway } from '../../kit/gateway-process.ts'
import { tracingRequested } from '../../src/telemetry/sdk.ts'
import { Changes } from '../../kit/wait.ts'
import { jsonBody, mnistDigits } from '../helpers/scaleout.ts'

t.test('trace export is off unless the OTEL_* variables ask for it', async (t) => {
  t.equal(tracingRequested({}), false, 'nothing set: off')
  t.equal(tracingRequested({ OTEL_TRACES_EXPORTER: 'none', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }), false, 'none wins')
  t.equal(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }), true, 'an OTLP endpoint')
  t.equal(tracingRequested({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/v1/traces' }), true)
  t.equal(tracingRequested({ OTEL_TRACES_EXPORTER: 'console' }), true, 'an exporter')
  t.equal(tracingRequested({ OTEL_TRACES_EXPORTER: 'otlp', OTEL_SDK_DISABLED: 'true' }), false, 'the SDK disabled')
})

t.test('with an OTLP endpoint, spans and metrics reach the collector', async (t) => {
  const received: { path: string; body: Buffer }[] = []
  const arrivals = new Changes()
  const collector = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c: Buffer) => chunks.push(c))
    req.on('end', () => {
      received.push({ path: req.url ?? '', body: Buffer.concat(chunks) })
      arrivals.notify()
      res.writeHead(200, { 'content-type': req.headers['content-type'] ?? 'application/json' }).end()
    })
  })
  await new Promise<void>((r) => collector.listen(0, '127.0.0.1', r))
  t.teardown(() => new Promise((r) => collector.close(r)))
  const endpoint = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`

  const gw = await startGateway(
    { ...noDefences, models: { serve: [{ name: 'mnist', workers: 1, intraOpThreads: 1 }] } },
    { env: { OTEL_EXPORTER_OTLP_ENDPOINT: endpoint, OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_METRICS_EXPORTER: 'otlp', OTEL_METRIC_EXPORT_INTERVAL: '1000', OTEL_SERVICE_NAME: 'bulwark-test' } },
  )
  t.teardown(() => gw.stop())
  const res = await request(`http://127.0.0.1:${gw.apiPort}/v2/models/mnist/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(jsonBody(mnistDigits(1))) })
  t.equal(res.statusCode, 200)
  await res.body.dump()

  const traces = () => received.filter((r) => r.path === '/v1/traces').map((r) => r.body.toString('latin1')).join('')
  // The exporters send on their own schedule (OTEL_BSP_SCHEDULE_DELAY, OTEL_METRIC_EXPORT_INTERVAL): wait for what arrives.
  t.ok(await arrivals.until(() => traces().includes('stage model-inference')), 'the stage spans are exported')
  for (const name of ['POST /v2/models/:model/infer', 'stage input-validation', 'stage model-inference', 'bulwark-test']) t.ok(traces().includes(name), `with ${name}`)
  t.ok(await arrivals.until(() => received.some((r) => r.path === '/v1/metrics' && r.body.includes('bulwark_requests_total'))), 'metrics go out over OTLP too')
})
