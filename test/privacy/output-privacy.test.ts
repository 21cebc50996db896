import t from 'tap'
import { createHash } from 'node:crypto'
import { Value } from '@sinclair/typebox/value'
import { OutputPolicy } from '../../src/config/output-policy.ts'
import { BulwarkError } from '../../src/errors.ts'
import type { Tensor } from '../../src/inference/tensor.ts'
import { MemoryAccountant, type PrivacyAccountant } from '../../src/privacy/accountant.ts'
import { compileOutputPolicy, createOutputPrivacyLinks, defaultOutputPolicy, privacyKey } from '../../src/stages/output-privacy.ts'
import { fakeContext } from '../helpers/context.ts'
import { callerKeyOf, type Principal, type RequestContext, type Stage } from '../../src/types.ts'
import { fakeClock, seededRandom } from './helpers.ts'

const HOUR = 3_600_000

function policy(partial: unknown): OutputPolicy {
  return Object.freeze(Value.Default(OutputPolicy, structuredClone(partial)) as OutputPolicy)
}

function probs(rows: number[][], name = 'probabilities'): Tensor {
  return { name, datatype: 'FP32', shape: [rows.length, rows[0]!.length], data: Float32Array.from(rows.flat()) }
}

const alice: Principal = { subject: 'alice', issuer: 'https://issuer.test', scopes: [], claims: {}, expiresAtMs: 0 }

function makeCtx(outputs: Tensor[], over: Partial<RequestContext> = {}, requested: string[] = []): RequestContext {
  return fakeContext({
    deadlineMs: 1e9,
    identity: { id: 'spiffe://test/ns/default/sa/client', kind: 'spiffe' },
    principal: alice,
    request: { parameters: {}, inputs: [], outputs: requested.map((name) => ({ name, binary: false })), binaryOutputs: false, batchSize: 1 },
    result: { modelName: 'mnist', modelVersion: '1', outputs, parameters: {} },
    ...over,
  })
}

function setup(p: OutputPolicy | undefined, accountant?: PrivacyAccountant) {
  const clock = fakeClock()
  const acct = accountant ?? new MemoryAccountant({ clock })
  const compiled = compileOutputPolicy(p ?? defaultOutputPolicy)
  const links = createOutputPrivacyLinks(() => compiled, { accountant: acct, random: seededRandom('stage') })
  // The two links as the chain runs them when no screening sits between them.
  const stage = { run: async (ctx: RequestContext) => { await links.privacyCharge.run(ctx); await links.outputPrivacy.run(ctx) } }
  return { clock, acct, stage, links }
}

/** The error the stage threw, or null. */
const attempt = (stage: Pick<Stage, 'run'>, ctx: RequestContext): Promise<unknown> => Promise.resolve().then(() => stage.run(ctx)).then(() => null, (e: unknown) => e)

const out = (ctx: RequestContext, name = 'probabilities') => Array.from(ctx.result!.outputs.find((o) => o.name === name)!.data as Float32Array)
const f32 = (xs: number[]) => xs.map(Math.fround)

t.test('two links, privacy-charge and output-privacy: body phase, infer only', async (t) => {
  const { links } = setup(undefined)
  t.same([links.privacyCharge.name, links.outputPrivacy.name], ['privacy-charge', 'output-privacy'])
  for (const link of [links.privacyCharge, links.outputPrivacy]) {
    t.equal(link.phase, 'body')
    t.same(link.verbs, ['infer'])
  }
})

t.test('with no policy the defaults apply: label only, no noise, other outputs withheld', async (t) => {
  const { stage } = setup(undefined)
  const ctx = makeCtx([probs([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]), probs([[1, 2, 3], [4, 5, 6]], 'logits')])
  await stage.run(ctx)
  t.same(ctx.result!.outputs.map((o) => o.name), ['probabilities'], 'logits withheld')
  t.same(out(ctx), [0, 1, 0, 1, 0, 0])
  t.same(ctx.result!.outputs[0]!.shape, [2, 3], 'shape and datatype as the model metadata says')
  t.equal(ctx.result!.outputs[0]!.datatype, 'FP32')
  t.same(ctx.result!.parameters, { output_mode: 'label' })
  t.equal(ctx.privacy, null, 'no noise, no accounting')
})

