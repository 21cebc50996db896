// `bulwark bench --callers N` against a real gateway (mTLS, JWTs, mnist with a per-caller
// privacy budget of 5 answers an hour, audit records on disk). Each run sends exactly 40
// requests (--max-requests 40, no warm-up, one client, a real digit from the fixtures):
// - from one identity (development credentials): 5 answered, 35 privacy_budget_exhausted,
//   and a hint on stderr naming --callers;
// - with --callers 4: the audit log shows 4 new distinct subjects (not the earlier run's),
//   and 20 are answered; a second such run finds fresh budgets and answers 20 again;
// - over gRPC, --callers 4 also answers 20;
// - --token-file with 3 tokens, one a line: 3 callers, 15 answered; --callers 2 takes the
//   first 2 (10 answered); --callers 5 with 3 lines, and --callers 2 with --token-command
//   printing one token, fail with exit 1 and say why.
// - over gRPC with more than 64 callers, a note says each keeps a connection of its own.
// Nothing here asserts a timing: only counts, codes and subjects.

import t, { type Test } from 'tap'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { startGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import type { BenchResult } from '../../src/loadtest/output.ts'
import { runBench } from './run-bench.ts'
import { requestRecords, tempDir } from '../audit/helpers.ts'

const dev = 'spiffe://bulwark.local/ns/default/sa/dev'
const BUDGET_ANSWERS = 5
const policy = {
  model: 'mnist',
  allow: [{ verbs: ['infer', 'metadata'], workloads: [dev], scopes: ['mnist:use'] }],
  rateLimit: { requestsPerWindow: 1_000_000, windowMs: 1000 },
  output: { mode: 'label', noise: { mechanism: 'laplace', epsilon: 1 }, budget: { epsilon: BUDGET_ANSWERS, windowMs: 3_600_000 } },
}
const auditDir = tempDir('bench-callers-audit')
const gw = await startGateway({ models: ['mnist'], policies: { mnist: policy }, config: { audit: { directory: auditDir, aggregation: { enabled: false } } } })
const grpcPort = await gw.gateway.grpc!.listen('127.0.0.1', 0)
t.teardown(() => gw.close())
const out = await mkdtemp(path.join(os.tmpdir(), 'bulwark-bench-callers-'))
t.teardown(() => rm(out, { recursive: true, force: true }))

/** Runs the bench from the gateway's folder (its development set-up) unless flags say otherwise. */
const bench = (argv: string[]) => runBench(argv, gw.dir)

const REQUESTS = 40
const fixture = path.join(repoRoot, 'test', 'fixtures', 'mnist-request.json')
const exactly40 = ['--model', 'mnist', '--input', fixture, '--concurrency', '1', '--warmup', '0ms', '--duration', '60s', '--max-requests', String(REQUESTS)]
let runs = 0
/** One bounded run: its codes and the subjects of the audit records it added. */
async function run(t: Test, flags: string[]): Promise<{ codes: Record<string, number>; subjects: Set<string>; stderr: string }> {
  const before = requestRecords(auditDir).length
  const json = path.join(out, `run-${++runs}.json`)
  const r = await bench([...flags, ...exactly40, '--json', json])
  t.equal(r.status, 0, r.stderr)
  const step = (JSON.parse(await readFile(json, 'utf8')) as BenchResult).steps[0]!
  t.equal(step.stats.requests, REQUESTS, `exactly ${REQUESTS} requests`)
  const subjects = new Set(requestRecords(auditDir).slice(before).map((l) => (l.rec.principal as { sub: string } | null)?.sub ?? '(none)'))
  return { codes: step.stats.codes, subjects, stderr: r.stderr }
}

const seen = new Set<string>()
const answered = (callers: number) => ({ ok: callers * BUDGET_ANSWERS, privacy_budget_exhausted: REQUESTS - callers * BUDGET_ANSWERS })

t.test('from one identity, the budget is the measurement; the bench says so and names --callers', async (t) => {
  const r = await run(t, ['--url', gw.url])
  t.same(r.codes, answered(1), `${BUDGET_ANSWERS} answered, the rest privacy_budget_exhausted`)
  t.equal(r.subjects.size, 1, 'one subject')
  t.match([...r.subjects][0], /^bench-[0-9a-f]{8}$/, 'a development subject new for this run')
  t.match(r.stderr, /minted a development token/)
  t.match(r.stderr, /concurrency 1: 35 of 40 answers were privacy_budget_exhausted, a limit per caller: the load came from one identity.*--callers N/)
  for (const s of r.subjects) seen.add(s)
})

t.test('--callers 4: four new subjects, four budgets; a second run finds fresh ones', async (t) => {
  for (const round of [1, 2]) {
    const r = await run(t, ['--url', gw.url, '--callers', '4'])
    t.equal(r.subjects.size, 4, `round ${round}: the gateway saw 4 distinct subjects`)
    t.ok([...r.subjects].every((s) => /^bench-[0-9a-f]{8}-[1-4]$/.test(s) && !seen.has(s)), `round ${round}: none of them used by an earlier run`)
    t.same(r.codes, answered(4), `round ${round}: 4 × ${BUDGET_ANSWERS} answered`)
    t.match(r.stderr, /minted 4 development tokens \(distinct subjects, new for this run\)/)
    for (const s of r.subjects) seen.add(s)
  }
})

t.test('--callers 4 over gRPC', async (t) => {
  const r = await run(t, ['--protocol', 'grpc', '--url', `127.0.0.1:${grpcPort}`, '--callers', '4'])
  t.equal(r.subjects.size, 4, 'the gateway saw 4 distinct subjects')
  t.same(r.codes, answered(4), `4 × ${BUDGET_ANSWERS} answered`)
})

t.test('--token-file: one caller a line; --callers takes the first N and needs them', async (t) => {
  const tls = ['--url', gw.url, '--cacert', gw.pki.files.ca, '--cert', gw.pki.files.clientCert, '--key', gw.pki.files.clientKey]
  const tokens = await Promise.all([1, 2, 3].map((i) => gw.token({ sub: `file-${i}`, scopes: ['mnist:use'] })))
  const file = path.join(out, 'tokens')
  await writeFile(file, `${tokens.join('\n')}\n\n`)
  const all = await run(t, [...tls, '--token-file', file])
  t.same([...all.subjects].sort(), ['file-1', 'file-2', 'file-3'], 'each line a caller')
  t.same(all.codes, answered(3))
  const other = path.join(out, 'tokens-2')
  await writeFile(other, (await Promise.all([4, 5, 6].map((i) => gw.token({ sub: `file-${i}`, scopes: ['mnist:use'] })))).join('\n'))
  const two = await run(t, [...tls, '--token-file', other, '--callers', '2'])
  t.same([...two.subjects].sort(), ['file-4', 'file-5'], 'the first two lines')
  t.same(two.codes, answered(2))
  const five = await bench([...tls, '--token-file', file, '--callers', '5', ...exactly40])
  t.equal(five.status, 1)
  t.match(five.stderr, /--callers 5 needs 5 tokens, one a line; --token-file gave 3/)
  const one = await bench([...tls, '--token-command', `printf %s ${tokens[0]}`, '--callers', '2', ...exactly40])
  t.equal(one.status, 1)
  t.match(one.stderr, /--callers 2 needs 2 tokens, one a line; --token-command gave 1/)
})

t.test('over gRPC, more callers than one certificate\'s default connection cap: a note says what will happen', async (t) => {
  const r = await bench(['--protocol', 'grpc', '--url', '127.0.0.1:1', '--model', 'mnist', '--callers', '65'])
  t.match(r.stderr, /over gRPC each of the 65 callers keeps a connection of its own; past server\.maxConnectionsPerClient \(64 by default\)/)
  t.equal(r.status, 1, 'and nothing listens there')
})
