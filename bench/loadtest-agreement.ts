// `node bench/loadtest-agreement.ts [--rounds N] [--duration-ms N] [--concurrency N]`: does
// `bulwark bench` measure what an independent load generator measures? One gateway process
// (mTLS, JWT, policy, rate limit, audit; ocr-cls with binary tensors), loaded in turn by
// `bulwark bench` (a child process, run as an operator runs it) and by autocannon (this
// process), same concurrency, same body, same credentials, the order swapped every round.
// Prints each round's requests/s of both and the median of the per-round ratios (this
// machine's spare CPU drifts within seconds, so only same-round pairs are compared).
// Loopback only, bounded by the rounds and the duration.

import { execFile } from 'node:child_process'
import { mkdtempSync, readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { parseArgs, promisify } from 'node:util'
import { startGateway } from '../kit/gateway-process.ts'
import { repoRoot } from '../kit/paths.ts'
import { encodeRequest, generateTensors } from '../src/loadtest/inputs.ts'
import { secureEnv } from './secure-env.ts'

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '4' }, 'duration-ms': { type: 'string', default: '3000' }, concurrency: { type: 'string', default: '16' } } })
const rounds = Number(values.rounds)
const durationMs = Number(values['duration-ms'])
const concurrency = Number(values.concurrency)

const env = await secureEnv()
const gw = await startGateway({
  tls: { enabled: true },
  auth: { enabled: true },
  authorization: { enabled: true },
  rateLimits: { enabled: true, maxInFlightPerPrincipal: 1024 },
  policies: { directory: env.policies() },
  models: { serve: [{ name: 'ocr-cls', workers: 1, intraOpThreads: 2, batching: { enabled: true, maxBatchSize: 32 } }] },
}, { cwd: env.dir })
const url = `https://127.0.0.1:${gw.apiPort}`
const out = mkdtempSync(path.join(tmpdir(), 'bulwark-agreement-'))

async function viaBench(round: number): Promise<number> {
  const json = path.join(out, `bench-${round}.json`)
  const f = env.pki.files
  await promisify(execFile)(process.execPath, [
    path.join(repoRoot, 'bin', 'bulwark.js'), 'bench', '--url', url, '--model', 'ocr-cls', '--cacert', f.ca, '--cert', f.clientCert, '--key', f.clientKey, '--token', env.token,
    '--binary', '--concurrency', String(concurrency), '--duration', `${durationMs}ms`, '--warmup', '500ms', '--json', json, '--quiet',
  ])
  return (JSON.parse(readFileSync(json, 'utf8')) as { steps: { stats: { rps: number; requests: number; ok: number } }[] }).steps[0]!.stats.rps
}

/** What this script uses of autocannon's API (the package ships no types). */
interface CannonResult {
  '2xx': number
  non2xx: number
  errors: number
  duration: number
}
const autocannon = createRequire(import.meta.url)('autocannon') as (o: Record<string, unknown>) => Promise<CannonResult>

// The first of the bodies `bulwark bench --binary` generates for ocr-cls (seed 1, values in 0..1).
const tensors = generateTensors([{ name: 'x', datatype: 'FP32', shape: [-1, 3, 48, 192] }], { batch: 1, seed: 1, range: [0, 1], n: 1 })[0]!
const body = encodeRequest('ocr-cls', undefined, tensors, true)

async function viaAutocannon(seconds: number): Promise<number> {
  const r = await autocannon({
    url: `${url}/v2/models/ocr-cls/infer`,
    method: 'POST',
    headers: { ...body.headers, authorization: `Bearer ${env.token}` },
    body: body.body as Buffer,
    connections: concurrency,
    duration: seconds,
    tlsOptions: env.connect,
  })
  if (r.non2xx > 0 || r.errors > 0) throw new Error(`autocannon saw ${r.non2xx} non-2xx answers and ${r.errors} errors`)
  return r['2xx'] / (r.duration || seconds)
}

try {
  const ratios: number[] = []
  for (let round = 0; round < rounds; round++) {
    let bench = 0
    let cannon = 0
    const runCannon = async () => {
      await viaAutocannon(0.5) // its warm-up, as the bench's --warmup 500ms
      cannon = await viaAutocannon(durationMs / 1000)
    }
    if (round % 2 === 0) {
      bench = await viaBench(round)
      await runCannon()
    } else {
      await runCannon()
      bench = await viaBench(round)
    }
    ratios.push(bench / cannon)
    console.log(`round ${round + 1}: bulwark bench ${bench.toFixed(0)} req/s, autocannon ${cannon.toFixed(0)} req/s, ratio ${(bench / cannon).toFixed(3)}`)
  }
  const sorted = [...ratios].sort((a, b) => a - b)
  const mid = sorted.length / 2
  const median = sorted.length % 2 === 1 ? sorted[Math.floor(mid)]! : (sorted[mid - 1]! + sorted[mid]!) / 2
  console.log(`median ratio bulwark bench / autocannon at concurrency ${concurrency}: ${median.toFixed(3)} (range ${sorted[0]!.toFixed(3)}-${sorted[sorted.length - 1]!.toFixed(3)}, ${rounds} rounds of ${durationMs} ms)`)
} finally {
  await gw.stop()
}
