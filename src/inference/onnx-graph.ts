// What an ONNX graph takes and gives (names, element types, shapes), read through ONNX
// Runtime's own session metadata, so a manifest describes the model exactly as the backend
// will load it. Used by `bulwark model add` (src/cli/model-add.ts), never while serving:
// it opens a session on the calling thread, which the gateway keeps for its event loop
// (the serving path runs sessions in src/inference/onnx-worker.ts).

import { datatypes, numericDatatypes, type Datatype } from './tensor.ts'

export interface GraphValue {
  name: string
  datatype: Datatype
  /** -1 for a dimension the graph leaves free (symbolic or unknown). */
  shape: number[]
}

export interface OnnxGraph {
  inputs: GraphValue[]
  outputs: GraphValue[]
}

const fromOrt = new Map<string, Datatype>(datatypes.map((d) => [numericDatatypes[d].ort, d]))

interface ValueMetadata {
  name: string
  isTensor: boolean
  type?: string
  shape?: readonly (number | string)[]
}

function describe(v: ValueMetadata, side: 'input' | 'output'): GraphValue {
  if (!v.isTensor) throw new Error(`${side} "${v.name}" is not a tensor (a sequence or map); Bulwark serves tensor inputs and outputs only`)
  const datatype = fromOrt.get(v.type ?? '')
  if (!datatype) throw new Error(`${side} "${v.name}" has element type ${v.type ?? 'unknown'}, which the Open Inference Protocol here cannot carry; supported: ${[...fromOrt.keys()].join(', ')}`)
  const shape = (v.shape ?? []).map((d) => (typeof d === 'number' && d >= 1 ? d : -1))
  if (shape.length === 0) throw new Error(`${side} "${v.name}" has no declared shape (a scalar or an unknown rank); Bulwark needs a batch dimension first`)
  return { name: v.name, datatype, shape }
}

/** The graph's inputs and outputs; throws an Error saying what cannot be served and why. */
export async function readOnnxGraph(bytes: Uint8Array): Promise<OnnxGraph> {
  const ort = await import('onnxruntime-node')
  let session
  try {
    session = await ort.InferenceSession.create(bytes)
  } catch (err) {
    throw new Error(`ONNX Runtime cannot load the file: ${(err as Error).message}`, { cause: err })
  }
  try {
    return {
      inputs: session.inputMetadata.map((v) => describe(v as ValueMetadata, 'input')),
      outputs: session.outputMetadata.map((v) => describe(v as ValueMetadata, 'output')),
    }
  } finally {
    await session.release()
  }
}
