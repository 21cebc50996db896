// Workload identities: which certificate authority can put a SPIFFE ID into a certificate, and
// who approves it. Bulwark's policies trust a caller by the SPIFFE ID in its client certificate,
// so a CA that signs whatever URI SAN a Certificate asks for gives everyone who may create a
// Certificate, in any namespace, the identity of every workload. The safe path, checked on what
// `kubectl apply -k` would send (both overlays, the cluster prerequisites in k8s/cluster, the
// example client in k8s/examples/client) and on the Helm values in k8s/cluster/helm:
//   - cert-manager's own approver is off, so every request waits for an approver that checks it;
//   - SPIFFE IDs come from csi-driver-spiffe's CSI volume only: its approver approves an SVID
//     only for the requesting pod's own namespace and ServiceAccount, and it is the only
//     approver that may decide for the SPIFFE issuer (approver-policy has no RBAC for that
//     signer, no CertificateRequestPolicy selects it, no Certificate names it);
//   - every other issuer is governed by CertificateRequestPolicies that allow no URI SAN, or only
//     ones of the one namespace they select, and are bound to users per namespace;
//   - the driver's trust domain is the one the policies name their callers in;
//   - the Bulwark pod mounts the CSI volume and checks client certificates against the trust
//     domain's bundle that the volume carries, not against a CA a Certificate can name.
import t, { type Test } from 'tap'
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { parse } from 'yaml'
import { buildConfig } from '../../src/config/load.ts'
import { bindingsOf, boundIn, notPermitted, objectId as id, onlyNamespace, sameIssuer, selects, signerOf, uriProblems, wildcard, type IssuerRef, type Policy, type Subject } from './issuance.ts'
import { certManagerProblems, isCertManager, openApiProblems, strictFieldProblems } from './k8s-schemas.ts'
import { containersOf, kustomizeMissing, podSpecs, render, type K8sObject } from './kubectl-kustomize.ts'
import { hardeningViolations, restrictedViolations } from './pod-security.ts'
import { repoRoot } from '../../kit/paths.ts'

type Rec = Record<string, unknown>
type RbacRule = { apiGroups?: string[]; resources?: string[]; verbs?: string[] }

/** The CSI driver csi-driver-spiffe registers, and its volume attribute for the group that may read the files. */
const SPIFFE_DRIVER = 'spiffe.csi.cert-manager.io'
const FS_GROUP_ATTRIBUTE = 'spiffe.csi.cert-manager.io/fs-group'
/** cert-manager's controller as README.md installs it (release cert-manager, namespace cert-manager): it makes the CertificateRequests of Certificates. */
const CERT_MANAGER_CONTROLLER: Subject = { kind: 'ServiceAccount', name: 'cert-manager', namespace: 'cert-manager' }
/** approver-policy's chart default: every issuer and cluster issuer of cert-manager.io. */
const APPROVER_POLICY_DEFAULT_SIGNERS = ['issuers.cert-manager.io/*', 'clusterissuers.cert-manager.io/*']

const isRec = (v: unknown): v is Rec => typeof v === 'object' && v !== null && !Array.isArray(v)
const at = (v: unknown, ...keys: string[]): unknown => keys.reduce<unknown>((o, k) => (isRec(o) ? o[k] : undefined), v)
const has = (list: string[] | undefined, v: string) => list !== undefined && (list.includes(v) || list.includes('*'))

const missing = await kustomizeMissing()
/** A kustomization that does not exist renders as nothing; the tests below then say what is missing. */
const renderIfThere = async (dir: string) => (missing === null && existsSync(path.join(repoRoot, dir, 'kustomization.yaml')) ? render(path.join(repoRoot, dir)) : [])
const overlays = { sidecar: await renderIfThere('k8s/overlays/sidecar'), gateway: await renderIfThere('k8s/overlays/gateway') }
const cluster = await renderIfThere('k8s/cluster')
const client = await renderIfThere('k8s/examples/client')
/** Each rendered kustomization, by where it lives: what a cluster running either overlay holds. */
const sources: [string, K8sObject[]][] = [['k8s/overlays/sidecar', overlays.sidecar], ['k8s/overlays/gateway', overlays.gateway], ['k8s/cluster', cluster], ['k8s/examples/client', client]]
const everything = sources.flatMap(([, objs]) => objs)
const test = (name: string, fn: (t: Test) => Promise<void>) => t.test(name, { skip: missing ?? false }, fn)

