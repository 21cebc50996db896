// `npm run eval:privacy`: what the output-privacy stage (docs/privacy.md) costs users and what
// it keeps from an attacker, measured through the public API (real mTLS with a dev PKI, dev
// tokens, every query an HTTPS request of up to 64 digits). Three parts (--parts, default
// `shipped`); prints the tables and writes the JSON under bench/results/privacy-*.json.
//
// shipped (bench/privacy/shipped.ts): the bundled policies exactly as in policies/, with
//   screening on, and the same without the mnist policy's `screening:` section; the gateway's
//   clock moved a window on after each hour of queries. Honest callers' answered share (single
//   digits, 64-digit batches); extraction by a CNN surrogate with active selection and
//   label-only membership inference, after 1 and 24 windows, with 1 and 10 identities; the ε
//   charged to each identity; and the membership attack on the undefended model.
//
// settings: each output setting as its own gateway (the mnist policy with only its `output:`
//   section replaced, no screening), one row each:
//   utility     top-1 accuracy on the held-out digits, and agreement with the undefended
//               model (a gateway with output protection off);
//   extraction  surrogates trained on the answers to the first 500 / 2,000 / 10,000 of the
//               attacker's queries (bench/privacy/extraction.ts); agreement with the
//               undefended model on the held-out digits;
//   inversion   reconstructions of each class from NES gradient estimates on the returned
//               score (bench/privacy/inversion.ts); correlation with the class's mean
//               training digit, and how often an evaluator MLP, trained here on the train
//               split (and a noisy copy) with its own seed, reads one as the target class;
//   ε           spent per principal by the extraction (10,000 queries) and inversion attacks.
//   Utility and attacks run under a budget large enough never to interfere (the per-second
//   maximum).
//
// budget: the bundled mnist output policy (its budget included, no screening), one principal
//   per attacker, each attack run until the accountant refuses (429 privacy_budget_exhausted),
//   and benign callers at the documented rate for several hours of a clock moved forward by
//   hand, who must never be refused.
//
// Options (defaults in brackets): --parts shipped,settings,budget [shipped]  --seed N [1]
//   --test-digits N [2999]  --quick (a smoke test of the shipped part: 2 windows, 1 and 2
//   identities, fewer digits; about 15 s)
//   shipped: --windows N [24]  --identities 1,10 (none: honest callers only)  --round-steps N surrogate training per
//   window [25000]  --screened-batch N digits per attack request with screening [8]
//   --honest-singles N [2999]  --honest-batches N [47]  --undefended-candidates N per side [2000]
//   --policy-override FILE a YAML file whose top-level sections (output:, screening:, ...)
//   replace the bundled mnist policy's, in every part: a candidate policy is measured without
//   editing policies/ (bench/privacy/candidates/)
//   settings: --settings a,b [all; a setting is picked by its name's start]
//   --extraction-queries 500,2000,10000  --surrogate-repeats N [1]  --temperatures 1,4
//   --inversion-queries N per reconstruction [2048]  --inversion-restarts N per class [2]
//   budget: --benign-hours N [6]

import { readFileSync } from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { parse } from 'yaml'
import { CLASSES, loadMnist } from '../models/mnist/data.ts'
import { cryptoRandom, type Clock } from '../src/deps.ts'
import { SkewedClock } from './privacy/clock.ts'
import { startGateway, type TestGateway } from '../kit/gateway.ts'
import { repoRoot } from '../kit/paths.ts'
import { writeResults } from './report.ts'
import { mnistClient, type MnistClient } from './privacy/client.ts'
import { attackerQueries, DEFAULT_SURROGATE, extractionAgreement, type ExtractionCell } from './privacy/extraction.ts'
import { shift } from '../models/mnist/train.ts'
import { classMeans, correlation, DEFAULT_INVERSION, invertClass, type InversionOptions, type Oracle } from './privacy/inversion.ts'
import { agreement, argmax, createMlp, predict, train } from './privacy/mlp.ts'
import { seededRng } from './privacy/rng.ts'
import { membershipUndefended, policyCost, runShipped, type ShippedData, type ShippedOptions, type ShippedRun, type UndefendedMembership } from './privacy/shipped.ts'
import { shippedTables } from './privacy/shipped-report.ts'

