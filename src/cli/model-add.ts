// `bulwark model add FILE.onnx --name NAME` (and `bulwark model import TRITON_MODEL_DIR`, the
// same from a Triton model repository entry): brings an ONNX model in without a hand-written
// manifest. Reads the graph's inputs and outputs through ONNX Runtime (src/inference/
// onnx-graph.ts), copies the file to models/NAME/model.onnx (or, with --in-place, points at it),
// writes models/NAME/manifest.json with its SHA-256, and writes policies/NAME.yaml, a starting
// policy that admits nobody (src/cli/model-manifest.ts). With --config, the model is added to
// that configuration's models.serve. src/cli.ts dispatches here with argv and its outlets;
// this module returns the exit status and never touches the process itself.

import { copyFile, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { Document, parseDocument } from 'yaml'
import { sha256Hex } from '../inference/manifest.ts'
import { readOnnxGraph } from '../inference/onnx-graph.ts'
import { manifestFor, rangesFromSample, starterPolicy } from './model-manifest.ts'
import { readTritonConfig, refineGraph, type TritonConfig } from './triton-config.ts'

export const MODEL_ADD_USAGE = `  model add FILE.onnx --name NAME [--range [INPUT=]LO:HI]... [--sample REQUEST.json]
        [--max-shape INPUT=D,D,...]... [--max-batch N] [--version V] [--in-place]
        [--models DIR] [--policies DIR] [--config FILE] [--force]
        bring an ONNX model in: reads its inputs and outputs, writes models/NAME/manifest.json
        (with the SHA-256; value ranges from --range (--range=-1:1 when LO is negative), or
        from a sample request), copies the file
        to models/NAME/model.onnx (--in-place: leaves it where it is), and writes
        policies/NAME.yaml, which admits nobody until you add a rule; --config adds NAME to
        that file's models.serve
  model import TRITON_MODEL_DIR [--name NAME] [--version V] [the options of model add]
        the same from a Triton model repository entry: config.pbtxt (name, max_batch_size,
        inputs' and outputs' data types and dims, checked against the graph) and
        <version>/model.onnx (the highest version, or --version)`

export interface ModelAddIo {
  cwd: string
  out(text: string): void
  err(text: string): void
}

class UsageError extends Error {}

const number = (s: string, what: string) => {
  const n = Number(s)
  if (s.trim() === '' || !Number.isFinite(n)) throw new UsageError(`${what}: ${JSON.stringify(s)} is not a number`)
  return n
}

/** --range LO:HI (every input) or INPUT=LO:HI (LO may be negative: split at the last colon). */
function parseRange(spec: string): [string, [number, number]] {
  const eq = spec.indexOf('=')
  const input = eq < 0 ? '*' : spec.slice(0, eq)
  const bounds = spec.slice(eq + 1)
  const colon = bounds.lastIndexOf(':')
  if (colon <= 0 || input === '') throw new UsageError(`--range ${JSON.stringify(spec)}: write LO:HI or INPUT=LO:HI, e.g. --range 0:1 or --range x=-2.2:2.7`)
  const lo = number(bounds.slice(0, colon), '--range LO')
  const hi = number(bounds.slice(colon + 1), '--range HI')
  if (!(hi > lo)) throw new UsageError(`--range ${JSON.stringify(spec)}: HI must be above LO`)
  return [input, [lo, hi]]
}

/** --max-shape INPUT=D,D,... (-1 for the batch). */
function parseMaxShape(spec: string): [string, number[]] {
  const eq = spec.indexOf('=')
  const dims = spec.slice(eq + 1).split(',')
  if (eq <= 0 || dims.some((d) => !/^-?\d{1,9}$/.test(d))) {
    throw new UsageError(`--max-shape ${JSON.stringify(spec)}: write INPUT=D,D,..., e.g. --max-shape x=-1,3,1920,1920 (-1: the batch, bounded by maxBatchSize)`)
  }
  return [spec.slice(0, eq), dims.map(Number)]
}

interface Options {
  file: string
  name: string | undefined
  version: string | undefined
  modelsDir: string
  policiesDir: string
  ranges: Map<string, [number, number]>
  maxShapes: Map<string, number[]>
  maxBatchSize: number
  inPlace: boolean
  config: string | null
  force: boolean
}

async function options(argv: string[], cwd: string, what: 'FILE.onnx' | 'TRITON_MODEL_DIR'): Promise<Options> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: {
      name: { type: 'string' },
      version: { type: 'string' },
      range: { type: 'string', multiple: true, default: [] },
      sample: { type: 'string' },
      'max-shape': { type: 'string', multiple: true, default: [] },
      'max-batch': { type: 'string', default: '8' },
      'in-place': { type: 'boolean', default: false },
      models: { type: 'string', default: 'models' },
      policies: { type: 'string', default: 'policies' },
      config: { type: 'string' },
      force: { type: 'boolean', default: false },
    },
    allowPositionals: true,
    strict: true,
  })
  if (positionals.length !== 1 || (what === 'FILE.onnx' && !values.name)) throw new UsageError(`needs exactly one ${what}${what === 'FILE.onnx' ? ' and --name NAME' : ''}`)
  if (values.name !== undefined && !validName(values.name)) throw new UsageError(`--name ${JSON.stringify(values.name)}: lower-case letters, digits, _ . - (starting with a letter or digit), at most 63`)
  const maxBatchSize = number(values['max-batch'], '--max-batch')
  if (!Number.isInteger(maxBatchSize) || maxBatchSize < 1 || maxBatchSize > 4096) throw new UsageError('--max-batch: a whole number from 1 to 4096')
  const ranges = values.sample ? rangesFromSample(JSON.parse(await readFile(path.resolve(cwd, values.sample), 'utf8'))) : new Map<string, [number, number]>()
  for (const spec of values.range) ranges.set(...parseRange(spec)) // flags win over the sample
  return {
    file: path.resolve(cwd, positionals[0]!),
    name: values.name,
    version: values.version,
    modelsDir: path.resolve(cwd, values.models),
    policiesDir: path.resolve(cwd, values.policies),
    ranges,
    maxShapes: new Map(values['max-shape'].map(parseMaxShape)),
    maxBatchSize,
    inPlace: values['in-place'],
    config: values.config ? path.resolve(cwd, values.config) : null,
    force: values.force,
  }
}

