// Schema checks for rendered manifests, without a cluster:
//
// 1. kubernetes-models' validators (the Kubernetes OpenAPI schemas, compiled with ajv): types,
//    required fields, formats and enums of every built-in kind.
// 2. Unknown fields, which those validators let through but `kubectl apply` (strict field
//    validation) refuses: each object is type-checked by TypeScript as an object literal
//    against kubernetes-models' interface for its kind, and excess-property errors name the
//    field that does not exist.
// 3. The cert-manager kinds, which kubernetes-models does not know (cert-manager's Certificate,
//    Issuer and ClusterIssuer; approver-policy's CertificateRequestPolicy): a minimal schema of
//    the fields Bulwark uses and their neighbours (TypeBox), strict about unknown fields and
//    enums. A field outside them is reported, so it gets a schema before it gets deployed.

import path from 'node:path'
import ts from 'typescript'
import { Type, type TSchema } from '@sinclair/typebox'
import { Value } from '@sinclair/typebox/value'
import type { K8sObject } from './kubectl-kustomize.ts'
import { repoRoot } from '../../kit/paths.ts'

/** The kubernetes-models module of a built-in kind: kubernetes-models/<group>/<version>/<Kind>. */
function modelModule(obj: K8sObject): string {
  const [group, version] = obj.apiVersion.includes('/') ? obj.apiVersion.split('/') : [null, obj.apiVersion]
  return `kubernetes-models/${group ? `${group}/` : ''}${version}/${obj.kind}`
}

/** cert-manager's own kinds and approver-policy's (a cert-manager project): checked by certManagerProblems. */
export const isCertManager = (obj: K8sObject) => obj.apiVersion.startsWith('cert-manager.io/') || obj.apiVersion.startsWith('policy.cert-manager.io/')

/** Problems the Kubernetes OpenAPI schema finds in one built-in object (empty = valid). */
export async function openApiProblems(obj: K8sObject): Promise<string[]> {
  let mod: Record<string, unknown>
  try {
    mod = (await import(modelModule(obj))) as Record<string, unknown>
  } catch {
    return [`${obj.apiVersion} ${obj.kind} is not a Kubernetes kind that kubernetes-models knows`]
  }
  const Model = mod[obj.kind] as new (data: unknown) => { validate(): void }
  try {
    new Model(obj).validate()
    return []
  } catch (err) {
    const errors = (err as { errors?: { instancePath: string; message: string }[] }).errors
    return errors ? errors.map((e) => `${e.instancePath || '/'}: ${e.message}`) : [(err as Error).message]
  }
}

/**
 * Unknown or mistyped fields in built-in objects, found by TypeScript's excess-property
 * checks against kubernetes-models' interfaces. One program for all objects (a few seconds).
 * Returns problems keyed by the object's index.
 */
export function strictFieldProblems(objects: K8sObject[]): Map<number, string[]> {
  const file = path.join(repoRoot, 'test/deploy/__manifests__.ts')
  const lines: string[] = []
  const ranges: { index: number; from: number; to: number }[] = []
  objects.forEach((obj, index) => {
    if (isCertManager(obj)) return
    const alias = `T${index}`
    lines.push(`import type { I${obj.kind} as ${alias} } from '${modelModule(obj)}'`)
    const from = lines.length
    lines.push(...`export const o${index}: ${alias} = ${JSON.stringify(obj, null, 1)}`.split('\n'))
    ranges.push({ index, from, to: lines.length })
  })
  // Each import sits just above its object (imports are hoisted), so line numbers map back to objects.
  const text = lines.join('\n')
  const options: ts.CompilerOptions = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    types: [],
  }
  const host = ts.createCompilerHost(options)
  const getSourceFile = host.getSourceFile.bind(host)
  host.getSourceFile = (name, lang, onError, create) =>
    path.resolve(name) === file ? ts.createSourceFile(name, text, lang) : getSourceFile(name, lang, onError, create)
  const fileExists = host.fileExists.bind(host)
  host.fileExists = (name) => path.resolve(name) === file || fileExists(name)
  const readFile = host.readFile.bind(host)
  host.readFile = (name) => (path.resolve(name) === file ? text : readFile(name))
  const program = ts.createProgram([file], options, host)
  const problems = new Map<number, string[]>()
  for (const d of ts.getPreEmitDiagnostics(program)) {
    const message = ts.flattenDiagnosticMessageText(d.messageText, '\n')
    if (!d.file || path.resolve(d.file.fileName) !== file || d.start === undefined) {
      problems.set(-1, [...(problems.get(-1) ?? []), message])
      continue
    }
    const line = d.file.getLineAndCharacterOfPosition(d.start).line
    const hit = ranges.find((r) => line >= r.from && line < r.to)
    const key = hit?.index ?? -1
    const where = hit ? `line ${line - hit.from + 1} of the object: ` : ''
    problems.set(key, [...(problems.get(key) ?? []), `${where}${message.split('\n').pop()}`])
  }
  return problems
}

