// /readyz says when the audit disk is nearly full, before it is full: the audit subsystem
// reads the audit folder's free space (statfs, injected here so the disk can look nearly
// full) at start and every audit.diskCheckIntervalMs on the gateway's clock (a FakeClock),
// reports not ready below audit.minFreeBytes, and ready again once there is room; the
// bulwark_audit_disk_free_bytes metric shows the free space read.

import t from 'tap'
import path from 'node:path'
import { writeSigningKey } from '../../src/audit/keys.ts'
import { buildConfig } from '../../src/config/load.ts'
import { cryptoRandom } from '../../src/deps.ts'
import { buildGateway } from '../../src/server.ts'
import type { StatFs } from '../../src/stages/audit-log.ts'
import { frontDoorOff, logSink } from '../../kit/gateway.ts'
import { FakeClock } from '../helpers/fake-clock.ts'
import { tempDir, testKey } from './helpers.ts'

const MiB = 1024 * 1024
const GiB = 1024 * MiB
const BLOCK = 4096

t.test('nearly full: /readyz not ready below audit.minFreeBytes, the metric shows the free bytes, ready again once there is room', async (t) => {
  const dir = tempDir('disk')
  const keyFile = path.join(dir, 'audit-key.pem')
  await writeSigningKey(keyFile, testKey, cryptoRandom)
  const auditDir = path.join(dir, 'audit')
  let freeBytes = 5 * GiB
  const asked: string[] = []
  const statfs: StatFs = async (folder) => {
    asked.push(folder)
    return { bavail: BigInt(freeBytes / BLOCK), bsize: BigInt(BLOCK) }
  }
  const config = buildConfig({ ...frontDoorOff, models: { serve: [] }, audit: { directory: auditDir, checkpoint: { signingKeyFile: keyFile } } }, 'test config')
  t.equal(config.audit.minFreeBytes, GiB, 'the default threshold: 1 GiB')
  const intervalMs = config.audit.diskCheckIntervalMs
  const clock = new FakeClock(Date.now())
  const logs = logSink()
  const gateway = await buildGateway({ config, baseDir: dir, source: 'test config' }, { clock, random: cryptoRandom }, { logLevel: 'info', logStream: logs.stream, audit: { statfs } })
  t.teardown(() => gateway.close(0))
  const readyz = async () => {
    const res = await gateway.admin.inject({ url: '/readyz' })
    return { status: res.statusCode, audit: res.json().checks.audit as string }
  }
  const metric = async () => Number(/^bulwark_audit_disk_free_bytes (\d+)$/m.exec(await gateway.metrics.render())?.[1])

  t.same(asked, [auditDir], 'read at start, on the audit folder')
  t.same(await readyz(), { status: 200, audit: 'ok' })
  t.equal(await metric(), 5 * GiB, 'bulwark_audit_disk_free_bytes')

  freeBytes = 512 * MiB
  t.same(await readyz(), { status: 200, audit: 'ok' }, 'not read again before the interval')
  await clock.tick(intervalMs)
  const nearlyFull = await readyz()
  t.equal(nearlyFull.status, 503, 'not ready')
  t.match(nearlyFull.audit, new RegExp(`^audit disk nearly full: ${512 * MiB} bytes free for ${auditDir}, under audit\\.minFreeBytes \\(${GiB}\\)`), 'and says why')
  t.equal(await metric(), 512 * MiB)
  t.ok(logs.lines.some((l) => l.msg === 'audit disk nearly full: not ready until there is room (audit.minFreeBytes)' && l.freeBytes === 512 * MiB), 'logged once, as a warning')
  t.equal((await gateway.api.inject({ url: '/v2' })).statusCode, 200, 'requests are still served while there is room: not ready is the warning')

  freeBytes = 2 * GiB
  await clock.tick(intervalMs)
  t.same(await readyz(), { status: 200, audit: 'ok' }, 'ready again once there is room')
  t.equal(await metric(), 2 * GiB)
  t.equal(asked.length, 3, 'one read per interval')
})

t.test('audit.minFreeBytes 0: the free space is shown but never makes the gateway not ready', async (t) => {
  const dir = tempDir('disk-off')
  const keyFile = path.join(dir, 'audit-key.pem')
  await writeSigningKey(keyFile, testKey, cryptoRandom)
  const config = buildConfig({ ...frontDoorOff, models: { serve: [] }, audit: { directory: path.join(dir, 'audit'), minFreeBytes: 0, checkpoint: { signingKeyFile: keyFile } } }, 'test config')
  const statfs: StatFs = async () => ({ bavail: 1, bsize: BLOCK })
  const gateway = await buildGateway({ config, baseDir: dir, source: 'test config' }, { clock: new FakeClock(Date.now()), random: cryptoRandom }, { logLevel: 'silent', audit: { statfs } })
  t.teardown(() => gateway.close(0))
  t.equal((await gateway.admin.inject({ url: '/readyz' })).statusCode, 200)
  t.equal(gateway.audit.diskFreeBytes(), BLOCK)
})
