// Link: client-limit (arrival, every verb). A token bucket per client, before any credential
// is checked: a client that has only a certificate (or, with TLS off, only an address) and
// sends junk without a token still costs the gateway work and an audit record per request,
// and the per-principal limits (rate-limit) apply only after the token check. Past its burst
// a client gets 429 client_rate_limited with Retry-After; other clients are not affected.
// A request whose caller then shows a valid token gets its token back when the exchange ends:
// the bucket bounds what a client makes the gateway do without credentials, while a caller
// with them is bounded by its own limits (rate-limit), so one busy workload is not refused here
// for its legitimate volume.
//
// The client is the SHA-256 of its verified certificate (DER) with TLS on, as the connection
// caps count it (src/transport/connection-limits.ts, the same certificateKey), else its address.
// The buckets (src/transport/token-buckets.ts) are bounded by maxClients, least recently seen
// first out. Time is the injected clock's monotonic time.
//
// Reads: ctx.client (peerCertificate, address). Writes: nothing on the context.
// Throws: client_rate_limited (429, with Retry-After).

import type { X509Certificate } from 'node:crypto'
import type { ClientLimitsConfig } from '../config/schema.ts'
import type { Clock } from '../deps.ts'
import { BulwarkError } from '../errors.ts'
import { Counter, Gauge, type Metric } from '../telemetry/metrics.ts'
import { certificateKey } from '../transport/peer.ts'
import { TokenBuckets } from '../transport/token-buckets.ts'
import type { RequestContext, Stage } from '../types.ts'

export interface ClientLimitLink extends Stage {
  readonly metrics: readonly Metric[]
  /** Clients with a bucket right now. */
  clients(): number
}

// The server hands every request of a connection the same X509Certificate object: hash it once.
const certKeys = new WeakMap<X509Certificate, string>()

/** The key a client's limit is kept under: `cert:<sha256 of the DER>`, or `addr:<address>` without a certificate. */
export function clientKeyOf(client: Pick<RequestContext['client'], 'peerCertificate' | 'address'>): string {
  const cert = client.peerCertificate
  if (cert === null) return `addr:${client.address}`
  let key = certKeys.get(cert)
  if (key === undefined) {
    key = certificateKey(cert.fingerprint256)
    certKeys.set(cert, key)
  }
  return key
}

export function createClientLimitLink(config: ClientLimitsConfig, deps: { clock: Clock }): ClientLimitLink {
  const { clock } = deps
  const { requestsPerSecond: rate, burst, maxClients } = config
  const forgotten = new Counter('bulwark_client_limit_evictions_total', 'Clients forgotten by the per-client limit because clientLimits.maxClients others were seen more recently.')
  const buckets = new TokenBuckets({ perSecond: rate, burst, maxKeys: maxClients, onForget: () => forgotten.inc() })
  const limited = new Counter('bulwark_client_rate_limited_total', 'Requests refused before authentication because their client (certificate, or address without TLS) was past clientLimits.burst at clientLimits.requestsPerSecond.')
  const tracked = new Gauge('bulwark_client_limit_clients', 'Clients the per-client limit holds a bucket for (at most clientLimits.maxClients).', () => [[{}, buckets.size]])

  return {
    name: 'client-limit',
    phase: 'arrival',
    verbs: ['infer', 'metadata', 'server'],
    metrics: [limited, forgotten, tracked],
    clients: () => buckets.size,
    run(ctx: RequestContext) {
      const key = clientKeyOf(ctx.client)
      const waitMs = buckets.take(key, clock.monotonicMs())
      if (waitMs === 0) return
      limited.inc()
      const waitS = Math.max(1, Math.ceil(waitMs / 1000))
      throw new BulwarkError('client_rate_limited', 'too many requests from this client; retry after the Retry-After delay', {
        reason: `client ${key} is past its burst of ${burst} at ${rate} requests/s (clientLimits)`,
        headers: { 'retry-after': String(waitS) },
      })
    },
    onDestroy(ctx: RequestContext) {
      // Only jwt-auth, a headers link, sets a principal: a request this link refused (it took no
      // token) never got that far, so it has none.
      if (ctx.principal === null) return
      buckets.charge(clientKeyOf(ctx.client), clock.monotonicMs(), -1)
    },
  }
}
