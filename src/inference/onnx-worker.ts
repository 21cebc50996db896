// Runs one ONNX Runtime session off the main thread. onnxruntime-node's session.run blocks
// the thread it runs on for the whole model, so it must never run on the event loop that
// serves TLS, auth and health checks. Tensors arrive and leave as transferred ArrayBuffers.

import { readlinkSync } from 'node:fs'
import { setPriority } from 'node:os'
import { parentPort, workerData } from 'node:worker_threads'
import * as ort from 'onnxruntime-node'
import type { WorkerInit, WorkerRequest, WorkerResponse, WireTensor } from './onnx-messages.ts'
import { numericDatatypes, type Datatype } from './tensor.ts'

const init = workerData as WorkerInit
const port = parentPort!

const ortToDatatype = new Map<string, Datatype>(
  Object.entries(numericDatatypes).map(([dt, info]) => [info.ort, dt as Datatype]),
)

/**
 * Lowers this thread's CPU priority before ONNX Runtime creates its thread pool (Linux
 * threads inherit the creator's nice value), so when cores are scarce the event loop, which
 * answers TLS handshakes, health probes and small models, runs first. Raising the nice value
 * needs no privilege. Linux only: elsewhere it is a no-op with a note.
 */
function lowerPriority(niceness: number, notes: string[]): void {
  if (niceness === 0) return
  try {
    // /proc/thread-self -> "<pid>/task/<tid>"; setpriority(2) on a tid affects that thread only.
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop())
    setPriority(tid, niceness)
  } catch (err) {
    notes.push(`could not lower inference thread priority (${(err as Error).message}); inference competes equally with the event loop`)
  }
}

async function createSession(): Promise<{ session: ort.InferenceSession; provider: string; notes: string[] }> {
  const notes: string[] = []
  lowerPriority(init.niceness, notes)
  const options = (ep: string): ort.InferenceSession.SessionOptions => ({
    executionProviders: [ep],
    intraOpNumThreads: init.intraOpThreads,
    interOpNumThreads: 1,
    graphOptimizationLevel: 'all',
    // Pool threads busy-wait between operators by default; where the event loop shares the
    // cores, that spinning takes CPU from it (and from other models' workers).
    extra: { session: { intra_op: { allow_spinning: init.spinning ? '1' : '0' }, inter_op: { allow_spinning: '0' } } },
  })
  for (const ep of init.executionProviders) {
    if (ep === 'cpu') break
    try {
      return { session: await ort.InferenceSession.create(init.model, options(ep)), provider: ep, notes }
    } catch (err) {
      notes.push(`execution provider ${ep} unavailable (${(err as Error).message.split('\n')[0]}); falling back`)
    }
  }
  return { session: await ort.InferenceSession.create(init.model, options('cpu')), provider: 'cpu', notes }
}

function toWire(name: string, t: ort.Tensor): WireTensor {
  const datatype = ortToDatatype.get(t.type)
  if (!datatype) throw new Error(`output ${name} has unsupported type ${t.type}`)
  const data = t.data as ArrayBufferView
  // ORT's output buffers belong to this thread; transfer them whole, copying only when the
  // view does not cover its buffer exactly.
  let buffer = data.buffer as ArrayBuffer
  if (data.byteOffset !== 0 || data.byteLength !== buffer.byteLength) {
    buffer = buffer.slice(data.byteOffset, data.byteOffset + data.byteLength)
  }
  return { name, datatype, shape: t.dims.slice(), buffer }
}

async function main(): Promise<void> {
  const { session, provider, notes } = await createSession()
  port.postMessage({ type: 'ready', provider, notes, inputNames: session.inputNames, outputNames: session.outputNames } satisfies WorkerResponse)
  port.on('message', async (msg: WorkerRequest) => {
    // Once the run is over nothing here reads the inputs again: their buffers go back to the
    // main thread's pool with the answer.
    const inputBuffers = msg.inputs.map((t) => t.buffer)
    try {
      const feeds: Record<string, ort.Tensor> = {}
      for (const t of msg.inputs) {
        const { array: Ctor, bytes } = numericDatatypes[t.datatype]
        const view = new Ctor(t.buffer, 0, (t.byteLength ?? t.buffer.byteLength) / bytes)
        feeds[t.name] = new ort.Tensor(numericDatatypes[t.datatype].ort, view, t.shape)
      }
      const results = await session.run(feeds, msg.outputs)
      // eslint-disable-next-line bulwark/object-injection -- read-only: the output names were checked against the manifest before the batch was sent, and results is onnxruntime's own map
      const outputs = msg.outputs.map((name) => toWire(name, results[name]!))
      const outBuffers = outputs.map((o) => o.buffer)
      // An output that is an input's own buffer (an identity graph) is not recycled.
      const recycle = inputBuffers.filter((b) => !outBuffers.includes(b))
      port.postMessage({ type: 'result', id: msg.id, outputs, recycle } satisfies WorkerResponse, [...outBuffers, ...recycle])
    } catch (err) {
      port.postMessage({ type: 'failure', id: msg.id, message: (err as Error).message, recycle: inputBuffers } satisfies WorkerResponse, inputBuffers)
    }
  })
}

main().catch((err: Error) => {
  port.postMessage({ type: 'load-failed', message: err.message } satisfies WorkerResponse)
})
