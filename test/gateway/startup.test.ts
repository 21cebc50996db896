// Starting a gateway on folders another gateway holds: the start is refused with the lock's
// message, and what the refused start had already opened (its privacy journal's folder) is
// closed again, so a later start in the same process can take it.
import { mkdtemp } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import t from 'tap'
import { FolderLockedError } from '../../src/durable/lock.ts'
import { startGateway } from '../../kit/gateway.ts'

const folder = (name: string) => mkdtemp(path.join(os.tmpdir(), `bulwark-${name}-`))

t.test('a second gateway on a held audit folder is refused, and releases the journal it had opened', async (t) => {
  const audit = await folder('audit')
  const first = await startGateway({ models: ['mnist'], config: { audit: { directory: audit }, state: { directory: await folder('state-a') } } })
  t.teardown(() => first.close())

  const state = await folder('state-b')
  const refused = await startGateway({ models: ['mnist'], config: { audit: { directory: audit }, state: { directory: state } } }).then(
    (gw) => (void gw.close(), null),
    (err: unknown) => err,
  )
  t.type(refused, FolderLockedError, 'refused: the audit folder is held')
  t.match((refused as Error).message, audit, 'the message names the folder')

  // The refused start opened the privacy journal under `state` before the audit writer
  // failed; had it kept that lock, this start (same process) would be refused too.
  const third = await startGateway({ models: ['mnist'], config: { audit: { directory: await folder('audit-c') }, state: { directory: state } } })
  t.teardown(() => third.close())
  t.ok(third.gateway.audit.writer, 'started on the journal folder the refused start had opened')
})
