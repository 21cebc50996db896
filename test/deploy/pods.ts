// Pods of a rendered workload, set up on this machine the way the kubelet would set them up,
// for tests that run the real processes as the manifests would run them: each pod's name (a
// Deployment's pods get a new name every time one is created, a StatefulSet's keep theirs),
// its labels, its environment (Downward API fields and Secret keys resolved, $(VAR) expanded)
// and where each path it mounts lives here.
//
// Storage follows Kubernetes' rules, since that is what decides whether state survives:
//   - a PersistentVolumeClaim is one folder, root/claims/<claim>, the same for every pod that
//     mounts it, whatever its name; a StatefulSet's volumeClaimTemplates give pod N the claim
//     <template>-<statefulset>-<N>;
//   - subPath and subPathExpr pick a folder inside it ($(POD_NAME) is the pod's name);
//   - a ConfigMap or Secret volume holds the object's keys as files;
//   - an emptyDir, any other volume, and a path no volume holds (the container's own file
//     system) belong to that one pod: gone when it is replaced.

import { existsSync, mkdirSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { containersOf, podSpecs, type K8sObject } from './kubectl-kustomize.ts'

type Rec = Record<string, unknown>
type Mount = { name: string; mountPath: string; subPath?: string; subPathExpr?: string }

/** The label the StatefulSet controller gives each pod: its ordinal. */
export const POD_INDEX_LABEL = 'apps.kubernetes.io/pod-index'

export class Cluster {
  readonly root: string
  readonly objects: readonly K8sObject[]
  readonly secrets: Record<string, Record<string, string>>
  #created = 0

  /**
   * `root`: a folder standing for the cluster's storage; `objects`: the rendered overlay (its
   * ConfigMaps fill ConfigMap volumes); `secrets`: what the Secrets made by hand hold, by name and key.
   */
  constructor(root: string, objects: readonly K8sObject[], secrets: Record<string, Record<string, string>>) {
    this.root = root
    this.objects = objects
    this.secrets = secrets
  }

  /** A new pod of `workload`: for a StatefulSet, the pod with that ordinal (a replacement keeps its name). */
  pod(workload: K8sObject, ordinal = 0): Pod {
    this.#created++
    const template = (workload.spec as Rec).template as { metadata?: { labels?: Record<string, string> } }
    const labels = { ...(template.metadata?.labels ?? {}) }
    let name: string
    if (workload.kind === 'StatefulSet') {
      name = `${workload.metadata.name}-${ordinal}`
      labels[POD_INDEX_LABEL] = String(ordinal)
      labels['statefulset.kubernetes.io/pod-name'] = name
    } else if (workload.kind === 'Deployment') {
      // <deployment>-<template hash>-<random>: every pod the ReplicaSet creates has a new name.
      name = `${workload.metadata.name}-6d4b9c7f5-p${String(this.#created).padStart(4, '0')}`
    } else {
      throw new Error(`pods of a ${workload.kind} are not modelled`)
    }
    return new Pod(this, workload, name, ordinal, labels, `uid-${this.#created}`)
  }

  /** The one workload whose pods run a container named `container`. */
  workloadRunning(container: string): K8sObject {
    const hits = this.objects.filter((o) => podSpecs(o).some((s) => containersOf(s).some((c) => c.name === container)))
    if (hits.length !== 1) throw new Error(`${hits.length} workloads run a container ${container}`)
    return hits[0]!
  }

  configMap(name: string): Record<string, string> {
    const cm = this.objects.find((o) => o.kind === 'ConfigMap' && o.metadata.name === name)
    if (!cm) throw new Error(`no ConfigMap ${name}`)
    return (cm.data as Record<string, string> | undefined) ?? {}
  }

  secret(name: string): Record<string, string> {
    const s = this.secrets[name]
    if (!s) throw new Error(`Secret ${name} is made by hand; the test gives none`)
    return s
  }
}

export class Pod {
  readonly cluster: Cluster
  readonly workload: K8sObject
  readonly name: string
  readonly ordinal: number
  readonly labels: Record<string, string>
  /** Stands for the pod's UID: a new one for every pod created, a replacement included. */
  readonly uid: string

  constructor(cluster: Cluster, workload: K8sObject, name: string, ordinal: number, labels: Record<string, string>, uid: string) {
    this.cluster = cluster
    this.workload = workload
    this.name = name
    this.ordinal = ordinal
    this.labels = labels
    this.uid = uid
  }

  get spec(): Rec {
    return podSpecs(this.workload)[0]!
  }

  container(name: string): Rec {
    const c = containersOf(this.spec).find((c) => c.name === name)
    if (!c) throw new Error(`${this.name} has no container ${name}`)
    return c
  }

  /** The container's environment, as the kubelet sets it. */
  env(container: string): Record<string, string> {
    const out: Record<string, string> = {}
    for (const e of (this.container(container).env as Rec[] | undefined) ?? []) {
      const name = String(e.name)
      const from = e.valueFrom as Rec | undefined
      if (!from) out[name] = expand(String(e.value ?? ''), out)
      else if (from.fieldRef) out[name] = this.#field(String((from.fieldRef as Rec).fieldPath))
      else if (from.secretKeyRef) {
        const ref = from.secretKeyRef as { name: string; key: string }
        const value = this.cluster.secret(ref.name)[ref.key]
        if (value === undefined) throw new Error(`Secret ${ref.name} has no key ${ref.key}`)
        out[name] = value
      } else throw new Error(`env ${name}: ${Object.keys(from).join(', ')} is not modelled`)
    }
    return out
  }

  /** The container's command line, $(VAR) expanded from its environment. */
  argv(container: string): string[] {
    const c = this.container(container)
    const env = this.env(container)
    return [...((c.command as string[] | undefined) ?? []), ...((c.args as string[] | undefined) ?? [])].map((a) => expand(a, env))
  }

  /** Where `file`, a path inside the container, lives on this machine. */
  path(container: string, file: string): string {
    const mounts = ((this.container(container).volumeMounts as Mount[] | undefined) ?? [])
      .filter((m) => file === m.mountPath || file.startsWith(`${m.mountPath}/`))
      .sort((a, z) => z.mountPath.length - a.mountPath.length)
    const m = mounts[0]
    const own = path.join(this.cluster.root, 'pods', this.uid)
    if (!m) return path.join(own, 'rootfs', file)
    const sub = m.subPathExpr !== undefined ? expand(m.subPathExpr, this.env(container)) : (m.subPath ?? '')
    // What is mounted exists (a volume, or the folder a sub-path names), as the kubelet makes it.
    const mounted = path.join(this.#volume(m.name), sub)
    if (!existsSync(mounted)) mkdirSync(mounted, { recursive: true })
    return path.join(mounted, path.relative(m.mountPath, file))
  }

  /** The folder on this machine that the pod's volume `name` is. */
  #volume(name: string): string {
    const claims = path.join(this.cluster.root, 'claims')
    const own = path.join(this.cluster.root, 'pods', this.uid, 'volumes', name)
    const templates = (((this.workload.spec as Rec).volumeClaimTemplates as { metadata: { name: string } }[] | undefined) ?? []).map((t) => t.metadata.name)
    const volume = ((this.spec.volumes as Rec[] | undefined) ?? []).find((v) => v.name === name)
    if (!volume) {
      if (this.workload.kind === 'StatefulSet' && templates.includes(name)) return path.join(claims, `${name}-${this.workload.metadata.name}-${this.ordinal}`)
      throw new Error(`${this.name}: no volume ${name}`)
    }
    if (volume.persistentVolumeClaim) return path.join(claims, String((volume.persistentVolumeClaim as Rec).claimName))
    // Everything else is the pod's own: a ConfigMap or Secret volume holds the object's keys.
    const files = volume.configMap ? this.cluster.configMap(String((volume.configMap as Rec).name)) : volume.secret ? this.cluster.secret(String((volume.secret as Rec).secretName)) : null
    mkdirSync(own, { recursive: true })
    if (files) for (const [key, text] of Object.entries(files)) writeFileSync(path.join(own, key), text)
    return own
  }

  #field(fieldPath: string): string {
    if (fieldPath === 'metadata.name') return this.name
    if (fieldPath === 'metadata.namespace') return String(this.workload.metadata.namespace)
    const label = /^metadata\.labels\['(.+)'\]$/.exec(fieldPath)
    // A label the pod does not have reads as the empty string.
    if (label) return this.labels[label[1]!] ?? ''
    throw new Error(`fieldRef ${fieldPath} is not modelled`)
  }
}

/** Kubernetes' $(VAR) expansion: a defined variable is replaced, anything else left as written. */
function expand(text: string, env: Record<string, string>): string {
  return text.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, name: string) => (Object.hasOwn(env, name) ? env[name]! : whole))
}
