// The command line: the only module that reads argv and the environment, listens on
// ports, installs signal handlers and exits.

import { parseArgs } from 'node:util'
import path from 'node:path'
import { ConfigError, defaultConfig, loadConfigFile, type LoadedConfig } from './config/load.ts'
import { buildConfig } from './config/load.ts'
import { realDeps } from './deps.ts'
import { buildGateway } from './server.ts'

const USAGE = `usage: bulwark <command> [options]

commands:
  serve [--config FILE] [--listen HOST:PORT] [--admin HOST:PORT]
        run the gateway (no --config: the embedded default serves the bundled models)
  help  show this text`

function splitHostPort(value: string, flag: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/.exec(value)
  if (!m || Number(m[2]) > 65535) throw new ConfigError(flag, [`${flag} must be HOST:PORT, e.g. 127.0.0.1:8443; got ${JSON.stringify(value)}`])
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) }
}

/** Applies --listen/--admin over the loaded config (re-validated, so the result stays frozen and checked). */
function withOverrides(loaded: LoadedConfig, listen?: string, admin?: string): LoadedConfig {
  if (!listen && !admin) return loaded
  const raw = structuredClone(loaded.config) as { server: Record<string, unknown> }
  if (listen) raw.server.listen = listen
  if (admin) raw.server.admin = admin
  return { ...loaded, config: buildConfig(raw, `${loaded.source} with command-line overrides`) }
}

async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { config: { type: 'string' }, listen: { type: 'string' }, admin: { type: 'string' } },
    strict: true,
  })
  const base = values.config ? await loadConfigFile(values.config) : defaultConfig(process.cwd())
  const loaded = withOverrides(base, values.listen, values.admin)
  const { config } = loaded
  const gateway = await buildGateway(loaded, realDeps, { logLevel: process.env.BULWARK_LOG_LEVEL ?? 'info' })
  await gateway.load()

  const api = splitHostPort(config.server.listen, 'server.listen')
  const admin = splitHostPort(config.server.admin, 'server.admin')
  await gateway.admin.listen({ host: admin.host, port: admin.port })
  await gateway.api.listen({ host: api.host, port: api.port })
  const scheme = 'http'
  const apiUrl = `${scheme}://${config.server.listen}`
  gateway.log.info({ api: apiUrl, admin: `http://${config.server.admin}`, config: loaded.source }, 'bulwark listening')
  printExample(apiUrl, gateway.registry.list().map((m) => m.name))

  let stopping = false
  const stop = (signal: string) => {
    if (stopping) return
    stopping = true
    gateway.log.info({ signal, graceMs: config.server.shutdownGraceMs }, 'shutting down: draining in-flight requests')
    gateway.close().then(
      () => process.exit(0),
      (err: Error) => {
        gateway.log.error({ err: err.message }, 'shutdown failed')
        process.exit(1)
      },
    )
  }
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
}

function printExample(apiUrl: string, models: string[]): void {
  if (!models.includes('mnist')) return
  const example = path.join('test', 'fixtures', 'mnist-request.json')
  process.stdout.write(
    `\nFirst request (a handwritten 7 from the mnist package):\n` +
      `  curl -s ${apiUrl}/v2/models/mnist/infer -H 'content-type: application/json' --data @${example}\n\n`,
  )
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv
  switch (command) {
    case 'serve':
      return serve(rest)
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(USAGE + '\n')
      return
    default:
      process.stderr.write(`unknown command ${JSON.stringify(command)}\n\n${USAGE}\n`)
      process.exitCode = 2
  }
}

main(process.argv.slice(2)).catch((err: unknown) => {
  if (err instanceof ConfigError) {
    process.stderr.write(`bulwark: ${err.message}\n`)
    process.exit(2)
  }
  const e = err as Error & { code?: string }
  if (e.code?.startsWith('ERR_PARSE_ARGS')) {
    process.stderr.write(`bulwark: ${e.message}\n\n${USAGE}\n`)
    process.exit(2)
  }
  process.stderr.write(`bulwark: ${e.stack ?? e.message}\n`)
  process.exit(1)
})
