// Costs as the work grows (`npm run bench -- --only scale`): each at sizes an order of
// magnitude apart, so a row says whether a cost is flat, logarithmic or linear in the size.
//   - the privacy journal: the time a gateway takes to open (replay) a journal of 10^5 and
//     10^6 charges, from the page cache, as after a restart;
//   - the audit log: `bulwark audit verify` throughput (records/s, MB/s) on logs of 10^5 and
//     10^6 records written by the real writer with the default rotation and checkpoints;
//   - callers: one gateway with the bundled mnist policy (screening, rate limit, budget on),
//     after 1,000, 10,000 and 100,000 distinct callers (their own token subjects) have each
//     made a request: its resident memory, and a closed loop over all of them (c16); and the
//     heap it keeps per caller, after a full collection (bench/scale-memory.ts).
// Every load is bounded in count and time, targets 127.0.0.1 and stops by itself.

import { execFileSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import { Value } from '@sinclair/typebox/value'
import { parse } from 'yaml'
import { cryptoRandom, realDeps, silentLogger } from '../src/deps.ts'
import { FileAccountant, journalFileText } from '../src/privacy/file-accountant.ts'
import { AuditWriter } from '../src/audit/writer.ts'
import { generateSigningKey } from '../src/audit/keys.ts'
import { verifyAuditLog } from '../src/audit/verify.ts'
import { AuditConfig } from '../src/config/audit.ts'
import { DEV_AUDIENCE, DEV_ISSUER } from '../src/config/security.ts'
import { loadSigningKey, mintToken } from '../src/dev/mint-token.ts'
import { noDefences, startGateway } from '../kit/gateway-process.ts'
import { repoRoot } from '../kit/paths.ts'
import { binaryRequest } from '../kit/payloads.ts'
import { closedLoop } from './load.ts'
import { secureEnv } from './secure-env.ts'
import { mnistDigits, type BenchOptions } from './core.ts'
import type { Row } from './report.ts'
import { folderBytes, rssBytes } from './host.ts'

const GROUP = 'scale'
const JOURNAL_CHARGES = [100_000, 1_000_000]
const AUDIT_RECORDS = [100_000, 1_000_000]
const CALLERS = [1_000, 10_000, 100_000]

/** Opens a journal of `charges` live charges (10,000 callers, one window of an hour) and times the replay. */
export async function journalReplay(charges: number): Promise<Row> {
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-scale-journal-'))
  try {
    const callers = 10_000
    const now = Date.now()
    const window = 3_600_000
    // Each caller's charges 30 s apart (never merged into one line), all within the window.
    function* entries() {
      for (let j = 0; j < charges / callers; j++) {
        for (let c = 0; c < callers; c++) yield [`caller-${c}`, { t: now - window + 60_000 + j * 30_000, e: 16_000_000, r: 0, w: window }] as const
      }
    }
    writeFileSync(path.join(dir, 'journal.jsonl'), journalFileText(entries(), { tau: now, wall: now }))
    const bytes = folderBytes(dir)
    const t0 = performance.now()
    const acct = await FileAccountant.open({ directory: dir, clock: realDeps.clock, retentionMs: window })
    const ms = performance.now() - t0
    await acct.close()
    return { group: GROUP, scenario: `privacy journal replay at open: ${charges.toLocaleString('en')} charges`, itemsPerSec: charges / (ms / 1000), note: `${(ms / 1000).toFixed(2)} s for ${(bytes / 2 ** 20).toFixed(0)} MiB (${callers.toLocaleString('en')} callers)` }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** A request record as the gateway writes one (its shape and size), with the fields that vary per request varied. */
function recordBody(i: number): string {
  const hex = (n: number) => n.toString(16).padStart(64, '0')
  return JSON.stringify({
    type: 'request', id: `00000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`, receivedAt: new Date(1_796_000_000_000 + i).toISOString(), answeredAt: new Date(1_796_000_000_003 + i).toISOString(), durationMs: 3.2,
    method: 'POST', path: '/v2/models/mnist/infer', client: { address: '127.0.0.1', tls: 'TLSv1.3' },
    identity: { id: 'spiffe://bulwark.local/ns/default/sa/dev', kind: 'spiffe', certSha256: hex(7) }, principal: { sub: `caller-${i % 1000}`, iss: 'https://bulwark.local/dev' },
    model: 'mnist', version: '1', verb: 'infer', decision: 'allowed', stage: 'complete', status: 200, code: null, reason: null,
    stageMs: { trace: 0.07, 'mtls-identity': 0.09, 'jwt-auth': 0.2, 'model-policy': 0.01, 'rate-limit': 0.07, 'body-read': 0.17, 'input-validation': 0.04, 'model-inference': 2.5 },
    bytesIn: 3283, bytesOut: 189, bodySha256: null,
    inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], sha256: hex(i) }], outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [1, 10], sha256: hex(i + 1) }], flags: [], privacy: null,
  })
}

