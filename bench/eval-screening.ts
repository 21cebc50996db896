// `npm run eval:screening [-- --part all|adaptive|classic] [--quick] [--pgd-count N]
//   [--adaptive-only squeezing,stateful,extraction] [--adaptive-digits N] [--adaptive-queries N]
//   [--bpda-digits N] [--no-baseline] [--no-index] [--on-alarm refuse,degrade,delay]`:
// (--on-alarm: only OARS against the stateful detector under each screening.onAlarm mode)
// the adversarial-input screening evaluation, through the public API (TLS with the dev client
// certificate, real JWTs, one JWT subject per principal), against in-process gateways that
// differ only in the mnist policy's `screening:` section. Prints two tables and writes JSON
// under bench/results/.
//
// First the adaptive attacks, which know the detectors (bench/attacks/adaptive.ts: BPDA
// through the squeezers, NES and HopSkipJump shaped against the stateful detector, OARS-style
// refusal-driven adaptation, queries split over m identities, extraction that hides its
// synthetic queries), each reporting success after 1,000 and 3,000 queries and the identities
// it used; squeezers chosen on the calibration split, every figure on the held-out split.
// Then the non-adaptive attacks, which ignore the detectors:
//
//   off         no screening: which adversarial examples fool the unguarded model, and the
//               black-box attacks' baseline (how far they get without a defence)
//   squeezing   feature squeezing only, as calibrated: detection rate per white-box attack,
//               false-positive rate on the 2,999 held-out digits (never the calibration split)
//   bounds      per-feature bounds only (observe-only in the bundled policy)
//   stateful    the stateful query detector only: HopSkipJump and NES, each as one principal
//   extraction  the extraction detector only: Jacobian-based augmentation, and augmented seeds
//   bundled     the screening section of policies/mnist.yaml as shipped: the benign traffic
//               (100 principals x 100 digits, one principal x all 2,999), the attacks again,
//               and the latency against `off`
//
// Plus a micro-benchmark of each detector's cost per query (no gateway). Everything is
// seeded; the run is bounded (--quick for a smoke run).

import os from 'node:os'
import path from 'node:path'
import { readFileSync } from 'node:fs'
import { performance } from 'node:perf_hooks'
import { parseArgs } from 'node:util'
import { Worker } from 'node:worker_threads'
import { argmax, forward, loadWeights } from '../models/mnist/cnn.ts'
import { loadMnist } from '../models/mnist/data.ts'
import { mulberry32 as seeded, normalFrom as gaussian } from '../models/mnist/train.ts'
import { parsePolicy } from '../src/config/policy.ts'
import type { ScreeningPolicy } from '../src/config/screening-policy.ts'
import type { Manifest } from '../src/inference/manifest.ts'
import { compileScreening } from '../src/screening/build.ts'
import type { CalibrationFile } from '../src/screening/calibration.ts'
import { poolingEncoder } from '../src/screening/encoder.ts'
import { createPradaDetector } from '../src/screening/prada.ts'
import { createStatefulDetector } from '../src/screening/stateful.ts'
import { createCallersIndexDetector } from '../src/screening/stateful-callers.ts'
import { cryptoRandom } from '../src/deps.ts'
import type { TestGateway } from '../kit/gateway.ts'
import { evalGateway, infer, mapPool, tokenFor, calibrationFile, type Answer } from './attacks/gateway-client.ts'
import { firstWithin, hopSkipJump, nes, type AttackOutcome, type ScoreOracle } from './attacks/black-box.ts'
import { jacobianAugmentation, type LabelOracle } from './attacks/extraction.ts'
import type { WhiteBoxJob } from './attacks/white-box-worker.ts'
import { adaptiveTable, ALARM_MODES, DETECTORS, runAdaptive, type AdaptiveContext, type AdaptiveRow, type AlarmMode } from './attacks/adaptive.ts'
import { writeResults } from './report.ts'
import { repoRoot } from '../kit/paths.ts'

