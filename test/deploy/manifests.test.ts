// The Kubernetes manifests, checked without a cluster: both overlays render with the real
// kustomize (kubectl's; where kubectl is absent every test here skips and says why), every
// object validates against the Kubernetes OpenAPI schemas (the cert-manager kinds against their own), every pod template passes the
// Pod Security Standards "restricted" profile, each overlay has a default-deny NetworkPolicy,
// no ServiceAccount token is mounted anywhere and the only RBAC is the SVID request, and the ports, paths and files in the
// manifests are the ones the gateway uses: read from its own defaults and from the
// bulwark.yaml the ConfigMap carries (validated by the gateway's own config loader).
import t, { type Test } from 'tap'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import Fastify from 'fastify'
import { parse } from 'yaml'
import { buildConfig, defaultConfig } from '../../src/config/load.ts'
import { loadPolicies } from '../../src/config/policy.ts'
import type { Config } from '../../src/config/schema.ts'
import { registerAdminRoutes, type AdminDeps } from '../../src/routes/admin.ts'
import { certManagerProblems, isCertManager, openApiProblems, strictFieldProblems } from './k8s-schemas.ts'
import { containersOf, OVERLAYS, podSpecs, renderOverlays, type K8sObject } from './kubectl-kustomize.ts'
import { hardeningViolations, restrictedViolations } from './pod-security.ts'
import { repoRoot } from '../../kit/paths.ts'

type Rec = Record<string, unknown>
const { missing, rendered } = await renderOverlays(repoRoot)
/** Every test here reads the rendered overlays: without kubectl it is skipped, with the reason. */
const test = (name: string, fn: (t: Test) => Promise<void>) => t.test(name, { skip: missing ?? false }, fn)

const port = (hostPort: string) => Number(hostPort.slice(hostPort.lastIndexOf(':') + 1))
/** The gateway's own defaults: what the manifests must agree with. */
const defaults = defaultConfig(repoRoot).config
const API_PORT = port(defaults.server.listen)
const ADMIN_PORT = port(defaults.server.admin)
const GRPC_PORT = port(defaults.grpc.listen)
const docs = readFileSync(path.join(repoRoot, 'README.md'), 'utf8')
const packageVersion = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')).version as string

const byKind = (objs: K8sObject[], kind: string) => objs.filter((o) => o.kind === kind)
const one = (objs: K8sObject[], kind: string, name: string) => {
  const hit = objs.find((o) => o.kind === kind && o.metadata.name === name)
  if (!hit) throw new Error(`no ${kind}/${name}`)
  return hit
}
const labelsMatch = (selector: Rec | undefined, labels: Record<string, string> | undefined) =>
  Object.entries((selector?.matchLabels as Record<string, string> | undefined) ?? {}).every(([k, v]) => labels?.[k] === v)

/** The pod templates of an overlay: [owner, pod spec, pod labels]. */
function pods(objs: K8sObject[]) {
  return objs.flatMap((o) =>
    podSpecs(o).map((spec) => ({ owner: `${o.kind}/${o.metadata.name}`, spec, labels: ((o.spec as Rec).template as { metadata?: { labels?: Record<string, string>; annotations?: Record<string, string> } }).metadata ?? {} })),
  )
}

/** The Bulwark container of an overlay (a native sidecar in one, a container in the other) and its pod. */
function bulwark(objs: K8sObject[]) {
  for (const p of pods(objs)) {
    const c = containersOf(p.spec).find((c) => c.name === 'bulwark')
    if (c) return { pod: p.spec, labels: p.labels.labels ?? {}, c, owner: p.owner }
  }
  throw new Error('no bulwark container')
}

/** The bulwark.yaml the overlay's ConfigMap carries, through the gateway's own loader (schema, defaults, frozen). */
function gatewayConfig(objs: K8sObject[]): Readonly<Config> {
  const cm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('bulwark-config-'))!
  return buildConfig(parse((cm.data as Record<string, string>)['bulwark.yaml']!), 'k8s bulwark.yaml')
}

