// Budgets as the shipped manifests keep them, through what a cluster does to a gateway. Each
// overlay is rendered with the real kustomize, and its pods run as real `bulwark serve`
// processes with the overlay's own `state` settings, storage and environment
// (test/deploy/pods.ts: a volume claim is a folder that outlives the pod, a pod's own file
// system is not), and, where the overlay ships one, its Redis runs with its own redis.conf and
// password. One caller then goes through a rollout (the pod drains and stops, a new one
// starts), an eviction (killed, no drain), a scale-out to two replicas and, with Redis, Redis
// killed and started again on its claim. However its requests were spread, it gets exactly as
// many answers per window as its budget allows: never more, and none lost. (The journal's
// reservations may cost a caller part of its budget at a restart, never add to it; here each
// is smaller than one answer, so the count is exact.)

import { randomBytes } from 'node:crypto'
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { parse, stringify } from 'yaml'
import { freePort, noDefences, startGateway as startProcess, type GatewayProcess } from '../../kit/gateway-process.ts'
import { mnistRequest } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { eventually } from '../../kit/wait.ts'
import { buildConfig } from '../../src/config/load.ts'
import type { Config } from '../../src/config/schema.ts'
import { kustomizeMissing, podSpecs, render, type K8sObject } from '../deploy/kubectl-kustomize.ts'
import { Cluster, type Pod } from '../deploy/pods.ts'
import { REDIS_SERVER, spawnRedis } from '../helpers/scaleout.ts'

/** Laplace noise at ε = 1 per answer, a budget of ε = 6 an hour: six answers per caller. */
const BUDGET_ANSWERS = 6
const policy = {
  model: 'mnist',
  allow: [{ verbs: ['infer'], workloads: ['spiffe://bulwark.local/ns/default/sa/dev'], scopes: ['mnist:infer'] }],
  output: { mode: 'label', noise: { mechanism: 'laplace', epsilon: 1 }, budget: { epsilon: BUDGET_ANSWERS, windowMs: 3_600_000 } },
}

const missing = (await kustomizeMissing()) ?? (REDIS_SERVER ? null : 'redis-server is not installed (.ci/run installs it)')

