// Retention by default: the audit folder is capped at 10 GiB and 90 days unless the operator
// says otherwise (unlimited let a flood of refusals fill the disk, and a full disk refuses
// every request). A gateway started with the defaults removes a file last written 91 days
// ago and keeps one of 89 days. `bulwark audit verify` on the pruned folder still proves the
// part kept: it passes, with a warning that says where the kept chain starts, and a record
// changed in the kept part is still found.

import t from 'tap'
import { spawnSync } from 'node:child_process'
import { readFileSync, utimesSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { publicKeyPath, writeSigningKey } from '../../src/audit/keys.ts'
import { buildConfig } from '../../src/config/load.ts'
import { cryptoRandom, realDeps } from '../../src/deps.ts'
import { buildGateway } from '../../src/server.ts'
import { frontDoorOff } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'
import { auditFiles, body, startWriter, tempDir, testKey } from './helpers.ts'

const GiB = 1024 ** 3
const DAY_MS = 86_400_000

t.test('the defaults cap the audit folder: 10 GiB and 90 days; readiness warns below 1 GiB free; refusals are aggregated per minute', async (t) => {
  const audit = buildConfig({}, 'test').audit
  t.same(audit.retention, { maxTotalBytes: 10 * GiB, maxAgeMs: 90 * DAY_MS })
  t.equal(audit.minFreeBytes, GiB)
  t.same(audit.aggregation, { enabled: true, windowMs: 60_000, maxOpenRuns: 10_000 })
  t.same(buildConfig({ audit: { retention: { maxTotalBytes: 0, maxAgeMs: 0 } } }, 'test').audit.retention, { maxTotalBytes: 0, maxAgeMs: 0 }, '0 still means no limit, when an operator asks for it')
})

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, [path.join(repoRoot, 'bin/bulwark.js'), 'audit', ...args], { encoding: 'utf8', cwd: repoRoot })
  return { status: r.status, out: r.stdout, err: r.stderr }
}

t.test('a gateway with the default retention removes files older than 90 days; the pruned folder still verifies', async (t) => {
  const dir = tempDir('retention')
  const auditDir = path.join(dir, 'audit')
  const keyFile = path.join(dir, 'audit-key.pem')
  await writeSigningKey(keyFile, testKey, cryptoRandom)
  // Three earlier runs of the gateway: three files, each opened with its checkpoint.
  for (let run = 0; run < 3; run++) {
    const w = await startWriter(auditDir, { key: testKey })
    for (let i = 0; i < 5; i++) await w.append(body(run * 10 + i))
    await w.close()
  }
  const [oldest, older, recent] = auditFiles(auditDir)
  const ago = (days: number) => new Date(Date.now() - days * DAY_MS)
  utimesSync(path.join(auditDir, oldest!), ago(91), ago(91))
  utimesSync(path.join(auditDir, older!), ago(89), ago(89))

  const config = buildConfig({ ...frontDoorOff, models: { serve: [] }, audit: { directory: auditDir, checkpoint: { signingKeyFile: keyFile } } }, 'test config')
  t.same(config.audit.retention, { maxTotalBytes: 10 * GiB, maxAgeMs: 90 * DAY_MS }, 'the defaults, nothing configured')
  const gateway = await buildGateway({ config, baseDir: dir, source: 'test config' }, realDeps, { logLevel: 'silent' })
  t.equal((await gateway.api.inject({ url: '/v2' })).statusCode, 200)
  await gateway.close(0)
  const kept = auditFiles(auditDir)
  t.notOk(kept.includes(oldest!), 'the file last written 91 days ago is gone')
  t.ok(kept.includes(older!) && kept.includes(recent!), 'the one of 89 days and the newer ones stay')

  const pub = publicKeyPath(keyFile)
  const ok = cli('verify', auditDir, '--key', pub)
  t.equal(ok.status, 0, `bulwark audit verify passes on the pruned folder: ${ok.out}${ok.err}`)
  t.match(ok.out, /^warning: the chain starts at seq \d+ in audit-.*: earlier files were removed by retention/m, 'with a warning that says where the kept chain starts')
  t.match(ok.out, /^ok: 11 records and \d+ checkpoints in 3 file\(s\)/m, 'and what it proved: the records kept (two earlier runs of 5, and the gateway\'s 1)')

  // The kept part is still proven: a record changed in it is found.
  const file = path.join(auditDir, older!)
  const text = readFileSync(file, 'utf8')
  writeFileSync(file, text.replace('"id":"r12"', '"id":"rX2"'))
  const tampered = cli('verify', auditDir, '--key', pub)
  t.equal(tampered.status, 1, 'a change in the kept part fails')
  t.match(tampered.out, new RegExp(`TAMPERED: ${older!.replace(/\./g, '\\.')}:\\d+ `))
})
