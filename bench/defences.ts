// What each body-side defence costs, each measured against the same gateway with it off,
// side by side in one run:
// - audit (issue 4): strict durability with group commit vs audit off, ocr-cls binary c64;
// - output privacy (issue 6): the bundled mnist output policy vs output protection off, mnist c64;
// - screening (issue 5): feature squeezing + stateful detectors, stateful detectors alone,
//   and screening off, mnist c64.

import { readFileSync } from 'node:fs'
import path from 'node:path'
import { parse } from 'yaml'
import { closedLoop, type LoadResult } from './load.ts'
import { binaryRequest, ocrImage } from './payloads.ts'
import { noDefences, repoRoot, startGateway } from './gateway-process.ts'
import { secureEnv } from './secure-env.ts'
import { mnistDigits, type BenchOptions } from './core.ts'
import type { Row } from './report.ts'

type Variant = { name: string; config: Record<string, unknown> }

async function compare(
  group: string,
  variants: Variant[],
  load: (origin: string) => Promise<LoadResult>,
  cwd: string,
  log: (s: string) => void,
): Promise<{ rows: Row[]; raw: Record<string, LoadResult> }> {
  const raw: Record<string, LoadResult> = {}
  for (const v of variants) {
    log(`${group}: ${v.name}`)
    const gw = await startGateway(v.config, { cwd })
    try {
      raw[v.name] = await load(`http://127.0.0.1:${gw.apiPort}`)
    } finally {
      await gw.stop()
    }
  }
  const base = raw[variants[0]!.name]!
  const rows = variants.map((v) => {
    const r = raw[v.name]!
    return { group, scenario: v.name, concurrency: 64, itemsPerSec: r.itemsPerSec, p50: r.p50, p99: r.p99, ratio: r.itemsPerSec / base.itemsPerSec, ratioTo: variants[0]!.name, errors: r.requests - r.ok }
  })
  return { rows, raw }
}

/** The `output:` and `screening:` sections of the bundled mnist policy. */
function bundledMnistSections(): Record<string, unknown> {
  const p = parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8')) as Record<string, unknown>
  return { output: p.output, ...(p.screening ? { screening: p.screening } : {}) }
}

export async function auditBench(opts: BenchOptions, log: (s: string) => void): Promise<{ rows: Row[]; raw: unknown }> {
  const env = await secureEnv()
  const models = { serve: [{ name: 'ocr-cls', workers: 1, intraOpThreads: 2, batching: { enabled: true, maxBatchSize: 32 } }] }
  const req = binaryRequest('ocr-cls', 'x', [1, 3, 48, 192], ocrImage(1))
  return compare('audit', [
    { name: 'audit off', config: { ...noDefences, models } },
    { name: 'audit strict (fdatasync, group commit)', config: { ...noDefences, audit: { enabled: true }, models } },
    { name: 'audit relaxed (sync every 200 ms)', config: { ...noDefences, audit: { enabled: true, durability: 'relaxed' }, models } },
  ], (origin) => closedLoop({ origin, concurrency: 64, durationMs: opts.durationMs, warmupMs: opts.warmupMs, next: () => req }), env.dir, log)
}

export async function privacyBench(opts: BenchOptions, log: (s: string) => void): Promise<{ rows: Row[]; raw: unknown }> {
  const env = await secureEnv()
  const models = { serve: [{ name: 'mnist', workers: 1, intraOpThreads: 1 }] }
  // The bundled mechanism (label by report-noisy-max, discrete Laplace, a journalled budget),
  // with a budget window short enough that one bench principal is never refused.
  const { output } = bundledMnistSections() as { output: Record<string, unknown> }
  const benchOutput = { ...output, budget: { epsilon: 100_000, windowMs: 1000 } }
  const digits = mnistDigits(200).map((d) => binaryRequest('mnist', 'input', [1, 1, 28, 28], d))
  return compare('privacy', [
    { name: 'output protection off', config: { ...noDefences, models } },
    { name: 'bundled mnist output policy', config: { ...noDefences, outputPrivacy: { enabled: true }, policies: { directory: env.policies({ mnist: { output: benchOutput } }) }, models } },
  ], (origin) => closedLoop({ origin, concurrency: 64, durationMs: opts.durationMs, warmupMs: opts.warmupMs, next: (i) => digits[i % digits.length]! }), env.dir, log)
}

export async function screeningBench(opts: BenchOptions, log: (s: string) => void): Promise<{ rows: Row[]; raw: unknown }> {
  const env = await secureEnv()
  const models = { serve: [{ name: 'mnist', workers: 1, intraOpThreads: 1 }] }
  const { screening } = bundledMnistSections() as { screening: Record<string, unknown> }
  const statefulOnly = { calibrationFile: screening.calibrationFile, stateful: screening.stateful }
  // Distinct held-out digits, as a benign client sends: the stateful detectors must not fire.
  const digits = mnistDigits(1000).map((d) => binaryRequest('mnist', 'input', [1, 1, 28, 28], d))
  const variant = (name: string, s: Record<string, unknown>) => ({ name, config: { ...noDefences, policies: { directory: env.policies({ mnist: { screening: s } }) }, models } })
  return compare('screening', [
    variant('screening off', { enabled: false }),
    variant('bundled screening (squeezing + stateful + extraction)', screening),
    variant('stateful detector only', statefulOnly),
  ], (origin) => closedLoop({ origin, concurrency: 64, durationMs: opts.durationMs, warmupMs: opts.warmupMs, next: (i) => digits[i % digits.length]! }), env.dir, log)
}
