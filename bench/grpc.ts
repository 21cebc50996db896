// gRPC beside REST on one gateway (every defence off, as the core group's gateway): mnist and
// ocr-cls, binary tensors over REST (Inference-Header-Content-Length) and raw_input_contents
// over gRPC, one item per request, closed loop at c16 and c64. The two transports run in
// alternating rounds on the same gateway, and each row's ratio is the median of the rounds'
// gRPC/REST items/s: this machine's spare CPU drifts within minutes, so figures from
// different moments would not compare. The gRPC client spreads its calls over one HTTP/2
// connection per 16 clients, as gRPC clients multiplex; REST uses one connection per client.

import { closedLoop, type LoadResult } from './load.ts'
import { mnistDigits } from './core.ts'
import { binaryRequest, ocrImage, type LoadRequest } from '../kit/payloads.ts'
import { noDefences, startGateway } from '../kit/gateway-process.ts'
import { grpcLoadClient, grpcRequest } from '../src/transport/grpc-client.ts'
import type { BenchOptions } from './core.ts'
import type { Row } from './report.ts'

const ROUNDS = 3

const raw = (data: Float32Array) => Buffer.from(data.buffer, data.byteOffset, data.byteLength)

/** The same inputs as REST binary requests and as gRPC ModelInfer calls with raw contents. */
function requests(model: string, input: string, shape: number[], images: Float32Array[]): { rest: LoadRequest[]; grpc: LoadRequest[] } {
  return {
    rest: images.map((d) => binaryRequest(model, input, shape, d)),
    grpc: images.map((d) => grpcRequest('ModelInfer', { model_name: model, inputs: [{ name: input, datatype: 'FP32', shape }], raw_input_contents: [raw(d)] }, shape[0])),
  }
}

export async function grpcBench(opts: BenchOptions, log: (s: string) => void): Promise<{ rows: Row[]; raw: unknown }> {
  const rows: Row[] = []
  const result: Record<string, unknown> = {}
  const gw = await startGateway({
    ...noDefences,
    models: { serve: [{ name: 'ocr-cls', workers: 2, intraOpThreads: 1, batching: { enabled: true, maxBatchSize: 16 } }, { name: 'mnist', workers: 1, intraOpThreads: 1 }] },
  })
  try {
    const cases = [
      ['ocr-cls', requests('ocr-cls', 'x', [1, 3, 48, 192], [ocrImage(1)])],
      ['mnist', requests('mnist', 'input', [1, 1, 28, 28], mnistDigits(200))],
    ] as const
    const roundMs = Math.max(1000, Math.round(opts.durationMs / 2))
    for (const [model, list] of cases) {
      for (const concurrency of [16, 64]) {
        const rounds: { rest: LoadResult; grpc: LoadResult }[] = []
        for (let i = 0; i < ROUNDS; i++) {
          log(`${model} c${concurrency}: REST binary, then gRPC raw, round ${i + 1}/${ROUNDS}`)
          const common = { origin: `http://127.0.0.1:${gw.grpcPort}`, concurrency, durationMs: roundMs, warmupMs: Math.min(opts.warmupMs, 500) }
          const rest = await closedLoop({ ...common, origin: `http://127.0.0.1:${gw.apiPort}`, next: (n) => list.rest[n % list.rest.length]! })
          const grpc = await closedLoop({ ...common, client: () => grpcLoadClient({ address: `127.0.0.1:${gw.grpcPort}`, connections: Math.ceil(concurrency / 16) }), next: (n) => list.grpc[n % list.grpc.length]! })
          rounds.push({ rest, grpc })
        }
        result[`${model} c${concurrency}`] = rounds
        const ratios = rounds.map((r) => r.grpc.itemsPerSec / r.rest.itemsPerSec).sort((a, b) => a - b)
        const mid = [...rounds].sort((a, b) => a.grpc.itemsPerSec / a.rest.itemsPerSec - b.grpc.itemsPerSec / b.rest.itemsPerSec)[Math.floor(ROUNDS / 2)]!
        const errors = (pick: 'rest' | 'grpc') => rounds.reduce((n, r) => n + r[pick].requests - r[pick].ok, 0)
        rows.push({ group: 'grpc', scenario: `gateway ${model} binary REST`, concurrency, itemsPerSec: mid.rest.itemsPerSec, p50: mid.rest.p50, p99: mid.rest.p99, errors: errors('rest') })
        rows.push({
          group: 'grpc',
          scenario: `gateway ${model} raw gRPC`,
          concurrency,
          itemsPerSec: mid.grpc.itemsPerSec,
          p50: mid.grpc.p50,
          p99: mid.grpc.p99,
          ratio: ratios[Math.floor(ROUNDS / 2)]!,
          ratioTo: 'REST, same rounds',
          errors: errors('grpc'),
          note: `median of ${ROUNDS} rounds (range ${ratios[0]!.toFixed(2)}-${ratios[ROUNDS - 1]!.toFixed(2)}); ${Math.ceil(concurrency / 16)} connection(s)`,
        })
      }
    }
  } finally {
    await gw.stop()
  }
  return { rows, raw: result }
}
