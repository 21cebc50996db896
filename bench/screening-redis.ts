// Per-request Redis traffic of shared screening state (`state.redis`): the stateful detector's
// per-caller ring and the model-wide index (src/screening/shared-ring.ts), each measured on its
// own with the bundled mnist policy's settings (k, history, acrossCallers, pool size), on a
// redis-server of its own (loopback, no persistence). Two replicas (two Redis clients, as two
// gateways hold) take single-digit requests from 20 callers sending distinct held-out digits,
// each caller's requests going to the replicas in turn; the figures are taken once every ring is
// full (the most each request can bring back).
// Reported per request: bytes sent plus received on the replicas' sockets, round trips (the
// server's command count), and Redis CPU (the server's time in the script), one request at a
// time; the mean bytes with 64 requests in flight on each replica (as the bench's c64 load);
// the mean bytes of a 64-digit request (its own queries going in: 65 bytes each on mnist, the
// other replica's coming back: 49 bytes each);
// and the worst case, a replica's first request for a caller whose full ring it holds no copy of.
// `node bench/screening-redis.ts` prints the rows alone; `npm run bench -- --only screening`
// prints them after the throughput rows.

import { Redis } from 'ioredis'
import { readFileSync } from 'node:fs'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { parse } from 'yaml'
import { freePort } from '../kit/gateway-process.ts'
import { repoRoot } from '../kit/paths.ts'
import { loadMnist } from '../models/mnist/data.ts'
import type { SharedDetector } from '../src/screening/detector.ts'
import { poolingEncoder } from '../src/screening/encoder.ts'
import { createSharedPradaDetector, parseEntry } from '../src/screening/prada-shared.ts'
import { zeroRuns } from '../src/screening/prada-copy.ts'
import type { PradaOptions } from '../src/screening/prada.ts'
import { cryptoRandom } from '../src/deps.ts'
import { createSharedCallersIndexDetector } from '../src/screening/stateful-callers.ts'
import { createSharedStatefulDetector } from '../src/screening/stateful-shared.ts'
import { REDIS_SERVER, spawnRedis } from '../kit/redis-server.ts'
import type { Row } from './report.ts'

const GROUP = 'screening'
const CALLERS = 20
const MEASURED = 1000
const LAYOUT = { channels: 1, height: 28, width: 28, lo: 0, hi: 1 }

/** Bytes a Redis client has sent and received on its socket so far. */
export function socketBytes(client: Redis): number {
  return client.stream.bytesWritten + client.stream.bytesRead
}

/** The server's count of calls and CPU microseconds in scripts (EVALSHA and EVAL). */
async function scriptStats(raw: Redis): Promise<{ calls: number; usec: number }> {
  const info = await raw.info('commandstats')
  let calls = 0
  let usec = 0
  for (const m of info.matchAll(/cmdstat_(?:evalsha|eval):calls=(\d+),usec=(\d+)/g)) {
    calls += Number(m[1])
    usec += Number(m[2])
  }
  return { calls, usec }
}

interface Measured {
  bytesPerRequest: number
  maxBytes: number
  roundTrips: number
  usecPerRequest: number
  /** Mean bytes per request with 64 requests in flight on each replica. */
  loadedBytes: number
  /** Mean bytes per request of 64 digits, one request at a time. */
  batchBytes: number
  coldBytes: number
}

/**
 * Fills every ring, then measures MEASURED requests, each caller's requests alternating between
 * two replicas (round r of the callers goes to replica r mod 2), then one cold replica's first request.
 */
async function measure(make: (client: Redis) => SharedDetector, clients: Redis[], raw: Redis, fill: number): Promise<Measured> {
  const [a, b, cold] = clients.map(make)
  const replicas = [a!, b!]
  const images = loadMnist().test.images
  let next = 0
  const digit = () => images[next++ % images.length]!
  const send = (i: number, d: SharedDetector) => d.inspect({ principal: `caller-${i % CALLERS}`, items: [digit()], digests: [0] })
  // The replica of a caller's n-th request: n mod 2 (each round of the callers on the other one).
  const turn = (i: number) => Math.floor(i / CALLERS) % 2
  for (let i = 0; i < fill; i++) await send(i, replicas[turn(i)]!)
  const before = await scriptStats(raw)
  let bytes = 0
  let maxBytes = 0
  for (let i = 0; i < MEASURED; i++) {
    const client = clients[turn(i)]!
    const start = socketBytes(client)
    await send(i, replicas[turn(i)]!)
    const used = socketBytes(client) - start
    bytes += used
    maxBytes = Math.max(maxBytes, used)
  }
  const after = await scriptStats(raw)
  const loadedStart = socketBytes(clients[0]!) + socketBytes(clients[1]!)
  for (let wave = 0; wave < MEASURED / 128; wave++) await Promise.all(Array.from({ length: 128 }, (_, i) => send(i, replicas[(i + Math.floor(i / CALLERS) + wave) % 2]!)))
  const loadedBytes = (socketBytes(clients[0]!) + socketBytes(clients[1]!) - loadedStart) / (Math.floor(MEASURED / 128) * 128)
  const batchStart = socketBytes(clients[0]!) + socketBytes(clients[1]!)
  // One caller's 64-digit requests, on the replicas in turn: each brings back the one before.
  for (let i = 0; i < 10; i++) await replicas[i % 2]!.inspect({ principal: 'caller-0', items: Array.from({ length: 64 }, digit), digests: [] })
  const batchBytes = (socketBytes(clients[0]!) + socketBytes(clients[1]!) - batchStart) / 10
  const start = socketBytes(clients[2]!)
  await send(0, cold!)
  return { bytesPerRequest: bytes / MEASURED, maxBytes, roundTrips: (after.calls - before.calls) / MEASURED, usecPerRequest: (after.usec - before.usec) / MEASURED, loadedBytes, batchBytes, coldBytes: socketBytes(clients[2]!) - start }
}