const helmValues = (chart: string): Rec => {
  const file = path.join(repoRoot, 'k8s/cluster/helm', `${chart}.values.yaml`)
  const v: unknown = existsSync(file) ? parse(readFileSync(file, 'utf8')) : undefined
  return isRec(v) ? v : {}
}
const certManagerValues = helmValues('cert-manager')
const csiValues = helmValues('csi-driver-spiffe')
const approverPolicyValues = helmValues('approver-policy')
const trustDomain = at(csiValues, 'app', 'trustDomain') as string | undefined
const spiffeIssuer = (at(csiValues, 'app', 'issuer') as IssuerRef | undefined) ?? null

const certificates = everything.filter((o) => o.kind === 'Certificate')
const issuers = everything.filter((o) => o.kind === 'Issuer' || o.kind === 'ClusterIssuer')
const policies = everything.filter((o): o is Policy => o.kind === 'CertificateRequestPolicy')

/** Every SPIFFE ID or pattern the policies in an overlay's bulwark-policies ConfigMap name. */
function policyWorkloads(objs: K8sObject[]): string[] {
  const cm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'bulwark-policies')
  return Object.values((cm?.data as Record<string, string> | undefined) ?? {}).flatMap((text) =>
    (((parse(text) as { allow?: { workloads?: string[] }[] }).allow ?? []).flatMap((rule) => rule.workloads ?? [])),
  )
}
const trustDomainOf = (spiffeId: string) => /^spiffe:\/\/([^/]+)\//.exec(spiffeId)?.[1]

/** A pod's csi-driver-spiffe volumes. */
const spiffeVolumes = (pod: Rec) => ((pod.volumes as Rec[] | undefined) ?? []).filter((v) => at(v, 'csi', 'driver') === SPIFFE_DRIVER)

/** The RoleBindings that let a ServiceAccount create CertificateRequests in its namespace: csi-driver-spiffe makes the SVID request as the pod's ServiceAccount. */
function requestBindings(objs: K8sObject[], namespace: string, serviceAccount: string) {
  return objs.filter((b) => {
    if (b.kind !== 'RoleBinding' || b.metadata.namespace !== namespace) return false
    if (!((b.subjects as Subject[] | undefined) ?? []).some((s) => s.kind === 'ServiceAccount' && s.name === serviceAccount && (s.namespace ?? namespace) === namespace)) return false
    const ref = b.roleRef as { kind: string; name: string }
    const role = objs.find((r) => r.kind === ref.kind && r.metadata.name === ref.name && r.metadata.namespace === namespace)
    return ((role?.rules as RbacRule[] | undefined) ?? []).some((r) => has(r.apiGroups, 'cert-manager.io') && has(r.resources, 'certificaterequests') && has(r.verbs, 'create'))
  })
}

test("cert-manager's own approver is off: every CertificateRequest waits for an approver that checks it", async (t) => {
  const off = certManagerValues.disableAutoApproval === true || ((certManagerValues.extraArgs as string[] | undefined) ?? []).some((a) => /^--controllers=.*-certificaterequests-approver/.test(a))
  t.ok(off, 'k8s/cluster/helm/cert-manager.values.yaml sets disableAutoApproval: true (otherwise cert-manager approves every request, whatever it names)')
})

