// Transport-neutral inference: given decoded tensors, run them on the model and return its
// outputs. The REST routes only translate to and from this; an upstream backend (a model in
// another pod, src/inference/upstream-backend.ts) slots in behind the same calls.

import { BulwarkError } from '../errors.ts'
import { currentTraceContext } from '../telemetry/tracing.ts'
import type { InferenceRequest, InferenceResult } from '../types.ts'
import type { ModelRegistry } from './registry.ts'

export class InferenceService {
  private readonly registry: ModelRegistry
  constructor(registry: ModelRegistry) {
    this.registry = registry
  }

  async infer(model: string, version: string | null, request: InferenceRequest, deadlineMs: number): Promise<InferenceResult> {
    const m = this.registry.ready(model, version)
    if (!m.batcher) throw new BulwarkError('model_not_ready', `model "${model}" is not ready`)
    // The running stage's trace context goes along, for upstream calls to continue the trace.
    const all = await m.batcher.submit(request.inputs, deadlineMs, currentTraceContext())
    const wanted = request.outputs.length > 0 ? new Set(request.outputs.map((o) => o.name)) : null
    return {
      modelName: model,
      modelVersion: m.manifest!.version,
      outputs: wanted ? all.filter((t) => wanted.has(t.name)) : all,
      parameters: {},
    }
  }
}