export async function screeningRedisRows(log: (s: string) => void): Promise<Row[]> {
  if (!REDIS_SERVER) return [{ group: GROUP, scenario: 'per-request Redis traffic', itemsPerSec: NaN, note: 'not measured: redis-server is not installed' }]
  const policy = parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8')) as { screening: { stateful: { k?: number; poolSize?: number; historyPerPrincipal?: number; acrossCallers?: number } } }
  const st = policy.screening.stateful
  const k = st.k ?? 20
  const history = st.historyPerPrincipal ?? 1000
  const across = st.acrossCallers || 1000
  const encoder = poolingEncoder(LAYOUT, st.poolSize ?? 4)
  const port = await freePort()
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-bench-redis-'))
  const server = await spawnRedis(['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'])
  const url = `redis://127.0.0.1:${port}/0`
  const open = async (prefix: string) => {
    const c = new Redis(url, { keyPrefix: prefix, lazyConnect: true, enableOfflineQueue: false })
    await c.connect()
    return c
  }
  const raw = await open('')
  const all: Redis[] = [raw]
  try {
    const ttlMs = 3_600_000
    const rows: Row[] = []
    const row = (what: string, m: Measured, setting: string): Row => ({
      group: GROUP,
      scenario: `per-request Redis traffic, ${what}`,
      itemsPerSec: NaN,
      note:
        `${(m.bytesPerRequest / 1024).toFixed(2)} KiB sent+received per single-digit request (max ${(m.maxBytes / 1024).toFixed(2)} KiB), ${m.roundTrips.toFixed(2)} round trips, ` +
        `Redis CPU ${m.usecPerRequest.toFixed(0)} us; with 64 in flight per replica ${(m.loadedBytes / 1024).toFixed(2)} KiB; a 64-digit request ${(m.batchBytes / 1024).toFixed(1)} KiB; ${setting}, 2 replicas alternating, ${CALLERS} callers, rings full; ` +
        `a replica's first request for a full ring (no copy yet): ${(m.coldBytes / 1024).toFixed(0)} KiB`,
    })
    log('per-request Redis traffic: stateful ring')
    const ringClients = await Promise.all([0, 1, 2].map(() => open('bench:ring:')))
    all.push(...ringClients)
    const ring = await measure((c) => createSharedStatefulDetector({ k, historyPerPrincipal: history, maxPrincipals: 10_000, maxStoredQueries: 200_000, threshold: 0, mode: 'enforce', encoder }, 'mnist', { redis: c, ttlMs }), ringClients, raw, CALLERS * history)
    rows.push(row('stateful ring (per caller)', ring, `historyPerPrincipal ${history}`))
    log('per-request Redis traffic: model-wide index')
    const indexClients = await Promise.all([0, 1, 2].map(() => open('bench:index:')))
    all.push(...indexClients)
    const index = await measure((c) => createSharedCallersIndexDetector({ k, size: across, threshold: 0, mode: 'enforce', encoder }, 'mnist', { redis: c, ttlMs }), indexClients, raw, across)
    rows.push(row('model-wide index (acrossCallers)', index, `acrossCallers ${across}`))
    const used = /used_memory:(\d+)/.exec(await raw.info('memory'))
    rows.push({ group: GROUP, scenario: 'Redis memory of shared screening state', itemsPerSec: NaN, note: `${(Number(used?.[1]) / 2 ** 20).toFixed(1)} MiB used for ${CALLERS} full per-caller rings and one full index (capped: history and acrossCallers slots; keys expire with screeningStateTtlMs)` })
    rows.push(...(await extractionRows(async (prefix) => all[all.push(await open(prefix)) - 1]!, raw, ttlMs, log)))
    return rows
  } finally {
    await Promise.all(all.map((c) => c.quit().catch(() => {})))
    await server.stop()
    rmSync(dir, { recursive: true, force: true })
  }
}