const { values } = parseArgs({
  options: {
    settings: { type: 'string', default: '' },
    'test-digits': { type: 'string', default: '2999' },
    'extraction-queries': { type: 'string', default: '500,2000,10000' },
    'surrogate-repeats': { type: 'string', default: '1' },
    temperatures: { type: 'string', default: DEFAULT_SURROGATE.temperatures.join(',') },
    'inversion-queries': { type: 'string', default: String(DEFAULT_INVERSION.queriesPerClass) },
    'inversion-restarts': { type: 'string', default: '2' },
    'benign-hours': { type: 'string', default: '6' },
    'budget-experiment': { type: 'string', default: 'true' },
    parts: { type: 'string', default: 'shipped' },
    windows: { type: 'string', default: '24' },
    identities: { type: 'string', default: '1,10' },
    'round-steps': { type: 'string', default: '25000' },
    'honest-singles': { type: 'string', default: '2999' },
    'honest-batches': { type: 'string', default: '47' },
    'screened-batch': { type: 'string', default: '8' },
    'undefended-candidates': { type: 'string', default: '2000' },
    'policy-override': { type: 'string', default: '' },
    quick: { type: 'boolean', default: false },
    seed: { type: 'string', default: '1' },
  },
})
if (values.quick) Object.assign(values, { windows: '2', identities: '1,2', 'round-steps': '5000', 'honest-singles': '100', 'honest-batches': '4', 'test-digits': '500', 'undefended-candidates': '200' })
const parts = new Set(values.parts!.split(',').map((p) => p.trim()))
for (const p of parts) if (!['shipped', 'settings', 'budget'].includes(p)) throw new Error(`--parts ${values.parts}: unknown part "${p}"; known: shipped, settings, budget`)
const seed = Number(values.seed)
const sizes = values['extraction-queries']!.split(',').map(Number)
const surrogate = { ...DEFAULT_SURROGATE, repeats: Number(values['surrogate-repeats']), temperatures: values.temperatures!.split(',').map(Number), seed: seed + 6 }
const inversion: InversionOptions = { ...DEFAULT_INVERSION, queriesPerClass: Number(values['inversion-queries']) }
const restarts = Number(values['inversion-restarts'])
const log = (s: string) => process.stderr.write(`[eval:privacy] ${s}\n`)

// ---- the settings --------------------------------------------------------------------------

const overrideFile = values['policy-override'] || null
const bundledPolicy = withOverride(parse(readFileSync(path.join(repoRoot, 'policies/mnist.yaml'), 'utf8')) as Record<string, any>, overrideFile)
const policyLabel = overrideFile ? `policies/mnist.yaml with the sections of ${overrideFile} over it (${describeOutput(bundledPolicy)})` : `policies/mnist.yaml as shipped (${describeOutput(bundledPolicy)})`

/** The bundled policy with each top-level section the override file names replaced by the file's. */
function withOverride(policy: Record<string, any>, file: string | null): Record<string, any> {
  if (!file) return policy
  const override = parse(readFileSync(path.resolve(file), 'utf8')) as unknown
  if (!override || typeof override !== 'object' || Array.isArray(override)) throw new Error(`--policy-override ${file}: expected a YAML mapping of policy sections (for example output:), got ${JSON.stringify(override)}`)
  return { ...policy, ...(override as Record<string, unknown>) }
}