for (const overlay of OVERLAYS) {
  const objs = rendered[overlay]

  test(`${overlay}: renders, and every object validates against its schema`, async (t) => {
    t.ok(objs.length > 10, `${objs.length} objects`)
    for (const kind of ['Namespace', 'ServiceAccount', 'NetworkPolicy', 'Certificate', 'Service', 'PersistentVolumeClaim', 'ConfigMap']) {
      t.ok(byKind(objs, kind).length > 0, `has a ${kind}`)
    }
    t.ok(pods(objs).length > 0, 'has a workload')
    const strictProblems = strictFieldProblems(objs)
    t.same(strictProblems.get(-1) ?? [], [], 'the strict-field program compiles')
    for (const [i, obj] of objs.entries()) {
      const id = `${obj.kind}/${obj.metadata.name}`
      const problems = isCertManager(obj) ? certManagerProblems(obj) : [...(await openApiProblems(obj)), ...(strictProblems.get(i) ?? [])]
      t.same(problems, [], `${id} is valid`)
      if (obj.kind !== 'Namespace') t.equal(obj.metadata.namespace, 'bulwark', `${id} is in the bulwark namespace`)
    }
  })

  test(`${overlay}: every pod template passes Pod Security Standards "restricted", read-only and bounded`, async (t) => {
    const ns = one(objs, 'Namespace', 'bulwark')
    t.equal(ns.metadata.labels?.['pod-security.kubernetes.io/enforce'], 'restricted', 'the namespace enforces restricted')
    const all = pods(objs)
    t.ok(all.length > 0)
    for (const p of all) {
      t.same(restrictedViolations(p.spec, p.labels.annotations), [], `${p.owner}: restricted`)
      t.same(hardeningViolations(p.spec), [], `${p.owner}: read-only root, requests and limits`)
    }
  })

  test(`${overlay}: default-deny NetworkPolicy, and nothing opened wider than a port`, async (t) => {
    const policies = byKind(objs, 'NetworkPolicy')
    const deny = policies.filter((p) => {
      const s = p.spec as Rec
      return Object.keys((s.podSelector as Rec) ?? {}).length === 0 && (s.policyTypes as string[]).includes('Ingress') && (s.policyTypes as string[]).includes('Egress') && s.ingress === undefined && s.egress === undefined
    })
    t.equal(deny.length, 1, 'one policy selects every pod and allows nothing, both ways')
    for (const p of policies) {
      for (const dir of ['ingress', 'egress'] as const) {
        for (const rule of ((p.spec as Rec)[dir] as Rec[] | undefined) ?? []) {
          const peers = (rule[dir === 'ingress' ? 'from' : 'to'] as Rec[] | undefined) ?? []
          t.ok(peers.length > 0, `${p.metadata.name}: every ${dir} rule names its peers (an empty list would allow all)`)
          t.ok(((rule.ports as Rec[] | undefined) ?? []).length > 0, `${p.metadata.name}: every ${dir} rule names its ports`)
          for (const peer of peers) if (isIpBlock(peer)) t.not((peer.ipBlock as Rec).cidr, '0.0.0.0/0', 'no ipBlock allows the whole internet')
        }
      }
    }
    const b = bulwark(objs)
    const selecting = (dir: 'ingress' | 'egress') =>
      policies.filter((p) => labelsMatch((p.spec as Rec).podSelector as Rec, b.labels)).flatMap((p) => ((p.spec as Rec)[dir] as Rec[] | undefined) ?? [])
    const ingressPorts = selecting('ingress').map((r) => ({ ports: ((r.ports as Rec[]) ?? []).map((x) => x.port), from: r.from as Rec[] }))
    t.same(ingressPorts.map((r) => r.ports).sort(), [[API_PORT, GRPC_PORT], [ADMIN_PORT]].sort(), 'ingress to Bulwark: the API ports (REST, gRPC) and the admin port, nothing else')
    const admin = ingressPorts.find((r) => r.ports[0] === ADMIN_PORT)!
    t.same(admin.from, [{ namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'monitoring' } } }], 'admin port: from the monitoring namespace only')
    const api = ingressPorts.find((r) => r.ports[0] === API_PORT)!
    t.same(api.from, [{ namespaceSelector: { matchLabels: { 'bulwark.io/client': 'true' } } }], 'API port: from labelled client namespaces only')
    const egress = selecting('egress')
    const dns = egress.filter((r) => ((r.ports as Rec[]) ?? []).every((x) => x.port === 53))
    t.equal(dns.length, 1, 'egress: DNS')
    t.same((dns[0]!.to as Rec[])[0], { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'kube-system' } }, podSelector: { matchLabels: { 'k8s-app': 'kube-dns' } } }, 'DNS: the cluster DNS pods only')
    const jwks = egress.filter((r) => (r.to as Rec[]).some(isIpBlock))
    const config = gatewayConfig(objs)
    const issuer = new URL(config.auth.jwks.source)
    t.equal(issuer.protocol, 'https:')
    t.same(jwks.map((r) => (r.ports as Rec[]).map((x) => x.port)), [[Number(issuer.port || 443)]], 'egress: the JWKS issuer, on its HTTPS port')
    const others = egress.filter((r) => !dns.includes(r) && !jwks.includes(r))
    if (overlay === 'sidecar') t.same(others, [], 'sidecar: no other egress (the model server is on localhost)')
    else {
      const peers = others.map((r) => (r.to as Rec[]).map((x) => ((x.podSelector as Rec | undefined)?.matchLabels as Record<string, string> | undefined)?.['app.kubernetes.io/name'] ?? Object.keys(x).join()))
      t.same(peers.sort(), [['model-server'], ['redis']], 'gateway: the model server pods and Redis, by pod selector, nothing else')
    }
  })

  test(`${overlay}: no ServiceAccount token is mounted, and the only RBAC lets csi-driver-spiffe request the pod's SVID`, async (t) => {
    for (const sa of byKind(objs, 'ServiceAccount')) t.equal((sa as Rec).automountServiceAccountToken, false, `${sa.metadata.name}: automount off`)
    const accounts = new Set(byKind(objs, 'ServiceAccount').map((s) => s.metadata.name))
    for (const p of pods(objs)) {
      t.equal(p.spec.automountServiceAccountToken, false, `${p.owner}: automount off in the pod spec`)
      t.ok(accounts.has(String(p.spec.serviceAccountName)), `${p.owner}: runs as its own ServiceAccount ${String(p.spec.serviceAccountName)}`)
      const projected = ((p.spec.volumes as Rec[] | undefined) ?? []).flatMap((v) => ((v.projected as Rec | undefined)?.sources as Rec[] | undefined) ?? [])
      t.notOk(projected.some((s) => 'serviceAccountToken' in s), `${p.owner}: no projected token`)
    }
    for (const kind of ['ClusterRole', 'ClusterRoleBinding']) t.equal(byKind(objs, kind).length, 0, `no ${kind}`)
    // The driver creates the CertificateRequest as the pod's ServiceAccount (test/deploy/workload-identity.test.ts).
    for (const role of byKind(objs, 'Role')) {
      t.same((role as Rec).rules, [{ apiGroups: ['cert-manager.io'], resources: ['certificaterequests'], verbs: ['create'] }], `Role ${role.metadata.name}: create CertificateRequests, nothing else`)
    }
    const bulwarkAccount = String(bulwark(objs).pod.serviceAccountName)
    for (const binding of byKind(objs, 'RoleBinding')) {
      t.equal(((binding as Rec).roleRef as Rec).kind, 'Role', `${binding.metadata.name}: binds a Role of this namespace`)
      t.same((binding as Rec).subjects, [{ kind: 'ServiceAccount', name: bulwarkAccount, namespace: 'bulwark' }], `${binding.metadata.name}: to Bulwark's ServiceAccount only`)
    }
  })

  test(`${overlay}: ports, probes, paths and files agree with the gateway`, async (t) => {
    const config = gatewayConfig(objs)
    const b = bulwark(objs)
    t.equal(port(config.server.listen), API_PORT, `bulwark.yaml listens on the default API port ${API_PORT}`)
    t.equal(port(config.server.admin), ADMIN_PORT, `bulwark.yaml's admin listener is on the default admin port ${ADMIN_PORT}`)
    t.ok(config.grpc.enabled, 'the gRPC listener is on')
    t.equal(config.grpc.listen, `0.0.0.0:${GRPC_PORT}`, `bulwark.yaml's gRPC listener takes every address of the pod, on the default gRPC port ${GRPC_PORT}`)
    const ports = Object.fromEntries(((b.c.ports as Rec[]) ?? []).map((p) => [p.name, p.containerPort]))
    t.same(ports, { api: API_PORT, grpc: GRPC_PORT, admin: ADMIN_PORT }, 'container ports')
    const svc = one(objs, 'Service', 'bulwark')
    t.ok(labelsMatch({ matchLabels: (svc.spec as Rec).selector }, b.labels), 'the Service selects the Bulwark pods')
    t.same(((svc.spec as Rec).ports as Rec[]).map((p) => [p.port, p.targetPort]), [[API_PORT, 'api'], [GRPC_PORT, 'grpc'], [ADMIN_PORT, 'admin']], 'the Service exposes the API (REST, gRPC) and admin ports only')

    // Probes: on the admin port, at paths the admin listener really serves.
    const admin = Fastify()
    registerAdminRoutes(admin, {} as AdminDeps)
    await admin.ready()
    t.teardown(() => admin.close())
    for (const probe of ['startupProbe', 'livenessProbe', 'readinessProbe']) {
      const get = (b.c[probe] as { httpGet?: { path: string; port: string } } | undefined)?.httpGet
      t.ok(get, `${probe} is an HTTP GET`)
      t.equal(get?.port, 'admin', `${probe} is on the admin port`)
      t.ok(admin.hasRoute({ method: 'GET', url: get?.path ?? '' }), `${probe} path ${get?.path} is an admin route`)
    }
    t.equal((b.c.readinessProbe as { httpGet: { path: string } }).httpGet.path, '/readyz', 'readiness reflects models, audit and shutdown')

    // Mounts: each file the config names is in a mounted volume; only audit and state are writable.
    type Mount = { name: string; mountPath: string; readOnly?: boolean; subPath?: string; subPathExpr?: string }
    const mounts = (b.c.volumeMounts as Mount[]).map((m) => ({ ...m, volume: (b.pod.volumes as Rec[]).find((v) => v.name === m.name)! }))
    const mountOf = (file: string) => mounts.filter((m) => file === m.mountPath || file.startsWith(`${m.mountPath}/`)).sort((a, z) => z.mountPath.length - a.mountPath.length)[0]
    const args = b.c.args as string[]
    const configFile = args[args.indexOf('--config') + 1]!
    const cfgMount = mountOf(configFile)!
    t.match(cfgMount.volume, { configMap: { name: /^bulwark-config-/ } }, `${configFile} comes from the bulwark-config ConfigMap`)
    const secretFiles: [string, string][] = [
      [config.tls.certFile, 'tls'],
      [config.tls.keyFile, 'tls'],
      [config.audit.checkpoint.signingKeyFile, 'audit key'],
      [config.models.signingPublicKeyFile!, 'model signing key'],
      ...(config.state.redis ? [[config.state.redis.passwordFile!, 'Redis password'] as [string, string]] : []),
    ]
    const certificate = one(objs, 'Certificate', 'bulwark-tls')
    const certSecret = (certificate.spec as Rec).secretName as string
    for (const [file, what] of secretFiles) {
      const m = mountOf(file)
      t.ok(m, `${what}: ${file} is under a mount`)
      if (!m) continue
      const secret = (m.volume.secret as Rec | undefined)?.secretName as string | undefined
      t.ok(secret, `${file} comes from a Secret`)
      t.equal(m.subPath, undefined, `${file}: whole-directory mount (rotations reach the pod; subPath mounts never update)`)
      t.equal(m.readOnly, true, `${file}: read-only`)
      t.equal((m.volume.secret as Rec).defaultMode, 0o440, `${file}: mode 0440`)
      const key = path.basename(file)
      if (secret === certSecret) t.ok(['tls.crt', 'tls.key', 'ca.crt'].includes(key), `${file} is a key cert-manager writes`)
      else t.match(docs, new RegExp(`kubectl -n bulwark create secret generic ${secret} --from-file=${key.replace(/\./g, '\\.')}=`), `the README's deployment section creates Secret ${secret} with key ${key}`)
    }
    // Callers are checked against the SPIFFE trust bundle that csi-driver-spiffe writes, not a Secret's CA.
    const bundle = mountOf(config.tls.caFile)
    t.match(bundle?.volume, { csi: { driver: 'spiffe.csi.cert-manager.io', readOnly: true } }, `${config.tls.caFile} comes from the csi-driver-spiffe volume`)
    t.equal(bundle?.readOnly, true, `${config.tls.caFile}: read-only`)
    t.equal(bundle?.subPath, undefined, `${config.tls.caFile}: whole-directory mount (the driver rewrites the bundle in place)`)
    t.equal(path.basename(config.tls.caFile), 'ca.crt', 'the file the driver writes the bundle to')
    t.equal(config.tls.enabled && config.auth.enabled && config.authorization.enabled && config.audit.enabled, true, 'the front door and the audit trail are on')
    t.equal(config.models.requireSignature, true, 'models must be signed')
    t.match(configFile, /^\/etc\/bulwark\/bulwark\.yaml$/, 'the config path the image expects')

    const policiesMount = mountOf(path.join(config.policies.directory, 'x.yaml'))!
    t.match(policiesMount.volume, { configMap: { name: 'bulwark-policies' } }, 'policies come from the bulwark-policies ConfigMap, under a fixed name: an edit changes it in place, no rollout')
    t.equal(policiesMount.subPath, undefined, 'whole-directory mount: ConfigMap edits reach the pod (subPath mounts never update)')
    t.equal(config.policies.watch, true, 'and the gateway applies them without a restart')
    // The state folder's volume is test/deploy/budgets.test.ts's subject; with state.redis nothing is kept there.
    const writable = mounts.filter((m) => m.readOnly !== true).map((m) => m.mountPath).sort()
    if (config.state.redis) t.same(writable, [config.audit.directory], 'the only writable mount: the audit trail (the state is in Redis)')
    else t.same(writable, [config.audit.directory, config.state.directory].sort(), 'the only writable mounts: audit trail and state')
    const auditMount = mountOf(config.audit.directory)!
    t.match(auditMount.volume, { persistentVolumeClaim: { claimName: 'bulwark-data' } }, `${config.audit.directory} is on the persistent volume`)
    t.match(auditMount.subPathExpr, /^\$\(POD_NAME\)\//, `${config.audit.directory}: one folder per pod (one gateway process per folder)`)
    t.match((b.c.env as Rec[]).find((e) => e.name === 'POD_NAME'), { valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } }, 'POD_NAME from the downward API')

    // The policies in the ConfigMap load with the gateway's loader and cover every served model.
    const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-k8s-policies-'))
    const cm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name === 'bulwark-policies')!
    for (const [name, text] of Object.entries(cm.data as Record<string, string>)) writeFileSync(path.join(dir, name), text)
    const policies = await loadPolicies(dir)
    for (const m of config.models.serve) t.ok(policies.has(m.name), `policy for ${m.name}`)

    // The serving certificate: the Service's DNS names and nothing else (the SPIFFE ID is the CSI volume's), short-lived, new key on renewal.
    const spec = certificate.spec as { uris?: string[]; dnsNames: string[]; privateKey: { rotationPolicy: string }; usages: string[] }
    const svcName = `${svc.metadata.name}.${String(svc.metadata.namespace)}.svc`
    t.same(spec.dnsNames, [svc.metadata.name, svcName, `${svcName}.cluster.local`], 'the bulwark Service\'s DNS names')
    t.equal(spec.uris, undefined, 'no URI SAN: the workload identity comes from csi-driver-spiffe, not from a Certificate')
    t.equal(spec.privateKey.rotationPolicy, 'Always')
    t.ok(spec.usages.includes('server auth') && !spec.usages.includes('client auth'), 'serving only: not usable as a client certificate')

    // Images: Bulwark's at the package version, everything pinned to a tag or digest.
    t.equal(b.c.image, `registry.example.com/bulwark/bulwark:${packageVersion}`, 'the Bulwark image is the package version')
    for (const p of pods(objs)) for (const c of containersOf(p.spec)) t.match(String(c.image), /(:[A-Za-z0-9][A-Za-z0-9._-]*|@sha256:[0-9a-f]{64})$/, `${p.owner}/${String(c.name)}: pinned image`)
    for (const p of pods(objs)) for (const c of containersOf(p.spec)) t.notMatch(String(c.image), /:latest$/)
  })
}

