// Who can get which certificate, read from rendered manifests without a cluster: cert-manager's
// signer names, approver-policy's selection of CertificateRequestPolicies (its wildcard match,
// its issuerRef and namespace selectors, its RBAC `use` check), whether a policy lets a request
// carry a SPIFFE ID of another namespace, and whether it would approve a given Certificate.
// These follow approver-policy's documented behaviour; where the cluster decides (a namespace's
// labels), the answer is the one that assumes the most approval.

import type { K8sObject } from './kubectl-kustomize.ts'

export type IssuerRef = { name: string; kind?: string; group?: string }
export type Policy = K8sObject & {
  spec: {
    allowed?: {
      commonName?: { value?: string }
      dnsNames?: { values?: string[] }
      ipAddresses?: { values?: string[] }
      uris?: { values?: string[] }
      emailAddresses?: { values?: string[] }
      isCA?: boolean
      usages?: string[]
    }
    constraints?: { maxDuration?: string; privateKey?: { algorithm?: string; minSize?: number; maxSize?: number } }
    selector: { issuerRef?: Partial<IssuerRef>; namespace?: { matchNames?: string[]; matchLabels?: Record<string, string> } }
  }
}
export type Subject = { kind: string; name: string; namespace?: string }
type RbacRule = { apiGroups?: string[]; resources?: string[]; verbs?: string[]; resourceNames?: string[] }

const CM_GROUP = 'cert-manager.io'
export const objectId = (o: K8sObject) => `${o.kind}/${o.metadata.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata.name}`
const has = (list: string[] | undefined, v: string) => list !== undefined && (list.includes(v) || list.includes('*'))

/** cert-manager's signer name of an issuer: the RBAC resource an approver needs `approve` on. */
export function signerOf(ref: IssuerRef, namespace?: string): string {
  const group = ref.group || CM_GROUP
  return ref.kind === 'ClusterIssuer' ? `clusterissuers.${group}/${ref.name}` : `issuers.${group}/${namespace ?? '?'}.${ref.name}`
}

/** Two issuer references name the same issuer (kind defaults to Issuer, group to cert-manager.io, as cert-manager's do). */
export const sameIssuer = (a: IssuerRef, b: IssuerRef) => a.name === b.name && (a.kind || 'Issuer') === (b.kind || 'Issuer') && (a.group || CM_GROUP) === (b.group || CM_GROUP)

/** approver-policy's wildcard match: "*" stands for any run of characters, everything else for itself. */
export function wildcard(pattern: string, value: string): boolean {
  const parts = pattern.split('*')
  if (parts.length === 1) return pattern === value
  const first = parts[0]!
  const last = parts.at(-1)!
  if (!value.startsWith(first)) return false
  let from = first.length
  for (const middle of parts.slice(1, -1)) {
    const i = value.indexOf(middle, from)
    if (i < 0) return false
    from = i + middle.length
  }
  return value.length - from >= last.length && value.endsWith(last)
}

/**
 * Whether approver-policy would consider a policy for a request to an issuer: its issuerRef
 * selector (absent fields match; kind and group take cert-manager's defaults), then its
 * namespace selector. namespace null: a ClusterIssuer, requested from any namespace. A label
 * selector is taken to match (the labels are the cluster's).
 */
export function selects(p: Policy, ref: IssuerRef, namespace: string | null): boolean {
  const sel = p.spec.selector
  const ir = sel.issuerRef
  if (ir?.name !== undefined && !wildcard(ir.name, ref.name)) return false
  if (ir?.kind !== undefined && !wildcard(ir.kind, ref.kind || 'Issuer')) return false
  if (ir?.group !== undefined && !wildcard(ir.group, ref.group || CM_GROUP)) return false
  const names = sel.namespace?.matchNames ?? []
  if (namespace !== null && names.length > 0 && !names.some((n) => wildcard(n, namespace))) return false
  return true
}

/** The one namespace a policy selects by name, or null when it may apply in several, or any. */
export function onlyNamespace(p: Policy): string | null {
  const ns = p.spec.selector.namespace
  const names = ns?.matchNames ?? []
  return names.length === 1 && !names[0]!.includes('*') && ns?.matchLabels === undefined ? names[0]! : null
}

/**
 * Ways a policy lets a request carry a SPIFFE ID that is not one of its own namespace's (empty =
 * none): a CA certificate (which signs anything), URI SANs without one namespace selected by
 * name, or a URI that is not spiffe://<td>/ns/<that namespace>/sa/<one account>.
 */