t.test('scores mode rounds last; top-k keeps the k best', async (t) => {
  const scores = setup(policy({ mode: 'scores', roundDecimals: 2 }))
  const a = makeCtx([probs([[0.1234, 0.8766, 0]])])
  await scores.stage.run(a)
  t.same(out(a), f32([0.12, 0.88, 0]))
  const topk = setup(policy({ mode: 'top-k', topK: 2, roundDecimals: 1 }))
  const b = makeCtx([probs([[0.1, 0.5, 0.3, 0.1]])])
  await topk.stage.run(b)
  t.same(out(b), f32([0, 0.5, 0.3, 0]))
})

t.test('an output the client asks for by name but the policy withholds is refused; passThrough releases it', async (t) => {
  const { stage } = setup(policy({ mode: 'scores' }))
  const ctx = makeCtx([probs([[0.5, 0.5]]), probs([[1, 2]], 'logits')], {}, ['logits'])
  const err = await attempt(stage, ctx)
  t.ok(err instanceof BulwarkError && err.code === 'forbidden')
  const open = setup(policy({ mode: 'scores', passThrough: ['logits'] }))
  const ctx2 = makeCtx([probs([[0.5, 0.5]]), probs([[1, 2]], 'logits')], {}, ['logits'])
  await open.stage.run(ctx2)
  t.same(out(ctx2, 'logits'), [1, 2], 'passed through untouched')
})

t.test('a pass-through-only answer claims no output_mode (ocr-cls said "label" over raw scores)', async (t) => {
  const { stage } = setup(policy({ outputs: [], passThrough: ['softmax_0.tmp_0'] }))
  const ctx = makeCtx([probs([[0.2, 0.8]], 'softmax_0.tmp_0')])
  await stage.run(ctx)
  t.same(out(ctx, 'softmax_0.tmp_0'), f32([0.2, 0.8]), 'released as the model produced it')
  t.same(ctx.result!.parameters, {}, 'no output_mode: nothing was protected')
})