for (const overlay of ['sidecar', 'gateway'] as const) {
  t.test(`${overlay}: one caller, rolled out, evicted and scaled to two replicas, gets its budget's answers and no more`, { skip: missing ?? false }, async (t) => {
    const objs = await render(path.join(repoRoot, 'k8s/overlays', overlay))
    const config = gatewayConfig(objs)
    const root = await mkdtemp(path.join(os.tmpdir(), `bulwark-${overlay}-`))
    t.teardown(() => rm(root, { recursive: true, force: true }))
    // The Secrets an operator makes by hand (README.md, Deployment, step 4).
    const cluster = new Cluster(root, objs, { 'bulwark-redis': { password: randomBytes(32).toString('hex') } })
    await mkdir(path.join(root, 'policies'))
    await writeFile(path.join(root, 'policies', 'mnist.yaml'), stringify(policy))
    const redis = config.state.redis ? await startRedisPod(t, cluster, config.state.redis.url) : null

    // The overlay's state settings, at the places this pod's storage is; the rest of the front
    // door is off (one anonymous caller; the budget is what this test is about).
    const run = (pod: Pod) => {
      const cwd = path.join(root, 'pods', pod.uid, 'cwd')
      mkdirSync(cwd, { recursive: true })
      const { BULWARK_LOG_LEVEL: _level, ...env } = pod.env('bulwark')
      const s = config.state
      return startProcess(
        {
          ...noDefences,
          outputPrivacy: config.outputPrivacy,
          models: { serve: [{ name: 'mnist', workers: 1, intraOpThreads: 1 }] },
          policies: { directory: path.join(root, 'policies') },
          state: {
            ...s,
            directory: pod.path('bulwark', s.directory),
            ...(s.redis && redis ? { redis: { ...s.redis, url: redis.url(s.redis.url), passwordFile: pod.path('bulwark', s.redis.passwordFile!) } } : {}),
          },
        },
        { cwd, env, logLevel: 'error' },
      )
    }
    const body = JSON.stringify(await mnistRequest())
    const outcomes: string[] = []
    const outcome = async (gw: GatewayProcess) => {
      const res = await request(`http://127.0.0.1:${gw.apiPort}/v2/models/mnist/infer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body })
      const parsed = (await res.body.json()) as { code?: string }
      return res.statusCode === 200 ? 'ok' : (parsed.code ?? String(res.statusCode))
    }
    const ask = async (gws: GatewayProcess[], n: number) => {
      for (let i = 0; i < n; i++) outcomes.push(await outcome(gws[i % gws.length]!))
    }
    const workload = cluster.workloadRunning('bulwark')
    const running = new Set<GatewayProcess>()
    t.teardown(() => Promise.all([...running].map((g) => g.stop('SIGKILL'))))
    const started = async (pod: Pod) => {
      const gw = await run(pod)
      running.add(gw)
      return gw
    }

    let a = await started(cluster.pod(workload, 0))
    await ask([a], 2)
    // A rollout: the pod drains and stops; a new pod (the new template) takes its place.
    t.equal(await a.stop('SIGTERM'), 0, 'the old pod drained and stopped')
    running.delete(a)
    a = await started(cluster.pod(workload, 0))
    await ask([a], 2)
    // An eviction, or the node going away: killed, nothing flushed at exit.
    await a.stop('SIGKILL')
    running.delete(a)
    a = await started(cluster.pod(workload, 0))
    await ask([a], 1)

    // Scaled to two replicas: the second one shares the budget, or refuses to start.
    const replicas = [a]
    const second = await started(cluster.pod(workload, 1)).catch((err: Error) => err)
    if (second instanceof Error) {
      t.match(second.message, /gateway exited with 2/, 'the second replica refuses to start: a configuration error (test/config/replicas.test.ts has its message)')
      t.notOk(config.state.redis, 'only where the replicas would share nothing')
    } else {
      replicas.push(second)
      t.ok(config.state.redis, 'the second replica starts where budgets are shared')
    }

    if (redis) {
      // Redis goes away (killed, as when its node fails), and comes back on its claim.
      await redis.stop()
      const readiness = () => Promise.all(replicas.map((g) => request(`http://127.0.0.1:${g.adminPort}/readyz`).then((r) => (r.body.dump(), r.statusCode))))
      const meanwhile: string[] = []
      for (const g of replicas) meanwhile.push(await outcome(g))
      t.same(meanwhile, replicas.map(() => 'state_unavailable'), 'while Redis is away: no answer whose charge cannot be recorded')
      // real wait: /readyz is answered by the admin thread, which hears the API loop's readiness every 250 ms; child processes offer no event
      await eventually(async () => (await readiness()).every((s) => s === 503), { timeoutMs: 15_000, everyMs: 50, what: 'every replica saying it is not ready' })
      await redis.start()
      // real wait: the replicas' Redis clients reconnect on their own backoff (at most 2 s), reported as above
      await eventually(async () => (await readiness()).every((s) => s === 200), { timeoutMs: 15_000, everyMs: 50, what: 'the replicas reconnected to Redis' })
    }
    await ask(replicas, 6)

    t.same(
      outcomes,
      [...Array(BUDGET_ANSWERS).fill('ok'), ...Array(outcomes.length - BUDGET_ANSWERS).fill('privacy_budget_exhausted')],
      `${BUDGET_ANSWERS} answers, then refusals, across ${config.state.redis ? 'replicas sharing Redis' : 'one pod\'s restarts'}`,
    )
  })
}

function gatewayConfig(objs: K8sObject[]): Readonly<Config> {
  const cm = objs.find((o) => o.kind === 'ConfigMap' && o.metadata.name.startsWith('bulwark-config-'))!
  return buildConfig(parse((cm.data as Record<string, string>)['bulwark.yaml']!), 'k8s bulwark.yaml')
}

/**
 * The Redis behind `url` (a Service of the overlay), run as its manifest runs it: its command
 * line (the password expanded from the Secret), its config file from the ConfigMap, its data
 * directory on its claim; only the port and the address are this machine's.
 */
async function startRedisPod(t: Test, cluster: Cluster, url: string) {
  const svcName = new URL(url).hostname.split('.')[0]
  const svc = cluster.objects.find((o) => o.kind === 'Service' && o.metadata.name === svcName)
  if (!svc) throw new Error(`state.redis.url names the Service ${svcName}, which the overlay does not have`)
  const selector = (svc.spec as { selector: Record<string, string> }).selector
  const workload = cluster.objects.find((o) => podSpecs(o).length > 0 && Object.entries(selector).every(([k, v]) => (((o.spec as any).template.metadata.labels ?? {}) as Record<string, string>)[k] === v))
  if (!workload) throw new Error(`the Service ${svcName} selects no pods`)
  const container = String((podSpecs(workload)[0]!.containers as { name: string }[])[0]!.name)
  const port = await freePort()
  let child: { stop(): Promise<void> } | null = null
  const start = async () => {
    // A new pod each time: for a StatefulSet, the same name and the same claim.
    const pod = cluster.pod(workload, 0)
    const [command, ...args] = pod.argv(container)
    if (command !== 'redis-server') throw new Error(`the Redis pod runs ${command}, not redis-server`)
    // Paths inside the container are where this pod's volumes are here: the config file's, and
    // the data directory it names (Redis changes into it as it reads the line).
    const [confFile, ...rest] = args.map((a) => (a.startsWith('/') ? pod.path(container, a) : a))
    const conf = readFileSync(confFile!, 'utf8').replace(/^dir\s+(\S+)$/m, (_, dir: string) => `dir ${pod.path(container, dir)}`)
    const localConf = path.join(cluster.root, 'pods', pod.uid, 'redis.conf')
    writeFileSync(localConf, conf)
    child = await spawnRedis([localConf, ...rest, '--port', String(port), '--bind', '127.0.0.1'])
  }
  const stop = async () => {
    const c = child
    child = null
    await c?.stop()
  }
  await start()
  t.teardown(stop)
  return {
    /** `url` with the Service's address replaced by this machine's. */
    url: (u: string) => {
      const x = new URL(u)
      x.hostname = '127.0.0.1'
      x.port = String(port)
      return x.toString()
    },
    /** Kills it, as a node failure would. */
    stop,
    /** Starts a new Redis pod: for a StatefulSet, on the same claim. */
    start,
  }
}
