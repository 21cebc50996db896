// A request context for running one stage by itself, with every field at its "nothing set
// yet" value (and the caller key derived from what is passed); pass what the test is about.

import { callerKeyOf, newRequestContext, type RequestContext } from '../../src/types.ts'

export function fakeContext(over: Partial<Omit<RequestContext, 'client' | 'target'>> & {
  client?: Partial<RequestContext['client']>
  target?: Partial<RequestContext['target']>
} = {}): RequestContext {
  const { client, target, ...rest } = over
  const ctx = newRequestContext({
    id: 'test-request',
    receivedAtMs: 0,
    startedMs: 0,
    deadlineMs: 30_000,
    client: { address: '127.0.0.1', tlsVersion: 'TLSv1.3', peerCertificate: null, ...client },
    target: { model: 'mnist', version: null, verb: 'infer', ...target },
    bearerToken: null,
  })
  Object.assign(ctx, rest)
  // As the caller-key link would set it, unless the test sets its own.
  if (rest.callerKey === undefined) ctx.callerKey = callerKeyOf(ctx)
  return ctx
}