// The extraction detector (src/screening/prada-shared.ts): two round trips a request (read
// what the replica's copy lacks, sending the request's digests: Redis tells exact repeats and
// keeps the new digests; then commit the slots written, pooled queries zero-run coded). Its
// callers' requests alternate between the replicas (each request's copy is one commit behind),
// which the rows above do not do. A 64-digit request's figure is its digests going in, its
// commit going in and the other replica's commit coming back.
const EX_CALLERS = 64
const EX_FILL = 1_152 // 18 batches of 64 distinct digits per caller: windowSize 1,000 distances
const EX_MEASURED = 256

interface ExtractionMeasured {
  bytes: number
  maxBytes: number
  roundTrips: number
  usec: number
  loadedBytes: number
  batchBytes: number
  coldBytes: number
  coldBatchBytes: number
  /** Per 64-digit commit: bytes of the whole commit as sent (and logged), of distances, and of pooled queries that joined a set (raw and as sent). */
  batchWrites: { entry: number; rings: number; sets: number; setsSent: number }
}

async function measureExtraction(replicas: SharedDetector[], clients: Redis[], raw: Redis, dims: number): Promise<ExtractionMeasured> {
  const { images, labels } = loadMnist().test
  const cursor = new Array<number>(EX_CALLERS).fill(0)
  // Each caller its own walk through the held-out digits (a stride prime to their number, so
  // every class comes up): distinct queries, no repeats.
  const digits = (c: number, n: number) => Array.from({ length: n }, () => (c * 2_000 + 7_919 * cursor[c]!++) % images.length)
  const oneHot = (i: number) => Float32Array.from({ length: 10 }, (_, k) => (k === labels[i] ? 1 : 0))
  const send = (c: number, d: SharedDetector, n: number) => {
    const at = digits(c, n)
    return d.inspect({ principal: `caller-${c}`, items: at.map((i) => images[i]!), digests: [], probabilities: at.map(oneHot) })
  }
  const both = () => socketBytes(clients[0]!) + socketBytes(clients[1]!)
  for (let b = 0; b < EX_FILL / 64; b++) await Promise.all(Array.from({ length: EX_CALLERS }, (_, c) => send(c, replicas[(b + c) % 2]!, 64)))
  // Two single-digit rounds first, so that no copy is behind by a 64-digit commit.
  for (let i = 0; i < 2 * EX_CALLERS; i++) await send(i % EX_CALLERS, replicas[Math.floor(i / EX_CALLERS) % 2]!, 1)
  const before = await scriptStats(raw)
  let bytes = 0
  let maxBytes = 0
  for (let i = 0; i < EX_MEASURED; i++) {
    const r = Math.floor(i / EX_CALLERS) % 2
    const start = socketBytes(clients[r]!)
    await send(i % EX_CALLERS, replicas[r]!, 1)
    const used = socketBytes(clients[r]!) - start
    bytes += used
    maxBytes = Math.max(maxBytes, used)
  }
  const after = await scriptStats(raw)
  // 64 in flight per replica: each caller has one request on each replica at once.
  const loadedStart = both()
  for (let wave = 0; wave < 2; wave++) await Promise.all(Array.from({ length: 128 }, (_, i) => send(i % EX_CALLERS, replicas[Math.floor(i / 64) % 2]!, 1)))
  const loadedBytes = (both() - loadedStart) / 256
  const batchStart = both()
  for (let i = 0; i < 16; i++) await send(i % 4, replicas[Math.floor(i / 4) % 2]!, 64)
  const batchBytes = (both() - batchStart) / 16
  const batchWrites = await commitSizes(raw, 4, dims)
  const coldStart = socketBytes(clients[2]!)
  await send(10, replicas[2]!, 1)
  const coldBytes = socketBytes(clients[2]!) - coldStart
  const coldBatchStart = socketBytes(clients[2]!)
  await send(11, replicas[2]!, 64)
  const coldBatchBytes = socketBytes(clients[2]!) - coldBatchStart
  return { bytes: bytes / EX_MEASURED, maxBytes, roundTrips: (after.calls - before.calls) / EX_MEASURED, usec: (after.usec - before.usec) / EX_MEASURED, loadedBytes, batchBytes, coldBytes, coldBatchBytes, batchWrites }
}