function describeOutput(policy: Record<string, any>): string {
  const o = policy.output ?? {}
  return `mode ${o.mode}, ${o.noise?.mechanism ?? 'none'} ε ${o.noise?.epsilon ?? '-'} per answer, budget ε ${o.budget?.epsilon ?? '-'} per ${Number(o.budget?.windowMs) / 60_000} min`
}
const { screening: _screening, ...mnistPolicy } = bundledPolicy
/** The largest budget the schema allows, per second: never binding at this evaluation's rate. */
const NO_LIMIT = { epsilon: 100_000, windowMs: 1000 }
const laplace = (epsilon: number) => ({ mechanism: 'laplace', epsilon })

const SETTINGS: { name: string; output: Record<string, unknown> }[] = [
  { name: 'full scores', output: { mode: 'scores', roundDecimals: 9 } },
  { name: 'scores, 2 decimals', output: { mode: 'scores', roundDecimals: 2 } },
  { name: 'scores, 1 decimal', output: { mode: 'scores', roundDecimals: 1 } },
  { name: 'label only', output: { mode: 'label' } },
  ...[0.1, 1, 10].flatMap((e) => [
    { name: `DP ε=${e}`, output: { mode: 'scores', roundDecimals: 9, noise: laplace(e), budget: NO_LIMIT } },
    { name: `DP ε=${e}, 2 decimals`, output: { mode: 'scores', roundDecimals: 2, noise: laplace(e), budget: NO_LIMIT } },
  ]),
  { name: 'bundled default', output: { ...bundledPolicy.output, budget: NO_LIMIT } },
]
const wanted = values.settings ? values.settings.split(',').map((s) => s.trim()) : null
const settings = wanted ? SETTINGS.filter((s) => wanted.some((w) => s.name.startsWith(w))) : SETTINGS
if (settings.length === 0) throw new Error(`no setting matches --settings ${values.settings}; known: ${SETTINGS.map((s) => s.name).join(' | ')}`)

// ---- data, reference and evaluator ---------------------------------------------------------

const data = loadMnist()
const testImages = data.test.images.slice(0, Number(values['test-digits']))
const testLabels = data.test.labels.slice(0, testImages.length)
const queries = attackerQueries(data.train.images, Math.max(...sizes), seededRng(seed))
const means = classMeans(data.train.images, data.train.labels, CLASSES)

async function gateway(output: Record<string, unknown> | null, deps?: { clock: Clock }): Promise<TestGateway> {
  return startGateway({
    models: ['mnist'],
    policies: { mnist: output ? { ...mnistPolicy, output } : mnistPolicy },
    // The per-client limit before the token would turn the attackers' bursts into 429s that no
    // budget accounts for: off here, so the figures are the output protection's.
    config: { clientLimits: { enabled: false }, ...(output ? {} : { outputPrivacy: { enabled: false } }) },
    ...(deps ? { deps: { clock: deps.clock, random: cryptoRandom } } : {}),
  })
}

function client(gw: TestGateway, sub: string, concurrency = 4, waitOnBudget = false): MnistClient {
  return mnistClient({ url: gw.url, dispatcher: gw.agent, token: () => gw.token({ sub, ttlSeconds: 3600 }), concurrency, waitOnBudget })
}

const started = performance.now()
log('undefended reference (output protection off)')
const reference = await (async () => {
  const gw = await gateway(null)
  try {
    const a = await client(gw, 'reference').classify(testImages)
    return a.rows.map((r) => argmax(r!))
  } finally {
    await gw.close()
  }
})()
const undefendedAccuracy = reference.filter((l, i) => l === testLabels[i]).length / testLabels.length

