// Local ONNX models: a pool of worker threads, each holding its own onnxruntime-node
// session. The pool runs at most one batch per worker; a crashed worker fails only the
// batch it held (503 worker_failed), and is replaced.

import { Worker } from 'node:worker_threads'
import { BulwarkError } from '../errors.ts'
import { systemClock, type Clock, type Logger } from '../deps.ts'
import type { Backend } from './backend.ts'
import { batchBuffers } from './buffer-pool.ts'
import type { WorkerInit, WorkerRequest, WorkerResponse, WireTensor } from './onnx-messages.ts'
import { numericDatatypes, type Tensor } from './tensor.ts'

export interface OnnxBackendOptions {
  model: string
  bytes: Uint8Array
  workers: number
  intraOpThreads: number
  executionProviders: readonly string[]
  niceness: number
  spinning: boolean
  log: Logger
  /** Times the respawn backoff (default: the system clock). */
  clock?: Clock
}

interface Job {
  request: WorkerRequest
  transfer: ArrayBuffer[]
  resolve: (outputs: Tensor[]) => void
  reject: (err: Error) => void
}

const workerUrl = new URL('./onnx-worker.ts', import.meta.url)
const RESPAWN_MIN_MS = 100
const RESPAWN_MAX_MS = 10_000

class PooledWorker {
  readonly worker: Worker
  job: Job | null = null
  constructor(worker: Worker) {
    this.worker = worker
  }
}

function startWorker(init: WorkerInit): Promise<{ pooled: PooledWorker; provider: string; notes: string[] }> {
  return new Promise((resolve, reject) => {
    // Each worker gets its own copy of the model bytes (a transfer would leave none for the next).
    const worker = new Worker(workerUrl, { workerData: init })
    const onMessage = (msg: WorkerResponse) => {
      worker.off('error', onError)
      worker.off('exit', onExit)
      if (msg.type === 'ready') resolve({ pooled: new PooledWorker(worker), provider: msg.provider, notes: msg.notes })
      else {
        void worker.terminate()
        reject(new Error(msg.type === 'load-failed' ? msg.message : `unexpected first message ${msg.type}`))
      }
    }
    const onError = (err: Error) => reject(err)
    const onExit = (code: number) => reject(new Error(`worker exited with code ${code} while loading`))
    worker.once('message', onMessage)
    worker.once('error', onError)
    worker.once('exit', onExit)
  })
}

function fromWire(t: WireTensor): Tensor {
  const Ctor = numericDatatypes[t.datatype].array
  return { name: t.name, datatype: t.datatype, shape: t.shape, data: new Ctor(t.buffer) }
}

export class OnnxBackend implements Backend {
  readonly concurrency: number
  executionProvider = 'cpu'
  private readonly opts: OnnxBackendOptions
  private readonly idle: PooledWorker[] = []
  private readonly all = new Set<PooledWorker>()
  private readonly waiting: Job[] = []
  private nextId = 1
  private closed = false
  private respawnDelayMs = RESPAWN_MIN_MS

  private constructor(opts: OnnxBackendOptions) {
    this.opts = opts
    this.concurrency = opts.workers
  }

  /** Starts every worker and resolves when all have loaded the model. */
  static async create(opts: OnnxBackendOptions): Promise<OnnxBackend> {
    const backend = new OnnxBackend(opts)
    const started = await Promise.allSettled(Array.from({ length: opts.workers }, () => startWorker(backend.init())))
    const failed = started.find((r) => r.status === 'rejected')
    for (const r of started) if (r.status === 'fulfilled') backend.adopt(r.value.pooled)
    if (failed) {
      await backend.close()
      throw new Error(`cannot load model ${opts.model} in onnxruntime: ${(failed.reason as Error).message}`)
    }
    const first = (started[0] as PromiseFulfilledResult<{ provider: string; notes: string[] }>).value
    backend.executionProvider = first.provider
    for (const note of first.notes) opts.log.warn({ model: opts.model }, note)
    return backend
  }

  private init(): WorkerInit {
    return {
      model: this.opts.bytes,
      intraOpThreads: this.opts.intraOpThreads,
      executionProviders: [...this.opts.executionProviders],
      niceness: this.opts.niceness,
      spinning: this.opts.spinning,
    }
  }

  private adopt(pooled: PooledWorker): void {
    this.all.add(pooled)
    pooled.worker.on('message', (msg: WorkerResponse) => this.onMessage(pooled, msg))
    pooled.worker.on('error', (err) => this.onCrash(pooled, err.message))
    pooled.worker.on('exit', (code) => this.onCrash(pooled, `exited with code ${code}`))
    this.release(pooled)
  }

