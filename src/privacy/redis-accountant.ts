// The privacy accountant shared by replicas, in Redis (`state.redis`, docs/scaleout.md): the
// same PrivacyAccountant contract and arithmetic as the file accountant (accountant.ts), so a
// caller alternating between replicas spends one budget, and a restarted replica forgets
// nothing.
//
// Layout, per key: a sorted set `<prefix>privacy:<key>`, score = time of the charge (ms),
// member = "<micro-epsilon>:<nano-rho>:<window ms>:<uuid>"; and a hash
// `<prefix>privacy-windows:<key>`: for each window its charges were made under, the time the
// last of them frees by that window. A charge counts while now < t + max(its window, the
// budget's), as accountant.ts says. Each call removes the charges older than the longest of the
// retention (the longest window of this replica's policies) and the windows whose charges may
// still count, so a replica whose policy has a shorter window (or no longer serves the model)
// never drops charges made under a longer one. Both keys expire once nothing in them can count;
// a call only ever lengthens their expiry, never shortens what another replica set. Members of
// the form "<e>:<r>:<uuid>", written before windows were recorded, have no window of their own:
// they count by the budget's window and are kept for the retention, as they were.
//
// Atomicity: the check-and-add is one Lua script (Redis runs a script alone), so two replicas
// charging the same key at once cannot both pass on the last of a budget. The script sums the
// window and applies the budget test (the same formulas as accountant.ts, in Lua doubles), and
// returns the entries that count; this side then recomputes the verdict with accountant.ts's
// own Ledger. Where the two disagree (a last-digit difference between C's and V8's log or sqrt
// at the exact edge of a Gaussian budget), the stricter one wins: a charge the script recorded
// but the Ledger refuses is removed again, and refused. Floating point can only refuse.
//
// Clocks: one for all replicas, the Redis server's. The script reads TIME itself, so charges
// are stamped and freed by the server's clock at the moment the script runs, whatever each
// replica's clock says: a replica whose clock runs ahead can no longer free the others'
// charges early, nor one behind make its own count short. It costs nothing: no round trip
// (TIME runs inside the script Redis runs anyway), no offset to cache or let go stale, and
// Redis 5 and later allow it in scripts that write (they replicate effects, not scripts). What
// remains is the server's own clock: a forward step of it frees charges early, for every
// replica alike, and Redis's key expiry follows it too. Keep the Redis host's clock slewed,
// never stepped, once it serves (chrony: makestep only at boot).
//
// Failure: a Redis error or timeout rejects with 503 state_unavailable: no answer is released
// whose cost was not recorded (fail closed). Durability of recorded charges is Redis's: run it
// with appendonly yes and appendfsync always (or everysec, accepting that a Redis crash can
// forget the last second of charges).

import type { Redis } from 'ioredis'
import type { Clock, RandomSource } from '../deps.ts'
import { BulwarkError } from '../errors.ts'
import { Ledger, MAX_WINDOW_MS, NO_COST, checkBudget, checkCost, checkKey, type ChargeResult, type PrivacyAccountant, type PrivacyBudget } from './accountant.ts'
import { EPSILON_UNITS, RHO_UNITS, type PrivacyCost } from './mechanisms.ts'

// KEYS[1]: the key's sorted set; KEYS[2]: its windows hash.
// ARGV: windowMs, retentionMs, cost e (micro-eps), cost r (nano-rho), budget e (micro-eps),
//       delta, member (to add), record (1/0), time ('' for the server's TIME; tests only).
// Returns {recorded (1/0), now, t1, e1, r1, w1, t2, ...}: the entries that count, before this charge.
const CHARGE_SCRIPT = `
local key = KEYS[1]
local windows = KEYS[2]
local windowMs = tonumber(ARGV[1])
local retentionMs = tonumber(ARGV[2])
local ce = tonumber(ARGV[3])
local cr = tonumber(ARGV[4])
local be = tonumber(ARGV[5])
local delta = tonumber(ARGV[6])
local record = ARGV[8] == '1'
local now
if ARGV[9] ~= '' then
  now = tonumber(ARGV[9])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
-- The windows whose charges may still count by their own length; forget the others.
local longest = 0
local keepMs = retentionMs
local known = redis.call('HGETALL', windows)
for i = 1, #known, 2 do
  local w = tonumber(known[i])
  local frees = tonumber(known[i + 1])
  if frees <= now then
    redis.call('HDEL', windows, known[i])
  else
    if w > longest then longest = w end
    if frees - now > keepMs then keepMs = frees - now end
  end
end
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - math.max(retentionMs, longest))
local rows = redis.call('ZRANGEBYSCORE', key, '(' .. (now - math.max(windowMs, longest)), '+inf', 'WITHSCORES')
local out = {0, now}
local e = 0
local r = 0
for i = 1, #rows, 2 do
  local t = tonumber(rows[i + 1])
  local pe, pr, pw = string.match(rows[i], '^(%d+):(%d+):(%d+):')
  if not pw then
    pe, pr = string.match(rows[i], '^(%d+):(%d+):')
    pw = 0
  end
  pe = tonumber(pe) or 0
  pr = tonumber(pr) or 0
  pw = tonumber(pw)
  if t > now - math.max(pw, windowMs) then
    e = e + pe
    r = r + pr
    out[#out + 1] = t
    out[#out + 1] = pe
    out[#out + 1] = pr
    out[#out + 1] = pw
  end
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
  redis.call('ZADD', key, now, ARGV[7])
  local frees = tonumber(redis.call('HGET', windows, windowMs) or '0')
  if now + windowMs > frees then redis.call('HSET', windows, windowMs, now + windowMs) end
  for _, k in ipairs({key, windows}) do
    if redis.call('PTTL', k) < keepMs then redis.call('PEXPIRE', k, keepMs) end
  end
  out[1] = 1
end
return out
`

