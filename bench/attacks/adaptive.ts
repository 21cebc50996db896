// The adaptive part of `npm run eval:screening`: attacks that know each detector, through the
// public API of gateways that run one detector each (as the bundled policy configures it,
// cool-down included), every figure on the held-out split, with the squeezers chosen on the
// calibration split (squeezer-choice.ts). Each attack is seeded and bounded (at most
// `maxQueries` queries per run), and reports its success after 1,000 and after 3,000 queries
// and the identities it used.
//
//   feature squeezing  BPDA (bpda.ts) at L-inf 0.3 and L2 3.0: one query per digit
//   stateful           NES with sigma 0.05, 0.1, and sigma 0.05 drawn per pooled cell;
//                      HopSkipJump with a probe radius of 1.5 and jittered queries;
//                      OARS-style NES that widens its probes after each refusal and moves to a
//                      fresh identity; the plain NES split over m = 1, 10, 50 identities;
//                      with --on-alarm, only OARS (plain, and checking for degraded answers
//                      by repeats or canaries) under each screening.onAlarm mode
//   extraction         Jacobian augmentation plain and with noise; interleaved with natural
//                      digits 1:1 and 1:3; natural digits only (Knockoff)

import os from 'node:os'
import { Worker } from 'node:worker_threads'
import { argmax, forward, type Params } from '../../models/mnist/cnn.ts'
import type { MnistSplits } from '../../models/mnist/data.ts'
import { mulberry32 as seeded, normalFrom as gaussian } from '../../models/mnist/train.ts'
import type { TestGateway } from '../../kit/gateway.ts'
import { seededRng } from '../privacy/rng.ts'
import { hopSkipJump, nes, type AttackOutcome, type ScoreOracle } from './black-box.ts'
import { distortion } from './bpda.ts'
import type { LabelOracle } from './extraction.ts'
import { interleavedSource, jbdaSource, naturalSource, runExtraction, type ExtractionRun, type QuerySource } from './extraction-adaptive.ts'
import { evalGateway, infer, mapPool, tokenFor } from './gateway-client.ts'
import { IdentitySchedule, rotatingOracle } from './identities.ts'
import { chooseSqueezers } from './squeezer-choice.ts'
import type { WhiteBoxJob } from './white-box-worker.ts'

export interface AdaptiveRow {
  detector: string
  attack: string
  at1000: string
  at3000: string
  identities: string
  benignFp: string
  note: string
}

export interface AdaptiveContext {
  data: MnistSplits
  weights: Params
  /** Indices of the held-out digits (the test split) the run uses. */
  heldOut: number[]
  bundled: { featureSqueezing: { squeezers: string[]; targetFalsePositiveRate: number }; stateful: Record<string, unknown>; extraction: Record<string, unknown>; cooldownMs: number }
  threshold: number
  /** Digits per black-box attack, digits per white-box attack, queries per run. */
  digits: number
  whiteBoxDigits: number
  maxQueries: number
  log: (s: string) => void
}

const pct = (n: number, d: number) => (d === 0 ? 'n/a' : `${((100 * n) / d).toFixed(0)}% (${n}/${d})`)

/** A generator of fresh subjects: one run's identities never meet another's. */
let run = 0
const subjects = (name: string) => {
  const r = ++run
  return (i: number) => `adaptive-${r}-${name}-${i}`
}

// ---- honest split and benign false positives ----------------------------------------------

function squeezerChoice(c: AdaptiveContext, raw: Record<string, unknown>): string {
  c.log('adaptive: squeezers chosen on the calibration split')
  const { images, labels } = c.data.calibration
  const choice = chooseSqueezers(c.weights, images, labels, { targetFalsePositiveRate: c.bundled.featureSqueezing.targetFalsePositiveRate, attackDigits: 300, pgdDigits: 100, random: seeded(71) })
  raw.squeezerChoice = choice
  const same = choice.chosen.squeezers.join(',') === c.bundled.featureSqueezing.squeezers.join(',')
  return `calibration split picks [${choice.chosen.squeezers.join(', ')}] (worst detection ${(100 * choice.chosen.worst).toFixed(0)}%)${same ? ', the bundled set' : `, NOT the bundled [${c.bundled.featureSqueezing.squeezers.join(', ')}]`}`
}

