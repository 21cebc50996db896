// The shipped deployment under attack (`npm run eval:privacy`, part "shipped"): the bundled
// policies exactly as in policies/ (screening on), and the same without the mnist policy's
// `screening:` section (screening off), each behind its own gateway with real mTLS and real
// tokens; the gateway's clock is the evaluation's (bench/privacy/clock.ts), moved forward a
// window (1 h + 1 s) after each hour of queries, so 24 windows are 24 budgets as a day gives
// them. Every caller spends its budget as bench/privacy/session.ts does.
//
// Per gateway:
//   honest callers  the held-out digits, as single-digit requests and as 64-digit batches, each
//                   identity sending what the policy lets it send in an hour;
//   extraction      per identity count k: k identities query, each window, what their budgets
//                   allow, chosen by active selection (bench/privacy/active.ts) from natural
//                   digits (the train and calibration splits: the attacker holds data like the
//                   model's) and Jacobian augmentations; a small CNN (bench/privacy/cnn.ts) is
//                   trained on every label received, continuing after each window;
//                   agreement with the undefended model on the held-out digits, per window;
//   membership      per k: label-only membership inference (bench/privacy/membership.ts) on
//                   equal numbers of members (train split, what the served model learned from:
//                   models/build.ts) and non-members (test and calibration splits), as many
//                   candidates as k identities' 24 windows can query; each window's candidates
//                   are sent in a shuffled order (near-identical queries apart, as an attacker
//                   who knows of the stateful detector would); TPR at 0.1% FPR and AUC over
//                   the candidates whose queries were all answered.

import { CLASSES } from '../../models/mnist/data.ts'
import type { TestGateway } from '../../kit/gateway.ts'
import { jacobianStep, mostUncertain } from './active.ts'
import { cnnOptimizer, cnnPredict, cnnProbabilities, createCnn, trainCnn } from './cnn.ts'
import type { SkewedClock } from './clock.ts'
import { pool2 } from './extraction.ts'
import { auc, labelScore, membershipQueries, NOISE_COPIES, SHIFTS, tprAtFpr } from './membership.ts'
import { permutation, seededRng, type Rng } from './rng.ts'
import { addWindow, emptyTotals, MAX_BATCH, spendWindow, type Item, type PolicyCost, type SessionTarget, type WindowResult } from './session.ts'

export interface ShippedOptions {
  windows: number
  identities: number[]
  /** Snapshot after these windows (1-based), besides the last. */
  snapshots: number[]
  /** Surrogate training per window: example presentations, at most. */
  roundSteps: number
  /** Jacobian step size. */
  lambda: number
  /**
   * Digits per attack request when screening is on. Feature squeezing refuses a request as a
   * whole (one verdict per request), so 64-digit requests of unusual digits are mostly refused
   * while every one is charged; smaller ones lose less per refusal and pay one more charge each.
   */
  screenedBatch: number
  /** Honest single-digit requests and 64-digit batches sent per gateway. */
  honestSingles: number
  honestBatches: number
  seed: number
  log: (s: string) => void
}

export interface Digits {
  images: Float32Array[]
  labels: number[]
}

export interface ShippedData {
  /** The attacker's natural digits (never the held-out ones). */
  pool: Float32Array[]
  /** Held-out digits and the undefended model's labels on them. */
  heldOut: Float32Array[]
  heldOutLabels: number[]
  reference: number[]
  members: Digits
  nonMembers: Digits
}

type Totals = Omit<WindowResult, 'answers'>

export interface Snapshot {
  window: number
  answers: number
  /** ε charged to each identity, summed over the windows so far (all identities: mean and max). */
  epsilonPerIdentity: { mean: number; max: number }
  totals: Totals
}

export interface ExtractionSnapshot extends Snapshot {
  agreement: number
}

export interface MembershipSnapshot extends Snapshot {
  members: number
  nonMembers: number
  tpr: number
  fpr: number
  threshold: number
  auc: number
}

export interface HonestResult {
  pattern: string
  requests: number
  answeredRequests: number
  digits: number
  answeredDigits: number
  correctDigits: number
  identities: number
  refusals: Record<string, number>
  refusalStages: Record<string, number>
}

export interface ShippedRun {
  screening: boolean
  cost: PolicyCost
  honest: HonestResult[]
  extraction: { identities: number; snapshots: ExtractionSnapshot[]; curve: { window: number; answers: number; agreement: number }[] }[]
  membership: { identities: number; snapshots: MembershipSnapshot[] }[]
  /** Wall time per phase. */
  seconds: Record<string, number>
}

