// Where things are, for tests and benches alike.

import path from 'node:path'

/** The repository's root folder. */
export const repoRoot = path.resolve(import.meta.dirname, '..')
