// What the CLI needs for the development set-up: whether a config relies on the development
// PKI (so `serve` creates it when missing), the scopes a development token needs, and the
// curl example `serve` prints.

import path from 'node:path'
import type { Config } from '../config/schema.ts'
import { loadPolicies, scopesFor } from '../config/policy.ts'
import { DEV_DIR, DEV_WORKLOAD, isUrl } from '../config/security.ts'
import { devPkiPaths } from './pki.ts'

const inside = (dir: string, file: string) => !path.relative(dir, file).startsWith('..')

/** The development PKI folder if the config reads TLS files or the JWKS from it, else null. */
export function devPkiDirFor(config: Readonly<Config>, baseDir: string): string | null {
  const dir = path.resolve(baseDir, DEV_DIR)
  const files: string[] = []
  if (config.tls.enabled) files.push(config.tls.certFile, config.tls.keyFile, config.tls.caFile)
  if (config.auth.enabled && !isUrl(config.auth.jwks.source)) files.push(config.auth.jwks.source)
  return files.some((f) => inside(dir, path.resolve(baseDir, f))) ? dir : null
}

/**
 * The scopes a development token needs to call every verb of every served model, according
 * to the policies: what `bulwark token` puts in a token when --scope is not given.
 */
export async function devScopes(config: Readonly<Config>, baseDir: string): Promise<string[]> {
  const policies = await loadPolicies(path.resolve(baseDir, config.policies.directory), { required: false })
  return scopesFor(policies, config.models.serve.map((m) => m.name), DEV_WORKLOAD)
}

/** A shell-safe rendering of a path for a printed command. */
function sh(p: string): string {
  return /^[A-Za-z0-9_./@:-]+$/.test(p) ? p : `'${p.replace(/'/g, `'\\''`)}'`
}

/**
 * The curl command for a first inference, as the user can paste it in `cwd`: with the
 * development CA, client certificate and a token minted inline when the front door is on.
 */
export function curlExample(o: { config: Readonly<Config>; baseDir: string; cwd: string; apiUrl: string; model: string; bodyFile: string }): string {
  const { config, baseDir, cwd } = o
  const rel = (p: string) => sh(path.relative(cwd, path.resolve(baseDir, p)) || '.')
  const parts = ['curl -s']
  const devDir = devPkiDirFor(config, baseDir)
  if (config.tls.enabled) {
    parts.push(`--cacert ${rel(config.tls.caFile)}`)
    if (devDir) {
      const { files } = devPkiPaths(devDir)
      parts.push(`--cert ${rel(files.clientCert)} --key ${rel(files.clientKey)}`)
    } else {
      parts.push('--cert CLIENT.pem --key CLIENT-KEY.pem')
    }
  }
  if (config.auth.enabled) parts.push(devDir ? `-H "authorization: Bearer $(npx bulwark token)"` : `-H "authorization: Bearer $TOKEN"`)
  parts.push(`-H 'content-type: application/json' --data @${rel(o.bodyFile)}`)
  parts.push(`${o.apiUrl}/v2/models/${o.model}/infer`)
  return parts.join(' \\\n    ')
}
