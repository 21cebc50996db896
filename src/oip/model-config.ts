// A served model's configuration in the shape of Triton's model configuration extension
// (`GET /v2/models/{name}[/versions/{v}]/config`, gRPC ModelConfig; model_config.proto). It
// says what perf_analyzer and Triton's clients read before their first request: the largest
// batch, each input and output with its TYPE_* datatype and its dims without the batch
// dimension, and whether requests are batched dynamically. Built from the manifest and the
// model's settings; nothing here is read from the caller.

import { batchLimit } from '../inference/manifest.ts'
import type { ServedModel } from '../inference/registry.ts'
import type { Datatype } from '../inference/tensor.ts'

/** model_config.proto's DataType for each OIP datatype. */
export const tritonDataType: Record<Datatype, string> = {
  BOOL: 'TYPE_BOOL',
  UINT8: 'TYPE_UINT8',
  UINT16: 'TYPE_UINT16',
  UINT32: 'TYPE_UINT32',
  UINT64: 'TYPE_UINT64',
  INT8: 'TYPE_INT8',
  INT16: 'TYPE_INT16',
  INT32: 'TYPE_INT32',
  INT64: 'TYPE_INT64',
  FP16: 'TYPE_FP16',
  FP32: 'TYPE_FP32',
  FP64: 'TYPE_FP64',
}

export interface TensorConfig {
  name: string
  data_type: string
  dims: number[]
}

/** The fields of Triton's ModelConfig that Bulwark fills (the rest keep their proto defaults). */
export interface TritonModelConfig {
  name: string
  platform: string
  backend: string
  version_policy: { specific: { versions: number[] } } | { latest: { num_versions: number } } | { all: Record<string, never> }
  max_batch_size: number
  input: (TensorConfig & { format: 'FORMAT_NONE' })[]
  output: TensorConfig[]
  dynamic_batching?: { preferred_batch_size: number[]; max_queue_delay_microseconds: number; preserve_ordering: boolean }
  instance_group: { name: string; kind: 'KIND_CPU' | 'KIND_MODEL'; count: number }[]
}

/**
 * The configuration of a loaded model (`m.manifest` set). max_batch_size is the manifest's:
 * a request may carry that many items whether or not batching joins requests; the manifest's
 * first dimension is the batch, so dims drop it (Triton's rule for max_batch_size > 0).
 */
export function modelConfig(m: Pick<ServedModel, 'name' | 'manifest' | 'settings' | 'upstream' | 'folderVersion'>): TritonModelConfig {
  const manifest = m.manifest!
  const tensor = (t: { name: string; datatype: Datatype; shape: number[] }): TensorConfig => ({ name: t.name, data_type: tritonDataType[t.datatype], dims: t.shape.slice(1) })
  const version = Number(manifest.version)
  const b = m.settings.batching
  const config: TritonModelConfig = {
    name: m.name,
    platform: manifest.platform,
    backend: 'onnxruntime',
    version_policy: versionPolicy(m, version),
    max_batch_size: manifest.maxBatchSize,
    input: manifest.inputs.map((t) => ({ ...tensor(t), format: 'FORMAT_NONE' as const })),
    output: manifest.outputs.map(tensor),
    instance_group: [m.upstream ? { name: m.name, kind: 'KIND_MODEL', count: m.upstream.endpoints.length } : { name: m.name, kind: 'KIND_CPU', count: m.settings.workers }],
  }
  // The batcher's largest batch, when it is below what the model accepts, is Triton's preferred size.
  const limit = batchLimit(b, manifest)
  if (b.enabled) config.dynamic_batching = { preferred_batch_size: limit < manifest.maxBatchSize ? [limit] : [], max_queue_delay_microseconds: b.maxQueueDelayMicros, preserve_ordering: false }
  return config
}

/** A model with version folders: its versionPolicy; else its one version (Triton's versions are integers: one that is not is reported as "the latest"). */
function versionPolicy(m: Pick<ServedModel, 'settings' | 'folderVersion'>, version: number): TritonModelConfig['version_policy'] {
  const p = m.settings.versionPolicy
  if (m.folderVersion !== undefined) {
    if (p === 'all') return { all: {} }
    if (p !== undefined && 'specific' in p) return { specific: { versions: p.specific } }
    return { latest: { num_versions: p?.latest ?? 1 } }
  }
  return Number.isSafeInteger(version) && version > 0 ? { specific: { versions: [version] } } : { latest: { num_versions: 1 } }
}