export function uriProblems(p: Policy): string[] {
  const problems: string[] = []
  const allowed = p.spec.allowed ?? {}
  if (allowed.isCA === true) problems.push(`${objectId(p)} approves CA certificates, which can sign any SPIFFE ID`)
  const uris = allowed.uris?.values ?? []
  if (uris.length === 0) return problems
  const ns = onlyNamespace(p)
  if (ns === null) problems.push(`${objectId(p)} allows URI SANs but does not select exactly one namespace by name`)
  for (const uri of uris) {
    const m = /^spiffe:\/\/([^/*]+)\/ns\/([^/*]+)\/sa\/([^/*]+)$/.exec(uri)
    if (!m) problems.push(`${objectId(p)} allows URI SAN ${uri}: not one namespace's one ServiceAccount`)
    else if (ns !== null && m[2] !== ns) problems.push(`${objectId(p)} allows ${uri} in requests from namespace ${ns}`)
  }
  return problems
}

/** The RoleBindings and ClusterRoleBindings among objs that let someone `use` a policy (approver-policy's RBAC check). */
export function bindingsOf(p: Policy, objs: K8sObject[]): K8sObject[] {
  const grants = (o: K8sObject) =>
    ((o.rules as RbacRule[] | undefined) ?? []).some(
      (r) => has(r.apiGroups, 'policy.cert-manager.io') && has(r.resources, 'certificaterequestpolicies') && has(r.verbs, 'use') && (r.resourceNames === undefined || r.resourceNames.includes(p.metadata.name)),
    )
  const roles = objs.filter((o) => (o.kind === 'Role' || o.kind === 'ClusterRole') && grants(o))
  return objs.filter((b) => {
    if (b.kind !== 'RoleBinding' && b.kind !== 'ClusterRoleBinding') return false
    const ref = b.roleRef as { kind: string; name: string }
    return roles.some((r) => r.kind === ref.kind && r.metadata.name === ref.name && (r.kind === 'ClusterRole' || r.metadata.namespace === b.metadata.namespace))
  })
}

/** Whether `who` may use a policy for requests in a namespace: a RoleBinding there, or a ClusterRoleBinding. */
export function boundIn(p: Policy, objs: K8sObject[], namespace: string, who: Subject): boolean {
  return bindingsOf(p, objs).some(
    (b) =>
      (b.kind === 'ClusterRoleBinding' || b.metadata.namespace === namespace) &&
      ((b.subjects as Subject[] | undefined) ?? []).some((s) => s.kind === who.kind && s.name === who.name && s.namespace === who.namespace),
  )
}

const seconds = (d: string) => {
  const units: Record<string, number> = { s: 1, m: 60, h: 3600 }
  let total = 0
  for (const m of d.matchAll(/([0-9.]+)(h|m|s)/g)) total += Number(m[1]) * units[m[2]!]!
  return total
}

/**
 * What in a Certificate a policy would not approve (empty = it approves). Unset Certificate
 * fields take cert-manager's defaults: 90 days, an RSA 2048 key, digital signature and key
 * encipherment.
 */
export function notPermitted(p: Policy, cert: K8sObject): string[] {
  const spec = cert.spec as { dnsNames?: string[]; uris?: string[]; commonName?: string; ipAddresses?: string[]; emailAddresses?: string[]; usages?: string[]; isCA?: boolean; duration?: string; privateKey?: { algorithm?: string; size?: number } }
  const allowed = p.spec.allowed ?? {}
  const out: string[] = []
  const within = (asked: string[] | undefined, ok: string[] | undefined, what: string) => {
    for (const v of asked ?? []) if (!(ok ?? []).some((pattern) => wildcard(pattern, v))) out.push(`${what} ${v}`)
  }
  within(spec.dnsNames, allowed.dnsNames?.values, 'DNS name')
  within(spec.uris, allowed.uris?.values, 'URI')
  within(spec.ipAddresses, allowed.ipAddresses?.values, 'IP address')
  within(spec.emailAddresses, allowed.emailAddresses?.values, 'email address')
  within(spec.commonName === undefined ? [] : [spec.commonName], allowed.commonName?.value === undefined ? [] : [allowed.commonName.value], 'common name')
  for (const u of spec.usages ?? ['digital signature', 'key encipherment']) if (!(allowed.usages ?? []).includes(u)) out.push(`usage ${u}`)
  if (spec.isCA === true && allowed.isCA !== true) out.push('isCA')
  const duration = spec.duration ?? '2160h'
  const max = p.spec.constraints?.maxDuration
  if (max !== undefined && seconds(duration) > seconds(max)) out.push(`duration ${duration} over ${max}`)
  const key = p.spec.constraints?.privateKey
  const algorithm = spec.privateKey?.algorithm ?? 'RSA'
  const size = spec.privateKey?.size ?? (algorithm === 'ECDSA' ? 256 : 2048)
  if (key?.algorithm !== undefined && key.algorithm !== algorithm) out.push(`key algorithm ${algorithm}`)
  if ((key?.minSize !== undefined && size < key.minSize) || (key?.maxSize !== undefined && size > key.maxSize)) out.push(`key size ${size}`)
  return out
}
