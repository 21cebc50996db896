// Run by the scale bench as `node --expose-gc bench/scale-memory.ts N1,N2,...`: a gateway in
// this process with the bundled policies (mnist: screening, rate limit and budget on), callers
// added in steps, each with its own token subject making one request. Around each step's
// requests a full collection, so the figure is what the gateway keeps per caller, not garbage
// or the tokens (minted before the first measurement). Prints one JSON line:
// [{ callers, heapMiB, bytesPerCaller, statuses }].

import { startGateway } from '../kit/gateway.ts'
import { mnistDigits } from './core.ts'

const gc = (globalThis as { gc?: () => void }).gc
if (!gc) throw new Error('run with node --expose-gc')
const heapUsed = () => {
  gc()
  gc()
  return process.memoryUsage().heapUsed
}

const steps = (process.argv[2] ?? '1000,10000').split(',').map(Number)
// Every caller here shares the one dev client certificate: the per-certificate limit before the
// token would count them all as one client.
const gw = await startGateway({ models: ['mnist'], config: { clientLimits: { enabled: false } } })
const digits = mnistDigits(100)
const body = (i: number) => ({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: Array.from(digits[i % digits.length]!) }] })
const out: { callers: number; heapMiB: number; bytesPerCaller: number; statuses: Record<number, number> }[] = []
let callers = 0
try {
  for (const n of steps) {
    const tokens: string[] = []
    for (let i = callers; i < n; i++) tokens.push(await gw.token({ sub: `caller-${i}`, scopes: ['mnist:infer'] }))
    const before = heapUsed()
    const statuses: Record<number, number> = {}
    for (let i = 0; i < tokens.length; i += 16) {
      const batch = tokens.slice(i, i + 16).map(async (token, j) => {
        const res = await gw.request('/v2/models/mnist/infer', { token, body: body(callers + i + j) })
        statuses[res.status] = (statuses[res.status] ?? 0) + 1
      })
      await Promise.all(batch)
    }
    const after = heapUsed()
    out.push({ callers: n, heapMiB: after / 2 ** 20, bytesPerCaller: (after - before) / (n - callers), statuses })
    callers = n
  }
} finally {
  await gw.close()
}
console.log(JSON.stringify(out))