interface ScriptClient {
  bulwarkPrivacyCharge(key: string, windows: string, ...args: (string | number)[]): Promise<number[]>
}

export interface RedisAccountantOptions {
  redis: Redis
  random: RandomSource
  /**
   * How long charges are kept at least: the longest window of this replica's policies. Each
   * charge is also kept for the window it was made under, if longer. Default 7 days.
   */
  retentionMs?: number
  /**
   * Tests only: stamps and frees charges by this clock's wall time instead of the Redis
   * server's, so that a test can move time. Never in a gateway: replicas would each bring
   * their own clock again.
   */
  clockForTests?: Clock
}

export class RedisAccountant implements PrivacyAccountant {
  readonly #redis: Redis & ScriptClient
  readonly #clock: Clock | null
  readonly #random: RandomSource
  readonly #retentionMs: number
  #closed = false

  constructor(options: RedisAccountantOptions) {
    this.#redis = options.redis as Redis & ScriptClient
    this.#clock = options.clockForTests ?? null
    this.#random = options.random
    this.#retentionMs = options.retentionMs ?? MAX_WINDOW_MS
    if (typeof (this.#redis as Partial<ScriptClient>).bulwarkPrivacyCharge !== 'function') {
      options.redis.defineCommand('bulwarkPrivacyCharge', { numberOfKeys: 2, lua: CHARGE_SCRIPT })
    }
  }

  charge(key: string, cost: PrivacyCost, budget: PrivacyBudget): Promise<ChargeResult> {
    checkCost(cost)
    return this.#run(key, cost, budget, true)
  }

  balance(key: string, budget: PrivacyBudget, ifCharged: PrivacyCost = NO_COST): Promise<ChargeResult> {
    checkCost(ifCharged)
    return this.#run(key, ifCharged, budget, false)
  }

  async close(): Promise<void> {
    this.#closed = true
  }

  async #run(key: string, cost: PrivacyCost, budget: PrivacyBudget, record: boolean): Promise<ChargeResult> {
    if (this.#closed) throw new Error('privacy accountant is closed')
    checkKey(key)
    checkBudget(budget, this.#retentionMs)
    const redisKey = `privacy:${key}`
    const member = `${cost.epsilonMicros}:${cost.rhoNanos}:${budget.windowMs}:${this.#random.uuid()}`
    let reply: number[]
    try {
      reply = await this.#redis.bulwarkPrivacyCharge(
        redisKey,
        `privacy-windows:${key}`,
        budget.windowMs,
        this.#retentionMs,
        cost.epsilonMicros,
        cost.rhoNanos,
        budget.epsilonMicros,
        String(budget.delta),
        member,
        record ? '1' : '0',
        this.#clock ? String(this.#clock.nowMs()) : '',
      )
    } catch (err) {
      throw unavailable(err)
    }
    // The same verdict, by accountant.ts's arithmetic over the entries the script saw, at its time.
    const now = Number(reply[1])
    const ledger = new Ledger(this.#retentionMs)
    for (let i = 2; i + 4 <= reply.length; i += 4) {
      ledger.add('k', { t: Number(reply[i]), e: Number(reply[i + 1]), r: Number(reply[i + 2]), w: Number(reply[i + 3]), durable: true })
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
