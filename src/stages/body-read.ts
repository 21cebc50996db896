// Link: body-read (body, verb 'infer', first of the body phase: only callers the headers
// links admitted get their body read). Reads the whole body within server.bodyLimitBytes and
// splits a binary tensor request into its JSON header and tensor bytes.
// Reads: ctx.readBody (the transport's reader). Writes: ctx.bodyBytes, ctx.body.
// Throws: bad_request (no body, a length that disagrees with Content-Length),
//         payload_too_large (over the limit), invalid_json, invalid_binary_header,
//         client_closed_request (499: the client hung up mid-body; src/transport/read-body.ts).
// When the exchange ends, a pooled body buffer goes back to the pool.

import { BulwarkError } from '../errors.ts'
import { releaseBody } from '../transport/read-body.ts'
import { splitBody } from '../oip/codec.ts'
import type { RequestContext, Stage } from '../types.ts'

export function createBodyReadLink(): Stage {
  return {
    name: 'body-read',
    phase: 'body',
    verbs: ['infer'],
    async run(ctx: RequestContext) {
      if (!ctx.readBody) throw new BulwarkError('bad_request', 'the request has no body; send an OIP v2 inference request')
      const incoming = await ctx.readBody()
      ctx.bodyBytes = incoming.bytes
      ctx.body = splitBody(incoming.bytes, incoming.headerLength)
    },
    onDestroy(ctx: RequestContext) {
      // Only once nothing reads the body again: the answer and its audit record are done.
      if (ctx.bodyBytes) releaseBody(ctx.bodyBytes)
    },
  }
}
