// `bulwark bench`: load-tests a running Bulwark over its public API, step by step (closed
// loop at each concurrency, or open loop at each rate), prints a table, writes CSV, JSON and
// an HTML report, and, given the admin /metrics, says where the server's time went per
// defence. src/cli.ts dispatches here; this module returns the exit status and never
// touches the process itself.

import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import type { Deps } from '../deps.ts'
import { diffScrapes, parseScrape, type Scrape } from './breakdown.ts'
import { getJson, type LoadClient, type LoadRequest } from './client.ts'
import { RequestBudget, Recorder, startClosedLoop, startOpenLoop, type LoadSession } from './generator.ts'
import { callersHint } from './callers.ts'
import { BenchInputError, generateTensors, hasRawTensors, inputFiles, poolSize, readRequestFiles } from './inputs.ts'
import { measureStep } from './measure.ts'
import { BENCH_HELP } from './help.ts'
import { BenchUsageError, parseBenchArgs, type BenchOptions } from './options.ts'
import { formatCsv, formatJson, formatTable, redactArgv, type BenchResult } from './output.ts'
import { openProtocol, type Protocol } from './protocol.ts'
import { renderReport } from './report.ts'
import { summarise } from './stats.ts'
import { BenchTargetError, checkTarget, loadCredentials } from './target.ts'

export const BENCH_USAGE = `  bench --model NAME [--url URL] [--concurrency 1,4,16 | --rate 200,400] [--duration 5s]
        [--protocol grpc] [--callers N] [--metrics ADMIN_URL/metrics] [--csv F] [--json F] [--report F.html] ...
        load-test a running Bulwark (loopback only unless --allow-target HOST); bulwark bench --help`

export interface BenchIo {
  cwd: string
  out(text: string): void
  err(text: string): void
  /** Whether stderr is a terminal (the progress line is drawn only there). */
  errIsTTY: boolean
  deps: Deps
}

/** The gateway's default server.maxConnectionsPerClient: gRPC callers beyond it each need a connection it refuses. */
const GRPC_CALLERS_PER_CERTIFICATE = 64

/** Most requests waiting for an answer in an open loop before further due requests are dropped. */
const MAX_IN_FLIGHT = 4096

async function buildRequests(o: BenchOptions, protocol: Protocol, cwd: string): Promise<LoadRequest[]> {
  if (o.inputs !== undefined) {
    if (o.batch !== 1) throw new BenchInputError('--batch shapes generated inputs; with --input each file gives its own batch')
    const files = await inputFiles(path.resolve(cwd, o.inputs))
    const inputs = hasRawTensors(files) ? await protocol.inputs() : undefined
    return readRequestFiles(files, { model: o.model, version: o.modelVersion, binary: o.binary, ...(inputs ? { inputs } : {}), ...(o.protocol === 'rest' ? {} : { encode: (t) => protocol.encode(t) }) })
  }
  const inputs = await protocol.inputs()
  const one = generateTensors(inputs, { batch: o.batch, seed: o.seed, range: o.range, n: 1 })
  const size = protocol.encode(one[0]!).body!.length
  return generateTensors(inputs, { batch: o.batch, seed: o.seed, range: o.range, n: poolSize(size) }).map((t) => protocol.encode(t))
}

async function scrape(url: URL): Promise<Scrape> {
  const res = await getJson({ origin: url.origin, connections: 1 }, `${url.pathname}${url.search}`).catch((err: unknown) => {
    throw new BenchTargetError(`cannot reach --metrics ${url.href}: ${(err as { code?: string }).code ?? (err as Error).message}; give the admin listener's /metrics URL (server.admin, http://127.0.0.1:9464/metrics by default)`)
  })
  if (res.status !== 200 || typeof res.body !== 'string') throw new BenchTargetError(`--metrics ${url.href} answered ${res.status}, not the Prometheus text exposition; give the admin listener's /metrics URL`)
  return parseScrape(res.body)
}

interface Progress {
  start(label: string, session: LoadSession): void
  stop(): void
}

function progressLine(io: BenchIo, quiet: boolean, total: number): Progress {
  if (quiet || !io.errIsTTY) return { start() {}, stop() {} }
  const clock = io.deps.clock
  let timer: { cancel(): void } | null = null
  let step = 0
  return {
    start(label, session) {
      step++
      const t0 = clock.monotonicMs()
      let last = { t: t0, n: 0 }
      const draw = () => {
        const now = clock.monotonicMs()
        const n = session.sent()
        const rps = ((n - last.n) * 1000) / Math.max(1, now - last.t)
        last = { t: now, n }
        io.err(`\r\x1b[Kstep ${step}/${total} ${label}  ${((now - t0) / 1000).toFixed(1)}s  ${n} requests  ${rps.toFixed(0)} req/s`)
      }
      draw()
      timer = clock.setInterval(draw, 250, { keepAlive: false })
    },
    stop() {
      timer?.cancel()
      io.err('\r\x1b[K')
    },
  }
}