test('the SPIFFE issuer: only csi-driver-spiffe\'s approver may decide its requests', async (t) => {
  t.ok(spiffeIssuer, 'k8s/cluster/helm/csi-driver-spiffe.values.yaml names the issuer the driver requests SVIDs from (app.issuer)')
  if (!spiffeIssuer) return
  t.equal(spiffeIssuer.kind, 'ClusterIssuer', 'a ClusterIssuer: the driver requests from the pod\'s own namespace, whichever it is')
  t.ok(issuers.some((o) => sameIssuer({ name: o.metadata.name, kind: o.kind, group: 'cert-manager.io' }, spiffeIssuer)), `k8s/cluster creates ${spiffeIssuer.kind}/${spiffeIssuer.name}`)
  const signer = signerOf(spiffeIssuer)
  t.equal(at(csiValues, 'app', 'approver', 'signerName'), signer, `the driver's approver has RBAC to approve for ${signer} only (the chart's default is every signer)`)
  const approverPolicySigners = (at(approverPolicyValues, 'app', 'approveSignerNames') as string[] | undefined) ?? APPROVER_POLICY_DEFAULT_SIGNERS
  t.same(approverPolicySigners.filter((s) => wildcard(s, signer)), [], 'approver-policy has no RBAC to approve for the SPIFFE issuer (app.approveSignerNames)')
  t.same(policies.filter((p) => selects(p, spiffeIssuer, null)).map(id), [], 'no CertificateRequestPolicy selects the SPIFFE issuer')
  t.same(certificates.filter((c) => sameIssuer((c.spec as { issuerRef: IssuerRef }).issuerRef, spiffeIssuer)).map(id), [], 'no Certificate names the SPIFFE issuer: its SVIDs are requested by the CSI driver as the pod\'s ServiceAccount, never by cert-manager on someone\'s behalf')
})

test('no Certificate or issuer in k8s/ can put a SPIFFE ID into a certificate without a policy that restricts it', async (t) => {
  t.ok(certificates.length > 0, 'the overlays have a Certificate (the gateway\'s serving certificate)')
  for (const [where, objs] of sources) {
    for (const cert of objs.filter((o) => o.kind === 'Certificate')) {
      const what = `${where}: ${id(cert)}`
      const spec = cert.spec as { uris?: string[]; issuerRef: IssuerRef }
      const ns = cert.metadata.namespace ?? 'default'
      t.same((spec.uris ?? []).filter((u) => u.startsWith('spiffe://')), [], `${what} names no SPIFFE ID: a workload's SPIFFE ID comes from the CSI driver`)
      const governing = policies.filter((p) => selects(p, spec.issuerRef, ns))
      t.ok(governing.length > 0, `${what}: its issuer ${spec.issuerRef.kind || 'Issuer'}/${spec.issuerRef.name} is governed by a CertificateRequestPolicy`)
      for (const p of governing) t.same(uriProblems(p), [], `${what}: ${id(p)} allows no other namespace's SPIFFE ID`)
      const approving = governing.filter((p) => notPermitted(p, cert).length === 0 && boundIn(p, everything, ns, CERT_MANAGER_CONTROLLER))
      const why = governing.map((p) => `${id(p)}: ${notPermitted(p, cert).join(', ') || 'not bound'}`).join('; ') || 'none'
      t.ok(approving.length > 0, `${what}: a policy bound to cert-manager's controller in ${ns} approves it (${why})`)
    }
    for (const issuer of objs.filter((o) => o.kind === 'Issuer' || o.kind === 'ClusterIssuer')) {
      const ref = { name: issuer.metadata.name, kind: issuer.kind, group: 'cert-manager.io' }
      if (spiffeIssuer && sameIssuer(ref, spiffeIssuer)) continue // the test above
      const governing = policies.filter((p) => selects(p, ref, issuer.kind === 'ClusterIssuer' ? null : (issuer.metadata.namespace ?? 'default')))
      t.ok(governing.length > 0, `${where}: ${id(issuer)} is governed by a CertificateRequestPolicy`)
      for (const p of governing) t.same(uriProblems(p), [], `${where}: ${id(issuer)}: ${id(p)} allows no other namespace's SPIFFE ID`)
    }
  }
})

