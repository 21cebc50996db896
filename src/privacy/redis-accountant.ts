// The privacy accountant shared by replicas, in Redis (`state.redis`, docs/scaleout.md): the
// same PrivacyAccountant contract and arithmetic as the file accountant (accountant.ts), so a
// caller alternating between replicas spends one budget, and a restarted replica forgets
// nothing.
//
// Layout: one sorted set per key, `<prefix>privacy:<key>`: score = wall time of the charge
// (ms), member = "<micro-epsilon>:<nano-rho>:<uuid>". The key expires retentionMs after its
// last charge; entries older than retentionMs are removed by each charge.
//
// Atomicity: the check-and-add is one Lua script (Redis runs a script alone), so two replicas
// charging the same key at once cannot both pass on the last of a budget. The script sums the
// window and applies the budget test (the same formulas as accountant.ts, in Lua doubles), and
// returns the window's entries; this side then recomputes the verdict with accountant.ts's own
// Ledger. Where the two disagree (a last-digit difference between C's and V8's log or sqrt at
// the exact edge of a Gaussian budget), the stricter one wins: a charge the script recorded
// but the Ledger refuses is removed again, and refused. Floating point can only refuse.
//
// Clocks: charges are stamped with this replica's wall clock (Clock.nowMs), as the file
// accountant does; replicas should run NTP. A replica ahead of the others makes its charges
// count a little longer, never shorter.
//
// Failure: a Redis error or timeout rejects with 503 state_unavailable: no answer is released
// whose cost was not recorded (fail closed). Durability of recorded charges is Redis's: run it
// with appendonly yes and appendfsync always (or everysec, accepting that a Redis crash can
// forget the last second of charges).

import type { Redis } from 'ioredis'
import type { Clock, RandomSource } from '../deps.ts'
import { BulwarkError } from '../errors.ts'
import { Ledger, MAX_WINDOW_MS, checkBudget, checkCost, checkKey, type ChargeResult, type PrivacyAccountant, type PrivacyBudget } from './accountant.ts'
import { EPSILON_UNITS, RHO_UNITS, type PrivacyCost } from './mechanisms.ts'

// KEYS[1]: the key's sorted set.
// ARGV: now, windowMs, retentionMs, cost e (micro-eps), cost r (nano-rho), budget e (micro-eps),
//       delta, member (to add), record (1/0).
// Returns {recorded (1/0), t1, e1, r1, t2, e2, r2, ...}: the window's entries before this charge.
const CHARGE_SCRIPT = `
local key = KEYS[1]
local now = tonumber(ARGV[1])
local windowMs = tonumber(ARGV[2])
local retentionMs = tonumber(ARGV[3])
local ce = tonumber(ARGV[4])
local cr = tonumber(ARGV[5])
local be = tonumber(ARGV[6])
local delta = tonumber(ARGV[7])
local record = ARGV[9] == '1'
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - retentionMs)
local rows = redis.call('ZRANGEBYSCORE', key, '(' .. (now - windowMs), '+inf', 'WITHSCORES')
local out = {0}
local e = 0
local r = 0
for i = 1, #rows, 2 do
  local pe, pr = string.match(rows[i], '^(%d+):(%d+):')
  pe = tonumber(pe) or 0
  pr = tonumber(pr) or 0
  e = e + pe
  r = r + pr
  out[#out + 1] = tonumber(rows[i + 1])
  out[#out + 1] = pe
  out[#out + 1] = pr
end
local ne = e + ce
local nr = r + cr
local fits = ne <= be
if fits and nr > 0 then
  local left = be - ne
  local allowed = 0
  if left > 0 then
    local L = math.log(1 / delta)
    local x = math.sqrt(L + left / ${EPSILON_UNITS}) - math.sqrt(L)
    allowed = math.floor(x * x * ${RHO_UNITS})
  end
  fits = nr <= allowed
end
if fits and record and (ce > 0 or cr > 0) then
  redis.call('ZADD', key, now, ARGV[8])
  redis.call('PEXPIRE', key, retentionMs)
  out[1] = 1
end
return out
`

