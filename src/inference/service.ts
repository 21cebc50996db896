// Transport-neutral inference: given decoded tensors, run them on the model and return its
// outputs. The REST routes only translate to and from this; an upstream backend (a model in
// another pod, src/inference/upstream-backend.ts) slots in behind the same calls.
//
// The one place a batch is split: a request larger than the batcher's largest batch (the
// model's maxBatchSize, or with batching on its preferred size: screening runs a request's
// items with their squeezed variants) goes to the batcher in chunks of at most that many
// items, which run concurrently; their outputs are joined in order. Below this point no batch
// exceeds what the model (or the pod serving it) accepts, and with batching on none exceeds
// the size the model runs best at: the chunks are views, no copy.

import { BulwarkError } from '../errors.ts'
import { currentTraceContext } from '../telemetry/tracing.ts'
import type { InferenceRequest, InferenceResult } from '../types.ts'
import type { ModelRegistry } from './registry.ts'
import { concatBatches, sliceBatch, type Tensor } from './tensor.ts'

export class InferenceService {
  private readonly registry: ModelRegistry
  constructor(registry: ModelRegistry) {
    this.registry = registry
  }

  /** `pin`: the request context, which runs on the model version it was validated against. */
  async infer(model: string, version: string | null, request: InferenceRequest, deadlineMs: number, pin?: object): Promise<InferenceResult> {
    const m = this.registry.ready(model, version, pin)
    const batcher = m.batcher
    if (!batcher) throw new BulwarkError('model_not_ready', `model "${model}" is not ready`)
    const manifest = m.manifest!
    // The running stage's trace context goes along, for upstream calls to continue the trace.
    const trace = currentTraceContext()
    const wanted = request.outputs.length > 0 ? new Set(request.outputs.map((o) => o.name)) : null
    const run = async (inputs: Tensor[]) => {
      const all = await batcher.submit(inputs, deadlineMs, trace)
      return wanted ? all.filter((t) => wanted.has(t.name)) : all
    }
    const items = request.inputs[0]!.shape[0]!
    // Batching off: requests run as sent, up to what the model accepts.
    const max = m.settings.batching.enabled ? batcher.maxBatchSize : manifest.maxBatchSize
    let outputs: Tensor[]
    if (items <= max) outputs = await run(request.inputs)
    else {
      const chunks: Promise<Tensor[]>[] = []
      for (let start = 0; start < items; start += max) chunks.push(run(sliceBatch(request.inputs, start, Math.min(max, items - start))))
      outputs = concatBatches(await Promise.all(chunks))
    }
    return { modelName: model, modelVersion: manifest.version, outputs, parameters: {} }
  }
}