test('every CertificateRequestPolicy selects one issuer and one namespace, restricts URI SANs to that namespace, and is bound in it', async (t) => {
  t.ok(policies.length > 0, 'k8s/cluster has the CertificateRequestPolicy that approves the gateway\'s serving certificate')
  for (const p of policies) {
    t.same(uriProblems(p), [], `${id(p)}: URI SANs only of the namespace it selects, and no CA certificates`)
    const ir = p.spec.selector.issuerRef
    t.ok(ir && [ir.name, ir.kind, ir.group].every((v) => typeof v === 'string' && v.length > 0 && !v.includes('*')), `${id(p)}: selects one issuer by name, kind and group`)
    const ns = onlyNamespace(p)
    t.ok(ns, `${id(p)}: selects one namespace by name`)
    const bindings = bindingsOf(p, everything)
    t.ok(bindings.length > 0, `${id(p)}: bound to who may use it (otherwise approver-policy ignores it)`)
    for (const b of bindings) {
      t.equal(b.kind, 'RoleBinding', `${id(b)}: a RoleBinding, so the policy applies in its namespace only`)
      t.equal(b.metadata.namespace, ns, `${id(b)}: in the namespace the policy selects`)
    }
  }
})

for (const overlay of ['sidecar', 'gateway'] as const) {
  test(`${overlay}: the Bulwark pod gets its SPIFFE ID from the csi-driver-spiffe volume and checks clients against its trust bundle`, async (t) => {
    const objs = overlays[overlay]
    const owner = objs.find((o) => podSpecs(o).some((s) => containersOf(s).some((c) => c.name === 'bulwark')))
    t.ok(owner, 'a pod template runs Bulwark')
    if (!owner) return
    const pod = podSpecs(owner)[0]!
    const bulwark = containersOf(pod).find((c) => c.name === 'bulwark')!
    const volumes = spiffeVolumes(pod)
    t.equal(volumes.length, 1, `one ${SPIFFE_DRIVER} volume`)
    const volume = volumes[0]
    if (!volume) return
    t.equal(at(volume, 'csi', 'readOnly'), true, 'read-only (the driver refuses a writable one)')
    const fsGroup = String(at(pod, 'securityContext', 'fsGroup'))
    t.equal(at(volume, 'csi', 'volumeAttributes', FS_GROUP_ATTRIBUTE), fsGroup, `the files belong to the pod's group ${fsGroup}, so the non-root gateway can read its key`)
    const mount = ((bulwark.volumeMounts as Rec[] | undefined) ?? []).find((m) => m.name === volume.name)
    t.ok(mount, 'mounted in the Bulwark container')
    t.equal(mount?.readOnly, true, 'read-only')
    t.equal(mount?.subPath, undefined, 'whole directory: the driver renews the SVID in place')
    const cm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('bulwark-config-'))!
    const config = buildConfig(parse((cm.data as Record<string, string>)['bulwark.yaml']!), `${overlay} bulwark.yaml`)
    t.equal(path.dirname(config.tls.caFile), mount?.mountPath, `client certificates are checked against the trust domain's bundle in the volume (tls.caFile ${config.tls.caFile}), not a CA that a Certificate can name`)
    const sa = String(pod.serviceAccountName)
    const ns = owner.metadata.namespace!
    t.ok(requestBindings(objs, ns, sa).length > 0, `ServiceAccount ${sa} may create CertificateRequests in ${ns}: the driver requests the SVID spiffe://${trustDomain ?? '<trust domain>'}/ns/${ns}/sa/${sa} as it`)
  })
}

test('the driver\'s trust domain is the one the policies name their callers in', async (t) => {
  t.type(trustDomain, 'string', 'k8s/cluster/helm/csi-driver-spiffe.values.yaml sets app.trustDomain (the driver\'s and its approver\'s --trust-domain)')
  for (const overlay of ['sidecar', 'gateway'] as const) {
    const workloads = policyWorkloads(overlays[overlay])
    t.ok(workloads.length > 0, `${overlay}: the policies name callers`)
    t.same([...new Set(workloads.map(trustDomainOf))], [trustDomain], `${overlay}: every caller in the policies (k8s/base/policies/) is in trust domain ${String(trustDomain)}`)
  }
})

