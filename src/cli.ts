// The command line: the only module that reads argv and the environment, listens on
// ports, installs signal handlers and exits.

import { parseArgs } from 'node:util'
import path from 'node:path'
import { ConfigError, defaultConfig, loadConfigFile, type LoadedConfig } from './config/load.ts'
import { FolderLockedError } from './durable/lock.ts'
import { buildConfig } from './config/load.ts'
import { replicaProblems } from './config/scaleout.ts'
import { realDeps, silentLogger } from './deps.ts'
import { buildGateway } from './server.ts'
import { startTelemetry } from './telemetry/sdk.ts'
import { AUDIT_USAGE, auditCommand } from './audit/commands.ts'
import { CALIBRATE_USAGE, calibrateCommand } from './screening/calibrate.ts'
import { MODEL_USAGE, modelCommand } from './signing/commands.ts'
import { BENCH_USAGE, benchCommand } from './loadtest/command.ts'
import { MODEL_ADD_USAGE, modelAddCommand } from './cli/model-add.ts'
import type { AddressInfo } from 'node:net'
import { loadSigningKey, mintToken } from './dev/mint-token.ts'
import { DEV_AUDIENCE, DEV_DIR, DEV_ISSUER } from './config/security.ts'
import { devPkiPaths, devPkiProblem, ensureDevPki, writeDevPki } from './dev/pki.ts'
import { curlExample, devPkiDirFor, devScopes } from './dev/setup.ts'

const USAGE = `usage: bulwark <command> [options]

commands:
  serve [--config FILE] [--listen HOST:PORT] [--admin HOST:PORT] [--grpc HOST:PORT]
        run the gateway (no --config: the embedded default serves the bundled models
        with mTLS and JWTs from the development PKI, created under ${DEV_DIR}/ if missing)
  dev-pki [--dir DIR] [--force]
        write the development CA, server and client certificates, JWT signing key and
        JWKS (default dir ${DEV_DIR}; kept if present and valid, unless --force)
  token [--sub NAME] [--scope "S1 S2"] [--ttl SECONDS] [--aud AUDIENCE] [--dir DIR]
        print one development JWT signed with DIR/jwt-key.pem (default: sub dev, ttl 3600,
        the scopes the bundled policies require for every bundled model)
${AUDIT_USAGE}
${CALIBRATE_USAGE}
${MODEL_USAGE}
${MODEL_ADD_USAGE}
${BENCH_USAGE}
  help  show this text`

function splitHostPort(value: string, flag: string): { host: string; port: number } {
  const m = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$/.exec(value)
  if (!m || Number(m[2]) > 65535) throw new ConfigError(flag, [`${flag} must be HOST:PORT, e.g. 127.0.0.1:8443; got ${JSON.stringify(value)}`])
  return { host: m[1]!.replace(/^\[|\]$/g, ''), port: Number(m[2]) }
}

/** Applies --listen/--admin/--grpc over the loaded config (re-validated, so the result stays frozen and checked). */
function withOverrides(loaded: LoadedConfig, listen?: string, admin?: string, grpc?: string): LoadedConfig {
  if (!listen && !admin && !grpc) return loaded
  const raw = structuredClone(loaded.config) as { server: Record<string, unknown>; grpc: Record<string, unknown> }
  if (listen) raw.server.listen = listen
  if (admin) raw.server.admin = admin
  if (grpc) raw.grpc.listen = grpc
  return { ...loaded, config: buildConfig(raw, `${loaded.source} with command-line overrides`) }
}

