// Triton's model repository extension, on the admin listener (models.repositoryApi), as the
// explicit model control Triton offers besides polling:
//   POST /v2/repository/index                 the models of the folder: name, version, state
//                                             (READY, UNAVAILABLE), reason; {"ready": true}
//                                             lists only the ready ones
//   POST /v2/repository/models/{name}/load    loads the folder as it is now (beside the version
//                                             served, which new requests leave once it is
//                                             ready; src/inference/registry.ts loadVersion)
//   POST /v2/repository/models/{name}/unload  serves it no more (requests already validated
//                                             finish on it)
// Each request needs a bearer token, verified as the API verifies them (the same issuer,
// audience and keys), that carries the configured scope: the admin listener takes no client
// certificate, so the token is the whole of the check. Transport-neutral: the in-process admin
// routes and the admin thread both hand requests here.

import { readdir } from 'node:fs/promises'
import path from 'node:path'
import { BulwarkError, isBulwarkError } from '../errors.ts'
import type { Logger } from '../deps.ts'
import { versionOf, type ModelRegistry } from '../inference/registry.ts'
import { versionFolders } from '../inference/model-versions.ts'
import type { Principal } from '../types.ts'

export interface RepositoryRequest {
  method: string
  path: string
  /** The Authorization header, as sent. */
  authorization: string | undefined
  body: string
}

export interface RepositoryAnswer {
  status: number
  body: unknown
}

export interface RepositoryApiDeps {
  registry: Pick<ModelRegistry, 'list' | 'versionsOf' | 'loadVersion' | 'unload'>
  /** The folder the models are loaded from. */
  directory: string
  /** Verifies the Authorization header's token as the API does; throws unauthenticated. */
  verify(authorization: string | undefined): Promise<Principal>
  scope: string
  log: Logger
}

/** Whether a path is the repository extension's (the listeners route these here). */
export const isRepositoryPath = (p: string) => p === '/v2/repository/index' || p.startsWith('/v2/repository/models/')

const NAME = /^[a-z0-9][a-z0-9_.-]{0,62}$/

/** The model folders: every sub-folder with a manifest.json, at its top or in a version folder. */
async function folders(directory: string): Promise<string[]> {
  // eslint-disable-next-line security/detect-non-literal-fs-filename -- the operator's models.directory
  const names = await readdir(directory).catch(() => [] as string[])
  const found: string[] = []
  for (const n of names.filter((x) => NAME.test(x))) {
    const versions = await versionFolders(path.join(directory, n))
    if (versions === null || versions.length > 0) found.push(n)
  }
  return found
}

function parseBody(body: string): Record<string, unknown> {
  if (body.trim() === '') return {}
  let value: unknown
  try {
    value = JSON.parse(body)
  } catch {
    throw new BulwarkError('invalid_json', 'the body is not JSON; send {} or nothing')
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new BulwarkError('bad_request', 'the body must be a JSON object')
  return value as Record<string, unknown>
}

export function createRepositoryApi(deps: RepositoryApiDeps): (req: RepositoryRequest) => Promise<RepositoryAnswer> {
  const index = async (ready: boolean) => {
    const served = new Set(deps.registry.list().map((m) => m.name))
    const names = [...new Set([...served, ...(await folders(deps.directory))])].sort()
    // One entry per version held, as Triton's index; a folder not loaded is one entry without a version.
    return names
      .flatMap((name) => {
        const held = deps.registry.versionsOf(name)
        if (held.length === 0) return [{ name, state: 'UNAVAILABLE', reason: 'unloaded' }]
        return held.map((m) => {
          const version = versionOf(m)
          return { name, ...(version !== null ? { version } : {}), state: m.state === 'ready' ? 'READY' : 'UNAVAILABLE', reason: m.reason ?? '' }
        })
      })
      .filter((e) => !ready || e.state === 'READY')
  }

  const act = async (principal: Principal, name: string, action: string): Promise<RepositoryAnswer> => {
    if (!NAME.test(name)) throw new BulwarkError('bad_request', `"${name.slice(0, 64)}" is not a model name (lower-case letters, digits, _ . -)`)
    const who = { subject: principal.subject, issuer: principal.issuer, model: name }
    if (action === 'unload') {
      if (!deps.registry.unload(name)) throw new BulwarkError('model_not_found', `model "${name}" is not loaded`)
      deps.log.info(who, 'model unloaded through the repository API; requests already validated finish on it')
      return { status: 200, body: {} }
    }
    const problem = await deps.registry.loadVersion(name)
    if (problem !== null) {
      deps.log.warn({ ...who, problem }, 'model load through the repository API failed; what was served stays')
      throw new BulwarkError('bad_request', `failed to load "${name}": ${problem.slice(0, 500)}`)
    }
    deps.log.info(who, 'model loaded through the repository API; new requests use it')
    return { status: 200, body: {} }
  }

  return async (req) => {
    try {
      if (req.method !== 'POST') throw new BulwarkError('bad_request', `use POST for ${req.path.slice(0, 100)}`)
      const principal = await deps.verify(req.authorization)
      if (!principal.scopes.includes(deps.scope)) {
        throw new BulwarkError('forbidden', 'this token may not manage models', { reason: `the token lacks scope ${deps.scope}` })
      }
      const body = parseBody(req.body)
      if (req.path === '/v2/repository/index') return { status: 200, body: await index(body.ready === true) }
      const m = /^\/v2\/repository\/models\/([^/]+)\/(load|unload)$/.exec(req.path)
      if (!m) throw new BulwarkError('not_found', 'the repository extension serves /v2/repository/index and /v2/repository/models/{name}/load|unload')
      let name: string
      try {
        name = decodeURIComponent(m[1]!)
      } catch {
        throw new BulwarkError('bad_request', 'the model name is not valid percent-encoding')
      }
      return await act(principal, name, m[2]!)
    } catch (err) {
      const e = isBulwarkError(err) ? err : new BulwarkError('internal', 'internal error; the operator can find details in the server log', { cause: err })
      if (!isBulwarkError(err)) deps.log.error({ err: (err as Error).message }, 'repository API failed')
      return { status: e.status, body: { error: e.message, code: e.code } }
    }
  }
}
