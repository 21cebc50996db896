// The defended pipeline against the ceiling (`npm run bench -- --only defended`): the bundled
// configuration exactly as `npm start` runs it (`bulwark serve` with no config file: mTLS,
// tokens, the bundled policies and their rate limits, validation, strict audit, output
// protection, screening on mnist), in a folder of its own with the repo's models/ and
// policies/ linked in, called by 64 concurrent callers with their own tokens (mnist: spread over
// 2,048 identities, within its per-identity budget). Each scenario is paired in
// alternating rounds with raw onnxruntime on the same model (two single-threaded sessions at
// the batch size a short sweep finds best for that model), so drift in this machine's spare CPU hits both
// alike; the ratio is the median of the rounds'. Beside it: the gateway's CPU time per item,
// and where the server-side time went, link group by link group, from its /metrics.
// Every load is bounded in time, targets 127.0.0.1 and stops by itself.

import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { realDeps } from '../src/deps.ts'
import { DEV_AUDIENCE, DEV_DIR, DEV_ISSUER } from '../src/config/security.ts'
import { loadSigningKey, mintToken } from '../src/dev/mint-token.ts'
import { devPkiPaths } from '../src/dev/pki.ts'
import { diffScrapes, parseScrape, type Breakdown } from '../src/loadtest/breakdown.ts'
import { freePort, profilingArgs } from '../kit/gateway-process.ts'
import { repoRoot } from '../kit/paths.ts'
import { binaryRequest, ocrImage, type LoadRequest } from '../kit/payloads.ts'
import { closedLoop, type LoadResult } from './load.ts'
import { rawOnnxParallel } from './raw-onnx.ts'
import { mnistDigits, OCR_CLS, type BenchOptions } from './core.ts'
import type { Row } from './report.ts'
import { threadCpuSeconds } from './host.ts'

const GROUP = 'defended'
const ROUNDS = 4
const CALLERS = 64
/**
 * Identities the requests are spread over, per model. The bundled mnist policy answers one
 * identity about 200 single-digit requests an hour (its privacy budget): 64 identities would
 * spend theirs in the first rounds and the rest would measure the quota's refusals, not the
 * pipeline. 2,048 identities keep every round within their budgets.
 */
const IDENTITIES: Record<string, number> = { 'ocr-cls': CALLERS, mnist: 2048 }

interface Served {
  pid: number
  origin: string
  admin: string
  dir: string
  stop(): Promise<void>
}

