// `npm test`: runs the node-tap suite with the TAP reporter, passes its output through, and
// ends with one plain line `N passed, N failed` (every assertion, counted by tap's own
// final summary) so CI can read the count. Exits with tap's status.

import { spawn } from 'node:child_process'

const tapBin = new URL('../node_modules/tap/dist/esm/run.mjs', import.meta.url).pathname
const tap = spawn(process.execPath, [tapBin, '--reporter=tap', ...process.argv.slice(2)], { stdio: ['ignore', 'pipe', 'inherit'] })

let tail = ''
tap.stdout.on('data', (chunk: Buffer) => {
  process.stdout.write(chunk)
  tail = (tail + chunk.toString('utf8')).slice(-4096)
})
tap.on('close', (code) => {
  // tap ends with a line like `# { total: 138, pass: 137, fail: 1, skip: 2 }`.
  const summary = /# \{ total: (\d+)(?:, pass: (\d+))?(?:, fail: (\d+))?/.exec(tail.split('\n').reverse().find((l) => l.startsWith('# { total:')) ?? '')
  const passed = Number(summary?.[2] ?? 0)
  let failed = Number(summary?.[3] ?? 0)
  const status = code ?? 1
  if (status !== 0 && failed === 0) failed = 1 // the run itself failed (crash, timeout) without a counted assertion
  process.stdout.write(`\n${passed} passed, ${failed} failed\n`)
  process.exit(status)
})
