// Reads a request body into one buffer and, for binary tensor requests, places it so that the
// tensor bytes after the JSON header start at an 8-byte boundary: typed arrays can then view
// them in place instead of copying every input to realign it. A body up to UP_FRONT_BYTES
// gets its whole buffer at once, from the pool (one allocation, no concatenation); a larger
// one starts there and doubles as its bytes arrive, so a Content-Length alone never makes
// the gateway allocate what it claims.

import type { IncomingMessage } from 'node:http'
import { BulwarkError } from '../errors.ts'
import { bodyBuffers } from '../inference/buffer-pool.ts'
import { HEADER_LENGTH } from '../oip/codec.ts'

const ALIGN = 8
/** Bodies up to this size are allocated whole on arrival: an ocr-cls image is 110 KB as binary. */
export const UP_FRONT_BYTES = 1024 * 1024
const UNDECLARED_START_BYTES = 64 * 1024

/** The room a body's buffer starts with: all of a small declared body, else a start that grows. */
export function initialRoom(declared: number | null): number {
  if (declared === null) return UNDECLARED_START_BYTES
  return Math.min(declared, UP_FRONT_BYTES)
}

export function readBody(req: IncomingMessage, limitBytes: number): Promise<Buffer> {
  const declared = req.headers['content-length'] === undefined ? null : Number(req.headers['content-length'])
  if (declared !== null && !(Number.isSafeInteger(declared) && declared >= 0)) {
    return Promise.reject(new BulwarkError('bad_request', 'Content-Length is not a valid length'))
  }
  if (declared !== null && declared > limitBytes) {
    req.resume() // drain, so the connection can answer
    return Promise.reject(new BulwarkError('payload_too_large', 'the request body exceeds the server limit; send fewer items per request or use binary tensors', { reason: `Content-Length ${declared} > ${limitBytes}` }))
  }
  // Gone while the headers links ran: 'error' and 'close' have been emitted already, and a
  // read started now would wait for events that never come.
  if (req.destroyed && !req.complete) return Promise.reject(clientClosed(req.errored, 'before its body was read'))
  const headerLength = Number(req.headers[HEADER_LENGTH])
  const pad = Number.isSafeInteger(headerLength) && headerLength > 0 ? (ALIGN - (headerLength % ALIGN)) % ALIGN : 0
  return new Promise((resolve, reject) => {
    // A small declared body's buffer comes from the pool (releaseBody hands it back); the
    // others grow into plain allocations, never past the declared length or the limit.
    const most = declared ?? limitBytes
    const room = initialRoom(declared)
    let buf = declared !== null && declared <= UP_FRONT_BYTES ? Buffer.from(bodyBuffers.take(pad + declared), 0, pad + declared) : Buffer.allocUnsafeSlow(pad + room)
    let size = 0
    const fail = (err: Error) => {
      req.removeListener('data', onData)
      req.resume()
      reject(err)
    }
    const onData = (chunk: Buffer) => {
      if (size + chunk.length > limitBytes) {
        return fail(new BulwarkError('payload_too_large', 'the request body exceeds the server limit; send fewer items per request or use binary tensors', { reason: `body over ${limitBytes} bytes` }))
      }
      if (declared !== null && size + chunk.length > declared) return fail(new BulwarkError('bad_request', 'the body is longer than its Content-Length'))
      if (pad + size + chunk.length > buf.length) {
        const grown = Buffer.allocUnsafeSlow(pad + Math.min(most, Math.max((buf.length - pad) * 2, size + chunk.length)))
        buf.copy(grown, 0, 0, pad + size)
        buf = grown
      }
      chunk.copy(buf, pad + size)
      size += chunk.length
    }
    // A client that goes away mid-body surfaces here: Node destroys the request with
    // ECONNRESET "aborted" ('error'), or only closes it. Either is the client's doing, not a
    // fault of ours, and is answered as such (not as `internal`, with a stack trace).
    const gone = (err: Error | null) => fail(err && !isClientAbort(err) ? err : clientClosed(err, `after ${size} of ${declared ?? 'an undeclared number of'} body bytes`))
    req.on('data', onData)
    req.once('error', gone)
    req.once('close', () => {
      if (!req.complete) gone(null)
    })
    req.once('end', () => {
      if (declared !== null && size !== declared) return reject(new BulwarkError('bad_request', `the body has ${size} bytes but Content-Length says ${declared}`))
      resolve(buf.subarray(pad, pad + size))
    })
  })
}

const ABORT_CODES = new Set(['ECONNRESET', 'ECONNABORTED', 'EPIPE', 'ERR_STREAM_PREMATURE_CLOSE'])

/** Whether a socket or stream error is the peer going away (not a fault of the gateway). */
export function isClientAbort(err: Error): boolean {
  const code = (err as NodeJS.ErrnoException).code
  return code !== undefined && ABORT_CODES.has(code)
}

/**
 * The refusal for a client that closed its connection before the answer (499, as nginx
 * logs it), keeping what Node reported as the cause. `when` says how far the exchange got.
 */
export function clientClosed(cause: unknown, when: string): BulwarkError {
  const how = cause instanceof Error ? `: ${(cause as NodeJS.ErrnoException).code ?? cause.name} ${cause.message}` : ''
  return new BulwarkError('client_closed_request', 'the client closed the connection before the request was answered', {
    reason: `client closed the connection ${when}${how}`,
    ...(cause === null || cause === undefined ? {} : { cause }),
  })
}

/**
 * Returns a body from readBody to the pool. Only once nothing can read it again: the server
 * calls this when the response has been sent ('finish'), after the handler, the stages and
 * the audit record (onSend) are done with the request. A request whose client went away
 * first never gets here; its buffer is left to the GC.
 */
export function releaseBody(body: unknown): void {
  if (Buffer.isBuffer(body) && bodyBuffers.issued(body.buffer)) bodyBuffers.give(body.buffer as ArrayBuffer)
}
