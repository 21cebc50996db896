// The tools the manifest tests rely on, shown to catch what they claim to: kustomize as the
// tests run it (the features k8s/ uses, its refusals, a deprecated field failing the render),
// the schema checks (unknown fields, wrong types, cert-manager and approver-policy), the Pod
// Security Standards "restricted" checker, and the reading of who may get which certificate.
import t from 'tap'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { boundIn, notPermitted, selects, uriProblems, wildcard, type Policy } from './issuance.ts'
import { certManagerProblems, openApiProblems, strictFieldProblems } from './k8s-schemas.ts'
import { kustomizeMissing, render, type K8sObject } from './kubectl-kustomize.ts'
import { hardeningViolations, restrictedViolations } from './pod-security.ts'

const missing = await kustomizeMissing()
const work = mkdtempSync(path.join(tmpdir(), 'bulwark-kustomize-'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))
function files(dir: string, entries: Record<string, string>): string {
  const root = path.join(work, dir)
  for (const [name, text] of Object.entries(entries)) {
    mkdirSync(path.dirname(path.join(root, name)), { recursive: true })
    writeFileSync(path.join(root, name), text)
  }
  return root
}

const goodContainer = {
  name: 'app',
  image: 'app:1',
  securityContext: { allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } },
  resources: { requests: { cpu: '100m', memory: '64Mi' }, limits: { cpu: '1', memory: '128Mi' } },
}
const goodPod = { securityContext: { runAsNonRoot: true, runAsUser: 1000, seccompProfile: { type: 'RuntimeDefault' } }, containers: [goodContainer] }

t.test('kustomize: resources, namespace, generators with hashed names, images, both patch kinds', { skip: missing ?? false }, async (t) => {
  files('k/base', {
    'kustomization.yaml': 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: ns\nresources: [deploy.yaml, ns.yaml]\nconfigMapGenerator:\n  - name: cfg\n    files: [app.yaml]\n    literals: [a=1]\n',
    'ns.yaml': 'apiVersion: v1\nkind: Namespace\nmetadata: { name: ns }\n',
    'app.yaml': 'x: 1\n',
    'deploy.yaml': [
      'apiVersion: apps/v1', 'kind: Deployment', 'metadata: { name: web }', 'spec:', '  selector: { matchLabels: { app: web } }', '  template:',
      '    metadata: { labels: { app: web } }', '    spec:', '      containers:', '        - name: web', '          image: web', '          env: [{ name: A, value: "1" }]',
      '      volumes:', '        - name: cfg', '          configMap: { name: cfg }',
    ].join('\n'),
  })
  const overlay = files('k/overlay', {
    'kustomization.yaml': [
      'apiVersion: kustomize.config.k8s.io/v1beta1', 'kind: Kustomization', 'resources: [../base]',
      'configMapGenerator:', '  - name: cfg', '    behavior: merge', '    literals: [b=2]',
      'images:', '  - name: web', '    newName: registry.example/web', '    newTag: "2.0"',
      'patches:', '  - path: smp.yaml', '  - target: { kind: Deployment, name: web }', '    patch: |-', '      - op: add', '        path: /spec/replicas', '        value: 3',
    ].join('\n'),
    'smp.yaml': 'apiVersion: apps/v1\nkind: Deployment\nmetadata: { name: web }\nspec:\n  template:\n    spec:\n      containers:\n        - name: web\n          env: [{ name: B, value: "2" }]\n',
  })
  const objs = await render(overlay)
  const deploy = objs.find((o) => o.kind === 'Deployment')! as K8sObject & { spec: { replicas: number; template: { spec: { containers: { image: string; env: unknown[] }[]; volumes: { configMap: { name: string } }[] } } } }
  const cm = objs.find((o) => o.kind === 'ConfigMap')!
  t.equal(deploy.metadata.namespace, 'ns', 'namespace set')
  t.equal(objs.find((o) => o.kind === 'Namespace')!.metadata.namespace, undefined, 'cluster-scoped kinds get no namespace')
  t.equal(deploy.spec.replicas, 3, 'JSON 6902 patch applied')
  t.same(deploy.spec.template.spec.containers[0]!.env, [{ name: 'B', value: '2' }, { name: 'A', value: '1' }], 'strategic merge: env merged by name, the patch\'s new entries first')
  t.equal(deploy.spec.template.spec.containers[0]!.image, 'registry.example/web:2.0', 'image set')
  t.same(cm.data, { 'app.yaml': 'x: 1\n', a: '1', b: '2' }, 'generator merged across levels')
  t.match(cm.metadata.name, /^cfg-[a-z0-9]{10}$/, 'name has a content hash')
  t.equal(deploy.spec.template.spec.volumes[0]!.configMap.name, cm.metadata.name, 'references follow the hashed name')
})