async function serve(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { config: { type: 'string' }, listen: { type: 'string' }, admin: { type: 'string' }, grpc: { type: 'string' } },
    strict: true,
  })
  const base = values.config ? await loadConfigFile(values.config) : defaultConfig(process.cwd())
  const loaded = withOverrides(base, values.listen, values.admin, values.grpc)
  const { config } = loaded
  // A StatefulSet pod's ordinal (the sidecar overlay passes its apps.kubernetes.io/pod-index
  // label): a second pod without shared state would keep a second set of budgets.
  const replicas = replicaProblems(config, { replicaIndex: process.env.BULWARK_REPLICA_INDEX })
  if (replicas.length > 0) throw new ConfigError(loaded.source, replicas)
  const devDir = devPkiDirFor(config, loaded.baseDir)
  if (devDir) {
    const { created, why } = await ensureDevPki(devDir, realDeps)
    if (created) process.stderr.write(`bulwark: created the development PKI in ${path.relative(process.cwd(), devDir) || '.'}/ (${why})\n`)
  }
  // OpenTelemetry from the OTEL_* variables (src/telemetry/sdk.ts): trace export off unless asked for.
  const telemetry = await startTelemetry(process.env)
  const gateway = await buildGateway(loaded, realDeps, {
    logLevel: process.env.BULWARK_LOG_LEVEL ?? 'info',
    audit: { mirror: process.stdout },
    telemetry: { metricReaders: telemetry.metricReaders },
  })
  await gateway.load()

  const api = splitHostPort(config.server.listen, 'server.listen')
  const admin = splitHostPort(config.server.admin, 'server.admin')
  // The API listener first: once /readyz can say 200, requests must find the API port open
  // (with the admin listener first, a probe could see "ready" before the API was bound, and
  // the first request after it was refused).
  await gateway.api.listen({ host: api.host, port: api.port })
  // The gRPC form of the API: the same chain behind its own port (grpc.enabled).
  const grpcAt = splitHostPort(config.grpc.listen, 'grpc.listen')
  const grpcPort = gateway.grpc ? await gateway.grpc.listen(grpcAt.host, grpcAt.port) : null
  const adminBound = await gateway.serveAdmin({ host: admin.host, port: admin.port })
  // The address actually bound (port 0 picks one); a wildcard host is reached over loopback.
  const bound = gateway.api.server.address() as AddressInfo
  const host = ['0.0.0.0', '::'].includes(bound.address) ? '127.0.0.1' : bound.address.includes(':') ? `[${bound.address}]` : bound.address
  const apiUrl = `${config.tls.enabled ? 'https' : 'http'}://${host}:${bound.port}`
  const adminUrl = `http://${adminBound.address.includes(':') ? `[${adminBound.address}]` : adminBound.address}:${adminBound.port}`
  const grpcAddress = grpcPort === null ? null : `${['0.0.0.0', '::'].includes(grpcAt.host) ? '127.0.0.1' : grpcAt.host.includes(':') ? `[${grpcAt.host}]` : grpcAt.host}:${grpcPort}`
  gateway.log.info({ api: apiUrl, admin: adminUrl, grpc: grpcAddress, config: loaded.source }, 'bulwark listening')
  // A parent that started this process with an IPC channel (the test kit, the bench) learns
  // that both listeners are bound without polling /readyz. Without a channel, nothing is sent.
  process.send?.({ type: 'listening', api: apiUrl, admin: adminUrl, grpc: grpcAddress })
  printExample(loaded, apiUrl, gateway.registry.list().map((m) => m.name))

  let stopping = false
  const stop = (signal: string) => {
    if (stopping) return
    stopping = true
    gateway.log.info({ signal, graceMs: config.server.shutdownGraceMs }, 'shutting down: draining in-flight requests')
    gateway.close().then(() => telemetry.shutdown()).then(
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

function printExample(loaded: LoadedConfig, apiUrl: string, models: string[]): void {
  if (!models.includes('mnist')) return
  const example = curlExample({
    config: loaded.config,
    baseDir: loaded.baseDir,
    cwd: process.cwd(),
    apiUrl,
    model: 'mnist',
    bodyFile: path.resolve(process.cwd(), 'test', 'fixtures', 'mnist-request.json'),
  })
  process.stdout.write(`\nFirst request (a handwritten 7 from the mnist package):\n  ${example}\n\n`)
}

async function devPki(argv: string[]): Promise<void> {
  const { values } = parseArgs({ args: argv, options: { dir: { type: 'string' }, force: { type: 'boolean' } }, strict: true })
  const dir = path.resolve(values.dir ?? DEV_DIR)
  const problem = await devPkiProblem(dir, realDeps.clock)
  if (problem === null && !values.force) {
    process.stdout.write(`the development PKI in ${dir} is complete and valid; --force writes a new one\n`)
    return
  }
  const pki = await writeDevPki(dir, realDeps)
  process.stdout.write(`wrote the development PKI (${problem ?? 'forced'}):\n${Object.values(pki.files).map((f) => `  ${f}`).join('\n')}\n`)
}

async function token(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { sub: { type: 'string' }, scope: { type: 'string' }, ttl: { type: 'string' }, aud: { type: 'string' }, dir: { type: 'string' } },
    strict: true,
  })
  const ttl = values.ttl === undefined ? 3600 : Number(values.ttl)
  if (!Number.isSafeInteger(ttl) || ttl < 1 || ttl > 30 * 86_400) throw new ConfigError('--ttl', [`--ttl must be whole seconds between 1 and ${30 * 86_400}; got ${JSON.stringify(values.ttl)}`])
  const dir = path.resolve(values.dir ?? DEV_DIR)
  // stdout carries the token and nothing else (for $(npx bulwark token)); notes go to stderr.
  const { created, why } = await ensureDevPki(dir, realDeps)
  if (created) process.stderr.write(`bulwark: created the development PKI in ${dir} (${why}); restart a running gateway to use it\n`)
  const scopes = values.scope !== undefined ? values.scope.split(' ').filter((s) => s !== '') : await devScopes(defaultConfig(process.cwd()).config, process.cwd())
  const { files } = devPkiPaths(dir)
  const signing = await loadSigningKey(files.jwtKey, files.jwks)
  const jwt = await mintToken(signing, { issuer: DEV_ISSUER, audience: values.aud ?? DEV_AUDIENCE, subject: values.sub ?? 'dev', scopes, ttlSeconds: ttl }, realDeps)
  process.stdout.write(jwt + '\n')
}

