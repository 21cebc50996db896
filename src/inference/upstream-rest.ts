// The REST protocol of upstream calls (upstream.protocol: rest): OIP v2 over HTTP/1.1 with
// undici keep-alive pools, the binary tensor data extension both ways
// (src/inference/upstream-codec.ts). It only sends one call and reads its answer; breakers,
// retries, deadlines and how an answer counts are the backend's (src/inference/upstream-backend.ts).
//
// TLS material that changed on disk (src/inference/upstream-tls.ts) gets a new pool, whose
// connections present the new client certificate; the old pool takes no new calls and closes
// once the calls it holds are done, so a rotation fails no call in flight.
//
// Request bodies: small ones go as one buffer (one write); large ones as their parts, the
// tensors' own bytes, so they are not copied again (undici writes an iterable body part by part).

import { Pool } from 'undici'
import { BulwarkError } from '../errors.ts'
import type { ChannelAnswer, ChannelCall, UpstreamChannel, UpstreamChannelOptions, UpstreamTlsMaterial } from './upstream-backend.ts'
import { decodeUpstreamResponse, encodeUpstreamRequest, HEADER_LENGTH, upstreamErrorOf } from './upstream-codec.ts'

/** Request bodies up to this size are sent as one buffer; larger ones part by part, without a copy. */
const LARGE_BODY_BYTES = 32 * 1024

export class RestChannel implements UpstreamChannel {
  readonly spanAttributes: Record<string, string>
  private readonly o: UpstreamChannelOptions
  private pool: Pool
  /** Pools replaced by new TLS material, closing once their calls are done. */
  private readonly retiring = new Set<Promise<void>>()
  private readonly url: string
  private readonly path: string
  private readonly maxResponseBytes: number

  constructor(o: UpstreamChannelOptions) {
    this.o = o
    this.url = o.url
    this.path = `/v2/models/${encodeURIComponent(o.remoteName)}/infer`
    this.maxResponseBytes = o.config.maxResponseBytes
    this.spanAttributes = { 'http.request.method': 'POST', 'url.full': `${o.url}${this.path}` }
    this.pool = this.poolFor(o.tls)
  }

  private poolFor(tls: UpstreamTlsMaterial | null): Pool {
    const { config } = this.o
    return new Pool(this.o.url, {
      connections: config.connectionsPerEndpoint,
      pipelining: 1,
      keepAliveTimeout: 30_000,
      // Deadlines are enforced per call (abort); these only stop undici's 300 s defaults.
      headersTimeout: config.breaker.callTimeoutMs + 1_000,
      bodyTimeout: config.breaker.callTimeoutMs + 1_000,
      connect: {
        timeout: config.connectTimeoutMs,
        ...(tls ? { ...tls, rejectUnauthorized: true } : {}),
      },
    })
  }

  /** A new pool for new calls; the old one's close() lets its queued and running calls finish first. */
  useTls(tls: UpstreamTlsMaterial): void {
    const old = this.pool
    this.pool = this.poolFor(tls)
    const closing = old.close().catch(() => old.destroy())
    this.retiring.add(closing)
    void closing.finally(() => this.retiring.delete(closing))
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
    const pool = this.pool
    await Promise.all([pool.close().catch(() => pool.destroy()), ...this.retiring])
  }
}
