// Model manifests: `models/<name>/manifest.json`. A manifest says what the model accepts
// and returns, and pins the SHA-256 of its ONNX file; a model whose file does not match is
// never served.

import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { packageDir } from './package-dir.ts'
import path from 'node:path'
import { Type, type Static } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import { datatypes } from './tensor.ts'

const tensorFields = {
  name: Type.String({ minLength: 1 }),
  datatype: Type.Union(datatypes.map((d) => Type.Literal(d))),
  /** -1 marks a variable dimension; the first dimension is the batch. */
  shape: Type.Array(Type.Integer({ minimum: -1 }), { minItems: 1 }),
  /** Inclusive value range the model was trained on; validation refuses values outside. */
  range: Type.Optional(Type.Tuple([Type.Number(), Type.Number()])),
  /** Whether NaN and ±Inf may be sent (false for every bundled model). */
  allowNonFinite: Type.Optional(Type.Boolean()),
}

const TensorSpec = Type.Object(tensorFields, { additionalProperties: false })

const InputSpec = Type.Object(
  {
    ...tensorFields,
    /**
     * The largest shape a request may claim, same rank as `shape`: a positive limit for each
     * free dimension (-1 in `shape`), the fixed size for the others. The batch dimension may be
     * -1 here: the model's maxBatchSize bounds it already. Without it a free dimension is bounded
     * only by the data the request carries, which lets one request make the model compute on
     * (and answer with) an image far larger than it is ever used for.
     */
    maxShape: Type.Optional(Type.Array(Type.Integer({ minimum: -1 }), { minItems: 1 })),
  },
  { additionalProperties: false },
)

