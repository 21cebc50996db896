// `node bench/profile.ts GROUP_CONFIG.json`: runs a gateway child with --cpu-prof under a
// bounded closed-loop load and prints the functions with the most self time. A tool for
// finding hot spots, not a benchmark.

import { spawn } from 'node:child_process'
import { readFileSync, readdirSync, writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { stringify } from 'yaml'
import { closedLoop } from './load.ts'
import { freePort } from '../kit/gateway-process.ts'
import { repoRoot } from '../kit/paths.ts'
import { binaryRequest, ocrImage } from '../kit/payloads.ts'
import { mnistDigits } from './core.ts'

const [configFile, model = 'mnist', seconds = '4'] = process.argv.slice(2)
const config = JSON.parse(readFileSync(configFile!, 'utf8'))
const apiPort = await freePort()
const adminPort = await freePort()
const dir = config.cwd ?? mkdtempSync(path.join(tmpdir(), 'bulwark-prof-'))
const profDir = mkdtempSync(path.join(tmpdir(), 'bulwark-cpuprof-'))
const file = path.join(dir, 'bulwark.yaml')
writeFileSync(file, stringify({ ...config.gateway, server: { listen: `127.0.0.1:${apiPort}`, admin: `127.0.0.1:${adminPort}` }, grpc: { listen: '127.0.0.1:0' }, models: { directory: path.join(repoRoot, 'models'), ...config.gateway.models } }))
const child = spawn(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${profDir}`, path.join(repoRoot, 'bin/bulwark.js'), 'serve', '--config', file], { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, BULWARK_LOG_LEVEL: 'warn' } })
for (;;) {
  try {
    if ((await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status === 200) break
  } catch {}
  await new Promise((r) => setTimeout(r, 100))
}
const reqs = model === 'mnist' ? mnistDigits(500).map((d) => binaryRequest('mnist', 'input', [1, 1, 28, 28], d)) : [binaryRequest('ocr-cls', 'x', [1, 3, 48, 192], ocrImage(1))]
const load = (ms: number) => closedLoop({ origin: `http://127.0.0.1:${apiPort}`, concurrency: 64, durationMs: ms, next: (i) => reqs[i % reqs.length]! })
await load(1000) // warm-up: JIT and pools settle; its samples are left out below
// The profile's timestamps are the monotonic clock in µs (the same clock as hrtime here), so
// only samples taken during the measured load are counted: start-up does not blur the figures.
const from = Number(process.hrtime.bigint() / 1000n)
const r = await load(Number(seconds) * 1000)
const to = Number(process.hrtime.bigint() / 1000n)
console.log(`items/s ${r.itemsPerSec.toFixed(0)} p50 ${r.p50.toFixed(2)} p99 ${r.p99.toFixed(2)} statuses ${JSON.stringify(r.statuses)}`)
child.kill('SIGTERM')
await new Promise((res) => child.once('exit', res))
const profFile = path.join(profDir, readdirSync(profDir).find((f) => f.endsWith(".cpuprofile"))!)
console.log(`profile: ${profFile}`)
const prof = JSON.parse(readFileSync(profFile, "utf8"))
const self = new Map<string, number>()
const byId = new Map<number, { callFrame: { functionName: string; url: string; lineNumber: number } }>(prof.nodes.map((n: { id: number }) => [n.id, n]))
const dt: number[] = prof.timeDeltas
let at: number = prof.startTime
prof.samples.forEach((id: number, i: number) => {
  at += dt[i] ?? 0
  if (at < from || at > to) return
  const n = byId.get(id)!
  const key = `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.replace(/^.*\/(node_modules|src)\//, '$1/')}:${n.callFrame.lineNumber}`
  self.set(key, (self.get(key) ?? 0) + (dt[i + 1] ?? 0))
})
const total = [...self.values()].reduce((a, b) => a + b, 0)
// Self time per request answered (µs): comparable across runs of different lengths and loads.
const perReq = (us: number) => (us / r.requests).toFixed(2).padStart(7)
console.log(`main thread: ${perReq(total - (self.get('(idle) :-1') ?? 0))} µs busy per request`)
for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env.TOP ?? 25))) console.log(`${perReq(v)} µs  ${((v / total) * 100).toFixed(1).padStart(5)}%  ${k}`)