/** One principal sends every held-out digit once: refusals are the detector's false positives. */
async function benignStream(gw: TestGateway, c: AdaptiveContext, status: number): Promise<{ refused: number; first: number | null; of: number }> {
  const token = await tokenFor(gw, subjects('benign')(0))
  let refused = 0
  let first: number | null = null
  for (const [k, i] of c.heldOut.entries()) {
    const a = await infer(gw, token, c.data.test.images[i]!)
    if (a.status === status) {
      refused++
      first ??= k + 1
    }
  }
  return { refused, first, of: c.heldOut.length }
}

// ---- feature squeezing: BPDA ---------------------------------------------------------------

async function whiteBoxJobs(c: AdaptiveContext, job: Omit<WhiteBoxJob, 'images' | 'labels'>, idx: number[]): Promise<(Float32Array | null)[]> {
  const workers = Math.max(1, Math.min(2, os.availableParallelism()))
  const chunks = Array.from({ length: workers }, (_, w) => idx.filter((_, k) => k % workers === w))
  const parts = await Promise.all(chunks.map((chunk) => new Promise<Float32Array[][]>((resolve, reject) => {
    const worker = new Worker(new URL('./white-box-worker.ts', import.meta.url), {
      workerData: { ...job, images: chunk.map((i) => c.data.test.images[i]!), labels: chunk.map((i) => c.data.test.labels[i]!) } satisfies WhiteBoxJob,
    })
    worker.once('message', resolve)
    worker.once('error', reject)
  })))
  const out = new Map<number, Float32Array | null>()
  chunks.forEach((chunk, w) => chunk.forEach((i, k) => out.set(i, parts[w]![k]![0] ?? null)))
  return idx.map((i) => out.get(i)!)
}

async function squeezingAttacks(c: AdaptiveContext, rows: AdaptiveRow[], raw: Record<string, unknown>, honest: string): Promise<void> {
  const gw = await evalGateway({ featureSqueezing: { ...c.bundled.featureSqueezing, mode: 'enforce' } })
  try {
    const benign = await mapPool(c.heldOut, 8, async (i) => (await infer(gw, await tokenFor(gw, 'adaptive-squeeze-benign'), c.data.test.images[i]!)).status)
    const fp = benign.filter((s) => s === 422).length
    const digits = c.heldOut.filter((i) => argmax(forward(c.weights, c.data.test.images[i]!).logits) === c.data.test.labels[i]).slice(0, c.whiteBoxDigits)
    const token = await tokenFor(gw, 'adaptive-bpda')
    const out: Record<string, unknown> = { falsePositives: fp, benign: benign.length }
    for (const [norm, eps, alpha] of [['linf', 0.3, 0.01], ['l2', 3, 0.1]] as const) {
      c.log(`adaptive: BPDA ${norm} ${eps} on ${digits.length} held-out digits`)
      const images = await whiteBoxJobs(c, { kind: norm === 'linf' ? 'bpda-linf' : 'bpda-l2', eps: [eps], steps: 100, alpha, squeezers: c.bundled.featureSqueezing.squeezers, threshold: c.threshold }, digits)
      let ok = 0
      const dists: { linf: number; l2: number }[] = []
      for (const [k, img] of images.entries()) {
        if (!img) continue
        const a = await infer(gw, token, img)
        if (a.status === 200 && argmax(a.probs!) !== c.data.test.labels[digits[k]!]) {
          ok++
          dists.push(distortion(img, c.data.test.images[digits[k]!]!))
        }
      }
      const mean = (f: (d: { linf: number; l2: number }) => number) => (dists.length ? dists.reduce((s, d) => s + f(d), 0) / dists.length : NaN)
      const rate = pct(ok, digits.length)
      out[`bpda-${norm}`] = { success: ok, of: digits.length, found: images.filter(Boolean).length, meanLinf: mean((d) => d.linf), meanL2: mean((d) => d.l2) }
      rows.push({
        detector: 'feature squeezing',
        attack: `BPDA ${norm === 'linf' ? 'L-inf 0.3' : 'L2 3.0'} (knows squeezers + threshold)`,
        at1000: rate,
        at3000: rate,
        identities: '1',
        benignFp: pct(fp, benign.length),
        note: `1 query per digit; mean distortion of successes L-inf ${mean((d) => d.linf).toFixed(2)}, L2 ${mean((d) => d.l2).toFixed(2)}`,
      })
    }
    rows.push({ detector: 'feature squeezing', attack: 'honest split', at1000: '-', at3000: '-', identities: '-', benignFp: pct(fp, benign.length), note: honest })
    raw.squeezing = out
  } finally {
    await gw.close()
  }
}

