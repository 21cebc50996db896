// A fresh clone: `npm start` with no .bulwark/ folder creates the development PKI, serves
// mTLS + JWT, and prints a curl example that works exactly as printed; the same request
// without the client certificate, or without the token, fails.
//
// The "clone" is a temp folder whose entries link to this checkout's (node_modules stands in
// for `npm ci`), minus .bulwark/, so the gateway starts from nothing, as a new user's does.

import t from 'tap'
import { spawn, execFile, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, readdir, rm, stat, symlink } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { promisify } from 'node:util'
import { repoRoot } from '../../kit/paths.ts'

const run = promisify(execFile)
const SKIP = new Set(['.bulwark', '.git', '.tap', 'coverage', 'dist'])

const clone = await mkdtemp(path.join(os.tmpdir(), 'bulwark-clone-'))
for (const name of await readdir(repoRoot)) {
  if (!SKIP.has(name)) await symlink(path.join(repoRoot, name), path.join(clone, name))
}

let server: ChildProcess | null = null
/**
 * npm can exit before the gateway it started has drained and closed its audit file, which
 * would still be writing into the clone while it is removed: wait for the whole group. Every
 * process of it holds the stdout and stderr pipes npm handed down, so the child's 'close'
 * (npm exited and both pipes closed) is the moment the last of them is gone.
 */
let closed: Promise<unknown> = Promise.resolve()
t.teardown(async () => {
  if (server?.pid) {
    try {
      process.kill(-server.pid, 'SIGTERM') // npm and the gateway it started: the group we created
    } catch {} // ESRCH: the group is gone already
    await closed
  }
  await rm(clone, { recursive: true, force: true, maxRetries: 5 })
})

/** Starts `npm start` in the clone and resolves with the curl example it prints. */
function npmStart(): Promise<string> {
  return new Promise((resolve, reject) => {
    server = spawn('npm', ['start', '--silent', '--', '--listen', '127.0.0.1:0', '--admin', '127.0.0.1:0', '--grpc', '127.0.0.1:0'], {
      cwd: clone,
      detached: true,
      env: { ...process.env, BULWARK_LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    closed = once(server, 'close').catch(() => {})
    let out = ''
    let err = ''
    server.stdout!.on('data', (d: Buffer) => {
      out += d.toString()
      const m = /First request[^\n]*:\n {2}(curl[\s\S]*?\/v2\/models\/mnist\/infer)\n/.exec(out)
      if (m) resolve(m[1]!)
    })
    server.stderr!.on('data', (d: Buffer) => (err += d.toString()))
    server.once('exit', (code) => reject(new Error(`npm start exited (${code}) before printing the example:\n${out}\n${err}`)))
  })
}

async function curl(command: string): Promise<{ code: number; stdout: string }> {
  try {
    const { stdout } = await run('bash', ['-c', command], { cwd: clone, timeout: 30_000 })
    return { code: 0, stdout }
  } catch (e) {
    const err = e as { code?: number; stdout?: string }
    return { code: err.code ?? -1, stdout: err.stdout ?? '' }
  }
}

t.test('npm start, then the printed curl example', { timeout: 120_000 }, async (t) => {
  const example = await npmStart()
  t.comment(example)
  t.match(example, /--cacert \.bulwark\/dev\/ca\.pem/, 'the example trusts the development CA')
  t.match(example, /--cert \.bulwark\/dev\/client\.pem --key \.bulwark\/dev\/client-key\.pem/, 'and presents the development client certificate')
  t.match(example, /authorization: Bearer \$\(npx bulwark token\)/, 'with a token minted inline')
  t.match(example, /https:\/\/127\.0\.0\.1:\d+\/v2\/models\/mnist\/infer$/)

  for (const [file, mode] of [['ca.pem', 0o644], ['ca-key.pem', 0o600], ['server.pem', 0o644], ['server-key.pem', 0o600], ['client.pem', 0o644], ['client-key.pem', 0o600], ['jwt-key.pem', 0o600], ['jwks.json', 0o644]] as const) {
    const st = await stat(path.join(clone, '.bulwark', 'dev', file))
    t.equal(st.mode & 0o777, mode, `.bulwark/dev/${file} was created with mode ${mode.toString(8)}`)
  }

  const ok = await curl(example)
  t.equal(ok.code, 0, 'curl succeeds')
  const answer = JSON.parse(ok.stdout)
  t.equal(answer.model_name, 'mnist', 'and mnist answers')
  t.ok(Array.isArray(answer.outputs) && answer.outputs.length > 0)

  const withoutCert = example.replace(/--cert \S+ --key \S+/, '')
  t.not(withoutCert, example)
  const refused = await curl(withoutCert)
  t.not(refused.code, 0, `without the client certificate curl fails (exit ${refused.code})`)
  t.notMatch(refused.stdout, /model_name/)

  const withoutToken = example.replace(/-H "authorization: Bearer \$\(npx bulwark token\)"/, '')
  t.not(withoutToken, example)
  const unauthenticated = await curl(withoutToken)
  t.same(JSON.parse(unauthenticated.stdout), { error: 'a valid bearer token is required', code: 'unauthenticated' }, 'without the token: 401 unauthenticated')
})
