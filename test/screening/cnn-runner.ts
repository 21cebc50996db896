// An InferenceRunner that runs the mnist CNN in TypeScript (models/mnist/cnn.ts, the same
// weights as model.onnx), so the stage can be tested without onnxruntime. It records the
// batch sizes it was asked to run.

import { forward, loadWeights } from '../../models/mnist/cnn.ts'
import type { InferenceRunner } from '../../src/screening/model-run.ts'
import type { InferenceRequest, InferenceResult } from '../../src/types.ts'

export const weights = loadWeights()

export function cnnRunner(): InferenceRunner & { batches: number[] } {
  const batches: number[] = []
  return {
    batches,
    async infer(model: string, _version: string | null, request: InferenceRequest): Promise<InferenceResult> {
      const input = request.inputs[0]!
      const n = input.shape[0]!
      batches.push(n)
      const out = new Float32Array(n * 10)
      for (let i = 0; i < n; i++) out.set(forward(weights, (input.data as Float32Array).slice(i * 784, (i + 1) * 784)).probs, i * 10)
      return { modelName: model, modelVersion: '1', outputs: [{ name: 'probabilities', datatype: 'FP32', shape: [n, 10], data: out }], parameters: {} }
    },
  }
}