async function runSteps(o: BenchOptions, io: BenchIo, protocol: Protocol, callers: number, requests: LoadRequest[], argv: string[]): Promise<BenchResult> {
  const clock = io.deps.clock
  const deadlineMs = clock.monotonicMs() + o.maxDurationMs
  const budget = new RequestBudget(o.maxRequests)
  const progress = progressLine(io, o.quiet, o.mode.levels.length)
  const mode = o.mode.kind === 'closed' ? 'concurrency' : 'rate'
  const result: BenchResult = { command: ['bulwark', 'bench', ...redactArgv(argv)], target: protocol.target, model: o.model, protocol: o.protocol, encoding: o.binary ? 'binary' : o.protocol === 'grpc' ? 'typed' : 'json', callers, batch: requests[0]?.items ?? o.batch, steps: [], stoppedEarly: null }
  for (const level of o.mode.levels) {
    if (clock.monotonicMs() >= deadlineMs || budget.remaining <= 0) {
      result.stoppedEarly = budget.remaining <= 0 ? 'the run reached --max-requests' : 'the run reached --max-duration'
      break
    }
    const client: LoadClient = protocol.client(o.mode.kind === 'closed' ? { closedLoopClients: level } : { connections: o.mode.connections })
    const recorder = new Recorder(clock)
    const common = { client, clock, recorder, budget, next: (i: number) => requests[i % requests.length]! }
    const session = o.mode.kind === 'closed' ? startClosedLoop({ ...common, concurrency: level }) : startOpenLoop({ ...common, ratePerSec: level, maxInFlight: MAX_IN_FLIGHT })
    progress.start(`${mode} ${level}`, session)
    const metricsUrl = o.metricsUrl
    try {
      const m = await measureStep<Scrape | null>({
        clock,
        session,
        recorder,
        deadlineMs,
        plan: { warmupMs: o.warmupMs, windowMs: o.windowMs, stabilityPercent: o.stabilityPercent, maxWindows: o.maxWindows, ...(o.durationMs !== undefined ? { durationMs: o.durationMs } : {}) },
        atBoundary: () => (metricsUrl ? scrape(metricsUrl) : Promise.resolve(null)),
      })
      const breakdown = m.before && m.after ? diffScrapes(m.before, m.after, o.model) : null
      result.steps.push({ mode, level, stats: summarise(m.windows), stable: m.stable, cutShort: m.cutShort, breakdown })
    } finally {
      progress.stop()
      await session.stop()
      await client.close()
    }
  }
  return result
}

async function writeOutputs(o: BenchOptions, io: BenchIo, result: BenchResult): Promise<void> {
  const outputs: [string | undefined, () => string][] = [
    // The report's data travels with it: FILE.csv and FILE.json beside FILE.html unless named elsewhere.
    [o.csv ?? o.report?.replace(/\.html?$/i, '.csv'), () => formatCsv(result)],
    [o.json ?? o.report?.replace(/\.html?$/i, '.json'), () => formatJson(result)],
    [o.report, () => renderReport(result, new Date(io.deps.clock.nowMs()).toISOString())],
  ]
  for (const [file, render] of outputs) {
    if (file === undefined) continue
    const full = path.resolve(io.cwd, file)
    await writeFile(full, render())
    io.err(`wrote ${full}\n`)
  }
}

/** Runs `bulwark bench ...`; returns the exit status (0 done, 1 could not run, 2 bad flags). */
export async function benchCommand(argv: string[], io: BenchIo): Promise<number> {
  let o: BenchOptions
  try {
    o = parseBenchArgs(argv)
  } catch (err) {
    if (!(err instanceof BenchUsageError)) throw err
    io.err(`bulwark bench: ${err.problems.join('\nbulwark bench: ')}\n(bulwark bench --help lists every flag)\n`)
    return 2
  }
  if (o.help) {
    io.out(BENCH_HELP)
    return 0
  }
  try {
    checkTarget(o.url, o.allowTarget, '--url')
    if (o.metricsUrl) checkTarget(o.metricsUrl, o.allowTarget, '--metrics')
    const creds = await loadCredentials(o, io.cwd, io.deps)
    if (!o.quiet) for (const note of creds.notes) io.err(`bulwark bench: ${note}\n`)
    if (!o.quiet && o.protocol === 'grpc' && creds.tokens.length > GRPC_CALLERS_PER_CERTIFICATE) {
      io.err(`bulwark bench: over gRPC each of the ${creds.tokens.length} callers keeps a connection of its own; past server.maxConnectionsPerClient (${GRPC_CALLERS_PER_CERTIFICATE} by default) the gateway refuses connections from one client certificate\n`)
    }
    const protocol = openProtocol(o, creds, io.deps.clock)
    const requests = await buildRequests(o, protocol, io.cwd)
    if (o.metricsUrl) await scrape(o.metricsUrl)
    const result = await runSteps(o, io, protocol, Math.max(1, creds.tokens.length), requests, argv)
    io.out(formatTable(result))
    if (result.steps.length > 0 && result.steps.every((s) => s.stats.ok === 0)) io.err('bulwark bench: no request succeeded; the errors column says why\n')
    const hint = callersHint(result.steps, result.callers ?? 1)
    if (hint) io.err(`bulwark bench: ${hint}\n`)
    await writeOutputs(o, io, result)
    return 0
  } catch (err) {
    if (err instanceof BenchTargetError || err instanceof BenchInputError) {
      io.err(`bulwark bench: ${err.message}\n`)
      return 1
    }
    throw err
  }
}