interface ScriptClient {
  bulwarkPrivacyCharge(key: string, ...args: (string | number)[]): Promise<number[]>
}

export interface RedisAccountantOptions {
  redis: Redis
  clock: Clock
  random: RandomSource
  /** How long charges are kept: at least the longest policy window. Default 7 days. */
  retentionMs?: number
}

export class RedisAccountant implements PrivacyAccountant {
  readonly #redis: Redis & ScriptClient
  readonly #clock: Clock
  readonly #random: RandomSource
  readonly #retentionMs: number
  #closed = false

  constructor(options: RedisAccountantOptions) {
    this.#redis = options.redis as Redis & ScriptClient
    this.#clock = options.clock
    this.#random = options.random
    this.#retentionMs = options.retentionMs ?? MAX_WINDOW_MS
    if (typeof (this.#redis as Partial<ScriptClient>).bulwarkPrivacyCharge !== 'function') {
      options.redis.defineCommand('bulwarkPrivacyCharge', { numberOfKeys: 1, lua: CHARGE_SCRIPT })
    }
  }

  charge(key: string, cost: PrivacyCost, budget: PrivacyBudget): Promise<ChargeResult> {
    checkCost(cost)
    return this.#run(key, cost, budget, true)
  }

  balance(key: string, budget: PrivacyBudget): Promise<ChargeResult> {
    return this.#run(key, { epsilonMicros: 0, rhoNanos: 0 }, budget, false)
  }

  async close(): Promise<void> {
    this.#closed = true
  }

  async #run(key: string, cost: PrivacyCost, budget: PrivacyBudget, record: boolean): Promise<ChargeResult> {
    if (this.#closed) throw new Error('privacy accountant is closed')
    checkKey(key)
    checkBudget(budget, this.#retentionMs)
    const now = this.#clock.nowMs()
    const redisKey = `privacy:${key}`
    const member = `${cost.epsilonMicros}:${cost.rhoNanos}:${this.#random.uuid()}`
    let reply: number[]
    try {
      reply = await this.#redis.bulwarkPrivacyCharge(redisKey, now, budget.windowMs, this.#retentionMs, cost.epsilonMicros, cost.rhoNanos, budget.epsilonMicros, String(budget.delta), member, record ? '1' : '0')
    } catch (err) {
      throw unavailable(err)
    }
    // The same verdict, by accountant.ts's arithmetic over the entries the script saw.
    const ledger = new Ledger(this.#retentionMs)
    for (let i = 1; i + 3 <= reply.length; i += 3) {
      ledger.add('k', { t: Number(reply[i]), e: Number(reply[i + 1]), r: Number(reply[i + 2]), durable: true })
    }
    const verdict = ledger.charge('k', cost, budget, now, false).result
    const recorded = Number(reply[0]) === 1
    if (recorded && !verdict.ok) {
      // The script let it through at the very edge; this side does not: take it back, refuse.
      await this.#redis.zrem(redisKey, member).catch((err: unknown) => {
        throw unavailable(err)
      })
    }
    if (record && verdict.ok && !recorded && (cost.epsilonMicros > 0 || cost.rhoNanos > 0)) {
      // The script refused where the Ledger would not: the stricter verdict stands.
      const current = ledger.charge('k', { epsilonMicros: 0, rhoNanos: 0 }, budget, now, false).result
      return { ...current, ok: false, retryAfterMs: 1_000 }
    }
    return verdict
  }
}

function unavailable(err: unknown): BulwarkError {
  if (err instanceof BulwarkError) return err
  return new BulwarkError('state_unavailable', 'privacy budgets cannot be checked right now; retry after the Retry-After delay', {
    reason: `privacy accountant: Redis: ${(err as Error).message}`,
    headers: { 'retry-after': '1' },
    cause: err,
  })
}
