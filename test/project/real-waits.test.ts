// Tests wait for the thing itself (an event, a log line, a child's output, a response) or move
// a FakeClock (kit/clock.ts); they do not sleep. At most MAX_REAL_WAITS places in test/ and
// kit/ wait on wall time, each in a test of real processes or sockets, each saying why with
// a `// real wait: <why>` comment on its line or in the comment block just above it.
//
// A place waits on wall time when a line (code, or a child's script in a string) calls a
// global timer (setTimeout, setInterval), a sleep, delay or poll helper (sleep, delay,
// waitUntil, waitFor, eventually), imports node:timers, blocks on Atomics.wait or
// AbortSignal.timeout, or loops on the clock (`while (performance.now() < end)`). Not
// counted: a fake clock's timers (`clock.setTimeout`, a FakeClock subclass's overrides),
// method declarations, comment lines, and kit/wait.ts, where `eventually` (whose every call
// counts) and `within` (a bound that only reports a failing wait, never a delay) are defined.

import t from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { repoRoot } from '../../kit/paths.ts'

const MAX_REAL_WAITS = 10
const MARKER = /\/\/ real wait: \S/
const EXEMPT = new Set(['kit/wait.ts', 'test/project/real-waits.test.ts'])

const SITE = [
  /(?<![\w.$])(?:setTimeout|setInterval)\s*\(/,
  /(?<![\w.$])(?:sleep|delay|waitUntil|waitFor|eventually)\s*\(/,
  /['"](?:node:)?timers(?:\/promises)?['"]/,
  /\bAtomics\.wait(?:Async)?\s*\(/,
  /\bAbortSignal\.timeout\s*\(/,
  /\b(?:while|for)\s*\(.*\b(?:performance|Date)\.now\(\)/,
]
/** Declarations, not calls: `function sleep(`, a method `override setTimeout(fn: ...`. Removed before looking. */
const DECLARATIONS = [/\bfunction\s*\*?\s*\w*\s*(?:<[^>]*>)?\s*\(/g, /^\s*(?:(?:override|async|static|public|private|protected)\s+)*\w+\s*(?:<[^>]*>)?\s*\((?=\s*\w+\s*\??:)/]
const COMMENT = /^\s*(?:\/\/|\/\*|\*)/

function sourceFiles(dir: string): string[] {
  return readdirSync(path.join(repoRoot, dir), { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && /\.(?:ts|js|mjs|cjs)$/.test(e.name))
    .map((e) => path.relative(repoRoot, path.join(e.parentPath, e.name)))
    .sort()
}

interface Site {
  where: string
  line: string
  marked: boolean
}

/** The real-wait sites of one file's text. */
export function sitesIn(file: string, text: string): Site[] {
  const lines = text.split('\n')
  const sites: Site[] = []
  lines.forEach((line, i) => {
    const code = DECLARATIONS.reduce((text, re) => text.replace(re, ' '), line)
    if (COMMENT.test(line) || !SITE.some((re) => re.test(code))) return
    // The marker: on the line itself, or in the comment block right above it.
    let marked = MARKER.test(line)
    for (let j = i - 1; !marked && j >= 0 && COMMENT.test(lines[j]!); j--) marked = MARKER.test(lines[j]!)
    sites.push({ where: `${file}:${i + 1}`, line: line.trim(), marked })
  })
  return sites
}

t.test('the rule: what counts as a real wait', async (t) => {
  const count = (text: string) => sitesIn('x.ts', text).length
  t.equal(count('await new Promise((r) => setTimeout(r, 50))'), 1, 'a sleep')
  t.equal(count('const watch = setInterval(sample, 2)'), 1, 'a sampling timer')
  t.equal(count("import { setTimeout as sleep } from 'node:timers/promises'"), 1, 'the timers module')
  t.equal(count('while (performance.now() < until) {}'), 1, 'a busy loop on the clock')
  t.equal(count('await eventually(check, { timeoutMs: 1000, everyMs: 10, what: "x" })'), 1, 'the polling helper')
  t.equal(count('await clock.sleep(10)\nclock.setTimeout(fn, 5)\nconst timer = super.setTimeout(fn, ms)'), 0, 'a fake clock')
  t.equal(count('  override setTimeout(fn: () => void, ms: number): Timer {\nexport async function eventually<T>(check: () => T) {'), 0, 'declarations')
  t.equal(count('function sleep(ms) { return new Promise((r) => setTimeout(r, ms)) }'), 1, 'a sleep declared on one line')
  t.equal(count('const breaker = { resetTimeoutMs: 1000 }\ns.setTimeout(500)'), 0, 'a name that only contains one')
  t.equal(count('// a comment about setTimeout(r, 5)'), 0, 'a comment')
  t.same(sitesIn('x.ts', '// real wait: the process says nothing\nawait eventually(f, o)').map((s) => s.marked), [true], 'marked above')
  t.same(sitesIn('x.ts', 'await eventually(f, o) // real wait: it must').map((s) => s.marked), [true], 'marked on the line')
  t.same(sitesIn('x.ts', '// real wait: far above\nconst x = 1\nawait eventually(f, o)').map((s) => s.marked), [false], 'a marker above other code is not this one\'s')
})

t.test('kit/wait.ts holds two timers and no more: the bound of within, the pause of eventually', async (t) => {
  const file = 'kit/wait.ts'
  t.equal(sitesIn(file, readFileSync(path.join(repoRoot, file), 'utf8')).length, 2, 'a new timer there is a new kind of wait: count its calls here first')
})

t.test(`at most ${MAX_REAL_WAITS} real waits in test/ and kit/, each saying why`, async (t) => {
  const sites = [...sourceFiles('test'), ...sourceFiles('kit')]
    .filter((f) => !EXEMPT.has(f.split(path.sep).join('/')))
    .flatMap((f) => sitesIn(f, readFileSync(path.join(repoRoot, f), 'utf8')))
  t.comment(`real waits:\n${sites.map((s) => `  ${s.where}  ${s.line}`).join('\n')}`)
  const unmarked = sites.filter((s) => !s.marked)
  t.same(unmarked.map((s) => `${s.where}  ${s.line}`), [], 'each says why (`// real wait: <why>`); or wait for an event, or move a FakeClock')
  t.ok(sites.length <= MAX_REAL_WAITS, `${sites.length} real waits (at most ${MAX_REAL_WAITS})`)
})
