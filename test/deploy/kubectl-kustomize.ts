// The overlays as `kubectl apply -k` sends them: rendered by the real kustomize, the one built
// into kubectl (`kubectl kustomize DIR`), so the tests check what a cluster would receive and
// not what a stand-in understood. Rendering reads only the local files: no cluster, no network.
// kubectl is on the CI image and .ci/run fails without it; on a machine without it the tests
// that need it skip, and say why.

import { execFile } from 'node:child_process'
import path from 'node:path'
import { promisify } from 'node:util'
import { parseAllDocuments } from 'yaml'

export type K8sObject = {
  apiVersion: string
  kind: string
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
  [key: string]: unknown
}

type Rec = Record<string, unknown>
const isRec = (v: unknown): v is Rec => typeof v === 'object' && v !== null && !Array.isArray(v)
const run = promisify(execFile)

export class KustomizeError extends Error {
  override name = 'KustomizeError'
}

/** The README asks operators for kubectl 1.27 or later, whose kustomize is v5: render with that major or a later one. */
const MIN_KUSTOMIZE_MAJOR = 5

/** Why the real kustomize cannot run here, or null when it can. */
export async function kustomizeMissing(): Promise<string | null> {
  let stdout: string
  try {
    ;({ stdout } = await run('kubectl', ['version', '--client', '--output=json'], { timeout: 30_000 }))
  } catch (err) {
    return `kubectl is not on this machine's PATH (${(err as Error).message.split('\n')[0]}); .ci/run requires it`
  }
  const version = (JSON.parse(stdout) as { kustomizeVersion?: string }).kustomizeVersion ?? ''
  const major = Number(/^v(\d+)\./.exec(version)?.[1] ?? 0)
  if (major < MIN_KUSTOMIZE_MAJOR) return `kubectl's kustomize is ${version || 'missing'}; the manifests need v${MIN_KUSTOMIZE_MAJOR} or later`
  return null
}

/**
 * The objects `kubectl apply -k dir` would send, in kustomize's order. A warning fails the
 * render as an error does: kustomize warns about deprecated fields, which a later kustomize
 * drops, and the manifests must keep working with it.
 */
export async function render(dir: string): Promise<K8sObject[]> {
  let stdout: string
  let stderr: string
  try {
    ;({ stdout, stderr } = await run('kubectl', ['kustomize', dir], { timeout: 60_000, maxBuffer: 64 * 1024 * 1024 }))
  } catch (err) {
    const detail = (err as { stderr?: string }).stderr?.trim() || (err as Error).message
    throw new KustomizeError(`kubectl kustomize ${dir}: ${detail}`, { cause: err })
  }
  if (stderr.trim() !== '') throw new KustomizeError(`kubectl kustomize ${dir} warned: ${stderr.trim()}`)
  const objects: K8sObject[] = []
  for (const doc of parseAllDocuments(stdout, { uniqueKeys: true })) {
    if (doc.errors.length > 0) throw new KustomizeError(`kubectl kustomize ${dir}: ${doc.errors[0]!.message}`)
    const value: unknown = doc.toJS()
    if (value === null || value === undefined) continue
    if (!isRec(value) || typeof value.kind !== 'string' || typeof value.apiVersion !== 'string' || !isRec(value.metadata) || typeof value.metadata.name !== 'string') {
      throw new KustomizeError(`kubectl kustomize ${dir}: an object without apiVersion, kind and metadata.name`)
    }
    objects.push(value as K8sObject)
  }
  return objects
}

/** Every pod spec inside an object (Deployment, StatefulSet, DaemonSet, Job, CronJob, Pod). */
export function podSpecs(obj: K8sObject): Rec[] {
  const spec = obj.spec
  if (!isRec(spec)) return []
  if (obj.kind === 'Pod') return [spec]
  const template = spec.template
  if (isRec(template) && isRec(template.spec)) return [template.spec]
  const job = spec.jobTemplate
  if (isRec(job) && isRec(job.spec) && isRec(job.spec.template) && isRec(job.spec.template.spec)) return [job.spec.template.spec]
  return []
}

export function containersOf(pod: Rec): Rec[] {
  return [...((pod.initContainers as Rec[] | undefined) ?? []), ...((pod.containers as Rec[] | undefined) ?? [])]
}

export const OVERLAYS = ['sidecar', 'gateway'] as const
export type Overlay = (typeof OVERLAYS)[number]

/** Both shipped overlays rendered, and why kubectl cannot render them (null when it can; then nothing is rendered). */
export async function renderOverlays(root: string): Promise<{ missing: string | null; rendered: Record<Overlay, K8sObject[]> }> {
  const missing = await kustomizeMissing()
  const entries = await Promise.all(OVERLAYS.map(async (o) => [o, missing === null ? await render(path.join(root, 'k8s/overlays', o)) : []] as const))
  return { missing, rendered: Object.fromEntries(entries) as Record<Overlay, K8sObject[]> }
}
