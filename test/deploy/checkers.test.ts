// The tools the manifest tests rely on, shown to catch what they claim to: kustomize as the
// tests run it (the features k8s/ uses, its refusals, a deprecated field failing the render),
// the schema checks (unknown fields, wrong types, cert-manager) and the Pod Security Standards
// "restricted" checker.
import t from 'tap'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
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
