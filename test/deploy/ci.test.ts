// .ci/run checks that the tools some tests need are there (redis-server, kubectl with
// kustomize), runs the security checks (type check, lint, production dependency audit, the
// fuzz test), keeps going to report every failure, fails if any failed, and ends with
// `npm test` so its last line is `N passed, N failed`.
import t from 'tap'
import { readFileSync } from 'node:fs'
import path from 'node:path'
import { repoRoot } from '../../kit/paths.ts'

const run = readFileSync(path.join(repoRoot, '.ci/run'), 'utf8')
const scripts = JSON.parse(readFileSync(path.join(repoRoot, 'package.json'), 'utf8')).scripts as Record<string, string>
const commands = run.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'))

t.test('every check runs, in order, and npm test is last', async (t) => {
  const order = ['npm ci', 'npm run typecheck', 'npm run lint', 'npm run audit:prod', 'npm run fuzz', 'npm test']
  const at = order.map((c) => commands.findIndex((l) => l.includes(c)))
  t.ok(at.every((i) => i >= 0), `all of ${order.join(', ')} are run`)
  t.same([...at].sort((a, b) => a - b), at, 'in this order')
  const last = commands.filter((l) => /\bnpm\b/.test(l)).at(-1)
  t.equal(last, 'npm test', 'npm test is the last npm command (its last line is N passed, N failed)')
  t.notOk(commands.slice(commands.indexOf('npm test') + 1).some((l) => /\becho\b|printf/.test(l)), 'nothing is printed after the tests')
  t.match(run, /if \(\(\$\{#failed\[@\]\} > 0\)\); then exit 1; fi/, 'a failed check fails the run')
})

t.test('a machine without kubectl fails the run: the deploy tests would skip there and check nothing', async (t) => {
  t.match(run, /^check "kubectl with kustomize[^"]*" kubectl_kustomize$/m, 'kubectl is one of the checks')
  t.match(run, /command -v kubectl/, 'absent kubectl fails the check')
  t.match(run, /Kustomize Version/, 'so does a kubectl without kustomize')
  t.ok(commands.findIndex((l) => l.startsWith('check "kubectl')) < commands.indexOf('npm test'), 'checked before the tests run')
})

t.test('the scripts behind the checks', async (t) => {
  t.match(scripts.lint, /^eslint \. --max-warnings 0$/, 'lint: every finding fails')
  t.match(scripts['audit:prod'], /npm-audit\.ts/)
  t.match(readFileSync(path.join(repoRoot, '.ci/npm-audit.ts'), 'utf8'), /'audit', '--omit=dev', '--audit-level=high'/, 'audit: production dependencies, high and critical')
  t.match(scripts.fuzz, /test\/fuzz\/oip-request\.fuzz\.ts/)
  t.match(readFileSync(path.join(repoRoot, 'test/fuzz/oip-request.fuzz.ts'), 'utf8'), /BULWARK_FUZZ_RUNS \?\? 10_000/, 'fuzz: 10,000 cases by default')
})
