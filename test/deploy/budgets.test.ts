// Where each overlay keeps privacy budgets, checked on the rendered manifests (the real
// kustomize; skipped, saying why, without kubectl): budgets must survive a rollout and be
// shared by every replica that serves the same callers. Two designs pass:
//   - shared: state.redis names a Redis the overlay ships, a StatefulSet whose data directory
//     is on a volume claim of its own, with the append-only file fsynced always or every
//     second, no eviction, a password from the Secret Bulwark reads it from, and no one but
//     the Bulwark pods let in; Bulwark keeps no state folder of its own;
//   - one owner: a StatefulSet of one replica, no autoscaler, its state folder on the pod's
//     own volume claim (kept when the set is deleted or scaled down), Bulwark told its ordinal.
// Never a journal on a volume every pod mounts, nor in a folder named after a pod that a
// rollout renames. And in both, the replica check is set up: state.maxReplicas covers the
// most pods that run at once, and the gateway's own check refuses the shipped config the
// moment it would run more than one process without shared state.
import t, { type Test } from 'tap'
import path from 'node:path'
import { parse } from 'yaml'
import { buildConfig } from '../../src/config/load.ts'
import { replicaProblems } from '../../src/config/scaleout.ts'
import type { Config } from '../../src/config/schema.ts'
import { containersOf, OVERLAYS, podSpecs, renderOverlays, type K8sObject } from './kubectl-kustomize.ts'
import { POD_INDEX_LABEL } from './pods.ts'
import { repoRoot } from '../../kit/paths.ts'

type Rec = Record<string, unknown>
type Mount = { name: string; mountPath: string; readOnly?: boolean; subPath?: string; subPathExpr?: string }
const { missing, rendered } = await renderOverlays(repoRoot)
const test = (name: string, fn: (t: Test) => Promise<void>) => t.test(name, { skip: missing ?? false }, fn)

const labelsMatch = (selector: Record<string, string> | undefined, labels: Record<string, string> | undefined) =>
  Object.keys(selector ?? {}).length > 0 && Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v)
const templateLabels = (o: K8sObject) => (((o.spec as Rec).template as Rec).metadata as { labels?: Record<string, string> } | undefined)?.labels ?? {}

function gatewayConfig(objs: K8sObject[]): Readonly<Config> {
  const cm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('bulwark-config-'))!
  return buildConfig(parse((cm.data as Record<string, string>)['bulwark.yaml']!), 'k8s bulwark.yaml')
}

/** The workload running `container`, that container, and the volume (or claim template) behind a path it mounts. */
function workloadOf(objs: K8sObject[], container: string) {
  const owner = objs.find((o) => podSpecs(o).some((s) => containersOf(s).some((c) => c.name === container)))!
  const pod = podSpecs(owner)[0]!
  const c = containersOf(pod).find((c) => c.name === container)!
  const templates = ((owner.spec as Rec).volumeClaimTemplates as { metadata: { name: string }; spec: Rec }[] | undefined) ?? []
  const mountOf = (file: string) => {
    const m = ((c.volumeMounts as Mount[] | undefined) ?? []).filter((m) => file === m.mountPath || file.startsWith(`${m.mountPath}/`)).sort((a, z) => z.mountPath.length - a.mountPath.length)[0]
    if (!m) return undefined
    return { ...m, volume: ((pod.volumes as Rec[] | undefined) ?? []).find((v) => v.name === m.name), claimTemplate: templates.find((tpl) => tpl.metadata.name === m.name) }
  }
  return { owner, pod, c, mountOf }
}

/** The most pods of `owner` that run at once: its autoscaler's maxReplicas (or its replicas), plus a Deployment's surge. */
function mostAtOnce(objs: K8sObject[], owner: K8sObject): number {
  const spec = owner.spec as { replicas?: number; strategy?: { rollingUpdate?: { maxSurge?: number | string } } }
  const hpa = objs.find((o) => o.kind === 'HorizontalPodAutoscaler' && ((o.spec as Rec).scaleTargetRef as Rec).name === owner.metadata.name && ((o.spec as Rec).scaleTargetRef as Rec).kind === owner.kind)
  const replicas = hpa ? ((hpa.spec as Rec).maxReplicas as number) : (spec.replicas ?? 1)
  if (owner.kind !== 'Deployment') return replicas
  const surge = spec.strategy?.rollingUpdate?.maxSurge ?? '25%'
  return replicas + (typeof surge === 'number' ? surge : Math.ceil((replicas * parseInt(surge, 10)) / 100))
}