t.test('Laplace answers are charged per row, reported, and refused with Retry-After once the budget is spent', async (t) => {
  const p = policy({ mode: 'scores', roundDecimals: 9, noise: { mechanism: 'laplace', epsilon: 1 }, budget: { epsilon: 3, windowMs: HOUR } })
  const { stage, clock } = setup(p)
  const ctx = makeCtx([probs([[0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])])
  await stage.run(ctx)
  t.same(ctx.result!.parameters, {
    output_mode: 'scores',
    privacy_mechanism: 'laplace',
    privacy_epsilon_cost: 2,
    privacy_epsilon_spent: 2,
    privacy_epsilon_left: 1,
    privacy_window_ms: HOUR,
  })
  t.same(ctx.privacy, { epsilonSpent: 2, epsilonLeft: 1 })
  const released = out(ctx)
  t.ok(released.every((v) => v >= 0 && v <= 1), 'clamped to [0, 1]')
  for (const row of [released.slice(0, 3), released.slice(3)]) t.ok(Math.abs(row.reduce((a, b) => a + b, 0) - 1) < 1e-6, 'renormalised')

  clock.advance(60_000)
  const again = makeCtx([probs([[0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])])
  const before = Array.from(again.result!.outputs[0]!.data as Float32Array)
  const err = await attempt(stage, again)
  t.ok(err instanceof BulwarkError && err.code === 'privacy_budget_exhausted', 'second batch of two does not fit')
  t.equal((err as BulwarkError).status, 429)
  t.equal((err as BulwarkError).headers['Retry-After'], String((HOUR - 60_000) / 1000), 'Retry-After: when the first charge frees')
  t.same(again.privacy, { epsilonSpent: 2, epsilonLeft: 1 }, 'the refusal is accounted for the audit record')
  t.same(Array.from(again.result!.outputs[0]!.data as Float32Array), before, 'nothing noisy was released into the result')

  const one = makeCtx([probs([[0.9, 0.05, 0.05]])])
  await stage.run(one)
  t.equal(one.privacy!.epsilonLeft, 0, 'a single row still fits')

  clock.advance(HOUR - 60_000)
  const later = makeCtx([probs([[0.9, 0.05, 0.05], [0.2, 0.3, 0.5]])])
  await stage.run(later)
  t.equal(later.privacy!.epsilonSpent, 3, 'after the window the first batch no longer counts')
})

t.test('a request costing more than the whole budget is a 400, not a 429', async (t) => {
  const { stage } = setup(policy({ noise: { mechanism: 'laplace', epsilon: 2 }, budget: { epsilon: 5 } }))
  const err = await attempt(stage, makeCtx([probs([[1, 0], [1, 0], [1, 0]])]))
  t.ok(err instanceof BulwarkError && err.code === 'batch_too_large')
})

t.test('Gaussian answers report δ and compose in zCDP', async (t) => {
  const { stage } = setup(policy({ mode: 'label', noise: { mechanism: 'gaussian', epsilon: 1, delta: 1e-7 }, budget: { epsilon: 4, delta: 1e-6 } }))
  let answered = 0
  for (;;) {
    const ctx = makeCtx([probs([[0.8, 0.1, 0.1]])])
    try {
      await stage.run(ctx)
    } catch (err) {
      t.equal((err as BulwarkError).code, 'privacy_budget_exhausted')
      break
    }
    answered++
    t.equal(ctx.result!.parameters.privacy_delta, 1e-6)
    t.equal(ctx.privacy!.deltaSpent, 1e-6)
    if (!out(ctx).every((v) => v === 0 || v === 1)) t.fail('label answers are one-hot')
  }
  t.ok(answered > 4, `${answered} answers at ε = 1 within ε = 4 (basic composition would allow 4)`)
})

t.test('budgets are per principal (issuer, subject, workload) and per model', async (t) => {
  const p = policy({ noise: { mechanism: 'laplace', epsilon: 1 }, budget: { epsilon: 1 } })
  const { stage } = setup(p)
  const run = (over: Partial<RequestContext>) =>
    attempt(stage, makeCtx([probs([[0.5, 0.5]])], over)).then((e) => (e === null ? 'ok' : (e as BulwarkError).code))
  t.equal(await run({}), 'ok')
  t.equal(await run({}), 'privacy_budget_exhausted', 'same caller, same model')
  t.equal(await run({ principal: { ...alice, subject: 'bob' } }), 'ok', 'another subject')
  t.equal(await run({ principal: { ...alice, issuer: 'https://other.test' } }), 'ok', 'another issuer')
  t.equal(await run({ identity: { id: 'spiffe://test/other', kind: 'spiffe' } }), 'ok', 'another workload')
  t.equal(await run({ target: { model: 'ocr-cls', version: null, verb: 'infer' } }), 'ok', 'another model')
  t.equal(await run({ principal: null }), 'ok', 'front door off: the workload identity alone')
  t.equal(await run({ principal: null }), 'privacy_budget_exhausted')
  t.equal(await run({ principal: null, identity: null }), 'ok', 'nothing known: anonymous')
  t.equal(await run({ principal: null, identity: null }), 'privacy_budget_exhausted', 'all anonymous callers share one budget')
  const key = callerKeyOf({ principal: alice, identity: null })
  t.not(privacyKey(key, 'mnist'), privacyKey(key, 'mnist2'))
  t.match(privacyKey(key, 'mnist'), /^[0-9a-f]{64}$/, 'keys are hashes: no identities on disk')
  // Journals written before the key moved to the context hashed this text: budgets carry over.
  const before = createHash('sha256').update(JSON.stringify(['bulwark-privacy-key/1', 'mnist', 'jwt', alice.issuer, alice.subject, ''])).digest('hex')
  t.equal(privacyKey(key, 'mnist'), before, 'the same hash as before for the same caller')
})

t.test('nothing is released when the charge cannot be made durable', async (t) => {
  const failing: PrivacyAccountant = {
    charge: async () => {
      throw new Error('disk full')
    },
    balance: async () => {
      throw new Error('disk full')
    },
    close: async () => {},
  }
  const { stage } = setup(policy({ mode: 'scores', noise: { mechanism: 'laplace', epsilon: 1 } }), failing)
  const ctx = makeCtx([probs([[0.25, 0.75]])])
  const err = await attempt(stage, ctx)
  t.ok(err instanceof BulwarkError && err.code === 'internal')
  t.same(out(ctx), f32([0.25, 0.75]), 'the result still holds the unreleased model output; the route sends the error instead')
})

t.test('a protected output that is not a float score tensor is a policy error, failed closed', async (t) => {
  const { stage } = setup(policy({ mode: 'scores', outputs: ['ids'] }))
  const ids: Tensor = { name: 'ids', datatype: 'INT64', shape: [1, 2], data: BigInt64Array.from([1n, 2n]) }
  const err = await attempt(stage, makeCtx([ids]))
  t.ok(err instanceof BulwarkError && err.code === 'internal')
})

t.test('policy defaults and cross-field checks', async (t) => {
  t.same(Value.Default(OutputPolicy, {}), {
    mode: 'label',
    topK: 1,
    roundDecimals: 2,
    outputs: ['probabilities'],
    passThrough: [],
    noise: { mechanism: 'none', epsilon: 1, delta: 1e-6, granularityBits: 16 },
    budget: { epsilon: 10, delta: 1e-6, windowMs: HOUR },
  })
  t.throws(() => compileOutputPolicy(policy({ noise: { mechanism: 'laplace', epsilon: 5 }, budget: { epsilon: 2 } })), /budget\/epsilon/)
  t.throws(() => compileOutputPolicy(policy({ outputs: ['a'], passThrough: ['a'] })), /passThrough/)
  t.throws(() => compileOutputPolicy(policy({ mode: 'everything' })), /mode/)
})

t.test('privacy-charge pays for what later links read: the screened output\'s rows of the caller\'s items, and each verdict', async (t) => {
  const p = policy({ mode: 'label', passThrough: ['logits'], noise: { mechanism: 'laplace', epsilon: 1 }, budget: { epsilon: 10 } })
  const { links } = setup(p)
  // As screen-variants leaves it: one item and its two squeezed variants, every output; the
  // caller asked for logits only, and feature squeezing enforces (one verdict).
  const ctx = makeCtx([probs([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]]), probs([[1, 2], [3, 4], [5, 6]], 'logits')], {}, ['logits'])
  ctx.variants = { originals: 1, perDetector: [2], output: 'probabilities', verdicts: 1 }
  await links.privacyCharge.run(ctx)
  t.same(ctx.privacy, { epsilonSpent: 2, epsilonLeft: 8 }, 'one answer (the screened row; no variant rows) and one verdict')
  t.same(ctx.charged!.outputs.get('probabilities')!.shape, [1, 2], 'the screened output noised for the caller\'s item only')
  t.equal(ctx.charged!.verdictFlips.length, 1)
  t.equal(ctx.charged!.parameters.privacy_epsilon_cost, 2)
  // As screen-output leaves it: the caller's item, the outputs asked for.
  ctx.result = { ...ctx.result!, outputs: [probs([[5, 6]], 'logits')] }
  await links.outputPrivacy.run(ctx)
  t.same(ctx.result!.outputs.map((o) => o.name), ['logits'])
  t.equal(ctx.result!.parameters.privacy_epsilon_spent, 2)
})

t.test('a request whose answers and verdicts together exceed the budget is a 400 naming both', async (t) => {
  const { links } = setup(policy({ noise: { mechanism: 'laplace', epsilon: 1 }, budget: { epsilon: 2 } }))
  const ctx = makeCtx([probs([[1, 0], [1, 0], [0, 1], [0, 1]])])
  ctx.variants = { originals: 2, perDetector: [1], output: 'probabilities', verdicts: 1 }
  const err = await attempt(links.privacyCharge, ctx)
  t.match(err, { code: 'batch_too_large', message: /2 answers and 1 screening verdicts/ })
})

t.test('with noise, output-privacy releases only what privacy-charge paid for (fail closed)', async (t) => {
  const { links } = setup(policy({ mode: 'scores', noise: { mechanism: 'laplace', epsilon: 1 } }))
  const unpaid = makeCtx([probs([[0.25, 0.75]])])
  t.match(await attempt(links.outputPrivacy, unpaid), { code: 'internal', reason: /nothing was paid for/ })
  t.same(out(unpaid), f32([0.25, 0.75]), 'nothing replaced')
  const forbidden = makeCtx([probs([[0.5, 0.5]]), probs([[1, 2]], 'logits')], {}, ['logits'])
  t.match(await attempt(links.privacyCharge, forbidden), { code: 'forbidden' })
  t.equal(forbidden.privacy, null, 'a withheld output asked for is refused before anything is charged')
})

t.test('randomized-response labels: one-hot of the arg-max (ties and NaN as label mode ranks them), charged ε per answer and reported', async (t) => {
  // ε 100: another label comes out with probability below 10^-42, so the released labels are
  // the arg-maxes. Budget: two requests of three answers.
  const p = policy({ mode: 'label', noise: { mechanism: 'randomized-response', epsilon: 100 }, budget: { epsilon: 600, windowMs: HOUR } })
  const { stage, clock } = setup(p)
  const rows = [
    [0.1, 0.7, 0.2],
    [0.4, 0.2, 0.4], // a tie: the lower index
    [NaN, 0.3, 0.6], // NaN ranks lowest
  ]
  const ctx = makeCtx([probs(rows)])
  await stage.run(ctx)
  t.same(out(ctx), [0, 1, 0, 1, 0, 0, 0, 0, 1])
  t.same(ctx.result!.parameters, {
    output_mode: 'label',
    privacy_mechanism: 'randomized-response',
    privacy_epsilon_cost: 300,
    privacy_epsilon_spent: 300,
    privacy_epsilon_left: 300,
    privacy_window_ms: HOUR,
  })
  t.same(ctx.privacy, { epsilonSpent: 300, epsilonLeft: 300 })
  await stage.run(makeCtx([probs(rows)]))
  clock.advance(1000)
  const spent = makeCtx([probs(rows.slice(0, 1))])
  t.match(await attempt(stage, spent), { code: 'privacy_budget_exhausted', status: 429 }, 'a third request does not fit')
  t.same(out(spent), f32([0.1, 0.7, 0.2]), 'nothing released')
})

t.test('randomized-response labels at a small ε: other labels come out, always one-hot, the same for the same seed', async (t) => {
  const p = policy({ mode: 'label', noise: { mechanism: 'randomized-response', epsilon: 0.5 }, budget: { epsilon: 1000 } })
  const labels = async () => {
    const { stage } = setup(p)
    const ctx = makeCtx([probs(Array.from({ length: 400 }, () => [0.01, 0.01, 0.96, 0.02]))])
    await stage.run(ctx)
    const data = out(ctx)
    const picked: number[] = []
    for (let i = 0; i < data.length; i += 4) {
      const row = data.slice(i, i + 4)
      if (row.reduce((a, b) => a + b, 0) !== 1 || !row.every((v) => v === 0 || v === 1)) t.fail(`row ${i / 4} is not one-hot: ${row}`)
      picked.push(row.indexOf(1))
    }
    return picked
  }
  const first = await labels()
  t.same(await labels(), first, 'a seeded source gives the same labels')
  // P[arg-max] = e^0.5 / (e^0.5 + 3) = 0.3547; 400 draws: within 5 sd of it.
  const kept = first.filter((l) => l === 2).length / first.length
  t.ok(Math.abs(kept - 0.3547) < 5 * Math.sqrt((0.3547 * 0.6453) / 400), `the arg-max ${(kept * 100).toFixed(1)}% of the time`)
  t.same([0, 1, 3].map((l) => first.includes(l)), [true, true, true], 'every other label comes out')
})

t.test('randomized-response with scores or top-k is refused at start, naming both fields', async (t) => {
  t.throws(() => compileOutputPolicy(policy({ mode: 'scores', noise: { mechanism: 'randomized-response', epsilon: 4 } })), /\/output\/noise\/mechanism: randomized-response .*\/output\/mode: label \(got scores\)/)
})