/** `bulwark serve` with no config file, as `npm start` runs it, in a folder of its own. */
async function serveBundled(): Promise<Served> {
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-defended-'))
  for (const f of ['models', 'policies']) symlinkSync(path.join(repoRoot, f), path.join(dir, f))
  const [api, admin, grpc] = [await freePort(), await freePort(), await freePort()]
  const child = spawn(process.execPath, [...profilingArgs(), path.join(repoRoot, 'bin/bulwark.js'), 'serve', '--listen', `127.0.0.1:${api}`, '--admin', `127.0.0.1:${admin}`, '--grpc', `127.0.0.1:${grpc}`], {
    cwd: dir,
    env: { ...process.env, BULWARK_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  for (let i = 0; ; i++) {
    if (child.exitCode !== null || i > 600) throw new Error('bulwark serve did not become ready')
    if (await fetch(`http://127.0.0.1:${admin}/readyz`).then((r) => r.ok, () => false)) break
    await new Promise((r) => setTimeout(r, 100))
  }
  return {
    pid: child.pid!,
    origin: `https://127.0.0.1:${api}`,
    admin: `http://127.0.0.1:${admin}`,
    dir,
    async stop() {
      child.kill('SIGTERM')
      await exited
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

interface Scenario {
  name: string
  model: string
  /** The model file (absolute) and its input, for the raw sessions. */
  file: string
  input: string
  itemShape: number[]
  /** The gateway's requests: request i carries identity i % IDENTITIES[model]'s token. */
  request: (i: number, token: string) => LoadRequest
}

interface Round {
  /** Items/s of the raw sessions this round, and their batch. */
  ceiling: number
  batch: number
  gateway: LoadResult
  cpuPerItemMs: number
  /** The gateway's CPU per item by thread group, the load client's, and the raw sessions' (ms). */
  split: Record<string, number>
  breakdown: Breakdown | null
}

/** The batch at which two single-threaded raw sessions run the model fastest: the ceiling's. */
async function bestRawBatch(model: Uint8Array, s: Scenario, log: (s: string) => void): Promise<number> {
  let best = { batch: 1, itemsPerSec: 0 }
  for (const batch of [2, 4, 8, 16, 32]) {
    const r = await rawOnnxParallel(model, s.input, s.itemShape, batch, 2, 1, 700)
    if (r.itemsPerSec > best.itemsPerSec) best = { batch, itemsPerSec: r.itemsPerSec }
  }
  log(`${s.model}: raw sessions run best at batch ${best.batch}`)
  return best.batch
}

async function pairedRounds(gw: Served, s: Scenario, tokens: string[], connect: Record<string, string>, opts: BenchOptions, log: (s: string) => void): Promise<Round[]> {
  const model = readFileSync(s.file)
  const batch = await bestRawBatch(model, s, log)
  const roundMs = Math.max(1000, Math.round(opts.durationMs / 2))
  const rounds: Round[] = []
  for (let i = 0; i < ROUNDS; i++) {
    log(`${s.name}: paired round ${i + 1}/${ROUNDS}`)
    const rawCpu0 = process.cpuUsage()
    const raw = await rawOnnxParallel(model, s.input, s.itemShape, batch, 2, 1, roundMs)
    const rawCpu = process.cpuUsage(rawCpu0)
    const before = parseScrape(await (await fetch(`${gw.admin}/metrics`)).text())
    const threads0 = threadCpuSeconds(gw.pid)
    const client0 = process.cpuUsage()
    const gateway = await closedLoop({ origin: gw.origin, connect, concurrency: CALLERS, durationMs: roundMs, warmupMs: 300, next: (j) => s.request(j, tokens[j % tokens.length]!) })
    const client = process.cpuUsage(client0)
    const threads = threadCpuSeconds(gw.pid)
    const after = parseScrape(await (await fetch(`${gw.admin}/metrics`)).text())
    // Items answered, and the load's own window: the warm-up's CPU is charged too (a small overcount).
    const items = gateway.itemsPerSec * gateway.seconds
    const perItem = (seconds: number) => (items > 0 ? (seconds / items) * 1000 : NaN)
    const used = (name: string) => (threads[name] ?? 0) - (threads0[name] ?? 0)
    const all = Object.keys(threads).reduce((sum, name) => sum + used(name), 0)
    const split = {
      main: perItem(used('MainThread')),
      workers: perItem(used('WorkerThread')),
      other: perItem(all - used('MainThread') - used('WorkerThread')),
      client: perItem((client.user + client.system) / 1e6),
      raw: (rawCpu.user + rawCpu.system) / 1000 / (raw.itemsPerSec * (roundMs / 1000)),
    }
    rounds.push({ ceiling: raw.itemsPerSec, batch, gateway, cpuPerItemMs: perItem(all), split, breakdown: diffScrapes(before, after, s.model) })
  }
  return rounds
}

function row(s: Scenario, rounds: Round[]): Row {
  const byRatio = [...rounds].sort((a, b) => a.gateway.itemsPerSec / a.ceiling - b.gateway.itemsPerSec / b.ceiling)
  const mid = byRatio[Math.floor(byRatio.length / 2)]!
  const ratios = byRatio.map((r) => r.gateway.itemsPerSec / r.ceiling)
  const statuses: Record<string, number> = {}
  for (const r of rounds) for (const [k, n] of Object.entries(r.gateway.statuses)) statuses[k] = (statuses[k] ?? 0) + n
  const groups = mid.breakdown?.groups.filter((g) => g.share >= 0.005).map((g) => `${g.group} ${(g.share * 100).toFixed(0)}%`).join(', ')
  return {
    group: GROUP,
    scenario: s.name,
    concurrency: CALLERS,
    itemsPerSec: mid.gateway.itemsPerSec,
    p50: mid.gateway.p50,
    p99: mid.gateway.p99,
    ratio: ratios[Math.floor(ratios.length / 2)]!,
    ratioTo: 'ceiling, same round',
    errors: rounds.reduce((n, r) => n + r.gateway.requests - r.gateway.ok, 0),
    note: `median of ${ROUNDS} rounds (range ${ratios[0]!.toFixed(2)}-${ratios[ratios.length - 1]!.toFixed(2)}); ceiling ${mid.ceiling.toFixed(0)} items/s (batch ${mid.batch}); gateway CPU ${mid.cpuPerItemMs.toFixed(3)} ms/item (main thread ${mid.split.main!.toFixed(3)}, worker threads ${mid.split.workers!.toFixed(3)}, other ${mid.split.other!.toFixed(3)}), load client ${mid.split.client!.toFixed(3)}, raw sessions ${mid.split.raw!.toFixed(3)}; server time ${groups ?? 'n/a'}; answers ${JSON.stringify(statuses)}`,
  }
}

export async function defendedBench(opts: BenchOptions, log: (s: string) => void): Promise<{ rows: Row[]; raw: unknown }> {
  const gw = await serveBundled()
  const rows: Row[] = []
  const raw: Record<string, Round[]> = {}
  try {
    const { files } = devPkiPaths(path.join(gw.dir, DEV_DIR))
    const connect = { ca: readFileSync(files.ca, 'utf8'), cert: readFileSync(files.clientCert, 'utf8'), key: readFileSync(files.clientKey, 'utf8') }
    const signing = await loadSigningKey(files.jwtKey, files.jwks)
    const tokens = (model: string) => Promise.all(Array.from({ length: IDENTITIES[model] ?? CALLERS }, (_, i) => mintToken(signing, { issuer: DEV_ISSUER, audience: DEV_AUDIENCE, subject: `caller-${i}`, scopes: [`${model}:infer`], ttlSeconds: 3600 }, realDeps)))
    // Bodies built once: a fresh 110 KiB body per request cost the load client more CPU (and
    // garbage collection) than sending it, on the cores the gateway uses.
    const withToken = (r: LoadRequest, token: string): LoadRequest => ({ ...r, headers: { ...r.headers, authorization: `Bearer ${token}` } })
    const one = binaryRequest('ocr-cls', 'x', [1, 3, 48, 192], ocrImage(1))
    const eight = binaryRequest('ocr-cls', 'x', [8, 3, 48, 192], ocrImage(8))
    const digits = mnistDigits(200).map((d) => binaryRequest('mnist', 'input', [1, 1, 28, 28], d))
    const scenarios: Scenario[] = [
      { name: 'bundled config ocr-cls binary, 1 item/request', model: 'ocr-cls', file: OCR_CLS, input: 'x', itemShape: [3, 48, 192], request: (_, t) => withToken(one, t) },
      { name: 'bundled config ocr-cls binary, 8 items/request', model: 'ocr-cls', file: OCR_CLS, input: 'x', itemShape: [3, 48, 192], request: (_, t) => withToken(eight, t) },
      { name: 'bundled config mnist binary (screening on), 1 item/request', model: 'mnist', file: path.join(repoRoot, 'models/mnist/model.onnx'), input: 'input', itemShape: [1, 28, 28], request: (i, t) => withToken(digits[i % digits.length]!, t) },
    ]
    for (const s of scenarios) {
      const rounds = await pairedRounds(gw, s, await tokens(s.model), connect, opts, log)
      raw[s.name] = rounds
      rows.push(row(s, rounds))
    }
  } finally {
    await gw.stop()
  }
  return { rows, raw }
}