const FPR = 0.001

/** What one request costs under the mnist policy, read from the policy itself. */
export function policyCost(policy: Record<string, any>, screening: boolean): PolicyCost {
  const out = policy.output
  if (!out?.noise?.epsilon || !out?.budget?.epsilon) throw new Error('the mnist policy has no noise or no budget: nothing to evaluate against')
  const squeezing = screening ? policy.screening?.featureSqueezing : undefined
  return {
    epsilon: Number(out.noise.epsilon),
    budget: Number(out.budget.epsilon),
    windowMs: Number(out.budget.windowMs),
    verdicts: squeezing && squeezing.mode !== 'observe' ? 1 : 0,
    cooldownMs: screening ? Number(policy.screening?.cooldownMs ?? 0) : 0,
  }
}

/** A queue of items handed out in order. */
function queueOf(items: Item[]): (n: number) => Item[] {
  let next = 0
  return (n) => items.slice(next, (next += n))
}

function snapshotOf(window: number, perIdentity: number[], totals: Totals, answers: number): Snapshot {
  return {
    window,
    answers,
    epsilonPerIdentity: { mean: perIdentity.reduce((a, b) => a + b, 0) / perIdentity.length, max: Math.max(...perIdentity) },
    totals: structuredClone(totals),
  }
}

async function honest(t: SessionTarget, d: ShippedData, o: ShippedOptions): Promise<HonestResult[]> {
  const out: HonestResult[] = []
  for (const [pattern, size, requests] of [['single digits', 1, o.honestSingles], ['batches of 64', 64, o.honestBatches]] as const) {
    const items: Item[] = Array.from({ length: size * requests }, (_, i) => ({ id: i % d.heldOut.length, image: d.heldOut[i % d.heldOut.length]! }))
    const take = queueOf(items)
    const totals = emptyTotals()
    let answered = 0
    let correct = 0
    let identities = 0
    while (totals.requests < requests) {
      const w = await spendWindow(t, `honest-${size}-${identities++}`, take, { maxBatch: size, fixed: true })
      if (w.requests === 0) break
      addWindow(totals, w)
      answered += w.answers.length
      correct += w.answers.filter((a) => a.label === d.heldOutLabels[a.id]).length
    }
    out.push({ pattern, requests: totals.requests, answeredRequests: totals.answeredRequests, digits: totals.requests * size, answeredDigits: answered, correctDigits: correct, identities, refusals: totals.refusals, refusalStages: totals.refusalStages })
  }
  return out
}

const batchOf = (t: SessionTarget, o: ShippedOptions) => (t.cost.verdicts > 0 ? o.screenedBatch : MAX_BATCH)

/** Answers per window one identity can buy (full requests of `batch`, then one to fill), none refused. */
function capacity(c: PolicyCost, batch: number): number {
  const units = Math.floor(c.budget / c.epsilon + 1e-6)
  const perItem = 1 + c.verdicts
  const full = Math.floor(units / (batch * perItem))
  return full * batch + Math.floor((units - full * batch * perItem) / perItem)
}

/** Runs `windows` windows of k identities, each spending its budget on `take`; calls `after` per window. */
async function campaign(t: SessionTarget, name: string, k: number, windows: number, maxBatch: number, take: (w: number) => (n: number) => Item[], after: (w: number, answers: WindowResult['answers'], snap: (answers: number) => Snapshot) => void): Promise<void> {
  const totals = emptyTotals()
  const perIdentity = new Array<number>(k).fill(0)
  for (let w = 1; w <= windows; w++) {
    const source = take(w)
    const got: WindowResult['answers'] = []
    for (let i = 0; i < k; i++) {
      const r = await spendWindow(t, `${name}-${k}-${i}`, source, { maxBatch })
      addWindow(totals, r)
      perIdentity[i]! += r.epsilon
      got.push(...r.answers)
    }
    after(w, got, (n) => snapshotOf(w, perIdentity, totals, n))
    t.clock.advance(t.cost.windowMs + 1000)
  }
}

