// Loads bulwark.yaml: parse, fill defaults, validate against the schema, report every
// problem at once (file, path, what is wrong, how to fix), then freeze. A config that does
// not validate stops the start; nothing runs on a half-understood config.

import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { Value } from '@sinclair/typebox/value'
import { ValueErrorType, type ValueError } from '@sinclair/typebox/errors'
import { parseDocument } from 'yaml'
import { ConfigSchema, type Config } from './schema.ts'
import type { TSchema } from '@sinclair/typebox'

export class ConfigError extends Error {
  override name = 'ConfigError'
  readonly problems: string[]
  constructor(source: string, problems: string[]) {
    super(`${source}: ${problems.length} problem(s) in the configuration:\n  - ${problems.join('\n  - ')}`)
    this.problems = problems
  }
}

/** Why a value failed, phrased as a fix. */
function explain(err: ValueError): string {
  const where = err.path === '' ? '/' : err.path
  const schema = err.schema as TSchema & { description?: string; examples?: unknown[] }
  const hint = schema.examples ? ` (for example ${JSON.stringify(schema.examples[0])})` : ''
  switch (err.type) {
    case ValueErrorType.ObjectRequiredProperty:
      return `${where}: required; add it`
    case ValueErrorType.Union:
    case ValueErrorType.Literal: {
      // A union of shapes, not only of constants: its description says what it takes.
      if (schema.description && schema.anyOf?.some((s: TSchema & { const?: unknown }) => s.const === undefined)) return `${where}: ${JSON.stringify(err.value)} is not allowed; use ${schema.description}`
      const options = (schema.anyOf ?? [schema]).map((s: TSchema & { const?: unknown }) => JSON.stringify(s.const))
      return `${where}: ${JSON.stringify(err.value)} is not allowed; use one of ${options.join(', ')}`
    }
    default:
      return `${where}: ${err.message}${schema.description ? ` (${schema.description})` : ''}${hint}; got ${JSON.stringify(err.value)}`
  }
}

/** The sub-schema at a JSON pointer (through object properties and array items). */
function schemaAt(schema: TSchema, pointer: string): TSchema | undefined {
  let node: TSchema | undefined = schema
  for (const part of pointer.split('/').slice(1)) {
    if (!node) return undefined
    // eslint-disable-next-line bulwark/object-injection -- read-only walk of our own schema along a validator error path, to name the allowed keys in a message
    if (node.properties && part in node.properties) node = node.properties[part] as TSchema
    else if (node.items) node = node.items as TSchema
    // eslint-disable-next-line bulwark/object-injection -- the same read-only walk, through a union's members
    else if (node.anyOf) node = (node.anyOf as TSchema[]).find((s) => s.properties && part in s.properties)?.properties[part]
    else return undefined
  }
  return node
}

/** Every problem with `value` against `schema`, one message each. */
export function schemaProblems(schema: TSchema, value: unknown): string[] {
  const problems: string[] = []
  for (const err of Value.Errors(schema, value)) {
    if (err.type === ValueErrorType.ObjectAdditionalProperties) {
      const parent = err.path.slice(0, err.path.lastIndexOf('/'))
      const allowed = Object.keys(schemaAt(schema, parent)?.properties ?? {})
      problems.push(`${err.path}: unknown key; ${allowed.length ? `allowed keys here are ${allowed.join(', ')}` : 'remove it'}`)
      continue
    }
    problems.push(explain(err))
  }
  return [...new Set(problems)]
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value)
    for (const v of Object.values(value)) deepFreeze(v)
  }
  return value
}

/** Defaults filled in, validated, frozen. `raw` is what the YAML said (undefined = nothing). */
export function buildConfig(raw: unknown, source: string): Readonly<Config> {
  if (raw !== undefined && raw !== null && (typeof raw !== 'object' || Array.isArray(raw))) {
    throw new ConfigError(source, ['/: the file must hold a mapping (key: value pairs) at the top level'])
  }
  const withDefaults = Value.Default(ConfigSchema, structuredClone(raw ?? {}))
  const problems = schemaProblems(ConfigSchema, withDefaults)
  if (problems.length === 0) problems.push(...serverProblems((withDefaults as Config).server))
  if (problems.length > 0) throw new ConfigError(source, problems)
  return deepFreeze(withDefaults as Config)
}

/** Cross-field rules of the `server:` slice. */
function serverProblems(server: Config['server']): string[] {
  const problems: string[] = []
  if (server.receiveTimeoutMs < server.headersTimeoutMs) {
    problems.push(`/server/receiveTimeoutMs: ${server.receiveTimeoutMs} is shorter than headersTimeoutMs (${server.headersTimeoutMs}); the whole request cannot arrive before its headers: raise it`)
  }
  return problems
}

export interface LoadedConfig {
  config: Readonly<Config>
  /** Folder relative paths in the config are resolved from. */
  baseDir: string
  source: string
}

/** The embedded default: what `npm start` serves with no config file. */
export function defaultConfig(baseDir: string): LoadedConfig {
  return { config: buildConfig(undefined, 'embedded default'), baseDir, source: 'embedded default' }
}

export async function loadConfigFile(file: string): Promise<LoadedConfig> {
  let text: string
  try {
    text = await readFile(file, 'utf8')
  } catch (err) {
    throw new ConfigError(file, [`cannot read the file: ${(err as Error).message}`])
  }
  const doc = parseDocument(text, { uniqueKeys: true })
  if (doc.errors.length > 0) {
    throw new ConfigError(file, doc.errors.map((e) => `YAML syntax: ${e.message.split('\n')[0]}`))
  }
  return { config: buildConfig(doc.toJS(), file), baseDir: path.dirname(path.resolve(file)), source: file }
}