/** redis.conf's directives, the last one of a name winning as in Redis; `args` (--name value ...) after it. */
function redisDirectives(text: string, args: string[]): Map<string, string> {
  const out = new Map<string, string>()
  for (const line of text.split('\n')) {
    const words = line.replace(/^\s*#.*$/, '').trim().match(/"[^"]*"|\S+/g)
    if (words) out.set(words[0]!.toLowerCase(), words.slice(1).map((w) => w.replace(/^"(.*)"$/, '$1')).join(' '))
  }
  for (let i = 0; i < args.length; i++) if (args[i]!.startsWith('--')) out.set(args[i]!.slice(2).toLowerCase(), args[i + 1] ?? '')
  return out
}

for (const overlay of OVERLAYS) {
  test(`${overlay}: budgets survive a rollout and every replica shares them`, async (t) => {
    const objs = rendered[overlay]
    const config = gatewayConfig(objs)
    t.equal(config.outputPrivacy.enabled, true, 'output privacy is on: there are budgets to keep')
    const b = workloadOf(objs, 'bulwark')
    const most = mostAtOnce(objs, b.owner)
    const state = b.mountOf(config.state.directory)

    // Never a journal that a new pod does not find, nor one that several pods write.
    if (state) {
      t.ok(state.claimTemplate, `${config.state.directory} is on a claim of the pod's own (volumeClaimTemplates), not ${JSON.stringify(state.volume)}`)
      t.equal(state.subPathExpr, undefined, `${config.state.directory}: not in a folder named after the pod`)
      t.equal(b.owner.kind, 'StatefulSet', 'the claim goes with the pod\'s name, which only a StatefulSet keeps')
    }

    t.ok(config.state.maxReplicas >= most, `state.maxReplicas (${config.state.maxReplicas}) covers the most pods at once (${most})`)
    t.same(replicaProblems(config), [], 'the shipped configuration starts')

    if (config.state.redis) {
      t.equal(state, undefined, 'no state folder is mounted: nothing is kept per pod')
      t.ok(most > 1, `several replicas (${most} at most)`)
      const alone = { ...config, state: { ...config.state, redis: undefined } }
      t.match(replicaProblems(alone), [/^\/state\/maxReplicas: \d+ replicas without state\.redis .* set state\.redis/], 'the same configuration without state.redis refuses to start')

      // The Redis state.redis names is the one the overlay ships.
      const url = new URL(config.state.redis.url)
      const [svcName, ns] = url.hostname.split('.')
      t.equal(ns ?? 'bulwark', 'bulwark', 'in the namespace')
      const svc = objs.find((o) => o.kind === 'Service' && o.metadata.name === svcName)
      t.ok(svc, `the Service ${svcName} is in the overlay`)
      if (!svc) return
      const svcPort = ((svc.spec as Rec).ports as Rec[]).find((p) => p.port === Number(url.port || 6379))
      t.ok(svcPort, `the Service has port ${url.port}`)
      const selector = (svc.spec as Rec).selector as Record<string, string>
      const servers = objs.filter((o) => podSpecs(o).length > 0 && labelsMatch(selector, templateLabels(o)))
      t.same(servers.map((o) => `${o.kind}/${o.metadata.name}`), ['StatefulSet/redis'], 'it selects the pods of one StatefulSet')
      const redis = servers[0]!
      t.equal((redis.spec as Rec).replicas, 1, 'one Redis: one copy of the state')
      t.same((redis.spec as Rec).persistentVolumeClaimRetentionPolicy, { whenDeleted: 'Retain', whenScaled: 'Retain' }, 'its claim outlives the StatefulSet')
      const r = workloadOf(objs, containersOf(podSpecs(redis)[0]!)[0]!.name as string)
      t.ok(((r.c.ports as Rec[]) ?? []).some((p) => p.name === svcPort!.targetPort || p.containerPort === svcPort!.targetPort), 'the Service leads to its port')

      // Its settings: the config file from the ConfigMap, then the command line.
      const argv = [...((r.c.command as string[]) ?? []), ...((r.c.args as string[]) ?? [])]
      t.equal(argv[0], 'redis-server')
      const confFile = argv[1]!
      const confMount = r.mountOf(confFile)
      const cmName = (confMount?.volume?.configMap as Rec | undefined)?.name as string | undefined
      t.ok(cmName, `${confFile} comes from a ConfigMap`)
      const cm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name === cmName)!
      const conf = redisDirectives((cm.data as Record<string, string>)[path.relative(confMount!.mountPath, confFile)]!, argv.slice(2))
      t.equal(conf.get('appendonly'), 'yes', 'persistence: the append-only file')
      t.ok(['always', 'everysec'].includes(conf.get('appendfsync') ?? ''), `fsynced always or every second (${conf.get('appendfsync')})`)
      t.equal(conf.get('maxmemory-policy'), 'noeviction', 'never evicts (an evicted key is a reset budget)')
      const data = r.mountOf(conf.get('dir') ?? '/data')
      t.ok(data?.claimTemplate, `its data directory ${conf.get('dir')} is on a volume claim of its own`)
      t.match(data?.claimTemplate?.spec, { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: String } } })

      // One password, from the Secret that Bulwark reads it from too.
      t.match(conf.get('requirepass'), /^\$\(([A-Z_]+)\)$/, 'a password, from the environment')
      const envName = /^\$\(([A-Z_]+)\)$/.exec(conf.get('requirepass') ?? '')?.[1]
      const ref = ((r.c.env as Rec[]).find((e) => e.name === envName)?.valueFrom as Rec | undefined)?.secretKeyRef as { name: string; key: string } | undefined
      t.ok(ref, `${envName} comes from a Secret`)
      const pw = config.state.redis.passwordFile!
      const pwMount = b.mountOf(pw)
      t.equal((pwMount?.volume?.secret as Rec | undefined)?.secretName, ref?.name, `Bulwark's ${pw} is the same Secret`)
      t.equal(path.relative(pwMount!.mountPath, pw), ref?.key, 'and the same key')

      // Nobody but the Bulwark pods reaches it, and it reaches nothing.
      const policies = objs.filter((o) => o.kind === 'NetworkPolicy' && labelsMatch(((o.spec as Rec).podSelector as Rec).matchLabels as Record<string, string>, templateLabels(redis)))
      const ingress = policies.flatMap((p) => ((p.spec as Rec).ingress as Rec[] | undefined) ?? [])
      const port = ((r.c.ports as Rec[])[0]!).containerPort
      t.same(ingress, [{ from: [{ podSelector: { matchLabels: { 'app.kubernetes.io/name': 'bulwark' } } }], ports: [{ port, protocol: 'TCP' }] }], 'Redis: ingress from Bulwark pods only, on its port')
      t.same(policies.flatMap((p) => ((p.spec as Rec).egress as Rec[] | undefined) ?? []), [], 'Redis: no egress rule (the default deny holds)')
    } else {
      t.equal(b.owner.kind, 'StatefulSet', 'the one budget owner keeps its name, and with it its claim')
      t.equal((b.owner.spec as Rec).replicas, 1, 'one replica: one budget per caller')
      t.equal(objs.filter((o) => o.kind === 'HorizontalPodAutoscaler').length, 0, 'no autoscaler')
      t.ok(state, `${config.state.directory} is mounted`)
      t.match(state?.claimTemplate?.spec, { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: String } } }, 'from a ReadWriteOnce claim template')
      t.same((b.owner.spec as Rec).persistentVolumeClaimRetentionPolicy, { whenDeleted: 'Retain', whenScaled: 'Retain' }, 'the claim outlives the StatefulSet and a scale-down')
      t.equal(config.state.maxReplicas, 1)
      const index = (b.c.env as Rec[]).find((e) => e.name === 'BULWARK_REPLICA_INDEX')
      t.same(index?.valueFrom, { fieldRef: { fieldPath: `metadata.labels['${POD_INDEX_LABEL}']` } }, 'Bulwark learns its ordinal from the Downward API')
      t.same(replicaProblems(config, { replicaIndex: '0' }), [], 'pod 0 starts')
      t.match(replicaProblems(config, { replicaIndex: '1' }), [/^BULWARK_REPLICA_INDEX: this pod is number 1 .*state\.redis/], 'pod 1 (scaled to 2) refuses to start')
    }
  })
}
