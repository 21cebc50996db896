// Starts `bulwark serve` as a child process with a given config (written to a temp file),
// waits until it says it is listening and /readyz says ready, and stops it again. Used by the
// bench and by tests that need a real process.

import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { stringify } from 'yaml'
import { repoRoot } from './paths.ts'
import { within } from './wait.ts'

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port
      s.close(() => resolve(port))
    })
    s.on('error', reject)
  })
}

/**
 * BULWARK_CPU_PROF_DIR: every gateway a bench or test starts writes a V8 CPU profile there when
 * it stops (how a bench's gateway is profiled under the bench's own load): node's arguments for it.
 */
export function profilingArgs(): string[] {
  const dir = process.env.BULWARK_CPU_PROF_DIR
  return dir ? ['--cpu-prof', `--cpu-prof-dir=${dir}`] : []
}

export interface GatewayProcess {
  child: ChildProcess
  apiPort: number
  adminPort: number
  /** The gRPC listener's port (grpc.listen), 0 when grpc is off. */
  grpcPort: number
  dir: string
  stderr: () => string
  exited: Promise<number | null>
  stop(signal?: NodeJS.Signals): Promise<number | null>
}

/**
 * `config` is the bulwark.yaml content; server.listen/admin and grpc.listen are filled with free ports, or the
 * given ones (to restart a gateway where its clients expect it). `env` is added to the child's;
 * `nodeArgs` go to its node (V8 flags, which NODE_OPTIONS refuses).
 */
export async function startGateway(
  config: Record<string, any>,
  opts: { cwd?: string; logLevel?: string; readyTimeoutMs?: number; apiPort?: number; adminPort?: number; grpcPort?: number; env?: Record<string, string>; nodeArgs?: string[] } = {},
): Promise<GatewayProcess> {
  const apiPort = opts.apiPort ?? (await freePort())
  const adminPort = opts.adminPort ?? (await freePort())
  const grpcOn = config.grpc?.enabled !== false
  const grpcPort = grpcOn ? (opts.grpcPort ?? (await freePort())) : 0
  const dir = opts.cwd ?? mkdtempSync(path.join(tmpdir(), 'bulwark-gw-'))
  const full = {
    ...config,
    server: { ...config.server, listen: `127.0.0.1:${apiPort}`, admin: `127.0.0.1:${adminPort}` },
    ...(grpcOn ? { grpc: { ...config.grpc, listen: `127.0.0.1:${grpcPort}` } } : {}),
    models: { directory: path.join(repoRoot, 'models'), ...config.models },
  }
  const file = path.join(dir, `bulwark-${apiPort}.yaml`)
  writeFileSync(file, stringify(full))
  // The IPC channel carries one message: `bulwark serve` says when both listeners are bound
  // (src/cli.ts), so nothing here polls the admin port.
  const child = spawn(process.execPath, [...profilingArgs(), ...(opts.nodeArgs ?? []), path.join(repoRoot, 'bin/bulwark.js'), 'serve', '--config', file], {
    cwd: dir,
    env: { ...process.env, BULWARK_LOG_LEVEL: opts.logLevel ?? 'warn', ...opts.env },
    stdio: ['ignore', 'ignore', 'pipe', 'ipc'],
  })
  let err = ''
  child.stderr!.on('data', (d) => (err = (err + d).slice(-20_000)))
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const listening = new Promise<void>((resolve, reject) => {
    child.on('message', (msg: { type?: string }) => msg.type === 'listening' && resolve())
    void exited.then((code) => reject(new Error(`gateway exited with ${code}`)))
  })
  try {
    await within(listening, opts.readyTimeoutMs ?? 60_000, 'gateway listening')
  } catch (e) {
    child.kill('SIGKILL')
    throw new Error(`${(e as Error).message}\n${err}`)
  }
  child.disconnect()
  // Listening is not yet ready when a model or a readiness check is not: say which.
  const ready = await fetch(`http://127.0.0.1:${adminPort}/readyz`)
  if (ready.status !== 200) {
    child.kill('SIGKILL')
    throw new Error(`gateway listening but not ready: ${await ready.text()}\n${err}`)
  }
  return {
    child,
    apiPort,
    adminPort,
    grpcPort,
    dir,
    stderr: () => err,
    exited,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null) child.kill(signal)
      return exited
    },
  }
}

/** Config keys that switch every defence off (front door, per-client limit, output privacy, audit): the "no defences" baseline. */
export const noDefences = {
  tls: { enabled: false },
  auth: { enabled: false },
  authorization: { enabled: false },
  rateLimits: { enabled: false },
  clientLimits: { enabled: false },
  outputPrivacy: { enabled: false },
  audit: { enabled: false },
}