test('the example client gets its SPIFFE ID from the CSI volume, and it is one the policies name', async (t) => {
  t.ok(client.length > 0, 'k8s/examples/client renders')
  const workloads = new Set(policyWorkloads(overlays.gateway))
  const owners = client.filter((o) => podSpecs(o).length > 0)
  t.ok(owners.length > 0, 'it runs a pod')
  for (const owner of owners) {
    const pod = podSpecs(owner)[0]!
    const volume = spiffeVolumes(pod)[0]
    t.ok(volume, `${id(owner)} mounts a ${SPIFFE_DRIVER} volume`)
    t.equal(at(volume, 'csi', 'readOnly'), true, 'read-only')
    t.equal(at(volume, 'csi', 'volumeAttributes', FS_GROUP_ATTRIBUTE), String(at(pod, 'securityContext', 'fsGroup')), 'readable by the pod\'s group')
    const ns = owner.metadata.namespace!
    const sa = String(pod.serviceAccountName)
    t.ok(requestBindings(client, ns, sa).length > 0, `ServiceAccount ${sa} may create CertificateRequests in ${ns}`)
    t.ok(workloads.has(`spiffe://${String(trustDomain)}/ns/${ns}/sa/${sa}`), `its SPIFFE ID spiffe://${String(trustDomain)}/ns/${ns}/sa/${sa} is one the policies allow`)
    t.same(restrictedViolations(pod), [], `${id(owner)}: Pod Security Standards "restricted"`)
    t.same(hardeningViolations(pod), [], `${id(owner)}: read-only root, requests and limits`)
    t.equal(pod.automountServiceAccountToken, false, 'no ServiceAccount token in the pod (the driver gets its own, for the request only)')
  }
})

test('k8s/cluster and the example client validate against their schemas', async (t) => {
  for (const [where, objs] of [['k8s/cluster', cluster], ['k8s/examples/client', client]] as const) {
    t.ok(objs.length > 0, `${where} renders`)
    const strict = strictFieldProblems(objs)
    t.same(strict.get(-1) ?? [], [], `${where}: the strict-field program compiles`)
    for (const [i, obj] of objs.entries()) {
      const problems = isCertManager(obj) ? certManagerProblems(obj) : [...(await openApiProblems(obj)), ...(strict.get(i) ?? [])]
      t.same(problems, [], `${where}: ${id(obj)} is valid`)
    }
  }
  for (const obj of cluster) {
    if (['ClusterIssuer', 'CertificateRequestPolicy', 'ClusterRole'].includes(obj.kind)) t.equal(obj.metadata.namespace, undefined, `${id(obj)} is cluster-scoped`)
  }
})

test('the deployment guide installs the safe path and warns against a plain CA ClusterIssuer', async (t) => {
  const readme = readFileSync(path.join(repoRoot, 'README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('\n## Deployment'), readme.indexOf('\n## ', readme.indexOf('\n## Deployment') + 1))
  for (const chart of ['cert-manager', 'csi-driver-spiffe', 'approver-policy']) {
    t.ok(existsSync(path.join(repoRoot, 'k8s/cluster/helm', `${chart}.values.yaml`)), `k8s/cluster/helm/${chart}.values.yaml exists`)
    t.match(section, `-f k8s/cluster/helm/${chart}.values.yaml`, `the guide installs ${chart} with its values file`)
  }
  t.match(section, 'kubectl apply -k k8s/cluster', 'the guide applies the cluster prerequisites')
  t.match(section, /plain CA `ClusterIssuer` must not\s+issue SPIFFE IDs/, 'the guide says a plain CA ClusterIssuer must not issue SPIFFE IDs')
})