// The evaluator judges reconstructions, which are noisier than digits: it learns from the
// train split plus a copy shifted by up to a pixel with Gaussian noise (σ up to 0.3), so that
// it reads shapes rather than speckle (without the copy it reads a third of label-only
// reconstructions, which are mostly speckle, as their target).
const evaluator = !parts.has('settings') ? null : (() => {
  log('evaluator: MLP on the train split and a noisy copy, its own seed')
  const rng = seededRng(seed + 101)
  const noisy = data.train.images.map((x) => {
    const img = shift(x, rng.int(3) - 1, rng.int(3) - 1)
    const sigma = 0.3 * rng.uniform()
    for (let i = 0; i < img.length; i++) img[i] = Math.min(1, Math.max(0, img[i]! + sigma * rng.normal()))
    return img
  })
  const labels = [...data.train.labels, ...data.train.labels].map((l) => Float64Array.from({ length: CLASSES }, (_, c) => (c === l ? 1 : 0)))
  const m = createMlp(data.train.images[0]!.length, 128, CLASSES, seededRng(seed + 99))
  return train(m, [...data.train.images, ...noisy], labels, { hidden: 128, epochs: 10, batchSize: 32, learningRate: 1e-3, temperature: 1, weightDecay: 1e-4 }, seededRng(seed + 100))
})()
const evaluatorAccuracy = evaluator ? agreement(evaluator, testImages, testLabels) : NaN
const meansReadAsTheirClass = evaluator ? means.filter((m, c) => predict(evaluator, m) === c).length : NaN

// ---- one setting ---------------------------------------------------------------------------

interface SettingResult {
  name: string
  output: Record<string, unknown>
  accuracy: number
  agreementWithUndefended: number
  extraction: ExtractionCell[]
  inversion: { success: number; similarity: number; perClass: { target: number; evaluatorSays: number; similarity: number; finalScore: number | null }[] }
  epsilonSpent: { extraction: number; inversion: number }
  seconds: number
  phaseSeconds: Record<string, number>
}

function oracleOf(c: MnistClient, spent: { epsilon: number }): Oracle {
  return async (images) => {
    const a = await c.classify(images)
    spent.epsilon += a.epsilonCost
    return { rows: a.rows, refused: a.refused !== null }
  }
}

async function runSetting(s: (typeof SETTINGS)[number]): Promise<SettingResult> {
  const t0 = performance.now()
  const phase: Record<string, number> = {}
  const lap = (name: string, since: number) => ((phase[name] = Math.round(performance.now() - since) / 1000), performance.now())
  const gw = await gateway(s.output)
  try {
    let t = performance.now()
    const util = await client(gw, 'benign', 4, true).classify(testImages)
    if (util.refused) throw new Error(`${s.name}: utility queries refused: ${JSON.stringify(util.refused)}`)
    const top1 = util.rows.map((r) => argmax(r!))
    const accuracy = top1.filter((l, i) => l === testLabels[i]).length / testLabels.length
    const agreementWithUndefended = top1.filter((l, i) => l === reference[i]).length / reference.length

    t = lap('utility', t)
    const ex = await client(gw, 'extractor', 4, true).classify(queries)
    if (ex.refused) throw new Error(`${s.name}: extraction queries refused: ${JSON.stringify(ex.refused)}`)
    t = lap('extraction queries', t)
    const extraction = extractionAgreement(queries, ex.rows as Float64Array[], sizes, testImages, reference, surrogate)
    t = lap('surrogate training', t)

    const inverter = client(gw, 'inverter', 1, true)
    const spent = { epsilon: 0 }
    const oracle = oracleOf(inverter, spent)
    // Every (restart, class) runs at once: each is a chain of one-batch steps.
    const recon = await Promise.all(Array.from({ length: restarts * CLASSES }, (_, k) => invertClass(oracle, k % CLASSES, inversion, seededRng(seed * 7919 + k))))
    lap('inversion', t)
    const perClass = recon.map((r) => ({ target: r.target, evaluatorSays: predict(evaluator!, r.image), similarity: correlation(r.image, means[r.target]!), finalScore: r.finalScore }))
    return {
      name: s.name,
      output: s.output,
      accuracy,
      agreementWithUndefended,
      extraction,
      inversion: {
        success: perClass.filter((p) => p.evaluatorSays === p.target).length / perClass.length,
        similarity: perClass.reduce((a, p) => a + p.similarity, 0) / perClass.length,
        perClass,
      },
      epsilonSpent: { extraction: ex.epsilonCost, inversion: spent.epsilon },
      seconds: (performance.now() - t0) / 1000,
      phaseSeconds: phase,
    }
  } finally {
    await gw.close()
  }
}