// ---- stateful detector: query attacks ------------------------------------------------------

interface BlackBoxSpec {
  name: string
  /** Identities the attacker holds, and how it uses them (identities.ts). */
  m: number
  order?: 'round-robin' | 'sequential'
  /** Runs one digit against an oracle, with the run's adaptation if the spec has one. */
  attack: (oracle: ScoreOracle, digit: number, adapt?: Adaptation) => Promise<AttackOutcome>
  /** Builds the per-run adaptation (OARS): a fresh state per digit. */
  adapt?: () => Adaptation
  /**
   * Checks for a degraded mechanism (screening.onAlarm degrade), after every `every`-th
   * answered query, on the same identity: 'repeat' sends the query again, and answers that
   * differ count as a 403; 'canary' sends a held-out digit whose label the attacker knows, and
   * a wrong label counts as a 403. The checks are requests too, counted apart.
   */
  check?: { every: number; kind: 'repeat' | 'canary' }
}

/** An attack that learns from refusals: told of each 403, it reads its probe scale anew. */
interface Adaptation {
  onRetire: () => void
  sigma: () => number
}

const NES_BASE = { eps: 0.3, samples: 50, stepSize: 0.02 }

function blackBoxSpecs(c: AdaptiveContext): BlackBoxSpec[] {
  const { images, labels } = c.data.test
  const nesRun = (sigma: number | (() => number), tile: number) => (oracle: ScoreOracle, i: number) =>
    nes(oracle, images[i]!, labels[i]!, { ...NES_BASE, sigma, tile, maxQueries: c.maxQueries, normal: gaussian(seeded(1000 + i)), verify: (z) => argmax(forward(c.weights, z).logits) !== labels[i] })
  const hsja = (oracle: ScoreOracle, i: number) => {
    const y = labels[i]!
    const starts = c.heldOut.filter((j) => labels[j] !== y).slice(i % 50, (i % 50) + 5).map((j) => images[j]!)
    return hopSkipJump(oracle, images[i]!, y, {
      successL2: 3, initialSamples: 100, maxSamples: 1000, maxQueries: c.maxQueries, starts, random: seeded(2000 + i), normal: gaussian(seeded(3000 + i)),
      probeRadius: 1.5, jitter: 0.05, tile: 4, tolerance: 0.01,
      verify: (z) => argmax(forward(c.weights, z).logits) !== y,
    })
  }
  const specs: BlackBoxSpec[] = [
    { name: 'NES sigma 0.05', m: 1, attack: nesRun(0.05, 1) },
    { name: 'NES sigma 0.1', m: 1, attack: nesRun(0.1, 1) },
    { name: 'NES sigma 0.05, noise per pooled 4x4 cell', m: 1, attack: nesRun(0.05, 4) },
    { name: 'HopSkipJump, probe radius 1.5, jitter 0.05 per cell (L2 3.0)', m: 1, attack: hsja },
  ]
  // OARS-style: each refusal says the probes were too alike; widen them and go on under the
  // next identity.
  specs.push(oarsSpec(nesRun))
  for (const m of [1, 10, 50]) specs.push({ name: `NES sigma 0.02 split over m = ${m}`, m, attack: nesRun(0.02, 1) })
  return specs
}

/** The OARS-style spec; with `check`, one that also looks for degraded answers (BlackBoxSpec.check). */
function oarsSpec(nesRun: (sigma: () => number, tile: number) => BlackBoxSpec['attack'], check?: BlackBoxSpec['check']): BlackBoxSpec {
  const checks = { repeat: 'repeats the query, a changed answer', canary: 'sends a digit of known label, a wrong label' }
  return {
    name: `OARS-style NES: sigma 0.02 x1.5 per refusal, per cell, new identity${check ? `; every ${check.every}th query ${checks[check.kind]} counts as a refusal` : ''}`,
    m: 50,
    order: 'sequential',
    attack: (oracle, i, adapt) => nesRun(adapt!.sigma, 4)(oracle, i),
    adapt: () => {
      let sigma = 0.02
      return { onRetire: () => (sigma = Math.min(0.2, sigma * 1.5)), sigma: () => sigma }
    },
    ...(check ? { check } : {}),
  }
}

