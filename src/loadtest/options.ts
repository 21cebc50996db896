// The flags of `bulwark bench`, parsed and checked in one place: every problem is collected
// and reported at once, each naming the flag, what it got and what it takes. Nothing here
// reads files or the network; src/loadtest/command.ts does that with the result.

import { parseArgs } from 'node:util'

export type LoadMode = { kind: 'closed'; levels: number[] } | { kind: 'open'; levels: number[]; connections: number }

export interface BenchOptions {
  url: URL
  model: string
  modelVersion?: string
  /** OIP v2 REST, or inference.GRPCInferenceService (url is then https://HOST:PORT, or http:// without TLS). */
  protocol: 'rest' | 'grpc'
  cacert?: string
  cert?: string
  key?: string
  token?: { kind: 'value' | 'file' | 'command'; value: string }
  /** Identities the load is spread over (--callers); absent: 1, or one per line of --token-file/--token-command. */
  callers?: number
  metricsUrl?: URL
  mode: LoadMode
  /** A fixed measurement per step; absent: windows of windowMs until stable. */
  durationMs?: number
  windowMs: number
  stabilityPercent: number
  maxWindows: number
  warmupMs: number
  maxDurationMs: number
  maxRequests: number
  batch: number
  inputs?: string
  binary: boolean
  seed: number
  range?: [number, number]
  csv?: string
  json?: string
  report?: string
  quiet: boolean
  allowTarget?: string
  help: boolean
}

/** Bad flags: every problem found, each a sentence that says what to do. */
export class BenchUsageError extends Error {
  readonly problems: string[]
  constructor(problems: string[]) {
    super(problems.join('\n'))
    this.problems = problems
  }
}

export const DEFAULTS = {
  url: 'https://127.0.0.1:8443',
  grpcUrl: '127.0.0.1:8444',
  windowMs: 1000,
  stabilityPercent: 10,
  maxWindows: 10,
  warmupMs: 1000,
  maxDurationMs: 10 * 60_000,
  maxRequests: 1_000_000,
  connections: 16,
  seed: 1,
} as const

/** The most levels one run may step through, and the highest concurrency and rate. */
const MAX_LEVELS = 32
const MAX_CONCURRENCY = 4096
const MAX_RATE = 1_000_000
const MAX_CALLERS = 10_000

const UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000 }

/** "500ms", "5s", "2m", "1.5s" as milliseconds; null when the text is not one. */
export function parseDuration(text: string): number | null {
  const m = /^([0-9]+|[0-9]+\.[0-9]+)(ms|s|m)$/.exec(text.trim())
  if (!m) return null
  const ms = Number(m[1]) * UNITS[m[2]!]!
  return Number.isFinite(ms) ? Math.round(ms) : null
}

/**
 * "1,4,16,64" (a list) or "1:64:x2" (from 1 to 64, times 2 each step) or "8:32:8" (plus 8
 * each step), as whole numbers in [1, max]; a string saying what is wrong otherwise.
 */
export function parseLevels(text: string, flag: string, max: number): number[] | string {
  const bad = `${flag} takes a list (1,4,16,64) or a range START:END:STEP (1:64:x2 doubles, 8:64:8 adds 8), whole numbers from 1 to ${max}; got ${JSON.stringify(text)}`
  const whole = (s: string) => (/^[0-9]+$/.test(s) && Number(s) >= 1 && Number(s) <= max ? Number(s) : null)
  let levels: number[] = []
  if (text.includes(':')) {
    const [from = '', to = '', by, ...more] = text.split(':')
    const [start, end] = [whole(from), whole(to)]
    const times = by?.startsWith('x') === true
    const stepText = by === undefined ? (times ? '2' : '1') : times ? by.slice(1) : by
    const step = /^[0-9]+$|^[0-9]+\.[0-9]+$/.test(stepText) ? Number(stepText) : NaN
    if (more.length > 0 || start === null || end === null || end < start || (times ? !(step > 1) : !Number.isInteger(step) || step < 1)) return bad
    for (let v = start; v <= end && levels.length <= MAX_LEVELS; v = times ? Math.max(v + 1, Math.round(v * step)) : v + step) levels.push(v)
  } else {
    const parts = text.split(',').map((s) => whole(s.trim()))
    if (parts.some((p) => p === null)) return bad
    levels = parts as number[]
  }
  if (levels.length === 0) return bad
  if (levels.length > MAX_LEVELS) return `${flag} gives ${levels.length}+ steps; at most ${MAX_LEVELS} per run`
  return levels
}