async function main(argv: string[]): Promise<void> {
  const [command, ...rest] = argv
  // What every subcommand that prints gets: its working folder and the two streams.
  const io = { cwd: process.cwd(), out: (text: string) => process.stdout.write(text), err: (text: string) => process.stderr.write(text) }
  switch (command) {
    case 'serve':
      return serve(rest)
    case 'dev-pki':
      return devPki(rest)
    case 'token':
      return token(rest)
    case 'calibrate':
      process.exitCode = await calibrateCommand(rest, { ...io, clock: realDeps.clock, random: realDeps.random, log: silentLogger })
      return
    case 'audit':
      process.exitCode = await auditCommand(rest, { ...io, random: realDeps.random })
      return
    case 'model':
      process.exitCode = rest[0] === 'add' || rest[0] === 'import' ? await modelAddCommand(rest.slice(1), io, rest[0]) : await modelCommand(rest, io)
      return
    case 'bench':
      process.exitCode = await benchCommand(rest, { ...io, errIsTTY: process.stderr.isTTY === true, deps: realDeps })
      return
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
  // Another process holds the folder: the message says which and what to do; no stack.
  if (err instanceof FolderLockedError) {
    process.stderr.write(`bulwark: ${err.message}\n`)
    process.exit(1)
  }
  const e = err as Error & { code?: string }
  if (e.code?.startsWith('ERR_PARSE_ARGS')) {
    process.stderr.write(`bulwark: ${e.message}\n\n${USAGE}\n`)
    process.exit(2)
  }
  process.stderr.write(`bulwark: ${e.stack ?? e.message}\n`)
  process.exit(1)
})
