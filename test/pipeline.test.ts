// Pins the order of the chain, from admission to the audit record: reordering links is a
// security change and must show up as a failing test. Also: phases run in their order, the
// first refusal stops its phase and is recorded on the context, and every link's onDestroy
// runs once at the end, whatever ended the exchange.
import t from 'tap'
import { assembleChain, destroyChain, runPhase, type ChainLinks } from '../src/pipeline.ts'
import { BulwarkError } from '../src/errors.ts'
import { newRequestContext, type Phase, type RequestContext, type Stage } from '../src/types.ts'
import { FakeClock } from '../kit/clock.ts'

const clock = new FakeClock()

const link = (name: string, phase: Phase, log: string[], o: { fail?: boolean; destroyed?: string[] } = {}): Stage => ({
  name,
  phase,
  verbs: ['infer'],
  run() {
    log.push(name)
    if (o.fail) throw new BulwarkError('forbidden', 'no')
  },
  ...(o.destroyed ? { onDestroy: () => void o.destroyed!.push(name) } : {}),
})

function context(): RequestContext {
  return newRequestContext({
    id: 'r', receivedAtMs: 0, startedMs: 0, deadlineMs: 1e12,
    client: { address: '127.0.0.1', tlsVersion: null, peerCertificate: null },
    target: { model: 'm', version: null, verb: 'infer' },
    bearerToken: null,
  })
}

const ORDER: [keyof ChainLinks, string, Phase][] = [
  ['trace', 'trace', 'arrival'],
  ['loadShedding', 'load-shedding', 'arrival'],
  ['clientLimit', 'client-limit', 'arrival'],
  ['mtlsIdentity', 'mtls-identity', 'headers'],
  ['jwtAuth', 'jwt-auth', 'headers'],
  ['callerKey', 'caller-key', 'headers'],
  ['modelPolicy', 'model-policy', 'headers'],
  ['rateLimit', 'rate-limit', 'headers'],
  ['bodyRead', 'body-read', 'body'],
  ['inputValidation', 'input-validation', 'body'],
  // A caller whose budget is spent costs no model run.
  ['privacyPrecheck', 'privacy-precheck', 'body'],
  ['screenInput', 'screen-input', 'body'],
  ['screenVariants', 'screen-variants', 'body'],
  ['modelInference', 'model-inference', 'body'],
  // Before anything reads the model's output: a caller whose budget cannot pay gets no verdict either.
  ['privacyCharge', 'privacy-charge', 'body'],
  ['screenOutput', 'screen-output', 'body'],
  ['outputPrivacy', 'output-privacy', 'body'],
  ['auditRecord', 'audit-log', 'response'],
  ['modelStats', 'model-stats', 'response'],
  ['metrics', 'metrics', 'response'],
]

t.test('every link a request passes, from admission to the audit record, in the documented order', async (t) => {
  const log: string[] = []
  // Handed over in reverse: the order comes from assembleChain, not from the caller.
  const links = Object.fromEntries([...ORDER].reverse().map(([key, name, phase]) => [key, link(name, phase, log)])) as unknown as ChainLinks
  const chain = assembleChain(links)
  t.same(chain.map((x) => x.name), ORDER.map(([, name]) => name))
  const ctx = context()
  for (const phase of ['arrival', 'headers', 'body', 'response'] as const) await runPhase(chain, phase, ctx, clock)
  t.same(log, ORDER.map(([, name]) => name), 'phases in turn, each link in order')
  t.same(Object.keys(ctx.stageMs), log, 'each link is timed')
})

t.test('links that are switched off leave no gap', async (t) => {
  const log: string[] = []
  const required = ORDER.filter(([key]) => ['trace', 'callerKey', 'bodyRead', 'inputValidation', 'modelInference', 'metrics'].includes(key))
  const chain = assembleChain(Object.fromEntries(required.map(([key, name, phase]) => [key, link(name, phase, log)])) as unknown as ChainLinks)
  t.same(chain.map((x) => x.name), ['trace', 'caller-key', 'body-read', 'input-validation', 'model-inference', 'metrics'])
})

t.test('the first refusal stops its phase and names its link on the context', async (t) => {
  const log: string[] = []
  const chain = [link('jwt-auth', 'headers', log, { fail: true }), link('model-policy', 'headers', log), link('body-read', 'body', log)]
  const ctx = context()
  await t.rejects(runPhase(chain, 'headers', ctx, clock), { code: 'forbidden' })
  t.same(log, ['jwt-auth'])
  t.equal(ctx.failedStage, 'jwt-auth')
  t.equal(ctx.error?.code, 'forbidden')
})

t.test('links run only for their verbs', async (t) => {
  const log: string[] = []
  const ctx = newRequestContext({ ...context(), target: { model: '', version: null, verb: 'server' } })
  await runPhase([link('jwt-auth', 'headers', log), { ...link('audit-log', 'response', log), verbs: ['infer', 'metadata', 'server'] }], 'headers', ctx, clock)
  await runPhase([{ ...link('audit-log', 'response', log), verbs: ['infer', 'metadata', 'server'] }], 'response', ctx, clock)
  t.same(log, ['audit-log'], 'a server-level request passes only the links that apply to it')
})

t.test('onDestroy: every link of the verb cleans up once at the end, reached or not, even when one fails', async (t) => {
  const log: string[] = []
  const destroyed: string[] = []
  const failing: Stage = { ...link('rate-limit', 'headers', log), onDestroy: () => { throw new Error('boom') } }
  const chain = [link('load-shedding', 'arrival', log, { destroyed }), link('jwt-auth', 'headers', log, { fail: true }), failing, link('body-read', 'body', log, { destroyed })]
  const ctx = context()
  await runPhase(chain, 'arrival', ctx, clock)
  await t.rejects(runPhase(chain, 'headers', ctx, clock))
  const errors: string[] = []
  destroyChain(chain, ctx, (name) => errors.push(name))
  t.same(destroyed, ['load-shedding', 'body-read'])
  t.same(errors, ['rate-limit'], 'the failure is reported, and the links after it still clean up')
})

t.test('an unexpected exception becomes internal and keeps its cause', async (t) => {
  const boom: Stage = { name: 'x', phase: 'body', verbs: ['infer'], run() { throw new TypeError('boom') } }
  const ctx = context()
  await t.rejects(runPhase([boom], 'body', ctx, clock), { code: 'internal', status: 500 })
  t.type(ctx.error?.cause, TypeError)
  t.equal(ctx.error?.reason, 'boom')
})
