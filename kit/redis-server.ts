// A redis-server process of the machine's own (Debian's package; .ci/run installs it), for the
// tests and benches that need a real Redis: started with the given arguments, ready once it
// says it accepts connections, killed on stop().

import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'

export const REDIS_SERVER = ['/usr/bin/redis-server', '/usr/local/bin/redis-server'].find((p) => existsSync(p)) ?? null

/** A redis-server process started with `args`, once it accepts connections; stop() kills it and waits for it to go. */
export async function spawnRedis(args: readonly string[]): Promise<{ stop(): Promise<void> }> {
  if (!REDIS_SERVER) throw new Error('redis-server is not installed (apt-get install redis-server; .ci/run does it)')
  const c = spawn(REDIS_SERVER, args, { stdio: ['ignore', 'pipe', 'pipe'] })
  // redis-server says on stdout when it accepts connections; it exits when it cannot.
  let out = ''
  let ready = false
  await new Promise<void>((resolve, reject) => {
    c.stderr!.on('data', (d: Buffer) => (out += d.toString()))
    c.stdout!.on('data', (d: Buffer) => {
      if (ready) return // read on, so the pipe never fills
      out += d.toString()
      if ((ready = out.includes('Ready to accept connections'))) resolve()
    })
    c.once('exit', (code) => reject(new Error(`redis-server exited (${code}) before accepting connections:\n${out}`)))
  })
  return {
    async stop() {
      if (c.exitCode !== null) return
      const exited = new Promise((r) => c.once('exit', r))
      c.kill('SIGKILL')
      await exited
    },
  }
}