export const ManifestSchema = Type.Object(
  {
    name: Type.String({ pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$' }),
    version: Type.String({ pattern: '^[A-Za-z0-9_.-]{1,32}$' }),
    platform: Type.Literal('onnxruntime_onnx'),
    description: Type.Optional(Type.String()),
    /** ONNX file, relative to the manifest's folder. */
    file: Type.Optional(Type.String({ minLength: 1 })),
    /** Or: a file shipped inside an npm package (resolved from node_modules at load). */
    package: Type.Optional(
      Type.Object({ name: Type.String(), path: Type.String() }, { additionalProperties: false }),
    ),
    sha256: Type.String({ pattern: '^[0-9a-f]{64}$' }),
    maxBatchSize: Type.Integer({ minimum: 1, maximum: 4096 }),
    /**
     * The largest batch the gateway forms by default (batching.maxBatchSize overrides it). For
     * models whose cost per item rises past some batch size (activations outgrow the caches);
     * without it, batches grow to maxBatchSize.
     */
    preferredBatchSize: Type.Optional(Type.Integer({ minimum: 1, maximum: 4096 })),
    inputs: Type.Array(InputSpec, { minItems: 1 }),
    outputs: Type.Array(TensorSpec, { minItems: 1 }),
    /** Class labels for classifier outputs, in output order. */
    labels: Type.Optional(Type.Array(Type.String())),
  },
  { additionalProperties: false },
)

export type Manifest = Static<typeof ManifestSchema>
export type TensorSpec = Static<typeof TensorSpec>
export type InputSpec = Static<typeof InputSpec>

export class ManifestError extends Error {
  override name = 'ManifestError'
}

/** Reads and schema-checks a manifest; throws ManifestError naming the file and every problem. */
export async function readManifest(manifestPath: string): Promise<Manifest> {
  let raw: unknown
  try {
    raw = JSON.parse(await readFile(manifestPath, 'utf8'))
  } catch (err) {
    throw new ManifestError(`${manifestPath}: cannot read manifest: ${(err as Error).message}`)
  }
  const problems = [...Value.Errors(ManifestSchema, raw)].map((e) => `${e.path || '/'}: ${e.message}`)
  if (problems.length > 0) throw new ManifestError(`${manifestPath}: invalid manifest:\n  ${problems.join('\n  ')}`)
  const manifest = raw as Manifest
  if ((manifest.file === undefined) === (manifest.package === undefined)) {
    throw new ManifestError(`${manifestPath}: give exactly one of "file" or "package"`)
  }
  const shapeProblems = maxShapeProblems(manifest)
  if (shapeProblems.length > 0) throw new ManifestError(`${manifestPath}: invalid manifest:\n  ${shapeProblems.join('\n  ')}`)
  return manifest
}

/** What is wrong with the inputs' maxShape and preferredBatchSize against the shapes and maxBatchSize (empty = fine). */
export function maxShapeProblems(manifest: Pick<Manifest, 'inputs' | 'maxBatchSize' | 'preferredBatchSize'>): string[] {
  const problems: string[] = []
  const preferred = manifest.preferredBatchSize
  if (preferred !== undefined && preferred > manifest.maxBatchSize) {
    problems.push(`/preferredBatchSize: ${preferred} is larger than maxBatchSize ${manifest.maxBatchSize}; give at most ${manifest.maxBatchSize}, or remove it`)
  }
  manifest.inputs.forEach((spec, i) => {
    const max = spec.maxShape
    if (max === undefined) return
    const where = `/inputs/${i}/maxShape`
    if (max.length !== spec.shape.length) {
      problems.push(`${where}: has ${max.length} dimensions, shape ${JSON.stringify(spec.shape)} has ${spec.shape.length}; give one limit per dimension`)
      return
    }
    max.forEach((limit, d) => {
      const dim = spec.shape[d]!
      if (d === 0 && limit === -1) return // the batch: maxBatchSize bounds it
      if (d === 0 && (limit < 1 || limit > manifest.maxBatchSize)) {
        problems.push(`${where}/0: the batch limit ${limit} must be -1 (maxBatchSize applies) or 1..${manifest.maxBatchSize} (maxBatchSize)`)
      } else if (dim !== -1 && limit !== dim) {
        problems.push(`${where}/${d}: dimension ${d} is fixed at ${dim} in shape; give ${dim} here too`)
      } else if (dim === -1 && limit < 1) {
        problems.push(`${where}/${d}: dimension ${d} is free in shape; give its largest size (a positive integer)`)
      }
    })
  })
  return problems
}

/**
 * The largest batch the batcher forms: 1 with batching off; else the configured
 * batching.maxBatchSize, or by default the manifest's preferredBatchSize, or its maxBatchSize;
 * never more than maxBatchSize.
 */
export function batchLimit(batching: { enabled: boolean; maxBatchSize: number }, manifest: Pick<Manifest, 'maxBatchSize' | 'preferredBatchSize'>): number {
  if (!batching.enabled) return 1
  return Math.min(batching.maxBatchSize || manifest.preferredBatchSize || manifest.maxBatchSize, manifest.maxBatchSize)
}

/** Absolute path of the ONNX file a manifest names. */
export function modelFilePath(manifest: Manifest, manifestPath: string): string {
  if (manifest.file !== undefined) return path.resolve(path.dirname(manifestPath), manifest.file)
  const pkg = manifest.package!
  // First from the manifest's folder, then from Bulwark's own installation: a model folder
  // outside the repository (a mounted volume) still finds the packages `npm ci` installed.
  const dir = packageDir(pkg.name, [manifestPath, import.meta.url])
  if (dir) {
    const file = path.resolve(dir, pkg.path)
    if (!file.startsWith(dir + path.sep)) throw new ManifestError(`${manifestPath}: package.path must stay inside the package`)
    return file
  }
  throw new ManifestError(`${manifestPath}: npm package ${pkg.name} is not installed; run npm ci`)
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex')
}

/**
 * Reads the model file and checks its digest against the manifest. Returns the bytes so the
 * backend loads exactly what was checked (no time-of-check/time-of-use gap).
 */
export async function readVerifiedModel(manifest: Manifest, manifestPath: string): Promise<Uint8Array> {
  const file = modelFilePath(manifest, manifestPath)
  let bytes: Uint8Array
  try {
    bytes = new Uint8Array(await readFile(file))
  } catch (err) {
    throw new ManifestError(`${manifest.name}: cannot read model file ${file}: ${(err as Error).message}`)
  }
  const actual = sha256Hex(bytes)
  if (actual !== manifest.sha256) {
    throw new ManifestError(
      `${manifest.name}: SHA-256 of ${file} is ${actual}, manifest says ${manifest.sha256}; ` +
        'the file was changed or the manifest is stale: rebuild with `npm run models:build` or restore the file',
    )
  }
  return bytes
}