const sameAnswer = (a: Float32Array | null, b: Float32Array | null) => a !== null && b !== null && a.length === b.length && a.every((v, k) => v === b[k])

async function runSpec(gw: TestGateway, c: AdaptiveContext, spec: BlackBoxSpec, digits: number[]) {
  const runs: { digit: number; outcome: AttackOutcome; identities: number; repeats: number }[] = []
  for (const i of digits) {
    const sub = subjects(spec.name.replace(/[^a-z0-9]+/gi, '-'))
    const tokens = await Promise.all(Array.from({ length: spec.m }, (_, id) => tokenFor(gw, sub(id))))
    const schedule = new IdentitySchedule(spec.m, spec.order)
    const adapt = spec.adapt?.()
    let answered = 0
    let repeats = 0
    const check = spec.check
    const canaries = c.heldOut.filter((j) => j !== i && argmax(forward(c.weights, c.data.test.images[j]!).logits) === c.data.test.labels[j])
    const send = async (id: number, x: Float32Array) => {
      const a = await infer(gw, tokens[id]!, x)
      if (!check || a.status !== 200 || ++answered % check.every !== 0) return a
      const canary = canaries[repeats++ % canaries.length]!
      const again = await infer(gw, tokens[id]!, check.kind === 'repeat' ? x : c.data.test.images[canary]!)
      const caught = again.status === 200 && (check.kind === 'repeat' ? !sameAnswer(a.probs, again.probs) : argmax(again.probs!) !== c.data.test.labels[canary])
      return caught ? { ...a, status: 403, code: `${check.kind} check failed (degraded)`, probs: null } : a
    }
    const oracle = rotatingOracle(send, schedule, adapt?.onRetire)
    const outcome = await spec.attack(oracle, i, adapt)
    runs.push({ digit: i, outcome, identities: schedule.used, repeats })
  }
  return runs
}

function blackBoxRow(detector: string, spec: BlackBoxSpec, runs: Awaited<ReturnType<typeof runSpec>>, base: Awaited<ReturnType<typeof runSpec>> | null, fp: string): AdaptiveRow {
  const by = (n: number, rs: typeof runs) => rs.filter((r) => r.outcome.succeededAt !== null && r.outcome.succeededAt <= n).length
  const used = runs.map((r) => r.identities)
  const refusals = runs.map((r) => r.outcome.skipped + (r.outcome.refusedAt === null ? 0 : 1))
  return {
    detector,
    attack: spec.name,
    at1000: pct(by(1000, runs), runs.length),
    at3000: pct(by(3000, runs), runs.length),
    identities: spec.m === 1 ? '1' : `${Math.min(...used)}-${Math.max(...used)} of ${spec.m}`,
    benignFp: fp,
    note: `${base ? `undefended: ${by(1000, base)}/${base.length} by 1,000, ${by(3000, base)}/${base.length} by 3,000; ` : ''}queries sent ${runs.map((r) => r.outcome.queries).join(', ')}${spec.check ? ` (+ ${spec.check.kind} checks ${runs.map((r) => r.repeats).join(', ')})` : ''}; refused ${refusals.join(', ')}`,
  }
}