const results: SettingResult[] = []
for (const s of parts.has('settings') ? settings : []) {
  log(`setting: ${s.name}`)
  const r = await runSetting(s)
  results.push(r)
  log(`  ${r.seconds.toFixed(0)} s ${JSON.stringify(r.phaseSeconds)}: top-1 ${(r.accuracy * 100).toFixed(1)}%, extraction ${r.extraction.map((e) => (e.agreement * 100).toFixed(1)).join('/')}%, inversion ${(r.inversion.success * 100).toFixed(0)}%`)
}

// ---- the budget experiment -----------------------------------------------------------------

interface BudgetResult {
  policy: Record<string, unknown>
  answersPerWindow: number
  attacks: { name: string; planned: number; answered: number; epsilonSpent: number; refusal: { status: number; code: string; retryAfter: string | undefined } | null }[]
  benign: { pattern: string; hours: number; answers: number; refusals: Record<string, number>; maxEpsilonSpent: number }[]
}

async function budgetExperiment(): Promise<BudgetResult | null> {
  const policy = bundledPolicy.output as Record<string, any> | undefined
  if (!policy?.noise || policy.noise.mechanism === 'none') {
    log('budget experiment skipped: the bundled mnist policy adds no noise, so nothing is charged')
    return null
  }
  const perAnswer = Number(policy.noise.epsilon)
  const budget = { epsilon: 10, windowMs: 3_600_000, ...policy.budget }
  const answersPerWindow = Math.floor(budget.epsilon / perAnswer + 1e-9)
  const clock = new SkewedClock()
  const gw = await gateway(policy, { clock })
  try {
    const attacks: BudgetResult['attacks'] = []
    for (const n of sizes) {
      // Each extraction size as its own principal, from an unspent budget.
      const c = client(gw, `extractor-${n}`)
      const a = await c.classify(queries.slice(0, n))
      attacks.push({ name: `extraction, ${n} queries`, planned: n, answered: c.answered, epsilonSpent: a.epsilonCost, refusal: a.refused })
    }
    const spent = { epsilon: 0 }
    const c = client(gw, 'inverter', 1)
    let refusal: BudgetResult['attacks'][number]['refusal'] = null
    const oracle: Oracle = async (images) => {
      const a = await c.classify(images)
      spent.epsilon += a.epsilonCost
      refusal ??= a.refused
      return { rows: a.rows, refused: a.refused !== null }
    }
    for (let k = 0; k < CLASSES && !refusal; k++) await invertClass(oracle, k, inversion, seededRng(seed * 7919 + k))
    attacks.push({ name: `inversion, ${CLASSES} classes x ${inversion.queriesPerClass + 1} queries`, planned: CLASSES * (inversion.queriesPerClass + 1), answered: c.answered, epsilonSpent: spent.epsilon, refusal })

    // Benign callers at the documented rate (answersPerWindow per window), two patterns.
    const benign: BudgetResult['benign'] = []
    const hours = Number(values['benign-hours'])
    const windows = Math.max(1, Math.round((hours * 3_600_000) / budget.windowMs))
    const patterns = [
      { pattern: `steady: ${answersPerWindow} answers per window as ${answersPerWindow} single-digit requests, evenly spaced`, perRequest: 1, requests: answersPerWindow },
      { pattern: `bursty: ${answersPerWindow} answers at the start of each window, in requests of up to 64`, perRequest: 64, requests: Math.ceil(answersPerWindow / 64) },
    ]
    for (const p of patterns) {
      const who = client(gw, `benign-${p.perRequest}`, 1)
      let answers = 0
      const refusals: Record<string, number> = {}
      let maxEpsilonSpent = 0
      let digit = 0
      for (let w = 0; w < windows; w++) {
        let left = answersPerWindow
        const gap = p.perRequest === 1 ? Math.floor(budget.windowMs / p.requests) : 0
        for (let r = 0; r < p.requests; r++) {
          const n = Math.min(p.perRequest, left)
          left -= n
          const batch = Array.from({ length: n }, () => testImages[digit++ % testImages.length]!)
          const a = await who.classify(batch)
          if (a.refused) refusals[a.refused.code] = (refusals[a.refused.code] ?? 0) + 1
          else answers += n
          maxEpsilonSpent = Math.max(maxEpsilonSpent, Number(a.parameters.privacy_epsilon_spent ?? 0))
          clock.advance(gap)
        }
        clock.advance(budget.windowMs - gap * p.requests)
      }
      benign.push({ pattern: p.pattern, hours, answers, refusals, maxEpsilonSpent })
    }
    return { policy, answersPerWindow, attacks, benign }
  } finally {
    await gw.close()
  }
}

