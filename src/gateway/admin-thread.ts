// Serves the admin listener from a thread of its own (src/gateway/admin-worker.ts), so health
// probes are answered in well under a millisecond of work even while the gateway's event loop
// is saturated by API traffic or paused for garbage collection. The event loop reports its
// readiness (the same computation as the in-process routes, src/routes/admin.ts) every
// heartbeatMs; that report is also the heartbeat that keeps /healthz at 200. Metrics scrapes
// are relayed to the event loop, which renders them.

import type { AddressInfo } from 'node:net'
import { Worker } from 'node:worker_threads'
import { systemClock, type Clock, type Logger, type Timer } from '../deps.ts'
import { PROMETHEUS_CONTENT_TYPE } from '../routes/admin.ts'
import type { FromWorker, ToWorker } from './admin-worker.ts'
import type { RepositoryAnswer, RepositoryRequest } from '../routes/repository-api.ts'

export interface AdminThreadOptions {
  host: string
  port: number
  readiness: () => { status: number; body: unknown }
  metrics: () => Promise<string>
  /** The model repository extension, when on: its requests are relayed here. */
  repository?: ((req: RepositoryRequest) => Promise<RepositoryAnswer>) | undefined
  log: Logger
  /** How often the event loop reports readiness (and so proves it is alive). */
  heartbeatMs?: number
  /** /healthz fails when the event loop has not reported for this long. */
  livenessTimeoutMs?: number
  /** A scrape the event loop does not answer in this long gets 503. */
  metricsTimeoutMs?: number
  /** Times the heartbeat and the close timeout (default: the system clock). */
  clock?: Clock
}

const workerUrl = new URL('./admin-worker.ts', import.meta.url)

export class AdminThread {
  readonly address: AddressInfo
  private readonly worker: Worker
  private readonly timer: Timer
  private readonly clock: Clock
  private closed = false

  private constructor(worker: Worker, address: AddressInfo, timer: Timer, clock: Clock) {
    this.worker = worker
    this.address = address
    this.timer = timer
    this.clock = clock
  }

  static async start(o: AdminThreadOptions): Promise<AdminThread> {
    const worker = new Worker(workerUrl, {
      workerData: {
        host: o.host,
        port: o.port,
        livenessTimeoutMs: o.livenessTimeoutMs ?? 10_000,
        metricsTimeoutMs: o.metricsTimeoutMs ?? 10_000,
        contentType: PROMETHEUS_CONTENT_TYPE,
        repository: o.repository !== undefined,
      },
    })
    const send = (msg: ToWorker) => worker.postMessage(msg)
    const report = () => {
      try {
        const r = o.readiness()
        send({ type: 'state', status: r.status, body: r.body })
      } catch (err) {
        send({ type: 'state', status: 503, body: { ready: false, reason: `readiness failed: ${(err as Error).message}` } })
      }
    }
    const address = await new Promise<AddressInfo>((resolve, reject) => {
      const onMessage = (msg: FromWorker) => {
        if (msg.type === 'listening') {
          worker.off('error', reject)
          resolve({ address: msg.address, family: msg.family, port: msg.port })
        } else if (msg.type === 'listen-failed') {
          void worker.terminate()
          reject(new Error(`admin listener ${o.host}:${o.port}: ${msg.message}`))
        }
      }
      worker.once('message', onMessage)
      worker.once('error', reject)
    })
    worker.on('message', (msg: FromWorker) => {
      if (msg.type === 'repository') {
        const answer = o.repository ? o.repository(msg) : Promise.resolve({ status: 404, body: { error: 'the repository extension is off', code: 'not_found' } })
        void answer.then((r) => send({ type: 'repository', id: msg.id, status: r.status, body: r.body }))
        return
      }
      if (msg.type !== 'metrics') return
      o.metrics().then(
        (text) => send({ type: 'metrics', id: msg.id, text }),
        (err: Error) => {
          o.log.error({ err: err.message }, 'metrics collection failed')
          send({ type: 'metrics', id: msg.id, error: err.message })
        },
      )
    })
    report()
    const clock = o.clock ?? systemClock
    const timer = clock.setInterval(report, o.heartbeatMs ?? 250, { keepAlive: false })
    const thread = new AdminThread(worker, address, timer, clock)
    worker.on('error', (err) => o.log.error({ err: err.message }, 'admin listener thread failed; probes will fail'))
    worker.on('exit', (code) => {
      if (!thread.closed) o.log.error({ code }, 'admin listener thread exited; probes will fail')
    })
    return thread
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    this.timer.cancel()
    const exited = new Promise((r) => this.worker.once('exit', r))
    this.worker.postMessage({ type: 'close' } satisfies ToWorker)
    const timeout = this.clock.setTimeout(() => void this.worker.terminate(), 2_000)
    await exited
    timeout.cancel()
  }
}