/** Writes `records` with the real audit writer (the default rotation and checkpoints), then times `verifyAuditLog` on the folder. */
export async function auditVerify(records: number): Promise<Row> {
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-scale-audit-'))
  try {
    const config = Value.Default(AuditConfig, {}) as AuditConfig
    const key = generateSigningKey(cryptoRandom)
    const writer = new AuditWriter({
      directory: dir, durability: 'relaxed', relaxedSyncIntervalMs: 1000, maxFileBytes: config.rotation.maxFileBytes, maxFileAgeMs: 0,
      retentionMaxTotalBytes: 0, retentionMaxAgeMs: 0, checkpointEveryRecords: config.checkpoint.everyRecords, checkpointEveryMs: 3_600_000,
      retryMs: 1000, key, clock: realDeps.clock, random: cryptoRandom, log: silentLogger,
    })
    await writer.start()
    for (let i = 0; i < records; i += 1000) await Promise.all(Array.from({ length: Math.min(1000, records - i) }, (_, j) => writer.append(recordBody(i + j))))
    await writer.close()
    const bytes = folderBytes(dir)
    const t0 = performance.now()
    const report = await verifyAuditLog(dir, [key.publicKey])
    const s = (performance.now() - t0) / 1000
    if (report.problems.length > 0) throw new Error(`the bench's own audit log does not verify: ${report.problems[0]!.message}`)
    return { group: GROUP, scenario: `audit verify: ${records.toLocaleString('en')} records`, itemsPerSec: records / s, note: `${(bytes / 2 ** 20 / s).toFixed(0)} MB/s; ${s.toFixed(2)} s for ${(bytes / 2 ** 20).toFixed(0)} MiB in ${readdirSync(dir).filter((f) => f.startsWith('audit-')).length} files` }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/** One gateway with the bundled mnist policy; callers added in steps, each step measured over all callers so far. */
async function manyCallers(opts: BenchOptions, log: (s: string) => void): Promise<Row[]> {
  const env = await secureEnv()
  const bundled = parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8')) as Record<string, unknown>
  const stateDir = path.join(env.dir, 'state')
  mkdirSync(stateDir)
  const config = {
    ...noDefences,
    tls: { enabled: true },
    auth: { enabled: true },
    authorization: { enabled: true },
    rateLimits: { enabled: true },
    // Every caller here shares the bench's one client certificate: the per-certificate limit
    // before the token would count them all as one client.
    clientLimits: { enabled: false },
    state: { directory: stateDir },
    policies: { directory: env.policies({ mnist: bundled }) },
    models: { serve: [{ name: 'mnist', workers: 1, intraOpThreads: 1 }] },
  }
  const gw = await startGateway(config, { cwd: env.dir })
  const origin = `https://127.0.0.1:${gw.apiPort}`
  const signing = await loadSigningKey(env.pki.files.jwtKey, env.pki.files.jwks)
  const digits = mnistDigits(100)
  const tokens: string[] = []
  const request = (i: number) => binaryRequest('mnist', 'input', [1, 1, 28, 28], digits[i % digits.length]!, { authorization: `Bearer ${tokens[i % tokens.length]}` })
  const rows: Row[] = []
  try {
    const baseline = rssBytes(gw.child.pid!) / 2 ** 20
    for (const n of CALLERS) {
      log(`${n} callers`)
      const first = tokens.length
      while (tokens.length < n) tokens.push(await mintToken(signing, { issuer: DEV_ISSUER, audience: DEV_AUDIENCE, subject: `caller-${tokens.length}`, scopes: ['mnist:infer'], ttlSeconds: 3600 }, realDeps))
      // Each new caller makes one request, so that it holds its state in every store.
      const fill = await closedLoop({ origin, connect: env.connect, concurrency: 16, maxRequests: n - first, durationMs: 600_000, next: (i) => request(first + i) })
      const rss = rssBytes(gw.child.pid!) / 2 ** 20
      const load = await closedLoop({ origin, connect: env.connect, concurrency: 16, durationMs: opts.durationMs, warmupMs: opts.warmupMs, next: (i) => request((i * 7919) % n) })
      rows.push({
        group: GROUP,
        scenario: `mnist binary c16 over ${n.toLocaleString('en')} callers (bundled policy)`,
        concurrency: 16,
        itemsPerSec: load.itemsPerSec,
        p50: load.p50,
        p99: load.p99,
        errors: load.requests - load.ok,
        note: `gateway RSS ${rss.toFixed(0)} MiB (${(((rss - baseline) * 2 ** 20) / n).toFixed(0)} bytes per caller over the ${baseline.toFixed(0)} MiB at start); answers ${JSON.stringify(load.statuses)}; filling: ${JSON.stringify(fill.statuses)}`,
      })
    }
  } finally {
    await gw.stop()
  }
  return rows
}

/** The heap the gateway keeps per caller, measured after full collections in a child (bench/scale-memory.ts). */
function heapPerCaller(): Row[] {
  const out = execFileSync(process.execPath, ['--expose-gc', path.join(repoRoot, 'bench/scale-memory.ts'), CALLERS.join(',')], { encoding: 'utf8', maxBuffer: 1 << 20 })
  const steps = JSON.parse(out.trim().split('\n').pop()!) as { callers: number; heapMiB: number; bytesPerCaller: number; statuses: Record<string, number> }[]
  return steps.map((s, i) => ({
    group: GROUP,
    scenario: `heap kept per caller, callers ${i === 0 ? 0 : steps[i - 1]!.callers.toLocaleString('en')} to ${s.callers.toLocaleString('en')}`,
    itemsPerSec: NaN,
    note: `${s.bytesPerCaller.toFixed(0)} bytes per caller after a full GC (heap ${s.heapMiB.toFixed(0)} MiB); answers ${JSON.stringify(s.statuses)}`,
  }))
}

export async function scaleBench(opts: BenchOptions, log: (s: string) => void): Promise<{ rows: Row[]; raw: unknown }> {
  const rows: Row[] = []
  for (const n of JOURNAL_CHARGES) {
    log(`journal of ${n} charges`)
    rows.push(await journalReplay(n))
  }
  for (const n of AUDIT_RECORDS) {
    log(`audit log of ${n} records`)
    rows.push(await auditVerify(n))
  }
  rows.push(...(await manyCallers(opts, log)))
  log('heap per caller')
  rows.push(...heapPerCaller())
  return { rows, raw: rows }
}
