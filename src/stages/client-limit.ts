// Link: client-limit (arrival, every verb). A token bucket per client, before any credential
// is checked: a client that has only a certificate (or, with TLS off, only an address) and
// sends junk without a token still costs the gateway work and an audit record per request,
// and the per-principal limits (rate-limit) apply only after the token check. Past its burst
// a client gets 429 client_rate_limited with Retry-After; other clients are not affected.
//
// The client is the SHA-256 of its verified certificate (DER) with TLS on, as the connection
// caps count it (src/transport/connection-limits.ts), else its address. Buckets live in a map
// bounded by maxClients, least recently seen first out: a forgotten client comes back with a
// full bucket, which is what it would have had after being idle for burst/requestsPerSecond.
// Time is the injected clock's monotonic time.
//
// Reads: ctx.client (peerCertificate, address). Writes: nothing on the context.
// Throws: client_rate_limited (429, with Retry-After).

import { createHash, type X509Certificate } from 'node:crypto'
import type { ClientLimitsConfig } from '../config/schema.ts'
import type { Clock } from '../deps.ts'
import { BulwarkError } from '../errors.ts'
import { Counter, Gauge, type Metric } from '../telemetry/metrics.ts'
import type { RequestContext, Stage } from '../types.ts'

export interface ClientLimitLink extends Stage {
  readonly metrics: readonly Metric[]
  /** Clients with a bucket right now. */
  clients(): number
}

interface Bucket {
  tokens: number
  /** Monotonic ms the tokens were last brought up to date. */
  atMs: number
}

// The server hands every request of a connection the same X509Certificate object: hash it once.
const certKeys = new WeakMap<X509Certificate, string>()

/** The key a client's limit is kept under: `cert:<sha256 of the DER>`, or `addr:<address>` without a certificate. */
export function clientKeyOf(client: Pick<RequestContext['client'], 'peerCertificate' | 'address'>): string {
  const cert = client.peerCertificate
  if (cert === null) return `addr:${client.address}`
  let key = certKeys.get(cert)
  if (key === undefined) {
    key = `cert:${createHash('sha256').update(cert.raw).digest('hex')}`
    certKeys.set(cert, key)
  }
  return key
}

export function createClientLimitLink(config: ClientLimitsConfig, deps: { clock: Clock }): ClientLimitLink {
  const { clock } = deps
  const { requestsPerSecond: rate, burst, maxClients } = config
  const perMs = rate / 1000
  // Insertion order is recency order: a client seen again is moved to the end.
  const buckets = new Map<string, Bucket>()
  const limited = new Counter('bulwark_client_rate_limited_total', 'Requests refused before authentication because their client (certificate, or address without TLS) was past clientLimits.burst at clientLimits.requestsPerSecond.')
  const forgotten = new Counter('bulwark_client_limit_evictions_total', 'Clients forgotten by the per-client limit because clientLimits.maxClients others were seen more recently.')
  const tracked = new Gauge('bulwark_client_limit_clients', 'Clients the per-client limit holds a bucket for (at most clientLimits.maxClients).', () => [[{}, buckets.size]])

  const take = (key: string, nowMs: number): Bucket => {
    let b = buckets.get(key)
    if (b === undefined) {
      if (buckets.size >= maxClients) {
        buckets.delete(buckets.keys().next().value!)
        forgotten.inc()
      }
      b = { tokens: burst, atMs: nowMs }
    } else {
      buckets.delete(key)
      b.tokens = Math.min(burst, b.tokens + (nowMs - b.atMs) * perMs)
      b.atMs = nowMs
    }
    buckets.set(key, b)
    return b
  }

  return {
    name: 'client-limit',
    phase: 'arrival',
    verbs: ['infer', 'metadata', 'server'],
    metrics: [limited, forgotten, tracked],
    clients: () => buckets.size,
    run(ctx: RequestContext) {
      const key = clientKeyOf(ctx.client)
      const b = take(key, clock.monotonicMs())
      if (b.tokens >= 1) {
        b.tokens -= 1
        return
      }
      limited.inc()
      const waitS = Math.max(1, Math.ceil((1 - b.tokens) / rate))
      throw new BulwarkError('client_rate_limited', 'too many requests from this client; retry after the Retry-After delay', {
        reason: `client ${key} is past its burst of ${burst} at ${rate} requests/s (clientLimits)`,
        headers: { 'retry-after': String(waitS) },
      })
    },
  }
}