const budgetResult = parts.has('budget') && values['budget-experiment'] === 'true' ? (log('budget experiment'), await budgetExperiment()) : null

// ---- the shipped deployment ------------------------------------------------------------------

async function shippedPart(): Promise<{ runs: ShippedRun[]; undefended: UndefendedMembership }> {
  const o: ShippedOptions = {
    windows: Number(values.windows),
    identities: values.identities === 'none' ? [] : values.identities!.split(',').map(Number),
    snapshots: [1],
    roundSteps: Number(values['round-steps']),
    lambda: 0.1,
    screenedBatch: Number(values['screened-batch']),
    honestSingles: Number(values['honest-singles']),
    honestBatches: Number(values['honest-batches']),
    seed,
    log,
  }
  const nonMembers = { images: [...data.test.images, ...data.calibration.images], labels: [...data.test.labels, ...data.calibration.labels] }
  const d: ShippedData = {
    pool: [...data.train.images, ...data.calibration.images],
    heldOut: testImages,
    heldOutLabels: testLabels,
    reference,
    members: { images: data.train.images, labels: data.train.labels },
    nonMembers,
  }
  log('membership inference on the undefended model (output protection and screening off)')
  const undefended = await (async () => {
    const gw = await gateway(null)
    try {
      const c = client(gw, 'membership-undefended', 4, true)
      const half = Math.min(Number(values['undefended-candidates']), d.members.images.length, d.nonMembers.images.length)
      return await membershipUndefended(async (images) => (await c.classify(images)).rows.map((r) => argmax(r!)), d, half, seed)
    } finally {
      await gw.close()
    }
  })()
  const runs: ShippedRun[] = []
  for (const screening of [false, true]) {
    const clock = new SkewedClock()
    // The policies exactly as in policies/ (or with the override's sections); screening off: the
    // mnist policy without its `screening:` section.
    const gw = await startGateway({
      models: ['mnist'],
      ...(screening ? (overrideFile ? { policies: { mnist: bundledPolicy } } : {}) : { policies: { mnist: mnistPolicy } }),
      config: { clientLimits: { enabled: false } },
      deps: { clock, random: cryptoRandom },
    })
    try {
      runs.push(await runShipped(gw, clock, policyCost(bundledPolicy, screening), screening, d, o))
    } finally {
      await gw.close()
    }
  }
  return { runs, undefended }
}
const shipped = parts.has('shipped') ? await shippedPart() : null

// ---- report ----------------------------------------------------------------------------------