test('sidecar: Bulwark is a native sidecar and the model listens on localhost only', async (t) => {
  const objs = rendered.sidecar
  const b = bulwark(objs)
  t.equal(b.owner, 'StatefulSet/inference')
  const init = (b.pod.initContainers as Rec[]) ?? []
  t.equal(init[0]?.name, 'bulwark', 'Bulwark is an init container...')
  t.equal(init[0]?.restartPolicy, 'Always', '...with restartPolicy Always: a native sidecar')
  const model = (b.pod.containers as Rec[]).find((c) => c.name === 'model')!
  t.ok((model.args as string[]).includes('--http-address=127.0.0.1'), 'the model server binds loopback')
  t.equal(model.ports, undefined, 'and declares no port')
  t.match(model.lifecycle, { preStop: { sleep: { seconds: Number } } }, 'and outlives Bulwark\'s drain')
  t.ok(Number(b.pod.terminationGracePeriodSeconds) * 1000 > gatewayConfig(objs).server.shutdownGraceMs, 'the grace period covers the drain')
  const modelPort = Number((model.args as string[]).find((a) => a.startsWith('--http-port='))!.split('=')[1])
  const svcPorts = byKind(objs, 'Service').flatMap((s) => ((s.spec as Rec).ports as Rec[]).map((p) => p.port))
  t.notOk(svcPorts.includes(modelPort), 'no Service exposes the model port')
  for (const m of gatewayConfig(objs).models.serve) {
    t.same(m.upstream?.endpoints, [`http://127.0.0.1:${modelPort}`], `${m.name}: Bulwark calls the model server in its pod, on loopback`)
  }
})