const { values: args } = parseArgs({
  options: {
    'pgd-count': { type: 'string' },
    quick: { type: 'boolean' },
    part: { type: 'string' },
    'adaptive-digits': { type: 'string' },
    'adaptive-queries': { type: 'string' },
    'bpda-digits': { type: 'string' },
    'no-baseline': { type: 'boolean' },
    'adaptive-only': { type: 'string' },
    'no-index': { type: 'boolean' },
    'on-alarm': { type: 'string' },
  },
})
const part = args.part ?? 'all'
if (!['all', 'adaptive', 'classic'].includes(part)) throw new Error(`--part ${part}: use all, adaptive or classic`)
const quick = args.quick === true
const PGD_COUNT = Number(args['pgd-count'] ?? (quick ? 60 : 600))
const CONCURRENCY = 8
const log = (s: string) => process.stderr.write(`[eval-screening ${((performance.now() - T0) / 1000).toFixed(0)}s] ${s}\n`)
const T0 = performance.now()

// ---- seeded randomness ---------------------------------------------------------------------
function shuffled<T>(xs: readonly T[], seed: number): T[] {
  const out = xs.slice()
  const rnd = seeded(seed)
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1))
    ;[out[i], out[j]] = [out[j]!, out[i]!]
  }
  return out
}

