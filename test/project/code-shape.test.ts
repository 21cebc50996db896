// The shape the code keeps: no function in src/ longer than 150 lines (a longer one is doing
// more than one job), measured on the TypeScript syntax tree, from the first line of the
// function to its closing brace.
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import t from 'tap'
import ts from 'typescript'
import { repoRoot } from '../../kit/paths.ts'

const MAX_LINES = 150

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name)
    return e.isDirectory() ? sources(p) : p.endsWith('.ts') ? [p] : []
  })
}

/** Functions longer than `max` lines in one file, as "file:line name (n lines)". */
export function longFunctions(file: string, text: string, max: number): string[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true)
  const found: string[] = []
  const visit = (node: ts.Node): void => {
    if (ts.isFunctionLike(node) && 'body' in node && node.body) {
      const first = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line
      const last = sf.getLineAndCharacterOfPosition(node.end).line
      const name = node.name && ts.isIdentifier(node.name) ? node.name.text : '(anonymous)'
      if (last - first + 1 > max) found.push(`${path.relative(repoRoot, file)}:${first + 1} ${name} (${last - first + 1} lines)`)
    }
    ts.forEachChild(node, visit)
  }
  visit(sf)
  return found
}

t.test('the measure finds a long function and passes a short one', async (t) => {
  const body = Array.from({ length: 10 }, (_, i) => `  const x${i} = ${i}`).join('\n')
  t.same(longFunctions('a.ts', `function short() {\n${body}\n}\n`, 12), [])
  t.match(longFunctions('a.ts', `const long = () => {\n${body}\n}\n`, 11), [/a\.ts:1 \(anonymous\) \(12 lines\)/])
})

t.test(`no function in src/ is longer than ${MAX_LINES} lines`, async (t) => {
  const files = sources(path.join(repoRoot, 'src'))
  t.ok(files.length > 50, 'the sources were found')
  t.same(files.flatMap((f) => longFunctions(f, readFileSync(f, 'utf8'), MAX_LINES)), [])
})