const pct = (x: number) => (x * 100).toFixed(1)
const header = ['setting', 'top-1 acc %', 'agree undef. %', ...sizes.map((n) => `extract@${n} %`), 'inversion success %', 'inversion similarity', 'ε extraction', 'ε inversion']
const rows: string[][] = [
  ['undefended (output protection off)', pct(undefendedAccuracy), '100.0', ...sizes.map(() => ''), '', '', '', ''],
  ...results.map((r) => [
    r.name,
    pct(r.accuracy),
    pct(r.agreementWithUndefended),
    ...sizes.map((n) => {
      const e = r.extraction.find((x) => x.queries === n)!
      return pct(e.agreement)
    }),
    pct(r.inversion.success),
    r.inversion.similarity.toFixed(3),
    r.epsilonSpent.extraction ? String(Math.round(r.epsilonSpent.extraction)) : '0',
    r.epsilonSpent.inversion ? String(Math.round(r.epsilonSpent.inversion)) : '0',
  ]),
]
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
const line = (c: string[]) => c.map((x, i) => (i === 0 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join('  ')
const out: string[] = [`mnist, ${testImages.length} held-out digits; undefended top-1 ${pct(undefendedAccuracy)}%`]
if (shipped) out.push('', ...shippedTables(shipped.runs, { windowMs: Number(bundledPolicy.output.budget.windowMs), heldOut: testImages.length, undefended: shipped.undefended, policy: policyLabel }))
if (results.length > 0) {
  out.push(
    '',
    `output settings: evaluator MLP top-1 ${pct(evaluatorAccuracy)}% (reads ${meansReadAsTheirClass}/10 class means as their class)`,
    `extraction: MLP surrogate, best of temperatures ${surrogate.temperatures.join('/')}, ${surrogate.repeats} seed(s) per cell; inversion: ${inversion.queriesPerClass + 1} queries per reconstruction, ${restarts} per class`,
    '',
    line(header),
    widths.map((w) => '-'.repeat(w)).join('  '),
    ...rows.map(line),
  )
}
if (budgetResult) {
  const p = budgetResult.policy as Record<string, any>
  out.push('', `budget experiment: bundled mnist policy (mode ${p.mode}, ${p.noise.mechanism} ε=${p.noise.epsilon} per answer, budget ε=${p.budget.epsilon} per ${p.budget.windowMs / 60_000} min = ${budgetResult.answersPerWindow} answers per caller per window)`)
  for (const a of budgetResult.attacks) {
    const stop = a.refusal ? `stopped after ${a.answered} of ${a.planned} answers: ${a.refusal.status} ${a.refusal.code}, Retry-After ${a.refusal.retryAfter} s` : `completed (${a.answered} answers)`
    out.push(`  ${a.name.padEnd(38)} ε spent ${String(Math.round(a.epsilonSpent)).padStart(6)}  ${stop}`)
  }
  for (const b of budgetResult.benign) {
    const refused = Object.entries(b.refusals).map(([code, n]) => `${n} ${code}`).join(', ') || 'none'
    out.push(`  benign, ${b.hours} h, ${b.pattern}: ${b.answers} answers, refused: ${refused}, at most ε ${b.maxEpsilonSpent} spent in a window`)
  }
}
const cpu = process.cpuUsage()
// CPU time beside wall time: on a shared machine the wall time says more about the neighbours.
out.push('', `took ${((performance.now() - started) / 1000).toFixed(0)} s (this process's CPU: ${((cpu.user + cpu.system) / 1e6).toFixed(0)} s)`)
console.log(out.join('\n'))
const file = writeResults('privacy', {
  startedAt: new Date().toISOString(),
  node: process.version,
  options: { parts: [...parts], policy: policyLabel, seed, sizes, surrogate, inversion, restarts, testDigits: testImages.length, windows: Number(values.windows), identities: values.identities, roundSteps: Number(values['round-steps']), quick: values.quick },
  undefendedAccuracy,
  evaluator: { accuracy: evaluatorAccuracy, meansReadAsTheirClass },
  settings: results,
  budget: budgetResult,
  shipped,
})
console.log(`\nresults: ${file}`)
