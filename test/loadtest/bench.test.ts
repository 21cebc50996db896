// `bulwark bench` against a real gateway (mTLS, JWTs, the mnist model):
// - a short bounded closed-loop run (token from --token-file) prints a row per concurrency
//   and writes CSV and JSON with the same rows; with --metrics every step has a per-defence
//   breakdown that adds up to the server's time; --report writes a well-formed page with a
//   chart per kind and a histogram per step;
// - a token without the model's scope (from --token-command) gets its answers counted under
//   `forbidden` in an open loop, nothing else but connection errors, and the JSON keeps the
//   command line with the token redacted;
// - without credential flags the development set-up of the working folder is used, a
//   terminal gets a progress line, and --report alone writes its CSV and JSON beside it;
// - a raw tensor file is read against the model's metadata;
// - without --duration a step is measured in windows and says whether it was stable.
// Nothing here asserts a timing: only counts, codes and the shape of the outputs.

import t from 'tap'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { startGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { realDeps } from '../../src/deps.ts'
import { benchCommand } from '../../src/loadtest/command.ts'
import type { BenchResult } from '../../src/loadtest/output.ts'
import { wellFormedProblems } from './well-formed.ts'

const dev = 'spiffe://bulwark.local/ns/default/sa/dev'
const policy = { model: 'mnist', allow: [{ verbs: ['infer', 'metadata'], workloads: [dev], scopes: ['mnist:use'] }], rateLimit: { requestsPerWindow: 1_000_000, windowMs: 1000 } }
const gw = await startGateway({ models: ['mnist'], policies: { mnist: policy } })
t.teardown(() => gw.close())
const out = await mkdtemp(path.join(os.tmpdir(), 'bulwark-bench-'))
t.teardown(() => rm(out, { recursive: true, force: true }))

/** Runs the command in-process as src/cli.ts does, collecting both streams. */
async function bench(argv: string[], cwd = out, errIsTTY = false): Promise<{ status: number; stdout: string; stderr: string }> {
  let stdout = ''
  let stderr = ''
  const status = await benchCommand(argv, { cwd, out: (s) => (stdout += s), err: (s) => (stderr += s), errIsTTY, deps: realDeps })
  return { status, stdout, stderr }
}

const tlsFlags = ['--cacert', gw.pki.files.ca, '--cert', gw.pki.files.clientCert, '--key', gw.pki.files.clientKey]
const short = ['--duration', '150ms', '--warmup', '50ms']

t.test('a closed-loop run: a table row, a CSV row and a JSON step per concurrency, with the breakdown', async (t) => {
  const tokenFile = path.join(out, 'token')
  await writeFile(tokenFile, `${await gw.token({ scopes: ['mnist:use'] })}\n`)
  const files = { csv: path.join(out, 'r.csv'), json: path.join(out, 'r.json'), report: path.join(out, 'r.html') }
  const r = await bench(['--url', gw.url, '--model', 'mnist', ...tlsFlags, '--token-file', tokenFile, '--concurrency', '1,4', ...short, '--metrics', `${gw.adminUrl}/metrics`, '--csv', files.csv, '--json', files.json, '--report', files.report, '--quiet'])
  t.equal(r.status, 0, r.stderr)
  const lines = r.stdout.split('\n')
  t.match(lines[0], /^concurrency\s+req\/s\s+items\/s\s+p50 ms\s+p90 ms\s+p95 ms\s+p99 ms\s+requests\s+stable\s+errors$/)
  t.match(lines[1], /^\s*1\s+[0-9.]+\s+[0-9.]+(\s+[0-9.]+){4}\s+[1-9][0-9]*\s+fixed\s+-$/, 'concurrency 1: answers, no errors')
  t.match(lines[2], /^\s*4\s+[0-9.]+\s+[0-9.]+(\s+[0-9.]+){4}\s+[1-9][0-9]*\s+fixed\s+-$/, 'concurrency 4')
  t.match(r.stdout, /where the time goes on the server[^\n]*\n\s*concurrency\s+server req\/s\s+server ms\s+front door\s+validation/)

  const json = JSON.parse(await readFile(files.json, 'utf8')) as BenchResult
  t.same(json.steps.map((s) => [s.mode, s.level]), [['concurrency', 1], ['concurrency', 4]])
  for (const s of json.steps) {
    t.ok(s.stats.requests > 0, `concurrency ${s.level}: requests were answered`)
    t.equal(s.stats.codes.ok, s.stats.requests, 'every one with 200')
    t.equal(s.stats.items, s.stats.requests, 'batch 1: one item per request')
    t.ok(s.stats.p50Ms <= s.stats.p90Ms && s.stats.p90Ms <= s.stats.p95Ms && s.stats.p95Ms <= s.stats.p99Ms && s.stats.p99Ms <= s.stats.maxMs, 'percentiles in order')
    const b = s.breakdown!
    t.ok(b, 'a breakdown from /metrics')
    // Only requests in flight at either scrape (at most the concurrency at each) can fall on
    // the other side of it for the gateway than for the client.
    t.ok(Math.abs(b.requests - s.stats.requests) <= 2 * s.level, `the gateway timed the measured requests (${b.requests} vs ${s.stats.requests})`)
    const groups = b.groups.map((g) => g.group)
    for (const g of ['front door', 'validation', 'queue + inference']) t.ok(groups.includes(g), `the breakdown has ${g}`)
    t.ok(b.links.some((l) => l.link === 'jwt-auth' && l.group === 'front door'), 'jwt-auth is counted under the front door')
    const sum = b.groups.reduce((x, g) => x + g.perRequestMs, 0)
    t.ok(Math.abs(sum - b.serverMeanMs) <= 0.1 * b.serverMeanMs, `the groups add up to the server's mean time (${sum} vs ${b.serverMeanMs})`)
  }

  const csv = (await readFile(files.csv, 'utf8')).trim().split('\n').map((l) => l.split(','))
  t.equal(csv.length, 3, 'a header and two rows')
  t.same(csv.slice(1).map((r) => [r[0], r[1]]), [['concurrency', '1'], ['concurrency', '4']])
  const col = (name: string) => csv[0]!.indexOf(name)
  t.ok(col('p99Ms') > 0 && col('front_door_ms') > 0 && col('errors') > 0, 'named columns')
  for (const row of csv.slice(1)) {
    t.equal(row.length, csv[0]!.length, 'every row has every column')
    t.equal(Number(row[col('requests')]), json.steps.find((s) => String(s.level) === row[1])!.stats.requests, 'the CSV and the JSON agree')
    t.equal(row[col('errors')], '', 'no errors')
  }

  const html = await readFile(files.report, 'utf8')
  t.same(wellFormedProblems(html), [], 'the report is well formed and self-contained')
  t.equal([...html.matchAll(/<svg /g)].length, 2 + 1 + 2, 'two curves, the breakdown, a histogram per step')
})

t.test('an open loop with a token lacking the model\'s scope counts every answer under forbidden', async (t) => {
  const token = await gw.token({ scopes: ['other:use'] })
  const json = path.join(out, 'forbidden.json')
  const input = path.join(repoRoot, 'test', 'fixtures', 'mnist-request.json')
  const r = await bench(['--url', gw.url, '--model', 'mnist', ...tlsFlags, '--token-command', `printf %s ${token}`, '--input', input, '--rate', '100', ...short, '--json', json, '--quiet'])
  t.equal(r.status, 0, r.stderr)
  const written = JSON.parse(await readFile(json, 'utf8')) as BenchResult
  t.same(written.command.slice(0, 2), ['bulwark', 'bench'])
  t.equal(written.command[written.command.indexOf('--token-command') + 1], '<redacted>', 'the command line is kept, its token redacted')
  t.notMatch(JSON.stringify(written), token, 'the token is nowhere in the JSON')
  const step = written.steps[0]!
  t.equal(step.mode, 'rate')
  t.ok(step.stats.requests > 0, 'requests were answered')
  t.ok(step.stats.codes.forbidden! > 0, 'forbidden answers counted under their code')
  // The gateway closes the connection after a refusal it did not read the body of: a request
  // already on its way on that connection fails on the client side (ECONNRESET, EPIPE...).
  const others = Object.keys(step.stats.codes).filter((c) => c !== 'forbidden')
  t.ok(others.every((c) => /^[A-Z_]+$/.test(c)), `nothing else but client-side connection errors (${others.join(', ') || 'none'})`)
  t.equal(step.stats.ok, 0)
  t.match(r.stdout, new RegExp(`\\n\\s*100\\s.*forbidden ${step.stats.codes.forbidden}[,\\n]`), 'the table row names the code and its count')
  t.match(r.stderr, /no request succeeded/)
})

t.test('without credential flags, the development set-up of the working folder is used', async (t) => {
  const r = await bench(['--url', gw.url, '--model', 'mnist', '--concurrency', '2', ...short, '--binary', '--batch', '3', '--report', 'dev.html'], gw.dir, true)
  for (const f of ['dev.html', 'dev.csv', 'dev.json']) t.match(r.stderr, `wrote ${path.join(gw.dir, f)}`, `--report writes ${f} (relative to the working folder)`)
  t.equal((JSON.parse(await readFile(path.join(gw.dir, 'dev.json'), 'utf8')) as BenchResult).batch, 3)
  t.match(r.stderr, /\r\x1b\[Kstep 1\/1 concurrency 2 {2}[0-9.]+s {2}[0-9]+ requests/, 'a progress line on a terminal')
  t.equal(r.status, 0, r.stderr)
  t.match(r.stderr, /using the development PKI in \.bulwark\/dev\//)
  t.match(r.stderr, /minted a development token/)
  t.match(r.stdout, /\n\s*2\s+([0-9.]+)\s+([0-9.]+)\s.*fixed\s+-\n/, 'answers without errors')
  const [, rps, items] = /\n\s*2\s+([0-9.]+)\s+([0-9.]+)\s/.exec(r.stdout)!
  t.ok(Number(items) >= 2.9 * Number(rps), 'three items per request (--batch 3)')
})

t.test('a raw tensor file, named relative to the working folder, is read against the model\'s metadata', async (t) => {
  const token = await gw.token({ scopes: ['mnist:use'] })
  await writeFile(path.join(out, 'two-digits.bin'), Buffer.from(new Float32Array(2 * 28 * 28).fill(0.5).buffer))
  const json = path.join(out, 'raw.json')
  const r = await bench(['--url', gw.url, '--model', 'mnist', ...tlsFlags, '--token', token, '--input', 'two-digits.bin', '--binary', '--concurrency', '1', ...short, '--json', json, '--quiet'])
  t.equal(r.status, 0, r.stderr)
  const step = (JSON.parse(await readFile(json, 'utf8')) as BenchResult).steps[0]!
  t.ok(step.stats.ok > 0 && step.stats.ok === step.stats.requests, 'answered without errors')
  t.equal(step.stats.items, 2 * step.stats.requests, 'two items per request, from the file\'s length')
})

t.test('without --duration a step is measured in windows until stable, or --max-windows', async (t) => {
  const token = await gw.token({ scopes: ['mnist:use'] })
  const json = path.join(out, 'windows.json')
  const r = await bench(['--url', gw.url, '--model', 'mnist', ...tlsFlags, '--token', token, '--concurrency', '2', '--warmup', '50ms', '--window', '100ms', '--max-windows', '3', '--json', json, '--quiet'])
  t.equal(r.status, 0, r.stderr)
  const step = (JSON.parse(await readFile(json, 'utf8')) as BenchResult).steps[0]!
  t.equal(typeof step.stable, 'boolean', 'stable or not, never "fixed"')
  t.match(r.stdout, /\n\s*2\s.*\s(yes|no)\s+-\n/, 'the table says which')
  t.ok(step.stats.requests > 0 && step.stats.ok === step.stats.requests)
})
