// What `bulwark model add` writes, from what it read: the manifest (the graph's inputs and
// outputs, the value ranges the operator gave or a sample showed, the SHA-256) and a starting
// policy that admits nobody, each choice explained in a comment. Pure: no files, no process.

import { Value } from '@sinclair/typebox/value'
import { ManifestSchema, maxShapeProblems, type Manifest } from '../inference/manifest.ts'
import type { GraphValue, OnnxGraph } from '../inference/onnx-graph.ts'

export interface ManifestChoices {
  name: string
  version: string
  /** Where the ONNX file is, relative to the manifest's folder. */
  file: string
  sha256: string
  /** Value ranges by input name ('*': every input without its own). */
  ranges: ReadonlyMap<string, [number, number]>
  /** Largest shapes by input name. */
  maxShapes: ReadonlyMap<string, number[]>
  /** Used when the graph's batch dimension is free. */
  maxBatchSize: number
  description?: string
}

const isFloat = (v: GraphValue) => v.datatype === 'FP32' || v.datatype === 'FP64' || v.datatype === 'FP16'

/** The manifest, and notes for the operator on what was left open; throws with every problem. */
export function manifestFor(graph: OnnxGraph, c: ManifestChoices): { manifest: Manifest; notes: string[] } {
  const notes: string[] = []
  const problems: string[] = []
  for (const key of [...c.ranges.keys(), ...c.maxShapes.keys()]) {
    if (key !== '*' && !graph.inputs.some((i) => i.name === key)) problems.push(`the model has no input "${key}" (it has ${graph.inputs.map((i) => `"${i.name}"`).join(', ')})`)
  }
  const batchFixed = graph.inputs.map((i) => i.shape[0]!).find((d) => d > 0)
  const maxBatchSize = batchFixed ?? c.maxBatchSize
  if (batchFixed !== undefined) notes.push(`the graph fixes the batch dimension at ${batchFixed}: maxBatchSize ${batchFixed}`)
  const inputs = graph.inputs.map((i) => {
    const range = c.ranges.get(i.name) ?? c.ranges.get('*')
    const maxShape = c.maxShapes.get(i.name)
    if (!range) notes.push(`input "${i.name}": no value range given, so validation checks types, shapes and finiteness but not values (and screening cannot run); give --range ${i.name}=LO:HI or --sample FILE`)
    if (!maxShape && i.shape.slice(1).some((d) => d < 0)) notes.push(`input "${i.name}": dimensions ${JSON.stringify(i.shape)} are free and unbounded but by the body limit; give --max-shape ${i.name}=${i.shape.map((d, k) => (k === 0 ? -1 : d < 0 ? 'N' : d)).join(',')}`)
    return { name: i.name, datatype: i.datatype, shape: i.shape, ...(maxShape ? { maxShape } : {}), ...(range ? { range } : {}), ...(isFloat(i) ? { allowNonFinite: false } : {}) }
  })
  const manifest = {
    name: c.name,
    version: c.version,
    platform: 'onnxruntime_onnx' as const,
    ...(c.description ? { description: c.description } : {}),
    file: c.file,
    sha256: c.sha256,
    maxBatchSize,
    inputs,
    outputs: graph.outputs.map((o) => ({ name: o.name, datatype: o.datatype, shape: o.shape })),
  }
  problems.push(...[...Value.Errors(ManifestSchema, manifest)].map((e) => `manifest ${e.path || '/'}: ${e.message}`))
  problems.push(...maxShapeProblems(manifest).map((p) => `--max-shape: ${p}`))
  if (problems.length > 0) throw new Error(problems.join('\n'))
  return { manifest: manifest as Manifest, notes }
}

/** Min and max of each input's values in an OIP v2 request body (JSON), by input name. */
export function rangesFromSample(sample: unknown): Map<string, [number, number]> {
  const inputs = (sample as { inputs?: unknown })?.inputs
  if (!Array.isArray(inputs)) throw new Error('the sample is not an inference request: it has no "inputs" list (give a POST /v2/models/{name}/infer body)')
  const ranges = new Map<string, [number, number]>()
  for (const input of inputs as { name?: unknown; data?: unknown }[]) {
    const values = (Array.isArray(input.data) ? input.data.flat(Infinity) : []).filter((v): v is number => typeof v === 'number' && Number.isFinite(v))
    if (typeof input.name !== 'string' || values.length === 0) throw new Error('each sample input needs a "name" and numeric "data"')
    let lo = Infinity
    let hi = -Infinity
    for (const v of values) {
      if (v < lo) lo = v
      if (v > hi) hi = v
    }
    ranges.set(input.name, [lo, hi])
  }
  return ranges
}

/**
 * A classifier's scores: a float [batch, classes] output. Those the output stage can protect
 * (label, top-k, rounding, noise); any other output (a map, an embedding) it can only pass
 * through or withhold.
 */
const scoreLike = (o: Manifest['outputs'][number]) => (o.datatype === 'FP32' || o.datatype === 'FP64') && o.shape.length === 2

/** The starting policy: nobody may call the model; every section says what it does and what to change. */
export function starterPolicy(manifest: Manifest, scopePrefix = manifest.name): string {
  const name = manifest.name
  const scores = manifest.outputs.filter(scoreLike).map((o) => o.name)
  const others = manifest.outputs.filter((o) => !scoreLike(o)).map((o) => o.name)
  const output =
    scores.length > 0
      ? [
          `# What leaves. ${scores.join(', ')} look like class scores ([batch, classes]): protected, and by`,
          '# default a caller gets the top label only (mode: label), the least revealing answer that still',
          '# classifies. mode: top-k or scores reveal more; noise and a budget bound what one caller learns',
          '# (docs/privacy.md).' + (others.length > 0 ? ` ${others.join(', ')} are not class scores and are withheld:` : ''),
          ...(others.length > 0 ? ['# list them under passThrough (with passThroughReason) only if callers must see them.'] : []),
          'output:',
          `  outputs: [${scores.join(', ')}]`,
          '  mode: label',
        ]
      : [
          `# What leaves. ${others.join(', ')} ${others.length > 1 ? 'are' : 'is'} not class scores, so label, top-k and noise do not apply:`,
          '# passed through as the model answers. Remove an output from passThrough to withhold it.',
          'output:',
          '  outputs: []',
          `  passThrough: [${others.join(', ')}]`,
        ]
  return [
    `# Who may call the ${name} model, and how. Written by \`bulwark model add\`; schema: src/config/policy.ts,`,
    '# docs/policies.md. The gateway applies an edit within policies.reloadCheckIntervalMs, without a restart.',
    `model: ${name}`,
    '# Nobody, until you add a rule: default deny. A rule admits a request when the client certificate',
    '# matches one of `workloads` (a SPIFFE ID, or a prefix ending in /*) AND the token carries every scope',
    '# in `scopes` (and each claim in `claims`): a workload and a caller, never just one. For example, for',
    '# the development identities (`npx bulwark token --scope ...`):',
    '#  - verbs: [infer, metadata]',
    '#    workloads: [spiffe://bulwark.local/ns/default/sa/dev]',
    `#    scopes: [${scopePrefix}:infer]`,
    'allow: []',
    '# Requests one caller (token subject and workload) may make per window; the gateway default.',
    'rateLimit:',
    '  requestsPerWindow: 100',
    '  windowMs: 1000',
    ...output,
    '# No adversarial-input screening: its detectors need a calibration on inputs of this model',
    `# (\`npx bulwark calibrate ${name}\`, docs/screening.md) and a value range for the screened input.`,
    '',
  ].join('\n')
}
