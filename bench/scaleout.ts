// Scale-out scenarios: what upstream mode adds over calling the upstream model pod
// directly. An upstream Bulwark serves the model (defences off, as a bare model pod); a second
// gateway (defences off too, so only upstream mode is measured) serves it as an upstream model.
// Each pair of rows is the same load (closed loop, binary tensors) against the pod directly
// and through the gateway, at concurrency 16 and 64; the ratio is gateway / direct throughput
// and the note the latency the hop adds. Variants: plain HTTP to the pod, and mTLS with the
// gateway's own client certificate (the direct baseline then uses mTLS too).
//
// The gRPC upstream: a third gateway calls the same pod's gRPC listener (upstream.protocol:
// grpc, ModelInfer with raw tensor bytes, 8 HTTP/2 connections) instead of its REST API; the
// load in front is the same REST load, so its rows compare the two upstream protocols.
//
// The anchor: nginx as a plain reverse proxy in front of the same pod (bench/nginx.ts), in the
// same run, with the same load: the ratio a hop that only proxies keeps.
//
// All processes share this machine's cores, so the gateway's added CPU also slows the pod:
// the ratios are an upper bound on the cost of the hop, not a measure of network latency.
// Each row's note charges the CPU time used during its load to each party, per request: the
// hop (the gateway or nginx, all its threads or processes), the pod, and the load client.
// Those figures do not depend on how the cores are shared, and show where a hop's cost goes.

import { readFileSync } from 'node:fs'
import path from 'node:path'
import { closedLoop, type LoadResult } from './load.ts'
import { binaryRequest, ocrImage, type LoadRequest } from '../kit/payloads.ts'
import { noDefences, startGateway, type GatewayProcess } from '../kit/gateway-process.ts'
import { mnistDigits, type BenchOptions } from './core.ts'
import { nginxMissing, startNginx, type Nginx } from './nginx.ts'
import type { Row } from './report.ts'
import { cpuSeconds } from './host.ts'

/** CPU time (user + system, all threads) a process has used, in ms; NaN once it is gone. */
function cpuMs(pid: number | undefined): number {
  try {
    return cpuSeconds(pid!) * 1000
  } catch {
    return NaN
  }
}

interface Accounted {
  r: LoadResult
  /** CPU time per request in µs (user + system, all threads): the load client's (this process) and each party's. */
  cpuUs: Record<string, number>
}

/** Runs one load and charges each party the CPU its processes used during it, per request. */
async function accounted(run: () => Promise<LoadResult>, parties: Record<string, number[]>): Promise<Accounted> {
  const used = (pids: number[]) => pids.reduce((sum, pid) => sum + cpuMs(pid), 0)
  const before = Object.entries(parties).map(([name, pids]) => [name, pids, used(pids)] as const)
  const client0 = process.cpuUsage()
  const r = await run()
  const client = process.cpuUsage(client0)
  const cpuUs: Record<string, number> = {}
  for (const [name, pids, ms] of before) cpuUs[name] = ((used(pids) - ms) * 1000) / r.requests
  cpuUs.client = (client.user + client.system) / r.requests
  return { r, cpuUs }
}

/** "CPU µs/request: gateway 235, pod 40, client 60 (all 335)". */
function cpuNote(cpuUs: Record<string, number>): string {
  const parts = Object.entries(cpuUs).map(([name, us]) => `${name} ${us.toFixed(0)}`)
  const all = Object.values(cpuUs).reduce((a, b) => a + b, 0)
  return `CPU µs/request: ${parts.join(', ')} (all ${all.toFixed(0)})`
}

/** A row of the load through a hop, as a share of the pod called directly. */
function viaRow(group: string, scenario: string, concurrency: number, r: LoadResult, direct: LoadResult, note: string): Row {
  return { group, scenario, concurrency, itemsPerSec: r.itemsPerSec, p50: r.p50, p99: r.p99, ratio: r.itemsPerSec / direct.itemsPerSec, ratioTo: 'direct', errors: r.requests - r.ok, note }
}

const signed = (x: number) => `${x >= 0 ? '+' : ''}${x.toFixed(2)}`

interface ModelCase {
  name: string
  serve: Record<string, unknown>
  requests: LoadRequest[]
}

