// `node bench/profile.ts GROUP_CONFIG.json`: runs a gateway child with --cpu-prof under a
// bounded closed-loop load and prints the functions with the most self time. A tool for
// finding hot spots, not a benchmark.

import { spawn } from 'node:child_process'
import { readFileSync, readdirSync, writeFileSync, mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { stringify } from 'yaml'
import { closedLoop } from './load.ts'
import { freePort, repoRoot } from './gateway-process.ts'
import { binaryRequest, ocrImage } from './payloads.ts'
import { mnistDigits } from './core.ts'

const [configFile, model = 'mnist', seconds = '4'] = process.argv.slice(2)
const config = JSON.parse(readFileSync(configFile!, 'utf8'))
const apiPort = await freePort()
const adminPort = await freePort()
const dir = config.cwd ?? mkdtempSync(path.join(tmpdir(), 'bulwark-prof-'))
const profDir = path.join(dir, 'prof')
const file = path.join(dir, 'bulwark.yaml')
writeFileSync(file, stringify({ ...config.gateway, server: { listen: `127.0.0.1:${apiPort}`, admin: `127.0.0.1:${adminPort}` }, models: { directory: path.join(repoRoot, 'models'), ...config.gateway.models } }))
const child = spawn(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${profDir}`, path.join(repoRoot, 'bin/bulwark.js'), 'serve', '--config', file], { cwd: dir, stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, BULWARK_LOG_LEVEL: 'warn' } })
for (;;) {
  try {
    if ((await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status === 200) break
  } catch {}
  await new Promise((r) => setTimeout(r, 100))
}
const reqs = model === 'mnist' ? mnistDigits(500).map((d) => binaryRequest('mnist', 'input', [1, 1, 28, 28], d)) : [binaryRequest('ocr-cls', 'x', [1, 3, 48, 192], ocrImage(1))]
const r = await closedLoop({ origin: `http://127.0.0.1:${apiPort}`, concurrency: 64, durationMs: Number(seconds) * 1000, next: (i) => reqs[i % reqs.length]! })
console.log(`items/s ${r.itemsPerSec.toFixed(0)} p50 ${r.p50.toFixed(2)} p99 ${r.p99.toFixed(2)} statuses ${JSON.stringify(r.statuses)}`)
child.kill('SIGTERM')
await new Promise((res) => child.once('exit', res))
const prof = JSON.parse(readFileSync(path.join(profDir, readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'))!), 'utf8'))
const self = new Map<string, number>()
const byId = new Map<number, { callFrame: { functionName: string; url: string; lineNumber: number } }>(prof.nodes.map((n: { id: number }) => [n.id, n]))
const dt: number[] = prof.timeDeltas
prof.samples.forEach((id: number, i: number) => {
  const n = byId.get(id)!
  const key = `${n.callFrame.functionName || '(anon)'} ${n.callFrame.url.replace(/^.*\/(node_modules|src)\//, '$1/')}:${n.callFrame.lineNumber}`
  self.set(key, (self.get(key) ?? 0) + (dt[i] ?? 0))
})
const total = [...self.values()].reduce((a, b) => a + b, 0)
for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, 25)) console.log(`${((v / total) * 100).toFixed(1).padStart(5)}%  ${k}`)