/** Mean bytes per commit over the last 4 commits of callers 0 to callers-1 in the log: the whole entry, distances, pooled queries (raw, and zero-run coded as sent). */
async function commitSizes(raw: Redis, callers: number, dims: number): Promise<ExtractionMeasured['batchWrites']> {
  const sum = { entry: 0, rings: 0, sets: 0, setsSent: 0 }
  for (let c = 0; c < callers; c++) {
    const m = (await raw.keys(`bench:extraction:*:caller-${c}:m`))[0]!
    const version = Number(await raw.hget(m, 'v'))
    for (let v = version - 3; v <= version; v++) {
      const entry = (await raw.hgetBuffer(m, `l${v}`))!
      sum.entry += entry.length
      for (const w of parseEntry(entry, dims).writes) {
        const slots = w.pairs.slice(1).flatMap(([, b]) => Array.from({ length: b.length / w.slotBytes }, (_, i) => b.subarray(i * w.slotBytes, (i + 1) * w.slotBytes)))
        if (w.field === 'd') sum.rings += slots.length * w.slotBytes
        else {
          sum.sets += slots.length * w.slotBytes
          sum.setsSent += slots.reduce((n, cells) => n + zeroRuns(cells).length, 0)
        }
      }
    }
  }
  const n = 4 * callers
  return { entry: sum.entry / n, rings: sum.rings / n, sets: sum.sets / n, setsSent: sum.setsSent / n }
}

async function extractionRows(open: (prefix: string) => Promise<Redis>, raw: Redis, ttlMs: number, log: (s: string) => void): Promise<Row[]> {
  const policy = parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8')) as { screening: { extraction?: Partial<PradaOptions> & { poolSize?: number } } }
  const ex = policy.screening.extraction ?? {}
  const o: PradaOptions = {
    wThreshold: ex.wThreshold ?? 0.9,
    minQueries: ex.minQueries ?? 100,
    windowSize: ex.windowSize ?? 1000,
    warmupPerClass: ex.warmupPerClass ?? 10,
    growingSetPerClass: ex.growingSetPerClass ?? 100,
    maxPrincipals: 10_000,
    maxStoredQueries: 200_000,
    mode: 'enforce',
    encoder: poolingEncoder(LAYOUT, ex.poolSize ?? 2),
  }
  log('per-request Redis traffic: extraction detector')
  const memoryBefore = Number(/used_memory:(\d+)/.exec(await raw.info('memory'))?.[1])
  const clients = [await open('bench:extraction:'), await open('bench:extraction:'), await open('bench:extraction:')]
  // Claims are never taken here unless requests race; the random source only names them.
  const m = await measureExtraction(
    clients.map((c) => createSharedPradaDetector(o, 'mnist', { redis: c, ttlMs }, cryptoRandom)),
    clients,
    raw,
    o.encoder.dims,
  )
  const memory = Number(/used_memory:(\d+)/.exec(await raw.info('memory'))?.[1]) - memoryBefore
  const kib = (b: number) => (b / 1024).toFixed(2)
  return [
    {
      group: GROUP,
      scenario: 'per-request Redis traffic, extraction detector (per caller)',
      itemsPerSec: NaN,
      note:
        `${kib(m.bytes)} KiB sent+received per single-digit request (max ${kib(m.maxBytes)} KiB), ${m.roundTrips.toFixed(2)} round trips, Redis CPU ${m.usec.toFixed(0)} us; ` +
        `with 64 in flight per replica ${kib(m.loadedBytes)} KiB; a 64-digit request ${(m.batchBytes / 1024).toFixed(1)} KiB (its 64 digests go in, 1 KiB; its commit, ${(m.batchWrites.entry / 1024).toFixed(1)} KiB, goes in: ${(m.batchWrites.rings / 1024).toFixed(1)} KiB of distances and ${(m.batchWrites.setsSent / 1024).toFixed(1)} KiB of pooled queries that joined a set, zero-run coded from ${(m.batchWrites.sets / 1024).toFixed(1)} KiB; the other replica's commit comes back); windowSize ${o.windowSize}, growingSetPerClass ${o.growingSetPerClass}, ` +
        `2 replicas taking turns per caller, ${EX_CALLERS} callers, ${EX_FILL} digits each first; a replica's first request for a caller (no copy yet): ${(m.coldBytes / 1024).toFixed(0)} KiB single-digit, ${(m.coldBatchBytes / 1024).toFixed(0)} KiB 64-digit`,
    },
    { group: GROUP, scenario: 'Redis memory of shared extraction state', itemsPerSec: NaN, note: `${(memory / 2 ** 20).toFixed(1)} MiB used for ${EX_CALLERS} callers' states (${(memory / EX_CALLERS / 1024).toFixed(0)} KiB each) and their change logs` },
  ]
}

if (import.meta.main) {
  for (const r of await screeningRedisRows((s) => process.stderr.write(`${s}\n`))) console.log(`${r.scenario}: ${r.note}`)
}
