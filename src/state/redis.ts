// The Redis connection that replicas share state through (`state.redis`, docs/scaleout.md):
// rate-limit counters (src/transport/rate-limit-store.ts), privacy budgets
// (src/privacy/redis-accountant.ts) and screening's per-principal state (src/screening/
// *-shared.ts, cooldowns.ts). One client per gateway, multiplexed.
//
// Failure is fast and visible: commands are never queued while the connection is down
// (enableOfflineQueue off) and time out after commandTimeoutMs, so a request that needs Redis
// fails at once (closed for budgets; for rate limits and screening as configured) instead of
// waiting; the client reconnects in the background with capped backoff; `problem()` feeds
// /readyz and `up` the bulwark_state_store_up gauge.

import { readFile } from 'node:fs/promises'
import path from 'node:path'
import { Redis } from 'ioredis'
import type { RedisConfig } from '../config/scaleout.ts'
import { systemClock, type Clock, type Logger, type Timer } from '../deps.ts'

export class SharedState {
  readonly client: Redis
  readonly keyPrefix: string
  private readonly target: string
  private lastError: string | null = null
  private closed = false

  private constructor(client: Redis, target: string, keyPrefix: string, log: Logger) {
    this.client = client
    this.target = target
    this.keyPrefix = keyPrefix
    let wasReady = false
    client.on('ready', () => {
      this.lastError = null
      if (!wasReady) log.info({ redis: target }, 'shared state: connected to Redis')
      else log.warn({ redis: target }, 'shared state: reconnected to Redis')
      wasReady = true
    })
    client.on('error', (err: Error) => {
      // ioredis emits one error per failed (re)connect; log only changes of cause.
      if (this.lastError !== err.message) log.warn({ redis: target, err: err.message }, 'shared state: Redis unreachable; budgets refuse, rate limits and screening as configured')
      this.lastError = err.message
    })
  }

  /**
   * Creates the client and waits (at most connectTimeoutMs) for the first connection. A Redis
   * that is down at start does not stop the start: the gateway reports not ready and fails
   * closed until it connects.
   */
  static async open(config: RedisConfig, baseDir: string, log: Logger, clock: Clock = systemClock): Promise<SharedState> {
    const file = (f: string | undefined) => (f === undefined ? undefined : readFile(path.resolve(baseDir, f), 'utf8'))
    const [password, ca, cert, key] = await Promise.all([file(config.passwordFile), file(config.tls?.caFile), file(config.tls?.certFile), file(config.tls?.keyFile)])
    const url = new URL(config.url)
    const target = `${url.protocol}//${url.host}${url.pathname === '/' ? '' : url.pathname}`
    const client = new Redis(config.url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: config.commandTimeoutMs,
      connectTimeout: config.connectTimeoutMs,
      retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 6), 2_000),
      keyPrefix: config.keyPrefix,
      connectionName: 'bulwark',
      disableClientInfo: true,
      ...(config.username !== undefined ? { username: config.username } : {}),
      ...(password !== undefined ? { password: password.trim() } : {}),
      ...(url.protocol === 'rediss:'
        ? { tls: { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}), ...(config.tls?.serverName ? { servername: config.tls.serverName } : {}) } }
        : {}),
    })
    const state = new SharedState(client, target, config.keyPrefix, log)
    let timer: Timer | undefined
    await Promise.race([
      client.connect().catch(() => {}),
      new Promise<void>((resolve) => (timer = clock.setTimeout(resolve, config.connectTimeoutMs))),
    ])
    timer?.cancel()
    return state
  }

  get up(): boolean {
    return this.client.status === 'ready'
  }

  /** Why shared state cannot be used now (for /readyz), or null. */
  problem(): string | null {
    if (this.up) return null
    return `Redis ${this.target} is ${this.client.status}${this.lastError ? `: ${this.lastError}` : ''}; privacy budgets are refused until it is back (rate limits and screening as configured)`
  }

  async close(): Promise<void> {
    if (this.closed) return
    this.closed = true
    await this.client.quit().catch(() => this.client.disconnect())
  }
}