t.test('kustomize refuses what does not belong, and a deprecated field fails the render', { skip: missing ?? false }, async (t) => {
  const outside = files('k/outside', { 'kustomization.yaml': 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../base/deploy.yaml]\n' })
  await t.rejects(render(outside), /is not in or below/, 'a file outside the kustomization root (the load restrictor)')
  const deprecated = files('k/deprecated', { 'kustomization.yaml': 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\ncommonLabels: { a: b }\n' })
  await t.rejects(render(deprecated), /warned: .*'commonLabels' is deprecated/, 'a deprecated field')
  const twice = files('k/twice', { 'kustomization.yaml': 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../base]\nconfigMapGenerator: [{ name: cfg, literals: [c=3] }]\n' })
  await t.rejects(render(twice), /behavior must be merge or replace/, 'a ConfigMap generated twice')
  const stray = files('k/stray', {
    'kustomization.yaml': 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [../base]\npatches: [{ path: svc.yaml }]\n',
    'svc.yaml': 'apiVersion: v1\nkind: Service\nmetadata: { name: web }\nspec: { type: ClusterIP }\n',
  })
  await t.rejects(render(stray), /no resource matches strategic merge patch/, 'a patch for an object that is not there')
})

t.test('schema checks catch unknown fields, wrong types and bad cert-manager objects', async (t) => {
  const deploy = (container: Record<string, unknown>): K8sObject => ({
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name: 'x' },
    spec: { selector: { matchLabels: { a: 'b' } }, template: { metadata: { labels: { a: 'b' } }, spec: { containers: [container] } } },
  })
  t.same(await openApiProblems(deploy(goodContainer)), [], 'a good object passes')
  t.match(await openApiProblems(deploy({ ...goodContainer, securityContext: { runAsUser: 'root' } })), [/runAsUser: must be integer/], 'wrong type')
  const strict = strictFieldProblems([deploy(goodContainer), deploy({ ...goodContainer, securityContext: { runAsNonroot: true } })])
  t.notOk(strict.has(0), 'no problem in the good object')
  t.match(strict.get(1), [/runAsNonroot/], 'an unknown (misspelt) field is named')
  t.match(await openApiProblems({ apiVersion: 'example.com/v1', kind: 'Widget', metadata: { name: 'w' } }), [/not a Kubernetes kind/])

  const cert = (spec: Record<string, unknown>): K8sObject => ({ apiVersion: 'cert-manager.io/v1', kind: 'Certificate', metadata: { name: 'c' }, spec: { secretName: 's', issuerRef: { name: 'ca', kind: 'ClusterIssuer' }, uris: ['spiffe://td/x'], ...spec } })
  t.same(certManagerProblems(cert({ duration: '24h', renewBefore: '8h' })), [])
  t.match(certManagerProblems(cert({ usage: ['server auth'] })), [/usage/], 'unknown field')
  t.match(certManagerProblems(cert({ usages: ['server-auth'] })), [/usages/], 'unknown key usage')
  t.match(certManagerProblems(cert({ duration: '1h', renewBefore: '2h' })), [/renewBefore/], 'renewBefore longer than duration')
  t.match(certManagerProblems(cert({ privateKey: { rotationPolicy: 'Sometimes' } })), [/rotationPolicy/])

  const issuer = (kind: string, spec: Record<string, unknown>, namespace?: string): K8sObject => ({ apiVersion: 'cert-manager.io/v1', kind, metadata: { name: 'ca', ...(namespace ? { namespace } : {}) }, spec })
  t.same(certManagerProblems(issuer('Issuer', { ca: { secretName: 'ca' } }, 'ns')), [])
  t.match(certManagerProblems(issuer('ClusterIssuer', { acme: {} })).join('\n'), /acme/, 'an issuer type without a schema here is reported')
  t.match(certManagerProblems(issuer('ClusterIssuer', { ca: { secretName: 'ca' } }, 'ns')).join('\n'), /cluster-scoped/)
  const crp = (spec: Record<string, unknown>): K8sObject => ({ apiVersion: 'policy.cert-manager.io/v1alpha1', kind: 'CertificateRequestPolicy', metadata: { name: 'p' }, spec })
  t.same(certManagerProblems(crp({ allowed: { dnsNames: { values: ['a'], required: true } }, constraints: { maxDuration: '24h' }, selector: { issuerRef: { name: 'ca' } } })), [])
  t.match(certManagerProblems(crp({ allowed: { dnsName: { values: ['a'] } }, selector: { issuerRef: {} } })).join('\n'), /dnsName/, 'unknown field')
  t.match(certManagerProblems(crp({ allowed: { usages: ['server-auth'] }, selector: { issuerRef: {} } })).join('\n'), /usages/, 'unknown key usage')
  t.match(certManagerProblems(crp({ allowed: {}, selector: {} })).join('\n'), /issuerRef or namespace/, 'a selector that selects nothing')
  t.match(certManagerProblems(crp({ selector: { issuerRef: [{ name: 'ca' }] } })).join('\n'), /issuerRef/, 'issuerRef is one object, not a list')
})

t.test('the issuance reading: selection, URI SANs, RBAC and approval as approver-policy decides them', async (t) => {
  t.ok(wildcard('*', 'anything') && wildcard('issuers.cert-manager.io/*', 'issuers.cert-manager.io/ns.ca') && wildcard('a*c*e', 'abcde'))
  t.notOk(wildcard('issuers.cert-manager.io/*', 'clusterissuers.cert-manager.io/spiffe-ca') || wildcard('a*c', 'abd') || wildcard('abc', 'ab'))
  const policy = (spec: Partial<Policy['spec']>): Policy => ({ apiVersion: 'policy.cert-manager.io/v1alpha1', kind: 'CertificateRequestPolicy', metadata: { name: 'p' }, spec: { selector: { issuerRef: {} }, ...spec } })
  const spiffeCa = { name: 'spiffe-ca', kind: 'ClusterIssuer', group: 'cert-manager.io' }
  t.ok(selects(policy({ selector: { issuerRef: {} } }), spiffeCa, null), 'an empty issuerRef selector selects every issuer')
  t.ok(selects(policy({ selector: { namespace: { matchNames: ['team-*'] } } }), spiffeCa, null), 'a namespace selector does not stop a ClusterIssuer\'s requests from that namespace')
  t.notOk(selects(policy({ selector: { issuerRef: { name: 'bulwark-serving', kind: 'Issuer' } } }), spiffeCa, null))
  t.notOk(selects(policy({ selector: { issuerRef: { name: 'ca' }, namespace: { matchNames: ['bulwark'] } } }), { name: 'ca' }, 'other'))
  t.ok(selects(policy({ selector: { issuerRef: { name: 'ca', kind: 'Issuer', group: 'cert-manager.io' } } }), { name: 'ca' }, 'x'), 'kind and group take cert-manager\'s defaults')

  const ns = { namespace: { matchNames: ['apps'] } }
  t.same(uriProblems(policy({ allowed: { dnsNames: { values: ['a'] } }, selector: { issuerRef: {}, ...ns } })), [], 'no URI SAN allowed: nothing to restrict')
  t.same(uriProblems(policy({ allowed: { uris: { values: ['spiffe://td/ns/apps/sa/app'] } }, selector: { issuerRef: {}, ...ns } })), [], 'one account of the one namespace selected')
  t.match(uriProblems(policy({ allowed: { uris: { values: ['spiffe://td/ns/*/sa/*'] } }, selector: { issuerRef: {}, ...ns } })), [/not one namespace's one ServiceAccount/], 'wildcards: anyone\'s identity')
  t.match(uriProblems(policy({ allowed: { uris: { values: ['spiffe://td/ns/bulwark/sa/bulwark'] } }, selector: { issuerRef: {}, ...ns } })), [/from namespace apps/], 'another namespace\'s identity')
  t.match(uriProblems(policy({ allowed: { uris: { values: ['spiffe://td/ns/apps/sa/app'] } }, selector: { issuerRef: {} } })), [/exactly one namespace/], 'requests from any namespace')
  t.match(uriProblems(policy({ allowed: { isCA: true }, selector: { issuerRef: {}, ...ns } })), [/CA certificates/], 'a CA certificate signs anything')

  const role: K8sObject = { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: { name: 'use-p' }, rules: [{ apiGroups: ['policy.cert-manager.io'], resources: ['certificaterequestpolicies'], verbs: ['use'], resourceNames: ['p'] }] }
  const binding = (kind: string, namespace?: string): K8sObject => ({ apiVersion: 'rbac.authorization.k8s.io/v1', kind, metadata: { name: 'b', ...(namespace ? { namespace } : {}) }, roleRef: { kind: 'ClusterRole', name: 'use-p' }, subjects: [{ kind: 'ServiceAccount', name: 'cert-manager', namespace: 'cert-manager' }] })
  const controller = { kind: 'ServiceAccount', name: 'cert-manager', namespace: 'cert-manager' }
  t.ok(boundIn(policy({}), [role, binding('RoleBinding', 'apps')], 'apps', controller))
  t.notOk(boundIn(policy({}), [role, binding('RoleBinding', 'apps')], 'other', controller), 'a RoleBinding binds in its namespace only')
  t.ok(boundIn(policy({}), [role, binding('ClusterRoleBinding')], 'other', controller), 'a ClusterRoleBinding binds everywhere')

  const certificate = (spec: Record<string, unknown>): K8sObject => ({ apiVersion: 'cert-manager.io/v1', kind: 'Certificate', metadata: { name: 'c', namespace: 'apps' }, spec: { secretName: 's', issuerRef: { name: 'ca' }, ...spec } })
  const serving = policy({ allowed: { dnsNames: { values: ['svc', 'svc.apps.svc'] }, usages: ['server auth', 'digital signature'] }, constraints: { maxDuration: '24h', privateKey: { algorithm: 'ECDSA', minSize: 256, maxSize: 256 } } })
  const ok = { dnsNames: ['svc'], usages: ['server auth', 'digital signature'], duration: '24h', privateKey: { algorithm: 'ECDSA', size: 256 } }
  t.same(notPermitted(serving, certificate(ok)), [])
  t.match(notPermitted(serving, certificate({ ...ok, uris: ['spiffe://td/ns/apps/sa/app'] })), [/URI/], 'a URI the policy does not allow')
  t.match(notPermitted(serving, certificate({ ...ok, dnsNames: ['evil'] })), [/DNS name evil/])
  t.match(notPermitted(serving, certificate({ ...ok, usages: ['client auth'] })), [/usage client auth/])
  t.match(notPermitted(serving, certificate({ ...ok, duration: '48h' })), [/duration/])
  t.match(notPermitted(serving, certificate({ dnsNames: ['svc'] })), [/usage key encipherment/, /duration 2160h/, /key algorithm RSA/], 'cert-manager\'s defaults count')
})

t.test('the restricted checker flags each control, and passes a compliant pod', async (t) => {
  t.same(restrictedViolations(goodPod), [])
  t.same(hardeningViolations(goodPod), [])
  const bad = {
    hostNetwork: true,
    securityContext: { seccompProfile: { type: 'Unconfined' }, sysctls: [{ name: 'kernel.msgmax', value: '1' }] },
    volumes: [{ name: 'h', hostPath: { path: '/' } }],
    initContainers: [{ name: 'init', image: 'i', securityContext: { runAsUser: 0 } }],
    containers: [{ name: 'c', image: 'c', ports: [{ containerPort: 80, hostPort: 80 }], securityContext: { privileged: true, allowPrivilegeEscalation: true, capabilities: { add: ['SYS_ADMIN'] }, procMount: 'Unmasked' } }],
  }
  const v = restrictedViolations(bad).join('\n')
  for (const control of ['host namespaces', 'HostPath volumes', 'privileged containers', 'host ports', 'capabilities (baseline)', '/proc mount', 'seccomp', 'sysctls', 'volume types', 'privilege escalation', 'running as non-root', 'running as non-root user', 'must drop ALL']) {
    t.ok(v.includes(control), control)
  }
  t.match(hardeningViolations(bad).join('\n'), /readOnlyRootFilesystem[\s\S]*resources\.requests\.cpu/)
  t.match(restrictedViolations({ ...goodPod, containers: [{ ...goodContainer, securityContext: { ...goodContainer.securityContext, runAsNonRoot: false } }] }), [/running as non-root/], 'a container may not opt out of the pod\'s runAsNonRoot')
})