const validName = (name: string) => /^[a-z0-9][a-z0-9_.-]{0,62}$/.test(name)

const exists = (file: string) => stat(file).then(() => true, () => false)

/** Adds `name` to the configuration file's models.serve (a new file serves the bundled models and it); keeps its comments. */
async function addToConfig(file: string, name: string): Promise<string> {
  const doc = (await exists(file)) ? parseDocument(await readFile(file, 'utf8')) : new Document({})
  if (doc.errors.length > 0) throw new Error(`${file}: YAML syntax: ${doc.errors[0]!.message.split('\n')[0]}`)
  const serve = doc.getIn(['models', 'serve']) as { toJSON(): unknown } | undefined
  const listed = (serve ? (serve.toJSON() as { name?: string }[]) : [{ name: 'mnist' }, { name: 'ocr-cls' }]).filter((m) => m.name !== name)
  doc.setIn(['models', 'serve'], [...listed, { name }])
  await writeFile(file, doc.toString())
  return `serves ${[...listed.map((m) => m.name), name].join(', ')}`
}

async function add(o: Options & { name: string; version: string }, io: ModelAddIo, triton: TritonConfig | null = null): Promise<void> {
  const folder = path.join(o.modelsDir, o.name)
  const policyFile = path.join(o.policiesDir, `${o.name}.yaml`)
  if (!o.force) for (const f of [path.join(folder, 'manifest.json'), policyFile]) if (await exists(f)) throw new UsageError(`${f} exists; --force replaces it`)
  const bytes = new Uint8Array(await readFile(o.file))
  const graph = triton ? refineGraph(await readOnnxGraph(bytes), triton) : await readOnnxGraph(bytes)
  const target = o.inPlace ? o.file : path.join(folder, 'model.onnx')
  const { manifest, notes } = manifestFor(graph, {
    name: o.name,
    version: o.version,
    file: path.relative(folder, target) || 'model.onnx',
    sha256: sha256Hex(bytes),
    ranges: o.ranges,
    maxShapes: o.maxShapes,
    maxBatchSize: triton && triton.maxBatchSize > 0 ? triton.maxBatchSize : o.maxBatchSize,
    description: triton ? `${path.basename(o.file)}, imported from a Triton model repository by \`bulwark model import\`` : `${path.basename(o.file)}, added by \`bulwark model add\``,
  })
  await mkdir(folder, { recursive: true })
  if (!o.inPlace) await copyFile(o.file, target)
  await writeFile(path.join(folder, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n')
  await mkdir(o.policiesDir, { recursive: true })
  await writeFile(policyFile, starterPolicy(manifest))
  const served = o.config ? await addToConfig(o.config, o.name) : null
  const show = (f: string) => path.relative(io.cwd, f) || f
  const describe = (vs: typeof graph.inputs) => vs.map((v) => `${v.name} ${v.datatype} ${JSON.stringify(v.shape)}`).join(', ')
  io.out(
    [
      `wrote ${show(path.join(folder, 'manifest.json'))} (sha256 ${manifest.sha256.slice(0, 12)}..., inputs ${describe(graph.inputs)}; outputs ${describe(graph.outputs)})`,
      ...(o.inPlace ? [] : [`copied the model to ${show(target)}`]),
      `wrote ${show(policyFile)}: nobody may call ${o.name} until you add a rule under allow:`,
      ...(served ? [`${show(o.config!)}: ${served}`] : [`add { name: ${o.name} } to models.serve in your configuration (or rerun with --config FILE)`]),
      ...notes.map((n) => `note: ${n}`),
      '',
    ].join('\n'),
  )
}

/** The Triton entry's model file and version: --version, else the highest numbered version folder holding it. */
async function tritonVersion(dir: string, config: TritonConfig, version: string | undefined): Promise<{ file: string; version: string }> {
  const versions = version !== undefined ? [version] : (await readdir(dir)).filter((n) => /^\d{1,9}$/.test(n)).sort((a, b) => Number(b) - Number(a))
  for (const v of versions) {
    const file = path.join(dir, v, config.defaultModelFilename)
    if (await exists(file)) return { file, version: v }
  }
  throw new UsageError(`${dir}: no ${version !== undefined ? `${version}/` : '<version>/'}${config.defaultModelFilename}; a Triton model repository entry holds config.pbtxt and a numbered folder per version`)
}

async function run(argv: string[], io: ModelAddIo, command: 'add' | 'import'): Promise<void> {
  const o = await options(argv, io.cwd, command === 'add' ? 'FILE.onnx' : 'TRITON_MODEL_DIR')
  if (command === 'add') return add({ ...o, name: o.name!, version: o.version ?? '1' }, io)
  const dir = o.file
  const config = readTritonConfig(await readFile(path.join(dir, 'config.pbtxt'), 'utf8'))
  const { file, version } = await tritonVersion(dir, config, o.version)
  const name = o.name ?? config.name ?? path.basename(dir)
  if (!validName(name)) throw new UsageError(`the model is named ${JSON.stringify(name)}, which is no valid Bulwark model name; give --name NAME (lower-case letters, digits, _ . -)`)
  return add({ ...o, file, name, version }, io, config)
}

/** Runs `bulwark model add ...` or `bulwark model import ...`; returns the exit status (0 done, 1 the model cannot be added, 2 usage). */
export async function modelAddCommand(argv: string[], io: ModelAddIo, command: 'add' | 'import' = 'add'): Promise<number> {
  try {
    await run(argv, io, command)
    return 0
  } catch (err) {
    const usage = err instanceof UsageError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')
    io.err(`bulwark model ${command}: ${(err as Error).message}${usage ? `\n\nusage:\n${MODEL_ADD_USAGE}` : ''}\n`)
    return usage ? 2 : 1
  }
}