async function statefulAttacks(c: AdaptiveContext, rows: AdaptiveRow[], raw: Record<string, unknown>, baseline: boolean): Promise<void> {
  const digits = c.heldOut.filter((i) => argmax(forward(c.weights, c.data.test.images[i]!).logits) === c.data.test.labels[i]).filter((_, k) => k % 97 === 5).slice(0, c.digits)
  const specs = blackBoxSpecs(c)
  const base = new Map<string, Awaited<ReturnType<typeof runSpec>>>()
  if (baseline) {
    const off = await evalGateway(null)
    try {
      for (const spec of specs.slice(0, 4)) {
        c.log(`adaptive: ${spec.name}, undefended, ${digits.length} digits`)
        base.set(spec.name, await runSpec(off, c, spec, digits))
      }
    } finally {
      await off.close()
    }
  }
  const statefulGateway = () => evalGateway({ stateful: c.bundled.stateful, cooldownMs: c.bundled.cooldownMs })
  let gw = await statefulGateway()
  try {
    c.log('adaptive: stateful, benign stream')
    const benign = await benignStream(gw, c, 403)
    const fp = `${benign.refused}/${benign.of} (one caller, all held-out digits)`
    const out: Record<string, unknown> = { benign }
    for (const spec of specs) {
      // A fresh gateway per attack: the model-wide index must not hold the last attack's probes.
      await gw.close()
      gw = await statefulGateway()
      c.log(`adaptive: stateful vs ${spec.name}, ${digits.length} digits`)
      const runs = await runSpec(gw, c, spec, digits)
      out[spec.name] = { runs, baseline: base.get(spec.name) }
      rows.push(blackBoxRow('stateful', spec, runs, base.get(spec.name) ?? null, fp))
    }
    raw.stateful = out
  } finally {
    await gw.close()
  }
}

// ---- extraction detector ----------------------------------------------------------------------

async function extractionAttacks(c: AdaptiveContext, rows: AdaptiveRow[], raw: Record<string, unknown>): Promise<void> {
  const pool = c.data.train.images
  const reference = c.heldOut.map((i) => argmax(forward(c.weights, c.data.test.images[i]!).logits))
  const surrogate = { heldOut: c.heldOut.map((i) => c.data.test.images[i]!), reference, seed: 5 }
  const seeds = (seed: number) => {
    const rng = seededRng(seed)
    return Array.from({ length: 100 }, () => pool[rng.int(pool.length)]!)
  }
  const sources: [string, () => QuerySource][] = [
    ['Jacobian augmentation (not adaptive)', () => jbdaSource(seeds(11), { lambda: 0.1, noise: 0, rng: seededRng(12) })],
    ['Jacobian augmentation + noise 0.1', () => jbdaSource(seeds(11), { lambda: 0.1, noise: 0.1, rng: seededRng(12) })],
    ['Jacobian : natural 1:1', () => interleavedSource(jbdaSource(seeds(11), { lambda: 0.1, noise: 0, rng: seededRng(12) }), naturalSource(pool, seededRng(13)), 1)],
    ['Jacobian : natural 1:3', () => interleavedSource(jbdaSource(seeds(11), { lambda: 0.1, noise: 0, rng: seededRng(12) }), naturalSource(pool, seededRng(13)), 3)],
    ['Knockoff: natural digits only', () => naturalSource(pool, seededRng(13))],
  ]
  const gw = await evalGateway({ extraction: c.bundled.extraction, cooldownMs: c.bundled.cooldownMs })
  try {
    c.log('adaptive: extraction, benign stream')
    const benign = await benignStream(gw, c, 403)
    const fp = `${benign.refused}/${benign.of} (one caller, all held-out digits)`
    const out: Record<string, unknown> = { benign }
    for (const [name, source] of sources) {
      c.log(`adaptive: extraction vs ${name}`)
      const token = await tokenFor(gw, subjects('thief')(0))
      const oracle: LabelOracle = async (x) => {
        const a = await infer(gw, token, x)
        if (a.status !== 200) return { refused: `${a.status} ${a.code}`, final: a.status === 403 }
        return { label: argmax(a.probs!) }
      }
      const r: ExtractionRun = await runExtraction(oracle, source(), { maxQueries: c.maxQueries, checkpoints: [Math.min(1000, c.maxQueries), c.maxQueries], surrogate })
      out[name] = r
      const at = (n: number) => r.agreement.find((a) => a.at === n)
      const show = (n: number) => (at(n) ? `${(100 * at(n)!.value).toFixed(1)}% agreement` : '-')
      rows.push({ detector: 'extraction (PRADA)', attack: name, at1000: show(Math.min(1000, c.maxQueries)), at3000: show(c.maxQueries), identities: '1', benignFp: fp, note: r.refusedAt === null ? `never refused (${r.answered} answered)` : `403 at query ${r.refusedAt} (${r.answered} answered)` })
    }
    raw.extraction = out
  } finally {
    await gw.close()
  }
}

export const ALARM_MODES = ['refuse', 'degrade', 'delay'] as const
export type AlarmMode = (typeof ALARM_MODES)[number]

