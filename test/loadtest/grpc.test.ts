// `bulwark bench --protocol grpc` against a real gateway's gRPC listener (mTLS with the dev
// client certificate, real JWTs in the `authorization` metadata, mnist):
// - a short closed-loop run with generated inputs (read by ModelMetadata) answers every
//   request, as raw_input_contents (--binary) and as typed contents with a batch of 2; the
//   JSON names the protocol, the HOST:PORT target and the encoding, and the gateway's
//   /metrics (--metrics) timed the same calls;
// - a token without the model's scope gets every call counted under `forbidden` (the
//   gateway's bulwark-code trailer), with the HTTP status of that code;
// - a model that allows 3 calls a minute answers exactly 3 of 10 and counts the other 7
//   under `rate_limited`, and the bench prints its hint naming --callers;
// - a port with no gRPC listener fails with exit 1 and says what to check.
// Nothing here asserts a timing: only counts and codes.

import t from 'tap'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { startGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import type { BenchResult } from '../../src/loadtest/output.ts'
import { runBench } from './run-bench.ts'

const dev = 'spiffe://bulwark.local/ns/default/sa/dev'
const allow = [{ verbs: ['infer', 'metadata'], workloads: [dev], scopes: ['mnist:use'] }]
const gw = await startGateway({ models: ['mnist'], policies: { mnist: { model: 'mnist', allow, rateLimit: { requestsPerWindow: 1_000_000, windowMs: 1000 } } } })
const port = await gw.gateway.grpc!.listen('127.0.0.1', 0)
t.teardown(() => gw.close())
const out = await mkdtemp(path.join(os.tmpdir(), 'bulwark-bench-grpc-'))
t.teardown(() => rm(out, { recursive: true, force: true }))

const bench = (argv: string[]) => runBench(argv, out)

const tls = (g: typeof gw) => ['--cacert', g.pki.files.ca, '--cert', g.pki.files.clientCert, '--key', g.pki.files.clientKey]
const short = ['--duration', '150ms', '--warmup', '50ms']
const fixture = path.join(repoRoot, 'test', 'fixtures', 'mnist-request.json')
const readResult = async (file: string) => JSON.parse(await readFile(file, 'utf8')) as BenchResult

t.test('a short gRPC run answers every call, raw and typed', async (t) => {
  const token = await gw.token({ scopes: ['mnist:use'] })
  for (const [encoding, extra, batch] of [['binary', ['--binary'], 1], ['typed', ['--batch', '2'], 2]] as const) {
    const json = path.join(out, `grpc-${encoding}.json`)
    const r = await bench(['--protocol', 'grpc', '--url', `127.0.0.1:${port}`, '--model', 'mnist', ...tls(gw), '--token', token, ...extra, '--concurrency', '2', ...short, '--metrics', `${gw.adminUrl}/metrics`, '--json', json, '--quiet'])
    t.equal(r.status, 0, r.stderr)
    const result = await readResult(json)
    t.equal(result.protocol, 'grpc')
    t.equal(result.target, `127.0.0.1:${port}`, 'the target is the listener\'s HOST:PORT')
    t.equal(result.encoding, encoding)
    const step = result.steps[0]!
    t.ok(step.stats.requests > 0, `${encoding}: calls were answered`)
    t.same(step.stats.codes, { ok: step.stats.requests }, `${encoding}: every one ok`)
    t.equal(step.stats.items, batch * step.stats.requests, `${encoding}: ${batch} item(s) per call`)
    // Only calls in flight at either scrape (at most 2 at each) can fall on the other side of it for the gateway.
    t.ok(Math.abs(step.breakdown!.requests - step.stats.requests) <= 4, `${encoding}: the gateway's /metrics timed the same calls (${step.breakdown?.requests} vs ${step.stats.requests})`)
    t.match(r.stdout, /\n\s*2\s+[0-9.]+\s+[0-9.]+(\s+[0-9.]+){4}\s+[1-9][0-9]*\s+fixed\s+-\n/, `${encoding}: a table row without errors`)
  }
})

t.test('a call the gateway refuses is counted by the code in its bulwark-code trailer', async (t) => {
  const token = await gw.token({ scopes: ['other:use'] })
  const json = path.join(out, 'grpc-forbidden.json')
  // Request files need no metadata (which this token may not read either).
  const r = await bench(['--protocol', 'grpc', '--url', `127.0.0.1:${port}`, '--model', 'mnist', ...tls(gw), '--token', token, '--input', fixture, '--concurrency', '1', ...short, '--json', json, '--quiet'])
  t.equal(r.status, 0, r.stderr)
  const step = (await readResult(json)).steps[0]!
  t.ok(step.stats.requests > 0, 'calls were answered')
  t.same(step.stats.codes, { forbidden: step.stats.requests }, 'every call under forbidden (PERMISSION_DENIED, bulwark-code forbidden)')
  t.same(step.stats.statuses, { 403: step.stats.requests }, 'with the HTTP status of that code')
  t.match(r.stdout, /forbidden [0-9]+\n/, 'the table names the code')
  t.match(r.stderr, /no request succeeded/)
})

t.test('a per-caller rate limit: exactly its calls answered, the rest rate_limited, and the hint', async (t) => {
  const limited = await startGateway({ models: ['mnist'], policies: { mnist: { model: 'mnist', allow, rateLimit: { requestsPerWindow: 3, windowMs: 60_000 } } } })
  t.teardown(() => limited.close())
  const limitedPort = await limited.gateway.grpc!.listen('127.0.0.1', 0)
  const json = path.join(out, 'grpc-limited.json')
  const token = await limited.token({ scopes: ['mnist:use'] })
  const r = await bench(['--protocol', 'grpc', '--url', `127.0.0.1:${limitedPort}`, '--model', 'mnist', ...tls(limited), '--token', token, '--input', fixture, '--concurrency', '1', '--warmup', '0ms', '--duration', '30s', '--max-requests', '10', '--json', json, '--quiet'])
  t.equal(r.status, 0, r.stderr)
  const step = (await readResult(json)).steps[0]!
  t.same(step.stats.codes, { ok: 3, rate_limited: 7 }, '3 answered, 7 refused by the caller\'s window')
  t.match(r.stderr, /concurrency 1: 7 of 10 answers were rate_limited, a limit per caller: the load came from one identity.*--callers N/)
})

t.test('a port with no gRPC listener: exit 1, what to check', async (t) => {
  const r = await bench(['--protocol', 'grpc', '--url', '127.0.0.1:1', '--model', 'mnist', ...tls(gw), '--token', 'x', '--quiet'])
  t.equal(r.status, 1)
  t.match(r.stderr, /cannot reach the gRPC listener at 127\.0\.0\.1:1 \(grpc_UNAVAILABLE: [^)]+\); check --url \(HOST:PORT/)
})
