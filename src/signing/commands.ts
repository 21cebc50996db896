// `bulwark model sign MODEL_DIR --key PRIVATE_KEY [--out FILE]` and `bulwark model verify
// MODEL_DIR --key PUBLIC_KEY [--signature FILE]`. src/cli.ts dispatches here with argv and its
// outlets; this module returns the exit status and never touches the process itself.

import { readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { parseArgs } from 'node:util'
import {
  buildStatement,
  folderResourceReader,
  otherFiles,
  parsePrivateKey,
  parsePublicKey,
  readModelContent,
  readSignatureFile,
  signStatement,
  sha256Hex,
  SIGNATURE_FILE,
  verifySignature,
} from './model-signature.ts'

export const MODEL_USAGE = `  model sign MODEL_DIR --key PRIVATE_KEY [--out FILE]
        sign the model's manifest and bytes (OpenSSF model signing: a DSSE envelope over an
        in-toto statement, ECDSA P-256/P-384/P-521 key, PEM); writes MODEL_DIR/${SIGNATURE_FILE}
  model verify MODEL_DIR --key PUBLIC_KEY [--signature FILE]
        check that signature against the public key and the model as the gateway would load
        it; exit 0 valid, 1 not valid (unsigned, other key, altered), 2 usage or I/O`

export interface ModelCommandIo {
  cwd: string
  out(text: string): void
  err(text: string): void
}

/** Runs `bulwark model ...`; returns the exit status. */
export async function modelCommand(argv: string[], io: ModelCommandIo): Promise<number> {
  const [sub, ...rest] = argv
  if (sub === 'sign') return signCommand(rest, io)
  if (sub === 'verify') return verifyCommand(rest, io)
  io.err(`usage:\n${MODEL_USAGE}\n`)
  return 2
}

function parse(argv: string[], extra: 'out' | 'signature', io: ModelCommandIo): { dir: string; key: string; extra?: string } | null {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { key: { type: 'string' }, [extra]: { type: 'string' } },
    allowPositionals: true,
    strict: true,
  })
  const key = values.key
  if (positionals.length !== 1 || typeof key !== 'string') {
    io.err(`needs exactly one MODEL_DIR and --key\n\nusage:\n${MODEL_USAGE}\n`)
    return null
  }
  const more = values[extra]
  return { dir: path.resolve(io.cwd, positionals[0]!), key: path.resolve(io.cwd, key), ...(typeof more === 'string' ? { extra: path.resolve(io.cwd, more) } : {}) }
}

async function signCommand(argv: string[], io: ModelCommandIo): Promise<number> {
  const args = parse(argv, 'out', io)
  if (!args) return 2
  try {
    const key = parsePrivateKey(await readFile(args.key))
    const content = await readModelContent(args.dir)
    const statement = buildStatement(content, [...(await otherFiles(args.dir, content)).filter((f) => f !== SIGNATURE_FILE), SIGNATURE_FILE])
    const bundle = signStatement(statement, key)
    const out = args.extra ?? path.join(args.dir, SIGNATURE_FILE)
    await writeFile(out, JSON.stringify(bundle, null, 2) + '\n')
    const covered = statement.predicate.resources.map((r) => `  ${r.name} sha256:${r.digest}`).join('\n')
    io.out(`signed ${content.manifest.name} (version ${content.manifest.version}) -> ${out}\n${covered}\nroot digest sha256:${statement.subject[0]!.digest.sha256}\nkey hint ${bundle.verificationMaterial.publicKey.hint}\n`)
    return 0
  } catch (err) {
    io.err(`bulwark: cannot sign ${args.dir}: ${(err as Error).message}\n`)
    return 2
  }
}

async function verifyCommand(argv: string[], io: ModelCommandIo): Promise<number> {
  const args = parse(argv, 'signature', io)
  if (!args) return 2
  let result
  const sigFile = args.extra ?? path.join(args.dir, SIGNATURE_FILE)
  try {
    const key = parsePublicKey(await readFile(args.key))
    const content = await readModelContent(args.dir, { checkDigest: false })
    const bundle = await readSignatureFile(sigFile)
    if (bundle === null) {
      io.out(`NOT VALID ${args.dir}: unsigned: no ${path.basename(sigFile)}\n`)
      return 1
    }
    result = await verifySignature(bundle, content, key, folderResourceReader(args.dir))
    if (result.ok && sha256Hex(content.modelBytes) !== content.manifest.sha256) {
      io.out(`NOT VALID ${args.dir}: the signed manifest's sha256 does not match the signed model bytes; the gateway will not serve it\n`)
      return 1
    }
    if (result.ok) {
      const covered = result.resources.map((r) => `  ${r.name} sha256:${r.digest}`).join('\n')
      io.out(`VALID ${content.manifest.name} (version ${content.manifest.version}), signed by key ${result.keyHint.slice(0, 16)}…\n${covered}\nroot digest sha256:${result.rootDigest}\n`)
      return 0
    }
  } catch (err) {
    // An unreadable key or a model that fails its own manifest check: the model would not be served either.
    io.err(`bulwark: cannot verify ${args.dir}: ${(err as Error).message}\n`)
    return 2
  }
  io.out(`NOT VALID ${args.dir}: ${result.failure.replace('_', ' ')}: ${result.reason}\n`)
  return 1
}