  private release(pooled: PooledWorker): void {
    pooled.job = null
    const next = this.waiting.shift()
    if (next) this.dispatch(pooled, next)
    else this.idle.push(pooled)
  }

  private dispatch(pooled: PooledWorker, job: Job): void {
    pooled.job = job
    pooled.worker.postMessage(job.request, job.transfer)
  }

  private onMessage(pooled: PooledWorker, msg: WorkerResponse): void {
    if (msg.type === 'result' || msg.type === 'failure') for (const b of msg.recycle ?? []) batchBuffers.give(b)
    const job = pooled.job
    if (!job || (msg.type !== 'result' && msg.type !== 'failure') || msg.id !== job.request.id) return
    if (msg.type === 'result') job.resolve(msg.outputs.map(fromWire))
    else job.reject(new BulwarkError('internal', 'the model failed to run on this input', { reason: `onnxruntime: ${msg.message}` }))
    this.respawnDelayMs = RESPAWN_MIN_MS
    this.release(pooled)
  }

  private onCrash(pooled: PooledWorker, why: string): void {
    if (!this.all.delete(pooled)) return
    const i = this.idle.indexOf(pooled)
    if (i >= 0) this.idle.splice(i, 1)
    if (pooled.job) {
      pooled.job.reject(new BulwarkError('worker_failed', 'the model worker failed while running this request; retry', { reason: `worker ${why}` }))
    }
    if (this.closed) return
    this.opts.log.error({ model: this.opts.model, why }, 'inference worker crashed; replacing it')
    if (this.all.size === 0) this.failWaiting('no live worker')
    this.respawn()
  }

  /** Starts a replacement worker, backing off while replacements keep failing. */
  private respawn(): void {
    const delay = this.respawnDelayMs
    this.respawnDelayMs = Math.min(this.respawnDelayMs * 2, RESPAWN_MAX_MS)
    const clock = this.opts.clock ?? systemClock
    // The backoff alone must not hold a stopping process open.
    clock.setTimeout(() => {
      if (this.closed) return
      startWorker(this.init()).then(
        ({ pooled }) => {
          if (this.closed) return void pooled.worker.terminate()
          this.adopt(pooled)
          // The crash's line has its answer: operators (and tests) see when serving resumes.
          this.opts.log.info({ model: this.opts.model, liveWorkers: this.all.size }, 'replacement inference worker ready')
        },
        (err: Error) => {
          this.opts.log.error({ model: this.opts.model, err: err.message }, 'replacement worker failed to load; retrying')
          this.respawn()
        },
      )
    }, delay, { keepAlive: false })
  }

  private failWaiting(why: string): void {
    for (const job of this.waiting.splice(0)) {
      job.reject(new BulwarkError('worker_failed', 'the model workers are restarting; retry shortly', { reason: why, headers: { 'retry-after': '1' } }))
    }
  }

  /** Live workers (for readiness). */
  get liveWorkers(): number {
    return this.all.size
  }

  execute(inputs: Tensor[], outputNames: readonly string[]): Promise<Tensor[]> {
    if (this.closed) return Promise.reject(new BulwarkError('shutting_down', 'the gateway is shutting down'))
    const wire: WireTensor[] = inputs.map((t) => {
      const d = t.data
      // The batcher hands over pooled buffers it owns (buffer-pool.ts): transfer those whole,
      // with the length in use; they come back with the result for reuse. Copy anything else.
      const owned = d.byteOffset === 0 && d.buffer instanceof ArrayBuffer && (d.byteLength === d.buffer.byteLength || batchBuffers.issued(d.buffer))
      const buffer = owned ? (d.buffer as ArrayBuffer) : (d.buffer.slice(d.byteOffset, d.byteOffset + d.byteLength) as ArrayBuffer)
      return { name: t.name, datatype: t.datatype, shape: t.shape, buffer, byteLength: d.byteLength }
    })
    return new Promise((resolve, reject) => {
      const job: Job = {
        request: { id: this.nextId++, inputs: wire, outputs: [...outputNames] },
        transfer: wire.map((w) => w.buffer),
        resolve,
        reject,
      }
      const worker = this.idle.pop()
      if (worker) this.dispatch(worker, job)
      else if (this.all.size === 0) reject(new BulwarkError('worker_failed', 'the model workers are restarting; retry shortly', { headers: { 'retry-after': '1' } }))
      else this.waiting.push(job)
    })
  }

  async close(): Promise<void> {
    this.closed = true
    this.failWaiting('backend closed')
    await Promise.all([...this.all].map((p) => p.worker.terminate()))
    this.all.clear()
    this.idle.length = 0
  }
}
