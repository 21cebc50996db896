// A small kustomize, for the tests: there is no kustomize or kubectl on CI machines. It renders
// a kustomization the way `kubectl apply -k` does for the features Bulwark's k8s/ uses, and
// refuses every other field, so a kustomization that renders here uses nothing it does not
// understand. Supported (kustomize.config.k8s.io/v1beta1):
//
//   resources          files (multi-document YAML) and directories holding a kustomization
//   namespace          set on every namespaced object (cluster-scoped kinds keep none)
//   configMapGenerator files (`key=path` or `path`), literals, behavior create|merge|replace;
//                      the name gets a content-hash suffix, and references to the ConfigMap in
//                      pod templates (volumes, projected volumes, env, envFrom) follow it
//   generatorOptions   disableNameSuffixHash, labels
//   images             name -> newName, newTag, digest, in every container and init container
//   patches            strategic-merge patches (maps merged, lists of named items merged by
//                      name, `$patch: delete`) and JSON 6902 patches (add, remove, replace),
//                      from `path` or inline `patch`, selected by `target` or by the patch's
//                      own kind and name
//
// As real kustomize, it refuses paths outside the kustomization's root (load restrictor
// LoadRestrictionsRootOnly), except other kustomization directories named under resources.

import { createHash } from 'node:crypto'
import { existsSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import { parseAllDocuments } from 'yaml'

export type K8sObject = {
  apiVersion: string
  kind: string
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
  [key: string]: unknown
}

const KUSTOMIZATION_FIELDS = new Set(['apiVersion', 'kind', 'resources', 'namespace', 'configMapGenerator', 'generatorOptions', 'images', 'patches'])
const CLUSTER_SCOPED = new Set([
  'Namespace', 'ClusterRole', 'ClusterRoleBinding', 'CustomResourceDefinition', 'PersistentVolume', 'StorageClass',
  'PriorityClass', 'ClusterIssuer', 'ValidatingWebhookConfiguration', 'MutatingWebhookConfiguration', 'RuntimeClass',
])

type Rec = Record<string, unknown>
const isRec = (v: unknown): v is Rec => typeof v === 'object' && v !== null && !Array.isArray(v)

export class KustomizeError extends Error {
  override name = 'KustomizeError'
}

function readYamlDocs(file: string): unknown[] {
  const docs = parseAllDocuments(readFileSync(file, 'utf8'), { uniqueKeys: true })
  const out: unknown[] = []
  for (const doc of docs) {
    if (doc.errors.length > 0) throw new KustomizeError(`${file}: ${doc.errors[0]!.message}`)
    const value = doc.toJS()
    if (value !== null && value !== undefined) out.push(value)
  }
  return out
}

function kustomizationFile(dir: string): string | null {
  for (const name of ['kustomization.yaml', 'kustomization.yml', 'Kustomization']) {
    const file = path.join(dir, name)
    if (existsSync(file)) return file
  }
  return null
}

/** A path inside the kustomization root, as LoadRestrictionsRootOnly demands. */
function inside(root: string, rel: string, what: string): string {
  const file = path.resolve(root, rel)
  if (file !== root && !file.startsWith(root + path.sep)) throw new KustomizeError(`${what} ${rel} is outside the kustomization root ${root} (kustomize's load restrictor refuses it)`)
  return file
}

/** Kustomize's ConfigMap name suffix: 10 characters derived from a hash of the content. */
function nameHash(obj: K8sObject): string {
  const canonical = JSON.stringify({ kind: obj.kind, name: obj.metadata.name, data: obj.data ?? {}, binaryData: obj.binaryData ?? {} })
  const hex = createHash('sha256').update(canonical).digest('hex')
  // Kustomize maps hex digits onto consonants and digits so a suffix never spells a word.
  const map: Record<string, string> = { '0': 'g', '1': 'h', '3': 'k', 'a': 'm', 'e': 't' }
  return [...hex.slice(0, 10)].map((c) => map[c] ?? c).join('')
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

function mergeStrategic(target: unknown, patch: unknown): unknown {
  if (!isRec(patch)) return structuredClone(patch)
  if (patch.$patch === 'delete') return undefined
  if (!isRec(target)) return mergeStrategic({}, patch)
  const out: Rec = { ...target }
  for (const [key, value] of Object.entries(patch)) {
    if (key === '$patch') continue
    if (value === null) {
      delete out[key]
      continue
    }
    const current = out[key]
    if (Array.isArray(value) && Array.isArray(current) && value.every((v) => isRec(v) && typeof v.name === 'string')) {
      // A list of named items (containers, volumes, env, ports with names): merged by name.
      const merged = [...current] as Rec[]
      for (const item of value as Rec[]) {
        const i = merged.findIndex((m) => isRec(m) && m.name === item.name)
        if (item.$patch === 'delete') {
          if (i >= 0) merged.splice(i, 1)
        } else if (i >= 0) {
          merged[i] = mergeStrategic(merged[i], item) as Rec
        } else {
          merged.push(structuredClone(item))
        }
      }
      out[key] = merged
    } else {
      const next = mergeStrategic(current, value)
      if (next === undefined) delete out[key]
      else out[key] = next
    }
  }
  return out
}

function pointerParts(pointer: string): string[] {
  if (pointer === '') return []
  if (!pointer.startsWith('/')) throw new KustomizeError(`JSON patch path ${pointer} must start with /`)
  return pointer.slice(1).split('/').map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
}

function applyJson6902(target: K8sObject, ops: unknown[]): void {
  for (const op of ops) {
    if (!isRec(op) || typeof op.op !== 'string' || typeof op.path !== 'string') throw new KustomizeError(`bad JSON patch operation ${JSON.stringify(op)}`)
    const parts = pointerParts(op.path)
    const last = parts.pop()
    if (last === undefined) throw new KustomizeError('a JSON patch cannot replace the whole object')
    let node: unknown = target
    for (const p of parts) {
      node = Array.isArray(node) ? node[Number(p)] : isRec(node) ? node[p] : undefined
      if (node === undefined) throw new KustomizeError(`JSON patch path ${op.path}: ${p} does not exist`)
    }
    if (Array.isArray(node)) {
      const i = last === '-' ? node.length : Number(last)
      if (op.op === 'add') node.splice(i, 0, structuredClone(op.value))
      else if (op.op === 'replace') node[i] = structuredClone(op.value)
      else if (op.op === 'remove') node.splice(i, 1)
      else throw new KustomizeError(`JSON patch op ${op.op} is not supported here`)
    } else if (isRec(node)) {
      if (op.op === 'add' || op.op === 'replace') {
        if (op.op === 'replace' && !(last in node)) throw new KustomizeError(`JSON patch replace ${op.path}: nothing there`)
        node[last] = structuredClone(op.value)
      } else if (op.op === 'remove') {
        if (!(last in node)) throw new KustomizeError(`JSON patch remove ${op.path}: nothing there`)
        delete node[last]
      } else {
        throw new KustomizeError(`JSON patch op ${op.op} is not supported here`)
      }
    } else {
      throw new KustomizeError(`JSON patch path ${op.path} does not exist`)
    }
  }
}

function matchesTarget(obj: K8sObject, target: Rec): boolean {
  const allowed = new Set(['group', 'version', 'kind', 'name', 'namespace', 'labelSelector'])
  for (const key of Object.keys(target)) if (!allowed.has(key)) throw new KustomizeError(`patch target field ${key} is not supported here`)
  const [group, version] = obj.apiVersion.includes('/') ? obj.apiVersion.split('/') : ['', obj.apiVersion]
  if (target.kind !== undefined && target.kind !== obj.kind) return false
  if (target.name !== undefined && !new RegExp(`^${String(target.name)}$`).test(obj.metadata.name)) return false
  if (target.group !== undefined && target.group !== group) return false
  if (target.version !== undefined && target.version !== version) return false
  if (target.namespace !== undefined && target.namespace !== obj.metadata.namespace) return false
  if (target.labelSelector !== undefined) {
    for (const term of String(target.labelSelector).split(',')) {
      const [k, v] = term.split('=')
      if (obj.metadata.labels?.[k!.trim()] !== v?.trim()) return false
    }
  }
  return true
}

function setImage(image: string, rules: Rec[]): string {
  const at = image.indexOf('@')
  const withoutDigest = at >= 0 ? image.slice(0, at) : image
  const colon = withoutDigest.lastIndexOf(':')
  const name = colon > withoutDigest.lastIndexOf('/') ? withoutDigest.slice(0, colon) : withoutDigest
  const rule = rules.find((r) => r.name === name)
  if (!rule) return image
  const newName = typeof rule.newName === 'string' ? rule.newName : name
  if (typeof rule.digest === 'string') return `${newName}@${rule.digest}`
  if (typeof rule.newTag === 'string') return `${newName}:${rule.newTag}`
  return newName + image.slice(name.length)
}

function renameConfigMapRefs(obj: K8sObject, renames: Map<string, string>): void {
  const rename = (n: unknown) => (typeof n === 'string' ? (renames.get(n) ?? n) : n)
  for (const pod of podSpecs(obj)) {
    for (const v of (pod.volumes as Rec[] | undefined) ?? []) {
      if (isRec(v.configMap)) v.configMap.name = rename(v.configMap.name)
      if (isRec(v.projected)) for (const s of (v.projected.sources as Rec[] | undefined) ?? []) if (isRec(s.configMap)) s.configMap.name = rename(s.configMap.name)
    }
    for (const c of containersOf(pod)) {
      for (const e of (c.env as Rec[] | undefined) ?? []) if (isRec(e.valueFrom) && isRec(e.valueFrom.configMapKeyRef)) e.valueFrom.configMapKeyRef.name = rename(e.valueFrom.configMapKeyRef.name)
      for (const e of (c.envFrom as Rec[] | undefined) ?? []) if (isRec(e.configMapRef)) e.configMapRef.name = rename(e.configMapRef.name)
    }
  }
}

/** Renders the kustomization in `dir` to the objects `kubectl apply -k dir` would send. */
export function render(dir: string): K8sObject[] {
  const { objects, generated } = renderDir(path.resolve(dir), new Set())
  // Hash suffixes last, once the content is final (overlays may have merged into a base's
  // ConfigMap), then every reference follows the new name.
  const renames = new Map<string, string>()
  for (const [cm, { base, hash }] of generated) {
    if (!hash) continue
    const hashed = `${base}-${nameHash(cm)}`
    renames.set(base, hashed)
    cm.metadata.name = hashed
  }
  for (const o of objects) renameConfigMapRefs(o, renames)
  return objects
}

interface Rendered {
  objects: K8sObject[]
  /** Generated ConfigMaps and the name they were generated under (references use it until render() hashes it). */
  generated: Map<K8sObject, { base: string; hash: boolean }>
}

function renderDir(root: string, visiting: Set<string>): Rendered {
  if (visiting.has(root)) throw new KustomizeError(`kustomization cycle through ${root}`)
  visiting.add(root)
  const file = kustomizationFile(root)
  if (!file) throw new KustomizeError(`${root} has no kustomization.yaml`)
  const [k] = readYamlDocs(file) as Rec[]
  if (!isRec(k)) throw new KustomizeError(`${file} is empty`)
  for (const key of Object.keys(k)) if (!KUSTOMIZATION_FIELDS.has(key)) throw new KustomizeError(`${file}: field ${key} is not supported by this renderer (or deprecated in kustomize v5)`)
  if (k.apiVersion !== 'kustomize.config.k8s.io/v1beta1' || k.kind !== 'Kustomization') throw new KustomizeError(`${file}: apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization expected`)

  const objects: K8sObject[] = []
  const generated: Rendered['generated'] = new Map()
  for (const res of (k.resources as string[] | undefined) ?? []) {
    const target = path.resolve(root, res)
    if (existsSync(target) && statSync(target).isDirectory()) {
      const sub = renderDir(target, visiting)
      objects.push(...sub.objects)
      for (const [o, g] of sub.generated) generated.set(o, g)
    } else {
      const f = inside(root, res, 'resource')
      for (const doc of readYamlDocs(f)) {
        if (!isRec(doc) || typeof doc.kind !== 'string' || typeof doc.apiVersion !== 'string' || !isRec(doc.metadata) || typeof doc.metadata.name !== 'string') {
          throw new KustomizeError(`${f}: every document needs apiVersion, kind and metadata.name`)
        }
        objects.push(doc as K8sObject)
      }
    }
  }

  const options = isRec(k.generatorOptions) ? k.generatorOptions : {}
  for (const gen of (k.configMapGenerator as Rec[] | undefined) ?? []) {
    const name = String(gen.name)
    const data: Record<string, string> = {}
    for (const entry of (gen.files as string[] | undefined) ?? []) {
      const [key, rel] = entry.includes('=') ? (entry.split('=', 2) as [string, string]) : [path.basename(entry), entry]
      data[key] = readFileSync(inside(root, rel, 'configMapGenerator file'), 'utf8')
    }
    for (const literal of (gen.literals as string[] | undefined) ?? []) {
      const i = literal.indexOf('=')
      data[literal.slice(0, i)] = literal.slice(i + 1)
    }
    const behavior = (gen.behavior as string | undefined) ?? 'create'
    const existing = objects.find((o) => o.kind === 'ConfigMap' && generated.get(o)?.base === name)
    if (behavior === 'create') {
      if (existing) throw new KustomizeError(`${file}: ConfigMap ${name} is generated twice; use behavior: merge or replace`)
      const cm: K8sObject = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name, ...(isRec(options.labels) ? { labels: { ...(options.labels as Record<string, string>) } } : {}) }, data }
      generated.set(cm, { base: name, hash: options.disableNameSuffixHash !== true })
      objects.push(cm)
    } else {
      if (!existing) throw new KustomizeError(`${file}: ConfigMap ${name} has behavior ${behavior} but no base generates it`)
      existing.data = behavior === 'merge' ? { ...(existing.data as Record<string, string>), ...data } : data
    }
  }

  for (const p of (k.patches as Rec[] | undefined) ?? []) {
    const text = typeof p.path === 'string' ? readFileSync(inside(root, p.path, 'patch'), 'utf8') : typeof p.patch === 'string' ? p.patch : null
    if (text === null) throw new KustomizeError(`${file}: a patch needs path or patch`)
    const docs = parseAllDocuments(text).map((d) => d.toJS()) as unknown[]
    const body = docs[0]
    const target = isRec(p.target) ? p.target : null
    if (Array.isArray(body)) {
      if (!target) throw new KustomizeError(`${file}: a JSON 6902 patch needs a target`)
      const hits = objects.filter((o) => matchesTarget(o, target))
      if (hits.length === 0) throw new KustomizeError(`${file}: patch target ${JSON.stringify(target)} matches nothing`)
      for (const o of hits) applyJson6902(o, body)
    } else if (isRec(body)) {
      const sel = target ?? { kind: body.kind, name: (body.metadata as Rec | undefined)?.name }
      const hits = objects.filter((o) => matchesTarget(o, sel))
      if (hits.length === 0) throw new KustomizeError(`${file}: patch for ${JSON.stringify(sel)} matches nothing`)
      for (const o of hits) {
        const merged = mergeStrategic(o, { ...body, apiVersion: o.apiVersion, kind: o.kind, metadata: { ...(body.metadata as Rec), name: o.metadata.name } }) as K8sObject
        Object.assign(o, merged)
      }
    } else {
      throw new KustomizeError(`${file}: a patch must be a mapping (strategic merge) or a list (JSON 6902)`)
    }
  }

  for (const o of objects) {
    if (typeof k.namespace === 'string' && !CLUSTER_SCOPED.has(o.kind)) o.metadata.namespace = k.namespace
  }
  const rules = (k.images as Rec[] | undefined) ?? []
  if (rules.length > 0) {
    for (const o of objects) for (const pod of podSpecs(o)) for (const c of containersOf(pod)) if (typeof c.image === 'string') c.image = setImage(c.image, rules)
  }

  visiting.delete(root)
  return { objects, generated }
}
