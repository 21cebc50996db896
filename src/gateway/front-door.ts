// The front door: TLS with client certificates (and their reloads from disk), JWT
// verification against the key set, the per-model policies and the rate limits. Each can be
// switched off by the configuration; what is on hands its link to the chain.

import rateLimitPlugin from '@fastify/rate-limit'
import type { FastifyInstance } from 'fastify'
import type { Server as HttpsServer } from 'node:https'
import type { TLSSocket } from 'node:tls'
import { JwksKeySet } from '../auth/jwks.ts'
import { TokenCache } from '../auth/token-cache.ts'
import type { PolicySet } from '../config/policy.ts'
import { LivePolicies } from '../config/policy-store.ts'
import type { Config } from '../config/schema.ts'
import type { Clock, Logger } from '../deps.ts'
import type { SharedState } from '../state/redis.ts'
import { createJwtAuthStage } from '../stages/jwt-auth.ts'
import { compileModelRules, createModelPolicyStage } from '../stages/model-policy.ts'
import { createMtlsIdentityStage } from '../stages/mtls-identity.ts'
import { compileModelLimits, createRateLimitStage } from '../stages/rate-limit.ts'
import { Counter, type GatewayMetrics } from '../telemetry/metrics.ts'
import { fastifyLimiter, redisRateLimitStore } from '../transport/rate-limit-store.ts'
import { handshakeFailureReason, requireClientCertificates, TlsReloader, type TlsMaterial } from '../transport/tls.ts'
import { newRequestContext, type Principal, type Stage } from '../types.ts'

export interface FrontDoor {
  links: { mtlsIdentity?: Stage | undefined; jwtAuth?: Stage | undefined; modelPolicy?: Stage | undefined; rateLimit?: Stage | undefined }
  /** The API listener's TLS files and their reloads; null when tls is off (plain HTTP). */
  tls: TlsReloader | null
  /** Verifies an Authorization header's token as jwt-auth does (for the admin listener's repository API); null when auth is off. */
  verifyToken: ((authorization: string | undefined) => Promise<Principal>) | null
  close(): Promise<void>
}

export async function buildFrontDoor(
  config: Config,
  where: { baseDir: string },
  deps: { api: FastifyInstance; tlsMaterial: TlsMaterial | null; policies: PolicySet | LivePolicies; sharedState: SharedState | null; clock: Clock; log: Logger; metrics: GatewayMetrics },
): Promise<FrontDoor> {
  const { api, log, clock, sharedState } = deps
  // Each request is judged by the policies in force when it started (src/config/policy-store.ts).
  const live = deps.policies instanceof LivePolicies ? deps.policies : new LivePolicies(deps.policies)
  const handshakeFailures = new Counter('bulwark_tls_handshake_failures_total', 'TLS handshakes refused or failed (no or untrusted client certificate, protocol, timeout), by reason.')
  const tlsReloads = new Counter('bulwark_tls_reloads_total', 'Changes of the TLS certificate, key or CA files on disk, by outcome (changed = applied, failed = kept the old ones).')
  const jwksRefreshes = new Counter('bulwark_jwks_refreshes_total', 'Re-reads of the JSON Web Key Set, by outcome.')
  const distrusted = new Counter('bulwark_tls_connections_distrusted_total', 'Open connections closed because their client certificate no longer chains to the reloaded CA bundle.')
  deps.metrics.add(handshakeFailures, tlsReloads, jwksRefreshes, distrusted)
  const off = (['tls', 'auth', 'authorization', 'rateLimits'] as const).filter((k) => !config[k].enabled)
  if (off.length > 0) log.warn({ off }, 'front door partly or wholly switched off by the configuration')

  let tls: TlsReloader | null = null
  if (deps.tlsMaterial) {
    tls = new TlsReloader(config.tls, where.baseDir, deps.tlsMaterial, { log, clock, onReload: (outcome) => tlsReloads.inc({ outcome }), onDistrusted: (n) => distrusted.inc({}, n) })
    tls.attach(api.server as HttpsServer)
    // A refused handshake has no HTTP request: count it, and log why for the operator.
    const refused = (reason: string, socket: TLSSocket, err?: string) => {
      handshakeFailures.inc({ reason })
      log.info({ reason, ...(err ? { err } : {}), remote: socket.remoteAddress }, 'TLS handshake refused')
    }
    requireClientCertificates(api.server as HttpsServer, refused)
    api.server.on('tlsClientError', (err: Error & { code?: string }, socket: TLSSocket) => refused(handshakeFailureReason(err), socket, err.message))
  }

  const tokenCache = new TokenCache(config.auth.tokenCacheEntries)
  const keys = config.auth.enabled
    ? await JwksKeySet.open(config.auth.jwks, where.baseDir, { clock, log, onChange: () => tokenCache.clear(), onRefresh: (outcome) => jwksRefreshes.inc({ outcome }) })
    : null

  let rateLimit: Stage | undefined
  if (config.rateLimits.enabled) {
    const redis = sharedState && config.state.redis
    await api.register(rateLimitPlugin, {
      global: false,
      ...(redis ? { store: redisRateLimitStore(sharedState.client), skipOnError: redis.rateLimitsWhenUnavailable === 'allow' } : {}),
    })
    rateLimit = createRateLimitStage({ rateLimits: config.rateLimits, policies: await live.view(compileModelLimits) }, { limiterFor: (limits) => fastifyLimiter(api, limits, config.rateLimits.storeEntries) })
  }

  const jwtAuth = keys ? createJwtAuthStage(config.auth, { clock, getKey: keys.getKey, cache: tokenCache }) : undefined
  // The same checks outside the chain: the link, run on a context holding only the header.
  const verifyToken = jwtAuth
    ? async (authorization: string | undefined) => {
        const now = clock.monotonicMs()
        const ctx = newRequestContext({
          id: 'repository',
          receivedAtMs: clock.nowMs(),
          startedMs: now,
          deadlineMs: now + 10_000,
          client: { address: '', tlsVersion: null, peerCertificate: null },
          target: { model: '', version: null, verb: 'server' },
          bearerToken: authorization ?? null,
        })
        await jwtAuth.run(ctx)
        return ctx.principal!
      }
    : null

  return {
    links: {
      mtlsIdentity: config.tls.enabled ? createMtlsIdentityStage({ clock }) : undefined,
      jwtAuth,
      modelPolicy: config.authorization.enabled ? createModelPolicyStage(await live.view(compileModelRules)) : undefined,
      rateLimit,
    },
    tls,
    verifyToken,
    async close() {
      tls?.close()
      await keys?.close()
    },
  }
}