// ---- data, model, policies -------------------------------------------------------------------
const { train, calibration: calibrationSplit, test } = loadMnist()
const weights = loadWeights()
const N_TEST = quick ? 600 : test.images.length
const heldOut = Array.from({ length: N_TEST }, (_, i) => Math.floor((i * test.images.length) / N_TEST))
const calibration = JSON.parse(readFileSync(calibrationFile, 'utf8')) as CalibrationFile
const bundledParsed = parsePolicy(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8'), 'mnist.yaml')
if (!bundledParsed.policy) throw new Error(bundledParsed.problems.join('\n'))
const bundled = bundledParsed.policy.screening
const manifest = JSON.parse(readFileSync(path.join(repoRoot, 'models/mnist/manifest.json'), 'utf8')) as Manifest

const only = (key: 'featureSqueezing' | 'featureBounds' | 'stateful' | 'extraction', mode: 'enforce' = 'enforce') => {
  const section = bundled[key] ?? {}
  return { [key]: { ...JSON.parse(JSON.stringify(section)), mode } }
}
const bundledSection = JSON.parse(JSON.stringify(bundled)) as Record<string, unknown>

async function gateway(name: string, screening: Record<string, unknown> | null): Promise<TestGateway> {
  log(`starting gateway "${name}"`)
  return evalGateway(screening)
}

/** Whether a refusal ends an attack: any refusal where one detector is on; only 403 (the caller is recognised) with several. */
type Final = (status: number) => boolean
const anyRefusal: Final = () => true
const only403: Final = (status) => status === 403

const scoreOracle = (gw: TestGateway, token: string, final: Final): ScoreOracle => async (x) => {
  const a = await infer(gw, token, x)
  if (a.status !== 200) return { refused: `${a.status} ${a.code}`, final: final(a.status) }
  return { probs: a.probs! }
}
const labelOracle = (gw: TestGateway, token: string, final: Final): LabelOracle => async (x) => {
  const a = await infer(gw, token, x)
  if (a.status !== 200) return { refused: `${a.status} ${a.code}`, final: final(a.status) }
  return { label: argmax(a.probs!) }
}

const pctile = (xs: number[], p: number) => {
  const s = xs.slice().sort((a, b) => a - b)
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN
}
const pct = (n: number, d: number) => (d === 0 ? 'n/a' : `${((100 * n) / d).toFixed(1)}%`)

// ---- the table -----------------------------------------------------------------------------------
interface Row {
  section: string
  check: string
  result: string
  bar: string
  met: 'yes' | 'no' | '-'
}
const rows: Row[] = []
const adaptiveRows: AdaptiveRow[] = []
const raw: Record<string, unknown> = { startedAt: new Date().toISOString(), node: process.version, cpus: os.cpus().length, quick, pgdCount: PGD_COUNT, heldOut: N_TEST }
const row = (r: Row) => rows.push(r)

// ---- 1. white-box examples -----------------------------------------------------------------------
async function whiteBox(): Promise<Record<string, { index: number; image: Float32Array }[]>> {
  const correct = heldOut.filter((i) => argmax(forward(weights, test.images[i]!).logits) === test.labels[i])
  const workers = Math.max(1, Math.min(2, os.availableParallelism()))
  const run = async (job: Omit<WhiteBoxJob, 'images' | 'labels'>, idx: number[]) => {
    const chunks = Array.from({ length: workers }, (_, w) => idx.filter((_, k) => k % workers === w))
    const parts = await Promise.all(chunks.map((chunk, w) => new Promise<Float32Array[][]>((resolve, reject) => {
      const worker = new Worker(new URL('./attacks/white-box-worker.ts', import.meta.url), {
        workerData: { ...job, seed: (job.seed ?? 1) + w, images: chunk.map((i) => test.images[i]!), labels: chunk.map((i) => test.labels[i]!) } satisfies WhiteBoxJob,
      })
      worker.once('message', resolve)
      worker.once('error', reject)
    })))
    const out = new Map<number, Float32Array[]>()
    chunks.forEach((chunk, w) => chunk.forEach((i, k) => out.set(i, parts[w]![k]!)))
    return idx.map((i) => ({ index: i, images: out.get(i)! }))
  }
  log(`FGSM eps 0.1/0.2/0.3 on ${correct.length} correctly classified held-out digits`)
  const f = await run({ kind: 'fgsm', eps: [0.1, 0.2, 0.3] }, correct)
  const pgdIdx = shuffled(correct, 7).slice(0, PGD_COUNT).sort((a, b) => a - b)
  log(`PGD eps 0.3, 40 steps of 0.01, random start, on ${pgdIdx.length} of them (${workers} worker threads)`)
  const p = await run({ kind: 'pgd', eps: [0.3], steps: 40, alpha: 0.01, seed: 99 }, pgdIdx)
  return {
    'FGSM eps 0.1': f.map((r) => ({ index: r.index, image: r.images[0]! })),
    'FGSM eps 0.2': f.map((r) => ({ index: r.index, image: r.images[1]! })),
    'FGSM eps 0.3': f.map((r) => ({ index: r.index, image: r.images[2]! })),
    'PGD eps 0.3 (40 steps)': p.map((r) => ({ index: r.index, image: r.images[0]! })),
  }
}

// ---- black-box runs ----------------------------------------------------------------------------
const NES = { eps: 0.3, sigma: 0.02, samples: 50, stepSize: 0.02 }
// Success for HopSkipJump: misclassified within L2 2.0 (a usual L2 budget for mnist); the
// looser L2 3.0 is reported beside it.
const HSJA = { successL2: 2, initialSamples: 100, maxSamples: 1000 }
const HSJA_LOOSE_L2 = 3
const attackDigits = (n: number) => shuffled(heldOut.filter((i) => argmax(forward(weights, test.images[i]!).logits) === test.labels[i]), 31).slice(0, n)

async function blackBox(gw: TestGateway, prefix: string, digits: number[], maxQueries: number, final: Final = anyRefusal) {
  const out: { attack: string; digit: number; outcome: AttackOutcome }[] = []
  for (const [k, i] of digits.entries()) {
    const x = test.images[i]!
    const y = test.labels[i]!
    const nesOut = await nes(scoreOracle(gw, await tokenFor(gw, `${prefix}-nes-${k}`), final), x, y, { ...NES, maxQueries, normal: gaussian(seeded(1000 + i)) })
    out.push({ attack: 'NES', digit: i, outcome: nesOut })
    // HopSkipJump starts from natural digits of other classes (the attacker's own data).
    const starts = shuffled(heldOut, 4000 + i).filter((j) => test.labels[j] !== y).slice(0, 5).map((j) => test.images[j]!)
    const hsjaOut = await hopSkipJump(scoreOracle(gw, await tokenFor(gw, `${prefix}-hsja-${k}`), final), x, y, { ...HSJA, maxQueries, starts, random: seeded(2000 + i), normal: gaussian(seeded(3000 + i)) })
    out.push({ attack: 'HopSkipJump', digit: i, outcome: hsjaOut })
  }
  return out
}

/** Augmented seeds: each seed digit shifted by up to 2 pixels and given Gaussian noise (sigma 0.05). */
async function augmentedSeeds(oracle: LabelOracle, seeds: Float32Array[], maxQueries: number, rnd: () => number) {
  const normal = gaussian(rnd)
  for (let q = 1; q <= maxQueries; q++) {
    const x = seeds[(q - 1) % seeds.length]!
    const dx = Math.floor(rnd() * 5) - 2
    const dy = Math.floor(rnd() * 5) - 2
    const z = new Float32Array(784)
    for (let r = 0; r < 28; r++) for (let c = 0; c < 28; c++) {
      const sr = r - dy
      const sc = c - dx
      const v = sr >= 0 && sr < 28 && sc >= 0 && sc < 28 ? x[sr * 28 + sc]! : 0
      z[r * 28 + c] = Math.min(1, Math.max(0, v + 0.05 * normal()))
    }
    const a = await oracle(z)
    if ('refused' in a && a.final) return { answered: q - 1, refusedAt: q, refusal: a.refused }
  }
  return { answered: maxQueries, refusedAt: null, refusal: null }
}

// ---- benign traffic -----------------------------------------------------------------------------
async function benignTraffic(gw: TestGateway) {
  const order = BENIGN_ORDER
  const principals = quick ? 20 : 100
  const perPrincipal = 100
  const jobs: { sub: string; index: number }[] = []
  // Principal p sends 100 distinct digits (a window of the shuffled held-out set); the
  // principals' requests interleave, as concurrent callers' would.
  for (let q = 0; q < perPrincipal; q++) for (let p = 0; p < principals; p++) jobs.push({ sub: `benign-${p}`, index: order[(p * 29 + q) % order.length]! })
  log(`benign: ${principals} principals x ${perPrincipal} distinct held-out digits`)
  const many = await mapPool(jobs, CONCURRENCY, async (j) => infer(gw, await tokenFor(gw, j.sub), test.images[j.index]!))
  log(`benign: one principal sending each of the ${order.length} held-out digits once`)
  const oneToken = await tokenFor(gw, 'benign-all')
  const one: Answer[] = []
  for (const i of order) one.push(await infer(gw, oneToken, test.images[i]!)) // one caller, one request at a time
  const count = (as: Answer[], status: number) => as.filter((a) => a.status === status).length
  return { many: { requests: many.length, refused403: count(many, 403), refused422: count(many, 422), ms: many.map((a) => a.ms) }, one: { requests: one.length, refused403: count(one, 403), refused422: count(one, 422), ms: one.map((a) => a.ms) } }
}

// ---- micro-benchmark ----------------------------------------------------------------------------
function microBenchmark() {
  const layout = { channels: 1, height: 28, width: 28, lo: 0, hi: 1 }
  const digits = shuffled(heldOut, 3).map((i) => test.images[i]!)
  const probs = digits.map((x) => forward(weights, x).probs)
  const st = bundled.stateful!
  const ex = bundled.extraction!
  const time = (n: number, f: (i: number) => void) => {
    const t0 = performance.now()
    for (let i = 0; i < n; i++) f(i)
    return ((performance.now() - t0) * 1000) / n
  }
  let digest = 1
  const stateful = createStatefulDetector({ ...st, threshold: 0, mode: 'observe', encoder: poolingEncoder(layout, st.poolSize) })
  for (let i = 0; i < st.historyPerPrincipal; i++) stateful.inspect({ principal: 'full', items: [digits[i % digits.length]!], digests: [digest++] })
  const statefulFull = time(2000, (i) => stateful.inspect({ principal: 'full', items: [digits[i % digits.length]!], digests: [digest++] }))
  const statefulMany = time(20_000, (i) => stateful.inspect({ principal: `p${i % 10_000}`, items: [digits[i % digits.length]!], digests: [digest++] }))
  const index = createCallersIndexDetector({ k: st.k, size: Math.max(st.k, st.acrossCallers), threshold: 0, mode: 'observe', encoder: poolingEncoder(layout, st.poolSize) })
  for (let i = 0; i < st.acrossCallers; i++) index.inspect({ principal: `p${i}`, items: [digits[i % digits.length]!], digests: [digest++] })
  const indexFull = time(2000, (i) => index.inspect({ principal: `q${i}`, items: [digits[i % digits.length]!], digests: [digest++] }))
  const prada = createPradaDetector({ ...ex, wThreshold: 0, mode: 'observe', encoder: poolingEncoder(layout, ex.poolSize) })
  for (let i = 0; i < 1500; i++) prada.inspect({ principal: 'full', items: [digits[i % digits.length]!], digests: [digest++], probabilities: [probs[i % digits.length]!] })
  const pradaFull = time(2000, (i) => prada.inspect({ principal: 'full', items: [digits[i % digits.length]!], digests: [digest++], probabilities: [probs[i % digits.length]!] }))
  const screening = compileScreening('mnist', bundled as ScreeningPolicy, manifest, calibration, cryptoRandom)
  const fs = screening.detectors.find((d) => d.name === 'feature-squeezing')!
  const squeeze = time(2000, (i) => fs.variants!(digits[i % digits.length]!))
  const fb = screening.detectors.find((d) => d.name === 'feature-bounds')!
  const bounds = time(20_000, (i) => fb.inspect({ principal: 'x', items: [digits[i % digits.length]!], digests: [0] }))
  const digestCost = time(20_000, (i) => screening.digest(digits[i % digits.length]!))
  const statefulBytes = poolingEncoder(layout, st.poolSize).dims * 4 + 8 + 40 // vector, digest, Set entry (approx.)
  const pradaBytes = poolingEncoder(layout, ex.poolSize).dims * 4
  return { statefulFull, statefulMany, indexFull, pradaFull, squeeze, bounds, digestCost, statefulBytes, pradaBytes, statefulMemory: stateful.memory!() }
}

// ---- main ---------------------------------------------------------------------------------------
const BENIGN_ORDER = shuffled(heldOut, 5)
const latencyDigits = BENIGN_ORDER.slice(0, quick ? 200 : 1000)
const adaptiveOnly = args['adaptive-only']?.split(',') as (typeof DETECTORS)[number][] | undefined
if (adaptiveOnly?.some((d) => !DETECTORS.includes(d))) throw new Error(`--adaptive-only ${args['adaptive-only']}: use a comma-separated list of ${DETECTORS.join(', ')}`)
const onAlarm = args['on-alarm']?.split(',') as AlarmMode[] | undefined
if (onAlarm?.some((m) => !ALARM_MODES.includes(m))) throw new Error(`--on-alarm ${args['on-alarm']}: use a comma-separated list of ${ALARM_MODES.join(', ')}`)
if (part !== 'classic') {
  const ad = await runAdaptive(
    {
      data: { train, calibration: calibrationSplit, test },
      weights,
      heldOut,
      // --no-index: the stateful detector without its model-wide index, for comparison.
      bundled: (args['no-index'] ? { ...bundled, stateful: { ...bundled.stateful, acrossCallers: 0 } } : bundled) as unknown as AdaptiveContext['bundled'],
      threshold: calibration.featureSqueezing!.threshold,
      digits: Number(args['adaptive-digits'] ?? (quick ? 1 : 5)),
      whiteBoxDigits: Number(args['bpda-digits'] ?? (quick ? 20 : 100)),
      maxQueries: Number(args['adaptive-queries'] ?? (quick ? 1000 : 3000)),
      log,
    },
    { baseline: args['no-baseline'] !== true, only: adaptiveOnly, ...(onAlarm ? { onAlarm } : {}) },
  )
  raw.adaptive = ad.raw
  adaptiveRows.push(...ad.rows)
}

if (part !== 'adaptive') {
  const adv = await whiteBox()

  // Unguarded: which originals and adversarial examples the model gets right / wrong through the API.
  const off = await gateway('off', null)
  let offLatency: number[] = []
  let baseline: Awaited<ReturnType<typeof blackBox>> = []
  const fooled: Record<string, { index: number; image: Float32Array }[]> = {}
  try {
    const token = await tokenFor(off, 'eval-unguarded')
    log(`off: ${heldOut.length} held-out originals`)
    const originals = await mapPool(heldOut, CONCURRENCY, (i) => infer(off, token, test.images[i]!))
    // Latency as the bundled run below measures it: one caller, one request at a time, same digits.
    const sequential = await tokenFor(off, 'eval-latency')
    for (const i of latencyDigits) offLatency.push((await infer(off, sequential, test.images[i]!)).ms)
    const correctViaApi = new Set(heldOut.filter((i, k) => originals[k]!.status === 200 && argmax(originals[k]!.probs!) === test.labels[i]))
    raw.unguardedAccuracy = correctViaApi.size / heldOut.length
    for (const [name, list] of Object.entries(adv)) {
      log(`off: ${list.length} ${name} examples`)
      const answers = await mapPool(list, CONCURRENCY, (e) => infer(off, token, e.image))
      fooled[name] = list.filter((e, k) => correctViaApi.has(e.index) && answers[k]!.status === 200 && argmax(answers[k]!.probs!) !== test.labels[e.index])
    }
    log('off: black-box attacks without a defence (budget 3,000 queries each)')
    baseline = await blackBox(off, 'unguarded', attackDigits(quick ? 1 : 2), 3000)
  } finally {
    await off.close()
  }
  raw.fooled = Object.fromEntries(Object.entries(fooled).map(([k, v]) => [k, v.length]))

  // Feature squeezing, then feature bounds, each alone and enforcing.
  for (const [section, key] of [['feature squeezing', 'featureSqueezing'], ['feature bounds', 'featureBounds']] as const) {
    const gw = await gateway(section, only(key))
    try {
      const token = await tokenFor(gw, 'eval-screen')
      log(`${section}: ${heldOut.length} benign held-out digits`)
      const benign = await mapPool(heldOut, CONCURRENCY, (i) => infer(gw, token, test.images[i]!))
      const fp = benign.filter((a) => a.status === 422).length
      const other = benign.filter((a) => a.status !== 200 && a.status !== 422).length
      if (other > 0) throw new Error(`${section}: ${other} benign requests failed otherwise`)
      const bar = key === 'featureSqueezing'
      const rates: Record<string, unknown> = { falsePositives: fp, benign: benign.length }
      for (const [name, list] of Object.entries(fooled)) {
        const answers = await mapPool(list, CONCURRENCY, (e) => infer(gw, token, e.image))
        const refused = answers.filter((a) => a.status === 422).length
        rates[name] = { refused, of: list.length }
        row({ section, check: `${name}: successful examples refused`, result: `${pct(refused, list.length)} (${refused}/${list.length})`, bar: bar ? '>= 90%' : 'informational', met: bar ? (refused / list.length >= 0.9 ? 'yes' : 'no') : '-' })
      }
      row({ section, check: `benign held-out digits refused (false positives)`, result: `${pct(fp, benign.length)} (${fp}/${benign.length})`, bar: bar ? '<= 5%' : 'informational', met: bar ? (fp / benign.length <= 0.05 ? 'yes' : 'no') : '-' })
      raw[section] = rates
    } finally {
      await gw.close()
    }
  }

  // Stateful detection alone: each black-box attack as one principal.
  const statefulRuns = await (async () => {
    const gw = await gateway('stateful', only('stateful'))
    try {
      log('stateful: NES and HopSkipJump, 5 digits each, one fresh principal per run')
      return await blackBox(gw, 'stateful', attackDigits(quick ? 2 : 5), 3000)
    } finally {
      await gw.close()
    }
  })()
  const describe = (o: AttackOutcome) => `${o.refusedAt === null ? 'never refused' : `refused at query ${o.refusedAt}`}; ${o.succeededAt === null ? 'not yet successful' : `succeeded at query ${o.succeededAt}`}`
  for (const attack of ['HopSkipJump', 'NES']) {
    const runs = statefulRuns.filter((r) => r.attack === attack)
    const worst = Math.max(...runs.map((r) => r.outcome.refusedAt ?? Infinity))
    const stoppedFirst = runs.every((r) => r.outcome.refusedAt !== null && r.outcome.refusedAt <= 100 && (r.outcome.succeededAt === null || r.outcome.succeededAt > r.outcome.refusedAt))
    const base = baseline.filter((r) => r.attack === attack)
    const nesAttack = attack === 'NES'
    const crit = nesAttack ? `misclassified within L-inf ${NES.eps}` : `misclassified within L2 ${HSJA.successL2}`
    const at = (o: AttackOutcome) => (o.distortionAtRefusal === null ? 'none' : o.distortionAtRefusal.toFixed(2))
    row({
      section: 'stateful',
      check: `${attack} (${nesAttack ? 'score' : 'decision'}-based), ${runs.length} runs: queries until 403; success = ${crit}`,
      result: `alarm at ${runs.map((r) => r.outcome.refusedAt ?? 'never').join(', ')}; successes before alarm: ${runs.filter((r) => r.outcome.succeededAt !== null).length}`,
      bar: '<= 100 and before success',
      met: stoppedFirst && worst <= 100 ? 'yes' : 'no',
    })
    row({
      section: 'stateful',
      check: `  best adversarial distortion when stopped (${nesAttack ? 'L-inf; none = no adversarial point yet' : 'L2'})`,
      result: runs.map((r) => at(r.outcome)).join(', '),
      bar: 'context',
      met: '-',
    })
    if (!nesAttack) {
      const loose = runs.map((r) => firstWithin(r.outcome, HSJA_LOOSE_L2))
      row({
        section: 'stateful',
        check: `  with the looser success L2 ${HSJA_LOOSE_L2}: runs that succeeded before the alarm`,
        result: `${loose.filter((q, k) => q !== null && q < (runs[k]!.outcome.refusedAt ?? Infinity)).length} of ${runs.length} (at ${loose.map((q) => q ?? '-').join(', ')})`,
        bar: 'context',
        met: '-',
      })
    }
    row({
      section: 'stateful',
      check: `  same attack without a defence (budget 3,000)`,
      result: base.map((r) => (r.outcome.succeededAt !== null ? `succeeded at ${r.outcome.succeededAt}` : `best ${(r.outcome.bestDistortion ?? NaN).toFixed(2)} after ${r.outcome.queries}`)).join('; '),
      bar: 'context',
      met: '-',
    })
  }
  raw.stateful = { runs: statefulRuns, baseline }

  // Extraction detection alone.
  const extractionRuns = await (async () => {
    const gw = await gateway('extraction', only('extraction'))
    try {
      const seeds = shuffled(heldOut, 17).slice(0, 100).map((i) => test.images[i]!)
      log('extraction: Jacobian-based augmentation from 100 held-out seeds')
      const jbda = await jacobianAugmentation(labelOracle(gw, await tokenFor(gw, 'thief-jbda'), anyRefusal), seeds, { lambda: 0.1, maxQueries: 4000 })
      log('extraction: augmented seeds (shifts and noise)')
      const aug = await augmentedSeeds(labelOracle(gw, await tokenFor(gw, 'thief-augment'), anyRefusal), seeds, 4000, seeded(23))
      return { jbda, aug }
    } finally {
      await gw.close()
    }
  })()
  row({ section: 'extraction', check: 'Jacobian-based augmentation (Papernot et al.), 100 seeds, lambda 0.1: queries until 403', result: extractionRuns.jbda.refusedAt === null ? `never (${extractionRuns.jbda.answered} answered)` : `alarm at query ${extractionRuns.jbda.refusedAt}`, bar: '<= 2000', met: extractionRuns.jbda.refusedAt !== null && extractionRuns.jbda.refusedAt <= 2000 ? 'yes' : 'no' })
  // Natural-looking queries are PRADA's stated blind spot (Juuti et al. 2019, section on
  // natural-data attacks): reported, not held to the bar.
  row({ section: 'extraction', check: 'augmented seeds (shift <= 2 px, noise 0.05): queries until 403', result: extractionRuns.aug.refusedAt === null ? `never (${extractionRuns.aug.answered} answered)` : `alarm at query ${extractionRuns.aug.refusedAt}`, bar: 'informational', met: '-' })
  raw.extraction = extractionRuns

  // The bundled policy as shipped: benign traffic, the attacks again, latency.
  {
    const gw = await gateway('bundled', bundledSection)
    try {
      const benign = await benignTraffic(gw)
      raw.benign = { many: { ...benign.many, ms: undefined }, one: { ...benign.one, ms: undefined } }
      row({ section: 'bundled policy', check: `benign: ${benign.many.requests / 100} principals x 100 distinct digits: 403 (stateful/extraction alarms)`, result: String(benign.many.refused403), bar: '0', met: benign.many.refused403 === 0 ? 'yes' : 'no' })
      row({ section: 'bundled policy', check: `benign: 1 principal x ${benign.one.requests} held-out digits: 403 (stateful/extraction alarms)`, result: String(benign.one.refused403), bar: '0', met: benign.one.refused403 === 0 ? 'yes' : 'no' })
      row({ section: 'bundled policy', check: `benign: 422 from feature squeezing over both workloads`, result: pct(benign.many.refused422 + benign.one.refused422, benign.many.requests + benign.one.requests), bar: 'context (its FPR)', met: '-' })
      log('bundled: attacks against the shipped policy')
      // Against the shipped policy an attacker shrugs off a 422 (one input refused) and stops at a 403.
      const attacks = await blackBox(gw, 'bundled', attackDigits(1), 3000, only403)
      const seeds = shuffled(heldOut, 41).slice(0, 100).map((i) => test.images[i]!)
      const jbda = await jacobianAugmentation(labelOracle(gw, await tokenFor(gw, 'bundled-thief'), only403), seeds, { lambda: 0.1, maxQueries: 4000 })
      for (const a of attacks) row({ section: 'bundled policy', check: `${a.attack}: queries until 403 (422s meanwhile)`, result: `${a.outcome.refusedAt ?? 'never'} (${a.outcome.skipped}); ${describe(a.outcome).split('; ')[1]}`, bar: 'context', met: '-' })
      row({ section: 'bundled policy', check: 'Jacobian-based augmentation: queries until 403', result: `${jbda.refusedAt ?? 'never'} (${jbda.answered} answered)`, bar: 'context', met: '-' })
      raw.bundled = { attacks, jbda }
      const onLatency = benign.one.ms.slice(0, latencyDigits.length)
      const lat = (xs: number[]) => ({ p50: pctile(xs, 50), p99: pctile(xs, 99) })
      const a = lat(offLatency)
      const b = lat(onLatency)
      row({ section: 'cost', check: `latency, one caller, ${latencyDigits.length} digits one at a time (p50 / p99 ms): off vs bundled`, result: `${a.p50.toFixed(2)} / ${a.p99.toFixed(2)} vs ${b.p50.toFixed(2)} / ${b.p99.toFixed(2)} (p50 x${(b.p50 / a.p50).toFixed(2)})`, bar: 'measured', met: '-' })
      raw.latency = { off: a, bundled: b }
    } finally {
      await gw.close()
    }
  }

  log('micro-benchmark of the detectors')
  const mb = microBenchmark()
  raw.microBenchmark = mb
  row({ section: 'cost', check: 'stateful: per query, history of 1,000 full (k 20, pool 4)', result: `${mb.statefulFull.toFixed(1)} us; ~${mb.statefulBytes} B per stored query`, bar: 'measured', met: '-' })
  row({ section: 'cost', check: `stateful-callers: per query, model-wide index of ${bundled.stateful!.acrossCallers} full`, result: `${mb.indexFull.toFixed(1)} us; ${mb.statefulBytes} B per stored query, fixed per model`, bar: 'measured', met: '-' })
row({ section: 'cost', check: 'stateful: per query, 10,000 principals', result: `${mb.statefulMany.toFixed(1)} us; ${mb.statefulMemory.principals} principals, ${mb.statefulMemory.stored} queries held`, bar: 'measured', met: '-' })
  row({ section: 'cost', check: 'extraction: per query incl. Shapiro-Wilk on 1,000 distances', result: `${mb.pradaFull.toFixed(1)} us; ${mb.pradaBytes} B per growing-set entry`, bar: 'measured', met: '-' })
  row({ section: 'cost', check: 'feature squeezing: both squeezers per item (CPU; the model runs 3x items)', result: `${mb.squeeze.toFixed(1)} us`, bar: 'measured', met: '-' })
  row({ section: 'cost', check: 'feature bounds / input digest per item', result: `${mb.bounds.toFixed(1)} us / ${mb.digestCost.toFixed(1)} us`, bar: 'measured', met: '-' })
}

// ---- report ---------------------------------------------------------------------------------------
const header: (keyof Row)[] = ['section', 'check', 'result', 'bar', 'met']
const widths = header.map((h) => Math.max(h.length, ...rows.map((r) => r[h].length)))
const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()
if (adaptiveRows.length > 0) {
  console.log('ADAPTIVE ATTACKS (they know the detector; success = the attack goal reached within the queries)')
  for (const l of adaptiveTable(adaptiveRows, Number(args['adaptive-queries'] ?? (quick ? 1000 : 3000)))) console.log(l)
  console.log('\nNON-ADAPTIVE ATTACKS (they ignore the detectors)')
}
console.log(line(header))
console.log(widths.map((w) => '-'.repeat(w)).join('  '))
for (const r of rows) console.log(line(header.map((h) => r[h])))
const file = writeResults('eval-screening', { ...raw, rows, durationSeconds: (performance.now() - T0) / 1000 })
console.log(`\nsqueezers: [${bundled.featureSqueezing?.squeezers.join(', ')}] at threshold ${calibration.featureSqueezing?.threshold.toFixed(4)} (target FPR ${calibration.featureSqueezing?.targetFalsePositiveRate} on the calibration split)`)
console.log(`results: ${path.relative(process.cwd(), file)}  (${((performance.now() - T0) / 1000).toFixed(0)} s)`)
const failed = rows.filter((r) => r.met === 'no')
if (failed.length > 0) process.exitCode = 1
