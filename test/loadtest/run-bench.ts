// Runs `bulwark bench` in-process as src/cli.ts does (same io, the real clock and random
// source), collecting both streams, for the tests of the subcommand.

import { realDeps } from '../../src/deps.ts'
import { benchCommand } from '../../src/loadtest/command.ts'

export interface BenchRun {
  status: number
  stdout: string
  stderr: string
}

export async function runBench(argv: string[], cwd: string, errIsTTY = false): Promise<BenchRun> {
  let stdout = ''
  let stderr = ''
  const status = await benchCommand(argv, { cwd, out: (s) => (stdout += s), err: (s) => (stderr += s), errIsTTY, deps: realDeps })
  return { status, stdout, stderr }
}
