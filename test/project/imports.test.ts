// src/ is what the container image runs, and the image carries none of models/*.ts, test/,
// bench/ or kit/ (.dockerignore): a module of src/ that loads one of them works in the
// repository and fails in the image, and only when the code path that loads it runs. So no
// file under src/ may refer to them, whether by a static import or re-export, a dynamic
// import(), an import type, require() or a `new URL(..., import.meta.url)` (workers).
//
// Outside src/, the folders depend one way: kit/ (the test kit: clock, seeded randomness,
// gateway launchers, payloads, paths) is shared by test/ and bench/ and imports neither;
// bench/ may use kit/ but not test/; test/ may import bench/ to test it. A cycle between
// test/ and bench/ would make each one's helpers the other's API.
import t from 'tap'
import { readdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import ts from 'typescript'
import { repoRoot } from '../../kit/paths.ts'

const FORBIDDEN = ['models', 'test', 'bench', 'kit']

/** Each reference in one source file to a file under a forbidden top-level folder, or that cannot be read. */
function forbiddenReferences(file: string, text: string, forbidden: readonly string[] = FORBIDDEN): string[] {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS)
  const problems: string[] = []
  const where = (node: ts.Node) => `${path.relative(repoRoot, file)}:${source.getLineAndCharacterOfPosition(node.getStart()).line + 1}`
  const check = (node: ts.Node, spec: string) => {
    if (!spec.startsWith('.') && !path.isAbsolute(spec)) return // a package, resolved from node_modules
    const target = path.relative(repoRoot, path.resolve(path.dirname(file), spec))
    const top = target.split(path.sep)[0]!
    if (forbidden.includes(top)) problems.push(`${where(node)} refers to ${target}`)
  }
  /** A module named by a string, or by `new URL('...', import.meta.url)` (with or without .href). */
  const specifier = (node: ts.Expression): string | null => {
    if (ts.isStringLiteralLike(node)) return node.text
    if (ts.isPropertyAccessExpression(node) && node.name.text === 'href') return specifier(node.expression)
    if (ts.isNewExpression(node) && ts.isIdentifier(node.expression) && node.expression.text === 'URL' && node.arguments?.[0]) {
      const first = node.arguments[0]
      const base = node.arguments[1]
      if (ts.isStringLiteralLike(first) && base && base.getText(source) === 'import.meta.url') return first.text
    }
    return null
  }
  const visit = (node: ts.Node): void => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteralLike(node.moduleSpecifier)) {
      check(node, node.moduleSpecifier.text)
    } else if (ts.isImportTypeNode(node) && ts.isLiteralTypeNode(node.argument) && ts.isStringLiteralLike(node.argument.literal)) {
      check(node, node.argument.literal.text)
    } else if (ts.isCallExpression(node)) {
      const callee = node.expression.getText(source)
      if (node.expression.kind === ts.SyntaxKind.ImportKeyword || callee === 'require' || callee === 'require.resolve') {
        const arg = node.arguments[0]
        const spec = arg ? specifier(arg) : null
        if (spec === null) problems.push(`${where(node)} loads a module whose name is computed (${callee === 'import' ? 'import()' : callee} of ${arg?.getText(source) ?? 'nothing'}): name it with a string so it can be checked`)
        else check(node, spec)
      }
    } else if (ts.isNewExpression(node)) {
      const spec = specifier(node)
      if (spec !== null) check(node, spec)
    }
    ts.forEachChild(node, visit)
  }
  visit(source)
  return [...new Set(problems)] // import(new URL(...)) is both a call and a URL
}

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const full = path.join(dir, e.name)
    return e.isDirectory() ? sourceFiles(full) : e.name.endsWith('.ts') ? [full] : []
  })
}

t.test('no module of src/ refers to models/, test/, bench/ or kit/', async (t) => {
  const files = sourceFiles(path.join(repoRoot, 'src'))
  t.ok(files.length > 50, `${files.length} files under src/`)
  t.same(files.flatMap((f) => forbiddenReferences(f, readFileSync(f, 'utf8'))), [])
})

t.test('bench/ refers to nothing in test/, and kit/ to nothing in test/ or bench/', async (t) => {
  const scan = (dir: string, forbidden: string[]) => {
    const files = sourceFiles(path.join(repoRoot, dir))
    t.ok(files.length > 0, `${files.length} files under ${dir}/`)
    return files.flatMap((f) => forbiddenReferences(f, readFileSync(f, 'utf8'), forbidden))
  }
  t.same(scan('bench', ['test']), [], 'bench/ uses kit/, not test/')
  t.same(scan('kit', ['test', 'bench']), [], 'kit/ uses neither test/ nor bench/')
})

t.test('the scan finds every way of loading a module', async (t) => {
  const file = path.join(repoRoot, 'src/screening/example.ts')
  const found = (code: string) => forbiddenReferences(file, code)
  const hit = (target: string) => [`src/screening/example.ts:1 refers to ${target}`]
  t.same(found(`import { loadMnist } from '../../models/mnist/data.ts'`), hit('models/mnist/data.ts'), 'a static import')
  t.same(found(`export { x } from '../../test/helpers/fake-clock.ts'`), hit('test/helpers/fake-clock.ts'), 'a re-export')
  t.same(found(`import '../../bench/run.ts'`), hit('bench/run.ts'), 'an import for its side effects')
  t.same(found(`const m = await import('../../kit/clock.ts')`), hit('kit/clock.ts'), 'a dynamic import')
  t.same(found(`const m = await import(new URL('../../models/mnist/data.ts', import.meta.url).href)`), hit('models/mnist/data.ts'), 'a dynamic import of a URL')
  t.same(found(`type M = typeof import('../../models/mnist/data.ts')`), hit('models/mnist/data.ts'), 'an import type')
  t.same(found(`const d = require('../../models/mnist/data.ts')`), hit('models/mnist/data.ts'), 'require()')
  t.same(found(`const w = new Worker(new URL('../../test/worker.ts', import.meta.url))`), hit('test/worker.ts'), 'a worker URL')
  t.match(found(`const m = await import(\`../../models/\${name}/data.ts\`)`), [/:1 loads a module whose name is computed/], 'a computed name cannot be checked, so it fails')
  t.same(found(`import { readFile } from 'node:fs/promises'\nimport { x } from '../inference/manifest.ts'\nconst m = await import('@opentelemetry/sdk-node')\nconst s = new URL('http://example.com/models/x')`), [], 'packages, src/ itself and other URLs pass')
  t.same(found(`import { x } from '../../models-cache/x.ts'`), [], 'only those folders, not names that start alike')
})
