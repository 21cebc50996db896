import { startGateway, noDefences } from '/work/main/bench/gateway-process.ts'
import { closedLoop } from '/work/main/bench/load.ts'
import { binaryRequest, ocrImage } from '/work/main/bench/payloads.ts'
import { readFileSync, readdirSync } from 'node:fs'
const variant = JSON.parse(process.argv[2] ?? '{}')
const gw = await startGateway({ ...noDefences, models: { serve: [{ name: 'ocr-cls', workers: 1, intraOpThreads: 2, batching: { enabled: true, maxBatchSize: 32 }, ...variant }] } })
const req = binaryRequest('ocr-cls', 'x', [1, 3, 48, 192], ocrImage(1))
const pid = gw.child.pid!
const threads = () => Object.fromEntries(readdirSync(`/proc/${pid}/task`).map((tid) => {
  const f = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8')
  const name = f.slice(f.indexOf('(') + 1, f.lastIndexOf(')'))
  const parts = f.slice(f.lastIndexOf(')') + 2).split(' ')
  return [`${tid} ${name}`, { u: Number(parts[11]), s: Number(parts[12]) }]
}))
await closedLoop({ origin: `http://127.0.0.1:${gw.apiPort}`, concurrency: 64, durationMs: 1000, next: () => req })
const a = threads()
const c0 = process.cpuUsage()
const r = await closedLoop({ origin: `http://127.0.0.1:${gw.apiPort}`, concurrency: 64, durationMs: 5000, next: () => req })
const c = process.cpuUsage(c0)
const b = threads()
console.log('items/s', r.itemsPerSec.toFixed(0), 'requests', r.requests)
for (const k of Object.keys(b)) {
  const du = (b[k]!.u - (a[k]?.u ?? 0)) * 10, ds = (b[k]!.s - (a[k]?.s ?? 0)) * 10
  if (du + ds > 50) console.log(k.padEnd(24), 'user ms/req', (du / r.requests).toFixed(3), 'sys ms/req', (ds / r.requests).toFixed(3), 'busy %', ((du + ds) / 50).toFixed(0))
}
console.log('client user ms/req', (c.user / 1000 / r.requests).toFixed(3), 'sys', (c.system / 1000 / r.requests).toFixed(3))
await gw.stop()