test('gateway: HPA and PDB for the Bulwark Deployment; model pods reachable from Bulwark only, with no egress', async (t) => {
  const objs = rendered.gateway
  const b = bulwark(objs)
  const deploy = one(objs, 'Deployment', 'bulwark')
  t.equal((deploy.spec as Rec).replicas, undefined, 'no replicas in the Deployment: the HPA owns the count')
  const hpa = one(objs, 'HorizontalPodAutoscaler', 'bulwark').spec as { scaleTargetRef: Rec; minReplicas: number; maxReplicas: number }
  t.same(hpa.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'Deployment', name: 'bulwark' })
  t.ok(hpa.minReplicas >= 2 && hpa.maxReplicas > hpa.minReplicas, `scales ${hpa.minReplicas}..${hpa.maxReplicas}`)
  const pdb = one(objs, 'PodDisruptionBudget', 'bulwark').spec as { selector: Rec; minAvailable: number }
  t.ok(labelsMatch(pdb.selector, b.labels), 'the PDB selects the Bulwark pods')
  t.ok(pdb.minAvailable < hpa.minReplicas, 'and still lets a node drain')

  const modelPods = pods(objs).filter((p) => p.owner === 'Deployment/model-server')
  t.equal(modelPods.length, 1)
  const modelLabels = modelPods[0]!.labels.labels!
  const modelPort = ((containersOf(modelPods[0]!.spec)[0]!.ports as Rec[])[0]!).containerPort
  const policies = byKind(objs, 'NetworkPolicy').filter((p) => labelsMatch((p.spec as Rec).podSelector as Rec, modelLabels))
  const ingress = policies.flatMap((p) => ((p.spec as Rec).ingress as Rec[] | undefined) ?? [])
  t.same(ingress, [{ from: [{ podSelector: { matchLabels: { 'app.kubernetes.io/name': 'bulwark' } } }], ports: [{ port: modelPort, protocol: 'TCP' }] }], 'model pods: ingress from Bulwark pods only, on the model port')
  t.same(policies.flatMap((p) => ((p.spec as Rec).egress as Rec[] | undefined) ?? []), [], 'model pods: no egress at all (exfiltration)')
  const toModels = byKind(objs, 'NetworkPolicy')
    .filter((p) => labelsMatch((p.spec as Rec).podSelector as Rec, b.labels))
    .flatMap((p) => ((p.spec as Rec).egress as Rec[] | undefined) ?? [])
    .filter((r) => (r.to as Rec[]).some((peer) => peer.podSelector !== undefined && labelsMatch(peer.podSelector as Rec, modelLabels)))
  t.same(toModels.map((r) => (r.ports as Rec[]).map((p) => p.port)), [[modelPort]], 'Bulwark may reach the model port')
  t.not(modelLabels['app.kubernetes.io/name'], 'bulwark', 'model pods do not get Bulwark\'s policies')

  // Bulwark's upstream endpoints are the model-server Service, whose port leads to the model pods' port.
  const svc = one(objs, 'Service', 'model-server')
  t.ok(labelsMatch({ matchLabels: (svc.spec as Rec).selector }, modelLabels), 'the model-server Service selects the model pods')
  const svcPort = ((svc.spec as Rec).ports as Rec[])[0]!
  const containerPort = (containersOf(modelPods[0]!.spec)[0]!.ports as Rec[]).find((p) => p.name === svcPort.targetPort)?.containerPort
  t.equal(containerPort, modelPort, 'the Service port leads to the model port')
  for (const m of gatewayConfig(objs).models.serve) {
    t.same(m.upstream?.endpoints, [`http://${svc.metadata.name}.${svc.metadata.namespace}.svc:${String(svcPort.port)}`], `${m.name}: Bulwark calls the model-server Service`)
  }
})

test('every Secret a pod mounts or reads is created by cert-manager or by a documented command', async (t) => {
  for (const overlay of OVERLAYS) {
    const objs = rendered[overlay]
    const issued = new Set(byKind(objs, 'Certificate').map((c) => (c.spec as Rec).secretName as string))
    for (const p of pods(objs)) {
      const mounted = ((p.spec.volumes as Rec[] | undefined) ?? []).map((v) => (v.secret as Rec | undefined)?.secretName as string | undefined)
      const read = containersOf(p.spec).flatMap((c) => ((c.env as Rec[] | undefined) ?? []).map((e) => ((e.valueFrom as Rec | undefined)?.secretKeyRef as Rec | undefined)?.name as string | undefined))
      for (const name of [...mounted, ...read]) {
        if (name === undefined) continue
        t.ok(issued.has(name) || docs.includes(`create secret generic ${name} `), `${overlay}: ${p.owner}: Secret ${name}`)
      }
    }
  }
})

function isIpBlock(peer: Rec): boolean {
  return 'ipBlock' in peer
}
