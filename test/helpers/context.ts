// A request context for running one stage by itself, with every field at its "nothing set
// yet" value; pass what the test is about.

import { newRequestContext, type RequestContext } from '../../src/types.ts'

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
  return Object.assign(ctx, rest)
}
