// Pins the order of the pipeline: reordering stages is a security change and must show up
// as a failing test.
import t from 'tap'
import { assemblePipeline, runPhase } from '../../src/pipeline.ts'
import { BulwarkError } from '../../src/errors.ts'
import { newRequestContext, type RequestContext, type Stage } from '../../src/types.ts'
import { systemClock } from '../../src/deps.ts'

const stage = (name: string, phase: Stage['phase'], log: string[], fail = false): Stage => ({
  name,
  phase,
  verbs: ['infer'],
  run() {
    log.push(name)
    if (fail) throw new BulwarkError('forbidden', 'no')
  },
})

function context(): RequestContext {
  return newRequestContext({
    id: 'r', receivedAtMs: 0, startedMs: 0, deadlineMs: 1e12,
    client: { address: '127.0.0.1', tlsVersion: null, peerCertificate: null },
    target: { model: 'm', version: null, verb: 'infer' },
    bearerToken: null,
  })
}

t.test('stages run in the documented order', async (t) => {
  const log: string[] = []
  const s = (n: string, p: Stage['phase']) => stage(n, p, log)
  const pipeline = assemblePipeline({
    outputPrivacy: s('output-privacy', 'body'),
    modelInference: s('model-inference', 'body'),
    adversarialScreen: s('adversarial-screen', 'body'),
    inputValidation: s('input-validation', 'body'),
    rateLimit: s('rate-limit', 'headers'),
    modelPolicy: s('model-policy', 'headers'),
    jwtAuth: s('jwt-auth', 'headers'),
    mtlsIdentity: s('mtls-identity', 'headers'),
  })
  t.same(pipeline.map((x) => x.name), [
    'mtls-identity', 'jwt-auth', 'model-policy', 'rate-limit',
    'input-validation', 'adversarial-screen', 'model-inference', 'output-privacy',
  ])
  const ctx = context()
  await runPhase(pipeline, 'headers', ctx, systemClock)
  await runPhase(pipeline, 'body', ctx, systemClock)
  t.same(log, pipeline.map((x) => x.name), 'headers phase first, then body, each in order')
  t.same(Object.keys(ctx.stageMs), log, 'each stage is timed')
})

t.test('the first refusal stops the run and names its stage', async (t) => {
  const log: string[] = []
  const pipeline = assemblePipeline({
    jwtAuth: stage('jwt-auth', 'headers', log, true),
    modelPolicy: stage('model-policy', 'headers', log),
    inputValidation: stage('input-validation', 'body', log),
    modelInference: stage('model-inference', 'body', log),
  })
  const ctx = context()
  await t.rejects(runPhase(pipeline, 'headers', ctx, systemClock), { code: 'forbidden' })
  t.same(log, ['jwt-auth'])
  t.equal(ctx.failedStage, 'jwt-auth')
  t.equal(ctx.error?.code, 'forbidden')
})

t.test('an unexpected exception becomes internal and keeps its cause', async (t) => {
  const boom: Stage = { name: 'x', phase: 'body', verbs: ['infer'], run() { throw new TypeError('boom') } }
  const ctx = context()
  await t.rejects(runPhase([boom], 'body', ctx, systemClock), { code: 'internal', status: 500 })
  t.type(ctx.error?.cause, TypeError)
  t.equal(ctx.error?.reason, 'boom')
})
