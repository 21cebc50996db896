// The answers about a model that name no tensor data: metadata, Triton's configuration and
// statistics extensions. Transport-neutral: the REST routes send them as JSON, the gRPC
// transport as the protocol's messages. Each runs after the chain's links for the
// 'metadata' verb admitted the caller for `ctx.target`.

import { BulwarkError } from '../errors.ts'
import { versionOf, type ModelRegistry, type ServedModel } from '../inference/registry.ts'
import type { RequestContext } from '../types.ts'
import { modelConfig, type TritonModelConfig } from './model-config.ts'
import type { ModelStatistics, ModelStatisticsView } from './stats.ts'

/** The OIP v2 extensions this server implements (Triton's names). */
export const EXTENSIONS = ['binary_tensor_data', 'model_configuration', 'statistics']

export interface TensorMetadata {
  name: string
  datatype: string
  shape: number[]
}

export interface ModelMetadata {
  name: string
  versions: string[]
  platform: string
  inputs: TensorMetadata[]
  outputs: TensorMetadata[]
}

/** The target model, with a manifest to describe it; a model that failed to load has none. */
function described(registry: ModelRegistry, ctx: RequestContext): ServedModel & { manifest: NonNullable<ServedModel['manifest']> } {
  const m = registry.get(ctx.target.model, ctx.target.version)
  if (!m.manifest) throw new BulwarkError('model_not_ready', `model "${m.name}" failed to load; its metadata is unavailable`, { reason: m.reason ?? '' })
  return m as ServedModel & { manifest: NonNullable<ServedModel['manifest']> }
}

export function modelMetadata(registry: ModelRegistry, ctx: RequestContext): ModelMetadata {
  const m = described(registry, ctx)
  const tensor = (t: TensorMetadata) => ({ name: t.name, datatype: t.datatype, shape: t.shape })
  return {
    name: m.name,
    versions: registry.served(m.name),
    platform: m.manifest.platform,
    inputs: m.manifest.inputs.map(tensor),
    outputs: m.manifest.outputs.map(tensor),
  }
}

export function modelConfiguration(registry: ModelRegistry, ctx: RequestContext): TritonModelConfig {
  return modelConfig(described(registry, ctx))
}

/**
 * Triton's statistics answer: the target model's, or, when the request names no model, every
 * served model's (with per-model policies on, the chain refuses that form: a policy grants
 * one model, so callers name it).
 */
export function modelStatistics(registry: ModelRegistry, statistics: ModelStatistics, ctx: RequestContext): { model_stats: ModelStatisticsView[] } {
  const { model, version } = ctx.target
  // As Triton's: without a version, every version held; get() refuses a model or version not served.
  const models = model === '' ? registry.all() : version === null ? [...registry.versionsOf(registry.get(model, null).name)] : [registry.get(model, version)]
  return { model_stats: models.map((m) => statistics.view(m.name, versionOf(m) ?? '')) }
}