export async function scaleoutBench(opts: BenchOptions, log: (s: string) => void): Promise<{ rows: Row[]; raw: unknown }> {
  const rows: Row[] = []
  const raw: Record<string, unknown> = {}
  const group = 'scaleout'
  const models: ModelCase[] = [
    { name: 'mnist', serve: { name: 'mnist', workers: 1, intraOpThreads: 1 }, requests: mnistDigits(100).map((d) => binaryRequest('mnist', 'input', [1, 1, 28, 28], d)) },
    { name: 'ocr-cls', serve: { name: 'ocr-cls', workers: 1, intraOpThreads: 1 }, requests: [1, 2, 3, 4].map((s) => binaryRequest('ocr-cls', 'x', [1, 3, 48, 192], ocrImage(1, s))) },
  ]
  for (const tls of [false, true]) {
    const variant = tls ? 'mTLS to the pod' : 'HTTP to the pod'
    for (const m of models) {
      log(`${m.name}: ${variant}`)
      // The pod: Bulwark serving the model, no defences (with tls: mTLS with its dev PKI, no tokens).
      // Its connection caps raised: every client here (the load, the gateway, nginx) shares one
      // address and, with mTLS, one certificate, which the caps would count as one client.
      const pod = await startGateway({ ...noDefences, ...(tls ? { tls: { enabled: true } } : {}), server: { maxConnectionsPerClient: 4096, newConnectionsPerSecondPerAddress: 100_000 }, models: { serve: [m.serve] } })
      let front: GatewayProcess | null = null
      let frontGrpc: GatewayProcess | null = null
      let nginx: Nginx | null = null
      try {
        const dev = path.join(pod.dir, '.bulwark/dev')
        const podTls = tls ? { ca: readFileSync(path.join(dev, 'ca.pem'), 'utf8'), cert: readFileSync(path.join(dev, 'client.pem'), 'utf8'), key: readFileSync(path.join(dev, 'client-key.pem'), 'utf8') } : null
        const endpoint = `${tls ? 'https' : 'http'}://127.0.0.1:${pod.apiPort}`
        front = await startGateway({
          ...noDefences,
          models: {
            serve: [{
              name: m.name,
              upstream: {
                endpoints: [endpoint],
                maxConcurrentCalls: 128,
                connectionsPerEndpoint: 64,
                ...(tls ? { tls: { caFile: path.join(dev, 'ca.pem'), certFile: path.join(dev, 'client.pem'), keyFile: path.join(dev, 'client-key.pem') } } : {}),
              },
            }],
          },
        })
        frontGrpc = await startGateway({
          ...noDefences,
          models: {
            serve: [{
              name: m.name,
              upstream: {
                protocol: 'grpc',
                endpoints: [`${tls ? 'https' : 'http'}://127.0.0.1:${pod.grpcPort}`],
                maxConcurrentCalls: 128,
                connectionsPerEndpoint: 8,
                ...(tls ? { tls: { caFile: path.join(dev, 'ca.pem'), certFile: path.join(dev, 'client.pem'), keyFile: path.join(dev, 'client-key.pem') } } : {}),
              },
            }],
          },
        })
        const noNginx = nginxMissing()
        if (noNginx) log(noNginx)
        else nginx = await startNginx({ pod: endpoint, ...(tls ? { tls: { caFile: path.join(dev, 'ca.pem'), certFile: path.join(dev, 'client.pem'), keyFile: path.join(dev, 'client-key.pem') } } : {}) })
        const podPids = [pod.child.pid!]
        for (const concurrency of [16, 64]) {
          const load = (origin: string, connect?: Record<string, unknown>, durationMs = opts.durationMs) =>
            closedLoop({ origin, concurrency, durationMs, next: (i) => m.requests[i % m.requests.length]!, ...(connect ? { connect } : {}) })
          await load(endpoint, podTls ?? undefined, opts.warmupMs)
          const direct = await accounted(() => load(endpoint, podTls ?? undefined), { pod: podPids })
          const scenario = `${m.name} binary, ${variant}`
          const record: Record<string, unknown> = { direct }
          raw[`${scenario} c${concurrency}`] = record
          rows.push({ group, scenario: `${scenario}: pod direct`, concurrency, itemsPerSec: direct.r.itemsPerSec, p50: direct.r.p50, p99: direct.r.p99, errors: direct.r.requests - direct.r.ok, note: cpuNote(direct.cpuUs) })
          // `key`: the raw record's; `party`: the hop's name in the CPU split.
          const hop = async (key: string, party: string, origin: string, hopPids: number[]) => {
            await load(origin, undefined, opts.warmupMs)
            const r = await accounted(() => load(origin), { [party]: hopPids, pod: podPids })
            record[key] = r
            return r
          }
          const via = await hop('viaGateway', 'gateway', `http://127.0.0.1:${front.apiPort}`, [front.child.pid!])
          rows.push(viaRow(group, `${scenario}: via gateway`, concurrency, via.r, direct.r, `${signed(via.r.p50 - direct.r.p50)} ms p50, ${signed(via.r.p99 - direct.r.p99)} ms p99; ${cpuNote(via.cpuUs)}`))
          const viaGrpc = await hop('viaGatewayGrpcUpstream', 'gateway', `http://127.0.0.1:${frontGrpc.apiPort}`, [frontGrpc.child.pid!])
          rows.push(viaRow(group, `${scenario}: via gateway, gRPC upstream`, concurrency, viaGrpc.r, direct.r, `${(viaGrpc.r.itemsPerSec / via.r.itemsPerSec).toFixed(2)}× the REST upstream's throughput, ${signed(viaGrpc.r.p50 - via.r.p50)} ms p50; ${cpuNote(viaGrpc.cpuUs)}`))
          if (nginx) {
            const viaNginx = await hop('viaNginx', 'nginx', `http://127.0.0.1:${nginx.port}`, nginx.pids())
            rows.push(viaRow(group, `${scenario}: via nginx (plain proxy, 1 worker)`, concurrency, viaNginx.r, direct.r, `${signed(viaNginx.r.p50 - direct.r.p50)} ms p50, ${signed(viaNginx.r.p99 - direct.r.p99)} ms p99; ${cpuNote(viaNginx.cpuUs)}; Bulwark's hop keeps ${((via.r.itemsPerSec / viaNginx.r.itemsPerSec) * 100).toFixed(0)}% of nginx's throughput`))
          }
        }
      } finally {
        await nginx?.stop()
        await frontGrpc?.stop()
        await front?.stop()
        await pod.stop()
      }
    }
  }
  return { rows, raw }
}