// --- cert-manager ---

const GoDuration = Type.String({ pattern: '^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$' })
const KeyUsage = Type.Union(
  [
    'signing', 'digital signature', 'content commitment', 'key encipherment', 'key agreement', 'data encipherment', 'cert sign',
    'crl sign', 'encipher only', 'decipher only', 'any', 'server auth', 'client auth', 'code signing', 'email protection', 's/mime',
    'ipsec end system', 'ipsec tunnel', 'ipsec user', 'timestamping', 'ocsp signing', 'microsoft sgc', 'netscape sgc',
  ].map((u) => Type.Literal(u)),
)
const DnsName = Type.String({ pattern: '^(\\*\\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$' })
const Name = Type.String({ pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$', maxLength: 253 })
const strict = <T extends Record<string, TSchema>>(props: T) => Type.Object(props, { additionalProperties: false })

/** cert-manager.io/v1 Certificate: the fields Bulwark's manifests use, and their neighbours. */
export const CertificateSchema = strict({
  apiVersion: Type.Literal('cert-manager.io/v1'),
  kind: Type.Literal('Certificate'),
  metadata: Type.Object({ name: Name, namespace: Type.Optional(Name) }),
  spec: strict({
    secretName: Name,
    issuerRef: strict({
      name: Name,
      kind: Type.Optional(Type.Union([Type.Literal('Issuer'), Type.Literal('ClusterIssuer')])),
      group: Type.Optional(Type.String()),
    }),
    commonName: Type.Optional(Type.String({ maxLength: 64 })),
    dnsNames: Type.Optional(Type.Array(DnsName, { minItems: 1 })),
    uris: Type.Optional(Type.Array(Type.String({ pattern: '^[a-z][a-z0-9+.-]*://' }), { minItems: 1 })),
    ipAddresses: Type.Optional(Type.Array(Type.String())),
    emailAddresses: Type.Optional(Type.Array(Type.String())),
    duration: Type.Optional(GoDuration),
    renewBefore: Type.Optional(GoDuration),
    isCA: Type.Optional(Type.Boolean()),
    usages: Type.Optional(Type.Array(KeyUsage, { uniqueItems: true })),
    privateKey: Type.Optional(
      strict({
        algorithm: Type.Optional(Type.Union([Type.Literal('RSA'), Type.Literal('ECDSA'), Type.Literal('Ed25519')])),
        size: Type.Optional(Type.Integer()),
        encoding: Type.Optional(Type.Union([Type.Literal('PKCS1'), Type.Literal('PKCS8')])),
        rotationPolicy: Type.Optional(Type.Union([Type.Literal('Never'), Type.Literal('Always')])),
      }),
    ),
    secretTemplate: Type.Optional(strict({ labels: Type.Optional(Type.Record(Type.String(), Type.String())), annotations: Type.Optional(Type.Record(Type.String(), Type.String())) })),
    revisionHistoryLimit: Type.Optional(Type.Integer({ minimum: 1 })),
  }),
})

const durationSeconds = (d: string) => {
  const units: Record<string, number> = { ns: 1e-9, us: 1e-6, µs: 1e-6, ms: 1e-3, s: 1, m: 60, h: 3600 }
  let total = 0
  for (const m of d.matchAll(/([0-9.]+)(ns|us|µs|ms|s|m|h)/g)) total += Number(m[1]) * units[m[2]!]!
  return total
}

/**
 * cert-manager.io/v1 Issuer and ClusterIssuer: the CA issuer type only (the one Bulwark's
 * manifests use). Another issuer type (acme, vault, selfSigned, ...) is an unknown field here.
 */
const IssuerSpec = strict({
  ca: strict({
    secretName: Name,
    crlDistributionPoints: Type.Optional(Type.Array(Type.String())),
    ocspServers: Type.Optional(Type.Array(Type.String())),
    issuingCertificateURLs: Type.Optional(Type.Array(Type.String())),
  }),
})
export const IssuerSchema = strict({
  apiVersion: Type.Literal('cert-manager.io/v1'),
  kind: Type.Union([Type.Literal('Issuer'), Type.Literal('ClusterIssuer')]),
  metadata: Type.Object({ name: Name, namespace: Type.Optional(Name) }),
  spec: IssuerSpec,
})

/** approver-policy's allowed string lists: wildcard values, and CEL validations over each value (`self`, `cr`). */
const AllowedStrings = strict({
  values: Type.Optional(Type.Array(Type.String())),
  required: Type.Optional(Type.Boolean()),
  validations: Type.Optional(Type.Array(strict({ rule: Type.String({ minLength: 1 }), message: Type.Optional(Type.String()) }))),
})
/**
 * policy.cert-manager.io/v1alpha1 CertificateRequestPolicy (cluster-scoped): allowed,
 * constraints and selector, as approver-policy documents them. allowed.subject and plugins
 * are not modelled: a policy using them is reported until they are.
 */
export const CertificateRequestPolicySchema = strict({
  apiVersion: Type.Literal('policy.cert-manager.io/v1alpha1'),
  kind: Type.Literal('CertificateRequestPolicy'),
  metadata: Type.Object({ name: Name }),
  spec: strict({
    allowed: Type.Optional(
      strict({
        commonName: Type.Optional(strict({ value: Type.Optional(Type.String()), required: Type.Optional(Type.Boolean()) })),
        dnsNames: Type.Optional(AllowedStrings),
        ipAddresses: Type.Optional(AllowedStrings),
        uris: Type.Optional(AllowedStrings),
        emailAddresses: Type.Optional(AllowedStrings),
        isCA: Type.Optional(Type.Boolean()),
        usages: Type.Optional(Type.Array(KeyUsage, { uniqueItems: true })),
      }),
    ),
    constraints: Type.Optional(
      strict({
        minDuration: Type.Optional(GoDuration),
        maxDuration: Type.Optional(GoDuration),
        privateKey: Type.Optional(
          strict({
            algorithm: Type.Optional(Type.Union([Type.Literal('RSA'), Type.Literal('ECDSA'), Type.Literal('Ed25519')])),
            minSize: Type.Optional(Type.Integer({ minimum: 1 })),
            maxSize: Type.Optional(Type.Integer({ minimum: 1 })),
          }),
        ),
      }),
    ),
    selector: strict({
      issuerRef: Type.Optional(strict({ name: Type.Optional(Type.String()), kind: Type.Optional(Type.String()), group: Type.Optional(Type.String()) })),
      namespace: Type.Optional(strict({ matchNames: Type.Optional(Type.Array(Type.String())), matchLabels: Type.Optional(Type.Record(Type.String(), Type.String())) })),
    }),
  }),
})

const schemaErrors = (schema: TSchema, obj: K8sObject) => [...Value.Errors(schema, obj)].map((e) => `${e.path || '/'}: ${e.message}`)

/** Problems with a cert-manager or approver-policy object (empty = valid). */
export function certManagerProblems(obj: K8sObject): string[] {
  if (obj.kind === 'Issuer' || obj.kind === 'ClusterIssuer') {
    const problems = schemaErrors(IssuerSchema, obj)
    if (obj.kind === 'ClusterIssuer' && obj.metadata.namespace !== undefined) problems.push('/metadata/namespace: a ClusterIssuer is cluster-scoped')
    return problems
  }
  if (obj.kind === 'CertificateRequestPolicy') {
    const problems = schemaErrors(CertificateRequestPolicySchema, obj)
    if (problems.length > 0) return problems
    if ((obj as { metadata: { namespace?: string } }).metadata.namespace !== undefined) problems.push('/metadata/namespace: a CertificateRequestPolicy is cluster-scoped')
    const selector = (obj.spec as { selector: { issuerRef?: unknown; namespace?: unknown } }).selector
    if (selector.issuerRef === undefined && selector.namespace === undefined) problems.push('/spec/selector: approver-policy requires issuerRef or namespace')
    return problems
  }
  if (obj.kind !== 'Certificate') return [`cert-manager kind ${obj.kind} has no schema here; add one`]
  const problems = schemaErrors(CertificateSchema, obj)
  if (problems.length > 0) return problems
  const spec = obj.spec as { commonName?: string; dnsNames?: string[]; uris?: string[]; duration?: string; renewBefore?: string; privateKey?: { algorithm?: string; size?: number } }
  if (!spec.commonName && !spec.dnsNames && !spec.uris) problems.push('/spec: one of commonName, dnsNames or uris is required')
  if (spec.duration && spec.renewBefore && durationSeconds(spec.renewBefore) >= durationSeconds(spec.duration)) problems.push('/spec/renewBefore: must be shorter than duration')
  if (spec.duration && durationSeconds(spec.duration) < 3600) problems.push('/spec/duration: cert-manager refuses durations under 1h')
  const pk = spec.privateKey
  if (pk?.algorithm === 'ECDSA' && pk.size !== undefined && ![256, 384, 521].includes(pk.size)) problems.push('/spec/privateKey/size: ECDSA takes 256, 384 or 521')
  return problems
}