const FLAGS = {
  url: { type: 'string' },
  model: { type: 'string', short: 'm' },
  'model-version': { type: 'string' },
  protocol: { type: 'string' },
  cacert: { type: 'string' },
  cert: { type: 'string' },
  key: { type: 'string' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  'token-command': { type: 'string' },
  callers: { type: 'string' },
  metrics: { type: 'string' },
  concurrency: { type: 'string', short: 'c' },
  rate: { type: 'string', short: 'r' },
  connections: { type: 'string' },
  duration: { type: 'string', short: 'd' },
  window: { type: 'string' },
  'stability-percent': { type: 'string' },
  'max-windows': { type: 'string' },
  warmup: { type: 'string' },
  'max-duration': { type: 'string' },
  'max-requests': { type: 'string' },
  batch: { type: 'string', short: 'b' },
  input: { type: 'string' },
  binary: { type: 'boolean' },
  seed: { type: 'string' },
  range: { type: 'string' },
  csv: { type: 'string' },
  json: { type: 'string' },
  report: { type: 'string' },
  quiet: { type: 'boolean', short: 'q' },
  'allow-target': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const

type Values = ReturnType<typeof parseArgs<{ options: typeof FLAGS; strict: true; allowPositionals: false }>>['values']

/** Reads number-valued flags, collecting problems. */
function numberReader(values: Values, problems: string[]) {
  const whole = (flag: keyof Values, min: number, max: number, fallback: number): number => {
    const text = values[flag]
    if (text === undefined) return fallback
    if (typeof text !== 'string' || !/^[0-9]+$/.test(text) || Number(text) < min || Number(text) > max) {
      problems.push(`--${flag} takes a whole number from ${min} to ${max}; got ${JSON.stringify(text)}`)
      return fallback
    }
    return Number(text)
  }
  const duration = (flag: keyof Values, min: number, fallback: number | undefined): number | undefined => {
    const text = values[flag]
    if (text === undefined) return fallback
    const ms = typeof text === 'string' ? parseDuration(text) : null
    if (ms === null || ms < min) {
      problems.push(`--${flag} takes a duration with its unit, at least ${min}ms: 500ms, 5s, 2m; got ${JSON.stringify(text)}`)
      return fallback
    }
    return ms
  }
  return { whole, duration }
}

function parseUrl(text: string, flag: string, problems: string[]): URL | undefined {
  try {
    const url = new URL(text)
    if (url.protocol === 'https:' || url.protocol === 'http:') return url
  } catch {}
  problems.push(`${flag} takes an http:// or https:// URL, e.g. ${flag === '--url' ? DEFAULTS.url : 'http://127.0.0.1:9464/metrics'}; got ${JSON.stringify(text)}`)
  return undefined
}

/**
 * The gRPC listener as HOST:PORT (TLS, as the gateway serves it), https://HOST:PORT, or
 * http://HOST:PORT for a listener without TLS; kept as a URL so the loopback rule and the
 * credentials read it as they read a REST target.
 */
function parseGrpcUrl(text: string, problems: string[]): URL | undefined {
  try {
    const url = new URL(/^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `https://${text}`)
    if ((url.protocol === 'https:' || url.protocol === 'http:') && url.port !== '' && url.pathname === '/' && url.search === '' && url.username === '') return url
  } catch {}
  problems.push(`--url with --protocol grpc takes the gRPC listener's HOST:PORT, e.g. ${DEFAULTS.grpcUrl} (TLS), or http://HOST:PORT for a listener without TLS; got ${JSON.stringify(text)}`)
  return undefined
}

function parseMode(values: Values, problems: string[], whole: ReturnType<typeof numberReader>['whole']): LoadMode {
  if (values.concurrency !== undefined && values.rate !== undefined) problems.push('--concurrency (closed loop) and --rate (open loop) exclude each other; give one')
  if (values.rate !== undefined) {
    const levels = parseLevels(values.rate, '--rate', MAX_RATE)
    if (typeof levels === 'string') problems.push(levels)
    return { kind: 'open', levels: typeof levels === 'string' ? [] : levels, connections: whole('connections', 1, MAX_CONCURRENCY, DEFAULTS.connections) }
  }
  if (values.connections !== undefined) problems.push('--connections applies to --rate (open loop) only; in a closed loop each of --concurrency clients has its connection')
  const levels = parseLevels(values.concurrency ?? '1', '--concurrency', MAX_CONCURRENCY)
  if (typeof levels === 'string') problems.push(levels)
  return { kind: 'closed', levels: typeof levels === 'string' ? [] : levels }
}

function parseToken(values: Values, problems: string[]): BenchOptions['token'] {
  const given = (['token', 'token-file', 'token-command'] as const).filter((f) => values[f] !== undefined)
  if (given.length > 1) problems.push(`--token, --token-file and --token-command exclude each other; got ${given.map((f) => `--${f}`).join(' and ')}`)
  if (values.token !== undefined) return { kind: 'value', value: values.token }
  if (values['token-file'] !== undefined) return { kind: 'file', value: values['token-file'] }
  if (values['token-command'] !== undefined) return { kind: 'command', value: values['token-command'] }
  return undefined
}

function parseRange(text: string | undefined, problems: string[]): [number, number] | undefined {
  if (text === undefined) return undefined
  const m = /^(-?[0-9]+|-?[0-9]+\.[0-9]+):(-?[0-9]+|-?[0-9]+\.[0-9]+)$/.exec(text)
  if (m && Number(m[1]) <= Number(m[2])) return [Number(m[1]), Number(m[2])]
  problems.push(`--range takes LOW:HIGH, the values generated inputs are drawn from, e.g. 0:1 or -1:1; got ${JSON.stringify(text)}`)
  return undefined
}

/** argv after `bench` as options; throws BenchUsageError listing every problem. */
export function parseBenchArgs(argv: string[]): BenchOptions {
  let values: Values
  try {
    values = parseArgs({ args: argv, options: FLAGS, strict: true, allowPositionals: false }).values
  } catch (err) {
    throw new BenchUsageError([(err as Error).message])
  }
  const problems: string[] = []
  const { whole, duration } = numberReader(values, problems)
  const help = values.help === true
  if (values.model === undefined && !help) problems.push('--model NAME is required: the model to load, as the gateway serves it (GET /v2/models/NAME)')
  if (values.protocol !== undefined && values.protocol !== 'rest' && values.protocol !== 'grpc') problems.push(`--protocol takes rest or grpc; got ${JSON.stringify(values.protocol)}`)
  const protocol = values.protocol === 'grpc' ? 'grpc' : 'rest'
  if (values.input !== undefined && (values.range !== undefined || values.seed !== undefined)) problems.push('--range and --seed shape generated inputs; with --input the files are sent as they are')
  if ((values.cert === undefined) !== (values.key === undefined)) problems.push('--cert and --key go together: the client certificate and its private key')
  if (values.report !== undefined && !/\.html?$/i.test(values.report)) problems.push(`--report writes one HTML file; name it FILE.html (got ${JSON.stringify(values.report)})`)
  const url = protocol === 'grpc' ? parseGrpcUrl(values.url ?? DEFAULTS.grpcUrl, problems) : parseUrl(values.url ?? DEFAULTS.url, '--url', problems)
  const metricsUrl = values.metrics === undefined ? undefined : parseUrl(values.metrics, '--metrics', problems)
  const mode = parseMode(values, problems, whole)
  const options: BenchOptions = {
    url: url ?? new URL(DEFAULTS.url),
    model: values.model ?? '',
    protocol,
    mode,
    windowMs: duration('window', 50, DEFAULTS.windowMs)!,
    stabilityPercent: whole('stability-percent', 1, 100, DEFAULTS.stabilityPercent),
    maxWindows: whole('max-windows', 3, 100, DEFAULTS.maxWindows),
    warmupMs: duration('warmup', 0, DEFAULTS.warmupMs)!,
    maxDurationMs: duration('max-duration', 100, DEFAULTS.maxDurationMs)!,
    maxRequests: whole('max-requests', 1, 100_000_000, DEFAULTS.maxRequests),
    batch: whole('batch', 1, 65_536, 1),
    binary: values.binary === true,
    seed: whole('seed', 0, 2 ** 32 - 1, DEFAULTS.seed),
    quiet: values.quiet === true,
    help,
  }
  const fixed = duration('duration', 10, undefined)
  if (fixed !== undefined) options.durationMs = fixed
  if (values.duration !== undefined && (values.window !== undefined || values['stability-percent'] !== undefined)) {
    problems.push('--duration measures each step for a fixed time; --window and --stability-percent measure until stable instead: give one or the other')
  }
  const range = parseRange(values.range, problems)
  if (range) options.range = range
  const token = parseToken(values, problems)
  if (token) options.token = token
  if (values.callers !== undefined) options.callers = whole('callers', 1, MAX_CALLERS, 1)
  if ((options.callers ?? 1) > 1 && token?.kind === 'value') problems.push('--callers N spreads the load over N identities, and --token gives one; give --token-file with one token per line, or no token flag (a development set-up mints N tokens)')
  if (metricsUrl) options.metricsUrl = metricsUrl
  for (const [flag, key] of [['model-version', 'modelVersion'], ['cacert', 'cacert'], ['cert', 'cert'], ['key', 'key'], ['input', 'inputs'], ['csv', 'csv'], ['json', 'json'], ['report', 'report'], ['allow-target', 'allowTarget']] as const) {
    const v = values[flag]
    if (v !== undefined) options[key] = v
  }
  if (problems.length > 0 && !help) throw new BenchUsageError(problems)
  return options
}
