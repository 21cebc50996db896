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
// the ratios are an upper bound on the cost of the hop, not a measure of network latency. The
// note gives the gateway's own CPU time per request, which does not depend on that sharing.

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
        for (const concurrency of [16, 64]) {
          const load = (origin: string, connect?: Record<string, unknown>, durationMs = opts.durationMs) =>
            closedLoop({ origin, concurrency, durationMs, next: (i) => m.requests[i % m.requests.length]!, ...(connect ? { connect } : {}) })
          await load(endpoint, podTls ?? undefined, opts.warmupMs)
          const direct = await load(endpoint, podTls ?? undefined)
          await load(`http://127.0.0.1:${front.apiPort}`, undefined, opts.warmupMs)
          // The gateway's own CPU per request: a figure that does not depend on how the cores are shared.
          const cpu0 = cpuMs(front.child.pid)
          const via = await load(`http://127.0.0.1:${front.apiPort}`)
          const cpuPerRequestMs = (cpuMs(front.child.pid) - cpu0) / via.requests
          const scenario = `${m.name} binary, ${variant}`
          raw[`${scenario} c${concurrency}`] = { direct, via, gatewayCpuMsPerRequest: cpuPerRequestMs }
          rows.push({ group, scenario: `${scenario}: pod direct`, concurrency, itemsPerSec: direct.itemsPerSec, p50: direct.p50, p99: direct.p99, errors: direct.requests - direct.ok })
          rows.push(viaRow(group, `${scenario}: via gateway`, concurrency, via, direct, `${signed(via.p50 - direct.p50)} ms p50, ${signed(via.p99 - direct.p99)} ms p99; gateway CPU ${(cpuPerRequestMs * 1000).toFixed(0)} µs/request`))
          {
            const grpcFront = `http://127.0.0.1:${frontGrpc.apiPort}`
            await load(grpcFront, undefined, opts.warmupMs)
            const cpuG = cpuMs(frontGrpc.child.pid)
            const viaGrpc = await load(grpcFront)
            const cpuGrpcMs = (cpuMs(frontGrpc.child.pid) - cpuG) / viaGrpc.requests
            raw[`${scenario} c${concurrency} gRPC upstream`] = { viaGrpc, gatewayCpuMsPerRequest: cpuGrpcMs }
            rows.push(viaRow(group, `${scenario}: via gateway, gRPC upstream`, concurrency, viaGrpc, direct, `${(viaGrpc.itemsPerSec / via.itemsPerSec).toFixed(2)}× the REST upstream's throughput, ${signed(viaGrpc.p50 - via.p50)} ms p50; gateway CPU ${(cpuGrpcMs * 1000).toFixed(0)} µs/request`))
          }
          if (nginx) {
            const proxy = `http://127.0.0.1:${nginx.port}`
            await load(proxy, undefined, opts.warmupMs)
            const viaNginx = await load(proxy)
            raw[`${scenario} c${concurrency}`] = { direct, via, viaNginx, gatewayCpuMsPerRequest: cpuPerRequestMs }
            rows.push(viaRow(group, `${scenario}: via nginx (plain proxy, 1 worker)`, concurrency, viaNginx, direct, `${signed(viaNginx.p50 - direct.p50)} ms p50, ${signed(viaNginx.p99 - direct.p99)} ms p99; Bulwark's hop keeps ${((via.itemsPerSec / viaNginx.itemsPerSec) * 100).toFixed(0)}% of nginx's throughput`))
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
