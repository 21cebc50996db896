// Nothing acknowledged is lost: a real gateway process (`bulwark serve`) under a small load
// is killed with SIGKILL mid-run. Every answer served that the client received has its
// record in the log; every refusal received has its own record, or is one of a run of
// identical refusals whose first is in the log (the run's count, written when its window
// closes, is what a crash may lose: docs/audit.md); and the log verifies (a torn last line
// would be reported and tolerated). A restart then continues the same chain, and a graceful
// stop seals it.

import t from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { Pool } from 'undici'
import { stringify } from 'yaml'
import { cryptoRandom } from '../../src/deps.ts'
import { writeSigningKey } from '../../src/audit/keys.ts'
import { verifyAuditLog } from '../../src/audit/verify.ts'
import { auditFiles, publicKeys, readAudit, requestRecords, tempDir, testKey } from './helpers.ts'

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const dir = tempDir('crash')
const auditDir = path.join(dir, 'audit')
const keyFile = path.join(dir, 'audit-key.pem')
await writeSigningKey(keyFile, testKey, cryptoRandom)
const configFile = path.join(dir, 'bulwark.yaml')
writeFileSync(
  configFile,
  stringify({
    server: { listen: '127.0.0.1:0', admin: '127.0.0.1:0' },
    grpc: { listen: '127.0.0.1:0' },
    models: { serve: [] },
    tls: { enabled: false },
    auth: { enabled: false },
    authorization: { enabled: false },
    rateLimits: { enabled: false },
    audit: { directory: auditDir, checkpoint: { signingKeyFile: keyFile, everyRecords: 50 } },
  }),
)

/** Starts `bulwark serve` and resolves with the child and its API URL once it listens. */
function serve(): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [path.join(repo, 'bin/bulwark.js'), 'serve', '--config', configFile], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, BULWARK_LOG_LEVEL: 'info' },
  })
  let err = ''
  child.stderr!.on('data', (c: Buffer) => (err += c.toString()))
  return new Promise((resolve, reject) => {
    let buf = ''
    // real wait: a real process on real time; a deadline for its start, which only reports a start that never comes.
    const timer = setTimeout(() => reject(new Error(`gateway did not start in time: ${err}`)), 30_000)
    child.stdout!.on('data', (c: Buffer) => {
      buf += c.toString()
      for (const line of buf.split('\n')) {
        const m = /"api":"(http:\/\/[^"]+)".*"msg":"bulwark listening"/.exec(line)
        if (m) {
          clearTimeout(timer)
          resolve({ child, url: m[1]! })
        }
      }
    })
    child.on('exit', (code) => reject(new Error(`gateway exited (${code}) before listening: ${err}`)))
  })
}

/** Starts a second `bulwark serve` on the same folders; resolves with how it ended. */
function serveAgain(): Promise<{ code: number | null; stderr: string }> {
  const child = spawn(process.execPath, [path.join(repo, 'bin/bulwark.js'), 'serve', '--config', configFile], { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()))
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, stderr })))
}

const shapes = [
  { method: 'GET', path: '/v2' },
  { method: 'GET', path: '/v2/health/live' },
  { method: 'GET', path: '/v2/models/ghost' },
  { method: 'POST', path: '/v2/models/ghost/infer', body: '{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}' },
  { method: 'GET', path: '/nope' },
] as const

t.test('SIGKILL mid-run: every response received has its record, and the log verifies', async (t) => {
  const { child, url } = await serve()
  const pool = new Pool(url, { connections: 8 })
  const received: { id: string; status: number; method: string; path: string }[] = []
  let failed = 0
  let next = 0
  const TOTAL = 400
  const KILL_AFTER = 150
  let killed = false
  const worker = async () => {
    while (next < TOTAL) {
      const s = shapes[next++ % shapes.length]!
      try {
        const res = await pool.request({ method: s.method, path: s.path, ...('body' in s ? { body: s.body, headers: { 'content-type': 'application/json' } } : {}) })
        await res.body.text()
        received.push({ id: res.headers['x-request-id'] as string, status: res.statusCode, method: s.method, path: s.path })
        if (!killed && received.length >= KILL_AFTER) {
          killed = true
          child.kill('SIGKILL')
        }
      } catch {
        failed++
        if (killed) return
      }
    }
  }
  const exited = new Promise((r) => child.once('exit', r))
  await Promise.all(Array.from({ length: 8 }, worker))
  await exited
  await pool.destroy()
  t.ok(killed, 'the gateway was killed mid-run')
  t.ok(received.length >= KILL_AFTER && received.length < TOTAL, `${received.length} responses received, ${failed} requests cut off`)

  const records = requestRecords(auditDir).map((l) => l.rec)
  const ids = new Set(records.map((r) => r.id as string))
  const missing = received.filter((r) => !ids.has(r.id))
  t.same(missing.filter((r) => r.status < 400), [], 'every answer served that was received has its record on disk')
  const runStarted = (r: (typeof received)[number]) => records.some((rec) => rec.method === r.method && rec.path === r.path && rec.status === r.status)
  t.same(missing.filter((r) => !runStarted(r)), [], 'every refusal received without a record of its own repeats one whose record is on disk')
  t.ok(received.some((r) => r.status >= 400 && !ids.has(r.id)), 'repeated refusals were counted rather than written one by one')

  const report = await verifyAuditLog(auditDir, publicKeys)
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
  t.notOk(report.closedCleanly, 'no shutdown checkpoint: it was killed')
  t.comment(`records: ${report.records}, torn lines: ${report.torn.length}, unsigned tail: ${report.unsignedTail}`)
})

t.test('a restart continues the chain after the crash, and SIGTERM seals it', async (t) => {
  const before = readAudit(auditDir)
  // The killed gateway left its folder lock behind: the restart takes it over.
  const { child, url } = await serve()
  // A second gateway on the same folders is refused: it would fork the chain.
  const second = await serveAgain()
  t.equal(second.code, 1, 'a second gateway on the same folders does not start')
  // Whichever of its folders it opens first: the audit folder, or the privacy journal's.
  const folders = `(${auditDir}|${path.join(dir, '.bulwark/state/privacy')})`
  t.match(second.stderr, new RegExp(`folder ${folders} is in use: another process holds it \\(pid ${child.pid} on host `), 'and says which folder and who holds it')
  t.match(second.stderr, /Stop the other process, or give this one a folder of its own \((audit|state)\.directory\)/, 'and what to do')
  const pool = new Pool(url, { connections: 2 })
  for (let i = 0; i < 10; i++) {
    const res = await pool.request({ method: 'GET', path: '/v2' })
    await res.body.text()
    t.equal(res.statusCode, 200)
  }
  await pool.close()
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)))
  child.kill('SIGTERM')
  t.equal(await exited, 0, 'graceful exit')
  const files = auditFiles(auditDir)
  t.equal(files.length, 2, 'the restart writes a new file')
  const after = readAudit(auditDir)
  t.equal(after.length, before.length + 12, 'open checkpoint, 10 records, shutdown checkpoint')
  const report = await verifyAuditLog(auditDir, publicKeys)
  t.ok(report.ok, `the log verifies${report.ok ? '' : ': ' + JSON.stringify(report.problems)}`)
  t.ok(report.closedCleanly)
})
