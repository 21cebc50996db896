// `bulwark audit verify PATH [--key PUBLIC_KEY]... [--json]` and `bulwark audit keygen
// [--out FILE]`. src/cli.ts dispatches here with argv and its outlets; this module returns
// the exit status and never touches the process itself.

import { parseArgs } from 'node:util'
import path from 'node:path'
import type { KeyObject } from 'node:crypto'
import type { RandomSource } from '../deps.ts'
import { DEV_AUDIT_KEY } from '../config/audit.ts'
import { generateSigningKey, loadVerifyKey, publicKeyPath, writeSigningKey } from './keys.ts'
import { formatReport, verifyAuditLog } from './verify.ts'

export const AUDIT_USAGE = `  audit verify PATH [--key PUBLIC_KEY]... [--json]
        check an audit file or folder: hash chain, signed checkpoints, nothing cut off;
        names the first line that was modified, inserted, deleted or moved; exit 1 if any
        (default key: ${publicKeyPath(DEV_AUDIT_KEY)})
  audit keygen [--out FILE]
        write a new Ed25519 checkpoint signing key (mode 0600) and FILE.pub.pem beside it
        (default ${DEV_AUDIT_KEY})`

export interface AuditCommandIo {
  cwd: string
  out(text: string): void
  err(text: string): void
  random: RandomSource
}

/** Runs `bulwark audit ...`; returns the exit status (0 ok, 1 tampered, 2 usage or I/O). */
export async function auditCommand(argv: string[], io: AuditCommandIo): Promise<number> {
  const [sub, ...rest] = argv
  if (sub === 'verify') return verifyCommand(rest, io)
  if (sub === 'keygen') return keygenCommand(rest, io)
  io.err(`usage:\n${AUDIT_USAGE}\n`)
  return 2
}

async function verifyCommand(argv: string[], io: AuditCommandIo): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { key: { type: 'string', multiple: true }, json: { type: 'boolean' } },
    allowPositionals: true,
    strict: true,
  })
  if (positionals.length !== 1) {
    io.err(`audit verify needs exactly one PATH (an audit file or the audit folder)\n\nusage:\n${AUDIT_USAGE}\n`)
    return 2
  }
  const target = path.resolve(io.cwd, positionals[0]!)
  const keyFiles = (values.key ?? [publicKeyPath(DEV_AUDIT_KEY)]).map((k) => path.resolve(io.cwd, k))
  const keys: KeyObject[] = []
  for (const file of keyFiles) {
    try {
      keys.push(await loadVerifyKey(file))
    } catch (err) {
      io.err(`bulwark: cannot read the public key ${file}: ${(err as Error).message}\n`)
      return 2
    }
  }
  let report
  try {
    report = await verifyAuditLog(target, keys)
  } catch (err) {
    io.err(`bulwark: cannot read ${target}: ${(err as Error).message}\n`)
    return 2
  }
  io.out((values.json ? JSON.stringify(report, null, 2) : formatReport(report, target)) + '\n')
  return report.ok ? 0 : 1
}

async function keygenCommand(argv: string[], io: AuditCommandIo): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { out: { type: 'string' } }, strict: true })
  const file = path.resolve(io.cwd, values.out ?? DEV_AUDIT_KEY)
  const key = generateSigningKey(io.random)
  if (!(await writeSigningKey(file, key, io.random))) {
    io.err(`bulwark: ${file} exists; remove it first (old checkpoints stay verifiable with its public key)\n`)
    return 2
  }
  io.out(`wrote ${file} (private, mode 0600) and ${publicKeyPath(file)}; key id ${key.keyId}\n`)
  return 0
}