async function extraction(t: SessionTarget, d: ShippedData, k: number, o: ShippedOptions): Promise<ShippedRun['extraction'][number]> {
  const rng = seededRng(o.seed * 31 + k)
  const m = createCnn(14, 8, CLASSES, seededRng(o.seed + 12))
  const adam = cnnOptimizer(m)
  const xs: Float32Array[] = []
  const targets: Float64Array[] = []
  const test = d.heldOut.map(pool2)
  const queried = new Uint8Array(d.pool.length)
  const need = Math.ceil(capacity(t.cost, batchOf(t, o)) * k * 1.2)
  const answered: { image: Float32Array; label: number }[] = []
  let answers = 0
  const snapshots: ExtractionSnapshot[] = []
  const curve: { window: number; answers: number; agreement: number }[] = []
  // Items: ids below pool.length are natural digits, the rest index `extra`.
  let extra: Float32Array[] = []
  const imageOf = (id: number) => (id < d.pool.length ? d.pool[id]! : extra[id - d.pool.length]!)
  await campaign(
    t,
    'extract',
    k,
    o.windows,
    batchOf(t, o),
    (w) => {
      let ids: number[]
      if (w === 1) {
        ids = permutation(d.pool.length, rng).slice(0, need)
      } else {
        const natural = [...d.pool.keys()].filter((i) => !queried[i])
        // Jacobian steps from a sample of everything answered so far (its newest first, as
        // Papernot et al. grow the set round by round), so the stream never runs dry.
        const half = Math.ceil(need / 2)
        const sample = answered.length <= need ? answered : [...answered.slice(-half), ...permutation(answered.length - half, rng).slice(0, need - half).map((i) => answered[i]!)]
        extra = sample.map((a) => jacobianStep(m, a.image, a.label, o.lambda))
        const candidates = [...natural, ...extra.map((_, j) => d.pool.length + j)]
        const probs = cnnProbabilities(m, candidates.map((id) => pool2(imageOf(id))))
        ids = mostUncertain(probs, need).map((j) => candidates[j]!)
      }
      const items = ids.map((id) => ({ id, image: imageOf(id) }))
      const take = queueOf(items)
      return (n) => {
        const got = take(n)
        for (const it of got) if (it.id < d.pool.length) queried[it.id] = 1
        return got
      }
    },
    (w, got, snap) => {
      const round = got.map((a) => ({ image: imageOf(a.id), label: a.label }))
      answered.push(...round)
      for (const a of round) {
        xs.push(pool2(a.image))
        targets.push(Float64Array.from({ length: CLASSES }, (_, c) => (c === a.label ? 1 : 0)))
      }
      answers += got.length
      if (xs.length > 0) trainCnn(m, xs, targets, { steps: Math.min(o.roundSteps, Math.max(2000, 5 * xs.length)), batchSize: 32, learningRate: 3e-3 }, rng, adam)
      const predicted = cnnPredict(m, test)
      const agreement = xs.length > 0 ? predicted.filter((l, i) => l === d.reference[i]).length / test.length : 0
      curve.push({ window: w, answers, agreement })
      if (w === o.windows || o.snapshots.includes(w)) snapshots.push({ ...snap(answers), agreement })
      o.log(`  extraction, ${k} identities, window ${w}: ${answers} answers, agreement ${(agreement * 100).toFixed(1)}%`)
    },
  )
  return { identities: k, snapshots, curve }
}

interface Candidate {
  member: boolean
  image: Float32Array
  label: number
}

/** `half` members and `half` non-members in a seeded order, and their queries (item id = candidate * perCandidate + query). */
function membershipSet(d: ShippedData, half: number, noisy: number, rng: Rng): { candidates: Candidate[]; items: Item[]; perCandidate: number } {
  const perCandidate = 1 + SHIFTS.length + noisy
  const mem = permutation(d.members.images.length, rng).slice(0, half)
  const non = permutation(d.nonMembers.images.length, rng).slice(0, half)
  const candidates = permutation(2 * half, rng).map((j) =>
    j < half ? { member: true, image: d.members.images[mem[j]!]!, label: d.members.labels[mem[j]!]! } : { member: false, image: d.nonMembers.images[non[j - half]!]!, label: d.nonMembers.labels[non[j - half]!]! },
  )
  const items = candidates.flatMap((c, ci) => membershipQueries(c.image, rng, noisy).map((image, q) => ({ id: ci * perCandidate + q, image })))
  return { candidates, items, perCandidate }
}