/**
 * OARS against the stateful detector (as bundled, model-wide index and cool-down included)
 * under each screening.onAlarm mode: the plain OARS spec, which adapts to 403s, and two that
 * also look for degraded answers, by repeats and by canaries of known label (delay: refused
 * 20 queries after the alarm).
 */
async function alarmModeAttacks(c: AdaptiveContext, rows: AdaptiveRow[], raw: Record<string, unknown>, modes: readonly AlarmMode[]): Promise<void> {
  const digits = c.heldOut.filter((i) => argmax(forward(c.weights, c.data.test.images[i]!).logits) === c.data.test.labels[i]).filter((_, k) => k % 97 === 5).slice(0, c.digits)
  const { images, labels } = c.data.test
  const nesRun = (sigma: () => number, tile: number) => (oracle: ScoreOracle, i: number) =>
    nes(oracle, images[i]!, labels[i]!, { ...NES_BASE, sigma, tile, maxQueries: c.maxQueries, normal: gaussian(seeded(1000 + i)), verify: (z) => argmax(forward(c.weights, z).logits) !== labels[i] })
  const out: Record<string, unknown> = {}
  for (const mode of modes) {
    for (const spec of [oarsSpec(nesRun), oarsSpec(nesRun, { every: 25, kind: 'repeat' }), oarsSpec(nesRun, { every: 25, kind: 'canary' })]) {
      // A fresh gateway per run: the model-wide index must not hold the last run's probes.
      const gw = await evalGateway({ stateful: c.bundled.stateful, cooldownMs: c.bundled.cooldownMs, onAlarm: mode, ...(mode === 'delay' ? { delayQueries: 20 } : {}) })
      try {
        c.log(`adaptive: stateful (onAlarm ${mode}) vs ${spec.name}, ${digits.length} digits`)
        const runs = await runSpec(gw, c, spec, digits)
        out[`${mode}: ${spec.name}`] = runs
        rows.push(blackBoxRow(`stateful, onAlarm ${mode}`, spec, runs, null, '-'))
      } finally {
        await gw.close()
      }
    }
  }
  raw.alarmModes = out
}

export const DETECTORS = ['squeezing', 'stateful', 'extraction'] as const

/** Runs the adaptive attacks on every detector, or on the `only` ones. */
export async function runAdaptive(c: AdaptiveContext, o: { baseline: boolean; only?: readonly (typeof DETECTORS)[number][]; onAlarm?: readonly AlarmMode[] }): Promise<{ rows: AdaptiveRow[]; raw: Record<string, unknown> }> {
  const rows: AdaptiveRow[] = []
  const raw: Record<string, unknown> = { digits: c.digits, whiteBoxDigits: c.whiteBoxDigits, maxQueries: c.maxQueries }
  // --on-alarm: only OARS against the stateful detector, under each mode asked for.
  if (o.onAlarm) {
    await alarmModeAttacks(c, rows, raw, o.onAlarm)
    return { rows, raw }
  }
  const on = (d: (typeof DETECTORS)[number]) => !o.only || o.only.includes(d)
  if (on('squeezing')) await squeezingAttacks(c, rows, raw, squeezerChoice(c, raw))
  if (on('stateful')) await statefulAttacks(c, rows, raw, o.baseline)
  if (on('extraction')) await extractionAttacks(c, rows, raw)
  return { rows, raw }
}

/** The adaptive table, as printed. */
export function adaptiveTable(rows: readonly AdaptiveRow[], maxQueries: number): string[] {
  const header: Record<keyof AdaptiveRow, string> = { detector: 'detector', attack: 'adaptive attack', at1000: `success @${Math.min(1000, maxQueries)} q`, at3000: `success @${maxQueries} q`, identities: 'identities', benignFp: 'benign FP (held-out)', note: 'notes' }
  const keys = Object.keys(header) as (keyof AdaptiveRow)[]
  const widths = keys.map((k) => Math.max(header[k].length, ...rows.map((r) => r[k].length)))
  const line = (cells: string[]) => cells.map((s, i) => s.padEnd(widths[i]!)).join('  ').trimEnd()
  return [line(keys.map((k) => header[k])), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map((r) => line(keys.map((k) => r[k])))]
}
