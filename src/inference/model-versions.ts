// The versions of a model folder, as Triton's model repository lays them out: either the
// manifest at the top (models/<name>/manifest.json: one version, the manifest's), or one
// numbered folder per version (models/<name>/<n>/manifest.json), of which the model's
// versionPolicy picks the ones served: the highest N, all, or the ones listed.

import { readdir, stat } from 'node:fs/promises'
import path from 'node:path'
import type { ModelSettings } from '../config/schema.ts'

export type VersionPolicy = NonNullable<ModelSettings['versionPolicy']>

export const MANIFEST = 'manifest.json'

/** A version the policy asks for: its folder's manifest, or null when no such folder has one. */
export interface WantedVersion {
  version: string
  manifestPath: string | null
}

const isFile = (p: string) =>
  // eslint-disable-next-line security/detect-non-literal-fs-filename -- a file under the operator's models.directory
  stat(p).then((s) => s.isFile(), () => false)

/** Higher version first: numbers by value, other names after them by text. */
export function byVersionDescending(a: string, b: string): number {
  const na = /^\d+$/.test(a) ? Number(a) : null
  const nb = /^\d+$/.test(b) ? Number(b) : null
  if (na !== null && nb !== null) return nb - na
  if (na !== null) return -1
  if (nb !== null) return 1
  return b.localeCompare(a)
}

/** The numbered sub-folders of a model folder holding a manifest, highest first; null when the manifest is at the top (one version). */
export async function versionFolders(modelDir: string): Promise<string[] | null> {
  if (await isFile(path.join(modelDir, MANIFEST))) return null
  let names: string[]
  try {
    // eslint-disable-next-line security/detect-non-literal-fs-filename -- a sub-folder of the operator's models.directory
    names = await readdir(modelDir)
  } catch {
    return []
  }
  const found: string[] = []
  for (const n of names) if (/^(0|[1-9]\d{0,15})$/.test(n) && (await isFile(path.join(modelDir, n, MANIFEST)))) found.push(n)
  return found.sort(byVersionDescending)
}

/** The versions `policy` serves among `available` (highest first); a version listed by `specific` that has no folder comes with a null path. */
export function selectVersions(modelDir: string, available: readonly string[], policy: VersionPolicy | undefined): WantedVersion[] {
  const at = (v: string): WantedVersion => ({ version: v, manifestPath: available.includes(v) ? path.join(modelDir, v, MANIFEST) : null })
  if (policy === 'all') return available.map(at)
  if (policy !== undefined && 'specific' in policy) return policy.specific.map(String).sort(byVersionDescending).map(at)
  return available.slice(0, policy?.latest ?? 1).map(at)
}

/**
 * The manifest that describes a model to its policy (screening, output protection): the one at
 * the top, else the highest version folder's. The versions served together have the same
 * inputs and outputs (the registry refuses others), so any of them would do.
 */
export async function modelManifestPath(modelsDir: string, model: string): Promise<string> {
  const dir = path.join(modelsDir, model)
  const folders = await versionFolders(dir)
  return folders && folders.length > 0 ? path.join(dir, folders[0]!, MANIFEST) : path.join(dir, MANIFEST)
}