/** Scores every candidate with at least half its queries answered (screening refuses whole requests); TPR at 0.1% FPR and AUC. */
export function membershipFigures(candidates: Candidate[], perCandidate: number, labels: ReadonlyMap<number, number>): Omit<MembershipSnapshot, keyof Snapshot> {
  const scores = { member: [] as number[], non: [] as number[] }
  candidates.forEach((c, ci) => {
    const ls: number[] = []
    for (let q = 0; q < perCandidate; q++) {
      const l = labels.get(ci * perCandidate + q)
      if (l !== undefined) ls.push(l)
    }
    if (2 * ls.length >= perCandidate) (c.member ? scores.member : scores.non).push(labelScore(ls, c.label))
  })
  const r = scores.member.length && scores.non.length ? tprAtFpr(scores.member, scores.non, FPR) : { tpr: NaN, fpr: NaN, threshold: NaN }
  return { members: scores.member.length, nonMembers: scores.non.length, ...r, auc: auc(scores.member, scores.non) }
}

/**
 * The same attack on the undefended model (`classify`: a gateway with output protection and
 * screening off), with `half` members and non-members: what the model itself leaks.
 */
export type UndefendedMembership = Omit<MembershipSnapshot, keyof Snapshot> & { answers: number }

export async function membershipUndefended(classify: (images: Float32Array[]) => Promise<number[]>, d: ShippedData, half: number, seed: number): Promise<UndefendedMembership> {
  const { candidates, items, perCandidate } = membershipSet(d, half, NOISE_COPIES, seededRng(seed * 41))
  const got = await classify(items.map((i) => i.image))
  return { ...membershipFigures(candidates, perCandidate, new Map(items.map((it, k) => [it.id, got[k]!]))), answers: items.length }
}

async function membership(t: SessionTarget, d: ShippedData, k: number, o: ShippedOptions): Promise<MembershipSnapshot[]> {
  const rng = seededRng(o.seed * 37 + k)
  const perWindow = capacity(t.cost, batchOf(t, o)) * k
  // Feature squeezing refuses nearly every request that holds a noisy copy: with screening on
  // the attacker sends the shifted copies only.
  const noisy = t.cost.verdicts > 0 ? 0 : NOISE_COPIES
  const per = 1 + SHIFTS.length + noisy
  const half = Math.min(d.members.images.length, d.nonMembers.images.length, Math.ceil((perWindow * o.windows) / per / 2))
  const { candidates, items, perCandidate } = membershipSet(d, half, noisy, rng)
  // Shuffle within each window's worth, so that a candidate's copies are not sent back to back.
  const order: Item[] = []
  for (let s = 0; s < items.length; s += perWindow) {
    const chunk = items.slice(s, s + perWindow)
    order.push(...permutation(chunk.length, rng).map((j) => chunk[j]!))
  }
  const take = queueOf(order)
  const labels = new Map<number, number>()
  let answers = 0
  const snapshots: MembershipSnapshot[] = []
  await campaign(t, 'membership', k, o.windows, batchOf(t, o), () => take, (w, got, snap) => {
    for (const a of got) labels.set(a.id, a.label)
    answers += got.length
    if (w !== o.windows && !o.snapshots.includes(w)) return
    const r = membershipFigures(candidates, perCandidate, labels)
    snapshots.push({ ...snap(answers), ...r })
    o.log(`  membership, ${k} identities, window ${w}: ${r.members}+${r.nonMembers} candidates, TPR ${(r.tpr * 100).toFixed(1)}% at FPR ${(r.fpr * 100).toFixed(2)}%, AUC ${r.auc.toFixed(3)}`)
  })
  return snapshots
}

/** One gateway's part: honest callers, then each attack at each identity count. */
export async function runShipped(gw: TestGateway, clock: SkewedClock, cost: PolicyCost, screening: boolean, d: ShippedData, o: ShippedOptions): Promise<ShippedRun> {
  const t: SessionTarget = { gw, clock, cost }
  const seconds: Record<string, number> = {}
  const timed = async <T>(name: string, f: () => Promise<T>): Promise<T> => {
    const t0 = performance.now()
    const r = await f()
    seconds[name] = Math.round(performance.now() - t0) / 1000
    o.log(`  ${name}: ${seconds[name]} s`)
    return r
  }
  o.log(`shipped policy, screening ${screening ? 'on' : 'off'}: honest callers`)
  const run: ShippedRun = { screening, cost, honest: await timed('honest', () => honest(t, d, o)), extraction: [], membership: [], seconds }
  clock.advance(cost.windowMs + 1000)
  for (const k of o.identities) {
    run.extraction.push(await timed(`extraction x${k}`, () => extraction(t, d, k, o)))
    run.membership.push({ identities: k, snapshots: await timed(`membership x${k}`, () => membership(t, d, k, o)) })
  }
  return run
}
