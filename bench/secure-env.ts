// A development PKI, signing key and bench policies in a temp dir, for bench groups that run
// the gateway with its defences on. Policies allow the dev identities with limits far above
// what the bench sends, so the rate-limit stage does its work without refusing.

import { copyFileSync, mkdtempSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { stringify } from 'yaml'
import { realDeps } from '../src/deps.ts'
import { writeDevPki, type DevPki } from '../src/dev/pki.ts'
import { loadSigningKey, mintToken } from '../src/dev/mint-token.ts'
import { DEV_AUDIENCE, DEV_DIR, DEV_ISSUER, DEV_WORKLOAD } from '../src/config/security.ts'

export interface SecureEnv {
  dir: string
  pki: DevPki
  /** undici connect options presenting the dev client certificate. */
  connect: { ca: string; cert: string; key: string }
  /** A valid dev token with every bundled scope, for `authorization: Bearer`. */
  token: string
  /** Writes the bench policies with `extra` merged into each model's policy; returns their folder. */
  policies(extra?: Record<string, Record<string, unknown>>): string
}

const MODELS = ['mnist', 'ocr-cls', 'ocr-det']

export async function secureEnv(): Promise<SecureEnv> {
  const dir = mkdtempSync(path.join(tmpdir(), 'bulwark-bench-'))
  const pki = await writeDevPki(path.join(dir, DEV_DIR), realDeps)
  const signing = await loadSigningKey(pki.files.jwtKey, pki.files.jwks)
  const scopes = MODELS.flatMap((m) => [`${m}:infer`, `${m}:metadata`])
  const token = await mintToken(signing, { issuer: DEV_ISSUER, audience: DEV_AUDIENCE, subject: 'bench', scopes, ttlSeconds: 3600 }, realDeps)
  let n = 0
  return {
    dir,
    pki,
    token,
    connect: {
      ca: readFileSync(pki.files.ca, 'utf8'),
      cert: readFileSync(pki.files.clientCert, 'utf8'),
      key: readFileSync(pki.files.clientKey, 'utf8'),
    },
    policies(extra = {}) {
      const folder = path.join(dir, `policies-${n++}`)
      mkdirSync(folder)
      // Screening calibrations (policies/<model>.screening.json) travel with the policies.
      const bundled = path.resolve(import.meta.dirname, '../policies')
      for (const f of readdirSync(bundled).filter((f) => f.endsWith('.screening.json'))) copyFileSync(path.join(bundled, f), path.join(folder, f))
      for (const model of MODELS) {
        const policy = {
          model,
          allow: [{ verbs: ['infer', 'metadata'], workloads: [DEV_WORKLOAD], scopes: [`${model}:infer`] }],
          rateLimit: { requestsPerWindow: 1_000_000, windowMs: 1000 },
          ...(model === 'ocr-cls' ? { output: { passThrough: ['softmax_0.tmp_0'] } } : {}),
          ...(model === 'ocr-det' ? { output: { passThrough: ['sigmoid_0.tmp_0'] } } : {}),
          ...extra[model],
        }
        writeFileSync(path.join(folder, `${model}.yaml`), stringify(policy))
      }
      return folder
    },
  }
}
