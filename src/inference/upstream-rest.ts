// The REST protocol of upstream calls (upstream.protocol: rest): OIP v2 over HTTP/1.1 with
// undici keep-alive pools, the binary tensor data extension both ways
// (src/inference/upstream-codec.ts). It only sends one call and reads its answer; breakers,
// retries, deadlines and how an answer counts are the backend's (src/inference/upstream-backend.ts).
//
// Request bodies: small ones go as one buffer (one write); large ones as their parts, the
// tensors' own bytes, so they are not copied again (undici writes an iterable body part by part).

import { Pool } from 'undici'
import { BulwarkError } from '../errors.ts'
import type { ChannelAnswer, ChannelCall, UpstreamChannel, UpstreamChannelOptions } from './upstream-backend.ts'
import { decodeUpstreamResponse, encodeUpstreamRequest, HEADER_LENGTH, upstreamErrorOf } from './upstream-codec.ts'

/** Request bodies up to this size are sent as one buffer; larger ones part by part, without a copy. */
const LARGE_BODY_BYTES = 32 * 1024

export class RestChannel implements UpstreamChannel {
  readonly spanAttributes: Record<string, string>
  private readonly pool: Pool
  private readonly url: string
  private readonly path: string
  private readonly maxResponseBytes: number

  constructor(o: UpstreamChannelOptions) {
    const { config } = o
    this.url = o.url
    this.path = `/v2/models/${encodeURIComponent(o.remoteName)}/infer`
    this.maxResponseBytes = config.maxResponseBytes
    this.spanAttributes = { 'http.request.method': 'POST', 'url.full': `${o.url}${this.path}` }
    this.pool = new Pool(o.url, {
      connections: config.connectionsPerEndpoint,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      // Deadlines are enforced per call (abort); these only stop undici's 300 s defaults.
      headersTimeout: config.breaker.callTimeoutMs + 1_000,
      bodyTimeout: config.breaker.callTimeoutMs + 1_000,
      connect: {
        timeout: config.connectTimeoutMs,
        ...(o.tls ? { ...o.tls, rejectUnauthorized: true } : {}),
      },
    })
  }

  async send(c: ChannelCall): Promise<ChannelAnswer> {
    const { parts, headerLength } = encodeUpstreamRequest(c.inputs, c.outputNames, c.budgetMs * 1000)
    const size = parts.reduce((n, p) => n + p.byteLength, 0)
    const body = size <= LARGE_BODY_BYTES ? Buffer.concat(parts) : (parts as unknown as Buffer)
    const headers: Record<string, string> = {
      'content-type': 'application/octet-stream',
      'content-length': String(size),
      [HEADER_LENGTH]: String(headerLength),
      ...c.trace,
    }
    const res = await this.pool.request({ path: this.path, method: 'POST', headers, body, signal: c.signal })
    c.span.setAttribute('http.response.status_code', res.statusCode)
    const chunks: Buffer[] = []
    let received = 0
    for await (const chunk of res.body) {
      received += (chunk as Buffer).byteLength
      if (received > this.maxResponseBytes) {
        res.body.destroy()
        throw new BulwarkError('upstream_unavailable', 'the upstream model sent an invalid response; retry later', { reason: `${this.url}: response larger than maxResponseBytes (${this.maxResponseBytes})`, headers: { 'retry-after': '1' } })
      }
      chunks.push(chunk as Buffer)
    }
    const raw = Buffer.concat(chunks)
    if (res.statusCode === 200) {
      const hl = res.headers[HEADER_LENGTH]
      return { outputs: decodeUpstreamResponse(raw, typeof hl === 'string' ? hl : undefined, c.wanted, c.items) }
    }
    const retryAfter = res.headers['retry-after']
    return { status: res.statusCode, ...upstreamErrorOf(raw), retryAfter: typeof retryAfter === 'string' ? retryAfter : undefined }
  }

  async close(): Promise<void> {
    await this.pool.close().catch(() => this.pool.destroy())
  }
}
