// The Dockerfile, checked statically (no container engine on CI machines): every base image
// pinned by digest, Node.js 24 in every stage that runs the gateway, production dependencies
// only, no install scripts but onnxruntime-node's own in the GPU variant, no ADD from URLs,
// no secrets in the build context or the image, a non-root numeric user, no shell or package
// manager needed at run time, no HEALTHCHECK, volumes exactly where the Kubernetes config puts
// the audit trail and the state, ports the gateway's defaults.
import t from 'tap'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { parse } from 'yaml'
import { buildConfig, defaultConfig } from '../../src/config/load.ts'
import { repoRoot } from '../../kit/paths.ts'

const text = readFileSync(path.join(repoRoot, 'Dockerfile'), 'utf8')
const dockerignore = readFileSync(path.join(repoRoot, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'))

interface Instruction {
  op: string
  args: string
  line: number
}
interface Stage {
  base: string
  name: string | null
  body: Instruction[]
}

/** Instructions in order: comments dropped, continuation lines joined. */
function instructions(source: string): Instruction[] {
  const out: Instruction[] = []
  const lines = source.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const start = i
    let line = lines[i]!.trim()
    if (line === '' || line.startsWith('#')) continue
    while (line.endsWith('\\') && i + 1 < lines.length) {
      i++
      const next = lines[i]!.trim()
      line = line.slice(0, -1).trimEnd() + (next.startsWith('#') ? '' : ' ' + next)
    }
    const m = /^([A-Za-z]+)\s+([\s\S]*)$/.exec(line)
    if (!m) throw new Error(`Dockerfile line ${start + 1}: cannot parse ${line}`)
    out.push({ op: m[1]!.toUpperCase(), args: m[2]!.trim(), line: start + 1 })
  }
  return out
}

const all = instructions(text)
const globalArgs = new Map<string, string>()
const stages: Stage[] = []
for (const ins of all) {
  if (ins.op === 'ARG' && stages.length === 0) {
    const [k, v] = ins.args.split('=', 2)
    globalArgs.set(k!, v ?? '')
  } else if (ins.op === 'FROM') {
    const m = /^(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?$/i.exec(ins.args)!
    const base = m[1]!.replace(/^\$\{?([A-Za-z_]+)\}?$/, (_, name: string) => globalArgs.get(name) ?? `\${${name}}`)
    stages.push({ base, name: m[2] ?? null, body: [] })
  } else {
    stages.at(-1)?.body.push(ins)
  }
}
const stageNames = new Set(stages.map((s) => s.name))
const finalStage = stages.at(-1)!
const cudaStage = stages.find((s) => s.name === 'runtime-cuda')!
const runtimes = [finalStage, cudaStage]
const overlayConfigs = ['sidecar', 'gateway'].map((o) => buildConfig(parse(readFileSync(path.join(repoRoot, `k8s/overlays/${o}/bulwark.yaml`), 'utf8')), `k8s/overlays/${o}/bulwark.yaml`))
const k8sConfig = overlayConfigs[0]!
const port = (hostPort: string) => Number(hostPort.slice(hostPort.lastIndexOf(':') + 1))
const jsonArray = (args: string) => JSON.parse(args) as string[]

t.test('multi-stage, the CPU runtime is the default (last) target, the GPU one is named runtime-cuda', async (t) => {
  t.ok(stages.length >= 3, `${stages.length} stages`)
  t.equal(finalStage.name, 'runtime')
  t.ok(cudaStage, 'a GPU variant')
})

t.test('every base image is pinned by digest, and carries Node.js 24 where the gateway runs', async (t) => {
  for (const s of stages) {
    if (stageNames.has(s.base)) continue
    t.match(s.base, /^[a-z0-9.-]+(\/[a-z0-9._-]+)+:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$/, `${s.name}: ${s.base.split('@')[0]} pinned (registry/name:tag@sha256)`)
  }
  t.match(finalStage.base, /^gcr\.io\/distroless\/nodejs24-/, 'CPU runtime: distroless Node.js 24 (no shell, no package manager)')
  t.match(stages.find((s) => s.name === 'deps')!.base, /\/node:24[.-]/, 'dependencies installed with Node.js 24 / npm')
  t.ok(cudaStage.body.some((i) => i.op === 'COPY' && /--from=deps-cuda \/usr\/local\/bin\/node /.test(i.args)), 'GPU runtime: Node.js 24 copied from the official image')
  t.match(JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')).engines.node, />=24/, 'package.json asks for Node.js 24')
})

t.test('production dependencies only, from the lockfile, no install scripts but onnxruntime-node\'s CUDA one', async (t) => {
  const runs = all.filter((i) => i.op === 'RUN')
  const npm = runs.flatMap((i) => i.args.split('&&').map((c) => c.trim())).filter((c) => /\bnpm\b/.test(c))
  const installs = npm.filter((c) => /\bnpm (ci|install|i|add)\b/.test(c))
  t.ok(installs.length >= 1)
  for (const c of installs) {
    t.match(c, /^npm ci\b/, `${c}: npm ci (the lockfile, exactly)`)
    t.match(c, /--omit=dev/, `${c}: --omit=dev`)
    t.match(c, /--ignore-scripts/, `${c}: no install scripts`)
  }
  const rebuilds = npm.filter((c) => /\bnpm rebuild\b/.test(c))
  t.same(rebuilds.map((c) => c.replace(/^ONNXRUNTIME_NODE_INSTALL=cuda12 /, '')), ['npm rebuild onnxruntime-node --foreground-scripts'], 'only onnxruntime-node runs its script, only for CUDA')
  const deps = stages.find((s) => s.name === 'deps')!
  t.ok(deps.body.some((i) => i.op === 'COPY' && /\.npmrc/.test(i.args)), 'the CPU build reads .npmrc (onnxruntime-node-install=skip)')
  t.match(readFileSync(path.join(repoRoot, '.npmrc'), 'utf8'), /^onnxruntime-node-install=skip$/m)
})

t.test('no ADD from URLs, no secrets, no keys in the build context', async (t) => {
  for (const i of all) {
    if (i.op === 'ADD') t.notMatch(i.args, /(https?|git|ftp):\/\/|git@/, `line ${i.line}: ADD from a URL`)
    if (i.op === 'ENV' || i.op === 'ARG') {
      for (const name of i.args.split(/\s+/).map((kv) => kv.split('=')[0]!)) {
        t.notMatch(name, /SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|API_?KEY|PRIVATE/i, `line ${i.line}: ${name} does not look like a secret`)
      }
    }
    if (i.op === 'COPY' || i.op === 'ADD') t.notMatch(i.args, /\.pem|\.key\b|\.bulwark|id_rsa|\.env\b/, `line ${i.line}: copies no key material`)
    t.notMatch(i.args, /--mount=type=secret/, 'no build secrets needed')
  }
  t.equal(dockerignore[0], '*', '.dockerignore denies by default')
  for (const needed of ['!package.json', '!package-lock.json', '!.npmrc', '!bin/', '!src/', '!models/', '!policies/']) t.ok(dockerignore.includes(needed), `context includes ${needed.slice(1)}`)
  for (const never of ['**/*.pem', '**/*.key', '**/.env']) t.ok(dockerignore.includes(never), `context excludes ${never}`)
  t.notOk(dockerignore.some((l) => /^!(\.bulwark|node_modules|\.git|test|bench|kit)\b/.test(l)), 'never re-includes .bulwark, node_modules, .git, test/, bench/ or kit/')
})

t.test('runtimes: non-root numeric user, nothing to run at start, no HEALTHCHECK, exec-form entrypoint', async (t) => {
  t.notOk(all.some((i) => i.op === 'HEALTHCHECK'), 'no HEALTHCHECK: Kubernetes probes the admin port')
  for (const s of runtimes) {
    const users = s.body.filter((i) => i.op === 'USER')
    t.equal(users.length, 1, `${s.name}: one USER`)
    const m = /^(\d+):(\d+)$/.exec(users[0]?.args ?? '')
    t.ok(m && Number(m[1]) > 0 && Number(m[2]) > 0, `${s.name}: USER ${users[0]?.args} is numeric uid:gid, not root (runAsNonRoot can verify it)`)
    t.same(s.body.filter((i) => i.op === 'RUN'), [], `${s.name}: no RUN (no shell or package manager needed in the runtime)`)
    const entry = s.body.find((i) => i.op === 'ENTRYPOINT')!
    t.match(jsonArray(entry.args), [/\/node$/, '/app/bin/bulwark.js'], `${s.name}: exec form, node runs bin/bulwark.js`)
    t.same(jsonArray(s.body.find((i) => i.op === 'CMD')!.args), ['serve', '--config', '/etc/bulwark/bulwark.yaml'], `${s.name}: serve --config /etc/bulwark/bulwark.yaml`)
    for (const copy of s.body.filter((i) => i.op === 'COPY')) t.notMatch(copy.args, /--chown=(?!0:0)/, `${s.name}: the app's files stay root-owned (read-only to the process)`)
  }
})

t.test('read-only root file system: the writable paths are volumes, where bulwark.yaml puts audit and state', async (t) => {
  const expected = [k8sConfig.audit.directory, k8sConfig.state.directory].sort()
  for (const c of overlayConfigs) t.same([c.audit.directory, c.state.directory].sort(), expected, 'both overlays write to the same paths')
  for (const s of runtimes) {
    const volumes = s.body.filter((i) => i.op === 'VOLUME').flatMap((i) => jsonArray(i.args))
    t.same(volumes.sort(), expected, `${s.name}: VOLUME ${expected.join(', ')}`)
    const ports = s.body.filter((i) => i.op === 'EXPOSE').flatMap((i) => i.args.split(/\s+/).map(Number))
    const defaults = defaultConfig(repoRoot).config.server
    t.same(ports, [port(defaults.listen), port(defaults.admin)], `${s.name}: EXPOSE the default API and admin ports`)
  }
  const app = stages.find((s) => s.name === 'app')!
  const prep = app.body.filter((i) => i.op === 'RUN').map((i) => i.args).join(' ')
  for (const dir of expected) t.match(prep, new RegExp(`chown -R 65532:65532 ${path.dirname(dir)}`), `${dir} is owned by the runtime user`)
  for (const c of overlayConfigs) t.equal(c.models.directory, '/app/models', 'bulwark.yaml reads the model manifests the image carries')
  t.ok(app.body.some((i) => i.op === 'WORKDIR' && i.args === '/app') && app.body.some((i) => i.op === 'COPY' && i.args === 'models ./models'), 'models are copied to /app/models')
})

t.test('every local module the gateway and its commands import is in the image (the build context)', async (t) => {
  // What .dockerignore lets through, for the local source files that matter here.
  const inContext = (rel: string) => /^(bin|src)\//.test(rel) || (/^models\//.test(rel) && !rel.endsWith('.ts') && !rel.endsWith('weights.json')) || rel.startsWith('policies/')
  const seen = new Set<string>()
  const visit = (file: string) => {
    const rel = path.relative(repoRoot, file)
    if (seen.has(rel)) return
    seen.add(rel)
    const source = readFileSync(file, 'utf8')
    // Dynamic imports too: a command that loads a module only when it runs fails in the
    // image all the same if the module was left out.
    for (const m of source.matchAll(/^\s*(?:import|export)\s[^'"]*?from\s+['"](\.{1,2}\/[^'"]+)['"]|^\s*import\s+['"](\.{1,2}\/[^'"]+)['"]|\bimport\(\s*(?:new URL\(\s*)?['"](\.{1,2}\/[^'"]+)['"]/gm)) {
      visit(path.resolve(path.dirname(file), m[1] ?? m[2] ?? m[3]!))
    }
  }
  visit(path.join(repoRoot, 'bin/bulwark.js'))
  visit(path.join(repoRoot, 'src/cli.ts'))
  t.ok(seen.size > 20, `${seen.size} modules`)
  const outside = [...seen].filter((rel) => !inContext(rel))
  t.same(outside, [], 'all inside bin/ and src/ (models/*.ts and tests are not in the image)')
})
