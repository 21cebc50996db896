// The admin listener's own thread (started by src/gateway/admin-thread.ts). It answers kubelet
// and Prometheus without waiting for the gateway's event loop:
//   GET /healthz  200 while the gateway's event loop reports in (a state message at least every
//                 livenessTimeoutMs), else 503: a wedged event loop fails liveness, as it should.
//   GET /readyz   the readiness the event loop last reported (at most one heartbeat old), or
//                 503 when it has stopped reporting.
//   GET /metrics  asks the event loop for the Prometheus exposition (a scrape may wait for it;
//                 probes never do).
//   POST /v2/repository/...  with models.repositoryApi on: relayed to the event loop, which
//                 checks the token and acts (src/routes/repository-api.ts); bodies up to 64 KiB.
// It holds no gateway state of its own and reads no clock: staleness is a timer.

import http from 'node:http'
import { parentPort, workerData } from 'node:worker_threads'
import { systemClock, type Timer } from '../deps.ts'

// A thread of its own: the gateway's injected clock cannot cross into it, so it takes the system's.
const clock = systemClock

interface Init {
  host: string
  port: number
  livenessTimeoutMs: number
  metricsTimeoutMs: number
  contentType: string
  /** Whether the model repository extension is on (else its paths are 404 here). */
  repository: boolean
}

export type ToWorker =
  | { type: 'state'; status: number; body: unknown }
  | { type: 'metrics'; id: number; text?: string; error?: string }
  | { type: 'repository'; id: number; status: number; body: unknown }
  | { type: 'close' }
export type FromWorker =
  | { type: 'listening'; address: string; family: string; port: number }
  | { type: 'listen-failed'; message: string }
  | { type: 'metrics'; id: number }
  | { type: 'repository'; id: number; method: string; path: string; authorization: string | undefined; body: string }

const init = workerData as Init
const port = parentPort!
let state: { status: number; body: string } | null = null
let stale = false
let staleTimer: Timer | null = null
let nextId = 1
const scrapes = new Map<number, http.ServerResponse>()

const json = (res: http.ServerResponse, status: number, body: string) => {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(body) })
  res.end(body)
}
const UNRESPONSIVE = JSON.stringify({ ready: false, status: 'unresponsive', reason: `the gateway's event loop has not reported for ${init.livenessTimeoutMs} ms` })

const REPOSITORY_BODY_BYTES = 64 * 1024
const actions = new Map<number, http.ServerResponse>()

/** Reads a repository request's body (bounded) and hands it to the event loop. */
function relayRepository(req: http.IncomingMessage, res: http.ServerResponse, path: string): void {
  const chunks: Buffer[] = []
  let size = 0
  req.on('data', (c: Buffer) => {
    size += c.length
    if (size > REPOSITORY_BODY_BYTES) {
      json(res, 413, JSON.stringify({ error: 'the body is over 64 KiB', code: 'payload_too_large' }))
      req.destroy()
    } else chunks.push(c)
  })
  req.on('end', () => {
    if (res.writableEnded) return
    const id = nextId++
    actions.set(id, res)
    const auth = req.headers.authorization
    port.postMessage({ type: 'repository', id, method: req.method ?? 'POST', path, authorization: typeof auth === 'string' ? auth : undefined, body: Buffer.concat(chunks).toString('utf8') } satisfies FromWorker)
  })
}

const server = http.createServer((req, res) => {
  const path = (req.url ?? '/').split('?')[0]
  if (init.repository && path && (path === '/v2/repository/index' || path.startsWith('/v2/repository/models/'))) return relayRepository(req, res, path)
  if (req.method !== 'GET' && req.method !== 'HEAD') return json(res, 405, JSON.stringify({ error: 'use GET', code: 'bad_request' }))
  if (path === '/healthz') return stale ? json(res, 503, UNRESPONSIVE) : json(res, 200, '{"status":"ok"}')
  if (path === '/readyz') return !state || stale ? json(res, 503, state ? UNRESPONSIVE : '{"ready":false,"reason":"starting"}') : json(res, state.status, state.body)
  if (path === '/metrics') {
    const id = nextId++
    scrapes.set(id, res)
    port.postMessage({ type: 'metrics', id } satisfies FromWorker)
    clock.setTimeout(() => {
      if (scrapes.delete(id)) json(res, 503, JSON.stringify({ error: 'metrics were not collected in time', code: 'overloaded' }))
    }, init.metricsTimeoutMs, { keepAlive: false })
    return
  }
  json(res, 404, JSON.stringify({ error: `no route ${req.method} ${path?.slice(0, 100)}; the admin listener serves /healthz, /readyz and /metrics`, code: 'not_found' }))
})
server.keepAliveTimeout = 65_000

port.on('message', (msg: ToWorker) => {
  if (msg.type === 'state') {
    state = { status: msg.status, body: JSON.stringify(msg.body) }
    stale = false
    staleTimer?.cancel()
    staleTimer = clock.setTimeout(() => (stale = true), init.livenessTimeoutMs, { keepAlive: false })
  } else if (msg.type === 'metrics') {
    const res = scrapes.get(msg.id)
    if (!scrapes.delete(msg.id) || !res) return
    if (msg.text === undefined) return json(res, 500, JSON.stringify({ error: 'metrics collection failed', code: 'internal' }))
    res.writeHead(200, { 'content-type': init.contentType, 'content-length': Buffer.byteLength(msg.text) })
    res.end(msg.text)
  } else if (msg.type === 'repository') {
    const res = actions.get(msg.id)
    if (!actions.delete(msg.id) || !res) return
    json(res, msg.status, JSON.stringify(msg.body))
  } else if (msg.type === 'close') {
    staleTimer?.cancel()
    server.close(() => port.close())
    server.closeAllConnections()
  }
})

server.once('error', (err) => port.postMessage({ type: 'listen-failed', message: err.message } satisfies FromWorker))
server.listen(init.port, init.host, () => {
  const a = server.address() as { address: string; family: string; port: number }
  port.postMessage({ type: 'listening', address: a.address, family: a.family, port: a.port } satisfies FromWorker)
})
