// Link: caller-key (headers, model verbs, right after authentication). The one key that
// per-caller state is kept under: rate limits, screening histories, privacy budgets.
// Reads: ctx.principal, ctx.identity. Writes: ctx.callerKey. Throws: nothing.

import { callerKeyOf, type RequestContext, type Stage } from '../types.ts'

export function createCallerKeyLink(): Stage {
  return {
    name: 'caller-key',
    phase: 'headers',
    verbs: ['infer', 'metadata'],
    run(ctx: RequestContext) {
      ctx.callerKey = callerKeyOf(ctx)
    },
  }
}
