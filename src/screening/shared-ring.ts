// A ring of recent queries kept in Redis and mirrored by each replica: the shared form of the
// stateful detector's history (one ring per caller, stateful-shared.ts) and of the model-wide
// index (one ring per model, stateful-callers.ts). Each replica keeps a copy of the rings it
// judges with and, per request, fetches only the queries other replicas appended since its copy
// was last brought up to date, so a request costs its own queries going in (a 128-bit digest and
// the pooled query at one byte a value: mnist 65 bytes) and the others' pooled queries coming
// back (mnist 49 bytes each), not the whole ring (65 KiB once full).
//
// Layout, three keys per ring, all capped and expiring `ttlMs` after the last write:
//   `<base>:d`  a 52-byte ASCII header (epoch: 16 characters, queries ever appended: 16 digits,
//               capacity, vector size: 10 each), then one 128-bit digest per slot;
//   `<base>:v`  one pooled query per slot (`dims` bytes, shared-store.ts cellBytes). Never raw inputs;
//   `<base>:w`  hash: per copy, the count of queries it has been sent or has written (at most
//               64 copies, past which they are dropped and copies say what they hold), and
//               under '#' the last id handed out.
// Slot of the n-th query ever appended: n mod capacity. The epoch is Redis's clock (TIME) when
// the ring was created; a ring that expired and was created again has another, so a replica
// never takes a new ring's queries for the continuation of its old copy. A copy's id is handed
// out by the script, unique within the ring's epoch; nothing here needs a random source.
//
// One round trip per request, atomic: the script returns the pooled queries the copy lacks, from
// its pointer (or the count the copy says it holds, whichever is further) up to the count before
// this request, or the whole ring when the copy is of another epoch or more than a ring behind;
// then appends the request's queries that are not exact repeats (digest already in the ring:
// a plain search over the digest string, at slot boundaries), says which it appended, and moves
// the copy's pointer past them. Only Redis decides what is a repeat, so copies need no digests.
// The pointer is what keeps traffic low under load: a replica's requests in flight together
// each get only the other replicas' queries that came after the previous one's.
// The replica brings its copy up to date and judges the request on it as the in-process code
// does (stateful.ts judgeBatch: a repeat is skipped, any other query is scored, then added), so
// each query is judged against exactly the queries Redis held before it, as one replica would.
// Replies on one connection come in the order Redis ran the scripts and each is applied
// synchronously when it arrives, so the copy moves forward in Redis's order; a reply that starts
// past the copy (one to an earlier request was lost, e.g. timed out) fails the request closed
// (503) and the copy is fetched whole, under a new id, next time.
//
// Why not the k-nearest search inside Redis (a Lua script that gets one pooled query and
// returns its score): measured on a full mnist ring (1,000 queries of 49 values), the script
// takes 2.1 ms of Redis CPU per single-digit request (bench/screening-redis-knn.ts), and Redis
// runs scripts one at a time; this one costs Redis a GET of the digests (16 KiB), a plain
// search per query and a few writes (about 50 us, bench/screening-redis.ts).

import type { Redis } from 'ioredis'
import { cellBytes, cellsFrom, REPEAT_RULE_LUA, SHARED_DIGEST_BYTES, stateUnavailable, type ScreeningStore } from './shared-store.ts'
import { scoreInTurn } from './stateful.ts'
import { VectorRing } from './vector-ring.ts'

const HEADER_BYTES = 52
const EPOCH_CHARS = 16
/** Pointers kept per ring; past it they are all dropped (copies then say what they hold). */
const MAX_WRITERS = 64

// KEYS: digests, vectors, pointers. ARGV: capacity, dims, TTL (ms), the copy's epoch, count
// (what it holds) and id ('' for none yet), then the request's queries in one string, each its
// digest then its pooled query. Returns {epoch, the copy's id, count before this request, first
// count returned, their pooled queries, one character per query of the request: '1' appended,
// '0' an exact repeat}.
const SYNC_SCRIPT = `${REPEAT_RULE_LUA}
local dkey, vkey, wkey = KEYS[1], KEYS[2], KEYS[3]
local cap = tonumber(ARGV[1])
local dims = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local me = ARGV[6]
local H, D, V = ${HEADER_BYTES}, ${SHARED_DIGEST_BYTES}, tonumber(ARGV[2])
local ds = redis.call('GET', dkey)
local epoch, total = '', 0
if ds then
  epoch = string.sub(ds, 1, ${EPOCH_CHARS})
  total = tonumber(string.sub(ds, 17, 32))
  if not total or tonumber(string.sub(ds, 33, 42)) ~= cap or tonumber(string.sub(ds, 43, 52)) ~= dims
    or string.len(ds) ~= H + math.min(total, cap) * D or redis.call('STRLEN', vkey) ~= math.min(total, cap) * V then
    -- Not a ring this code wrote with these settings: start afresh rather than misread it.
    ds = false
  end
end
if not ds then
  redis.call('DEL', dkey, vkey, wkey)
  local now = redis.call('TIME')
  epoch, total, ds = string.format('%010d%06d', tonumber(now[1]), tonumber(now[2])), 0, ''
end
local before = total
local count = math.min(total, cap)
local from = total - count
if ARGV[4] == epoch then
  -- What the copy holds, or will once the replies to its requests before this one are in.
  local known = math.max(tonumber(ARGV[5]) or -1, me ~= '' and tonumber(redis.call('HGET', wkey, me)) or -1)
  if known >= from and known <= total then from = known end
else
  me = ''
end
if me == '' then me = string.format('%d', redis.call('HINCRBY', wkey, '#', 1)) end
local vectors = ''
local n = total - from
if n > 0 then
  local p = from % cap
  local first = math.min(n, cap - p)
  vectors = redis.call('GETRANGE', vkey, p * V, (p + first) * V - 1)
  if n > first then vectors = vectors .. redis.call('GETRANGE', vkey, 0, (n - first) * V - 1) end
end
local rule = repeatRule(ds, H, math.min(total, cap), total % cap, cap)
local items, S = ARGV[7], D + V
local appended = {}
for j = 0, string.len(items) / S - 1 do
  local d = string.sub(items, j * S + 1, j * S + D)
  local slot = rule.take(d)
  appended[j + 1] = slot and '1' or '0'
  if slot then
    redis.call('SETRANGE', dkey, H + slot * D, d)
    redis.call('SETRANGE', vkey, slot * V, string.sub(items, j * S + D + 1, (j + 1) * S))
    total = total + 1
  end
end
redis.call('SETRANGE', dkey, 0, string.format('%s%016d%010d%010d', epoch, total, cap, dims))
if redis.call('HSET', wkey, me, string.format('%d', total)) == 1 and redis.call('HLEN', wkey) > ${MAX_WRITERS} + 1 then
  -- Too many copies (replicas restarted, copies forgotten): drop the pointers, keep the ids unique.
  local last = redis.call('HGET', wkey, '#')
  redis.call('DEL', wkey)
  redis.call('HSET', wkey, '#', last)
end
redis.call('PEXPIRE', dkey, ttl)
redis.call('PEXPIRE', wkey, ttl)
if total > 0 then redis.call('PEXPIRE', vkey, ttl) end
return {epoch, me, string.format('%d', before), string.format('%d', from), vectors, table.concat(appended)}
`

interface SyncScript {
  bulwarkRingSyncBuffer(dkey: string, vkey: string, wkey: string, capacity: number, dims: number, ttlMs: number, epoch: string, count: number, id: string, items: Buffer): Promise<Buffer[]>
}

/**
 * A replica's copy of one ring: its pooled queries, plus what ties it to Redis's ring (its
 * epoch and how many queries had been appended when the copy was last brought up to date).
 */
export class RingCopy extends VectorRing {
  epoch = ''
  appended = 0
  /** This copy's id in the ring's pointers ('': none yet; a new one per epoch and once the copy lost step). */
  writer = ''

  constructor(dims: number, capacity: number) {
    super(dims, capacity, 16)
  }

  override add(v: Float32Array): number {
    this.appended++
    return super.add(v)
  }

  /** Empties the copy: it now stands for ring `epoch` before its `appended`-th query. */
  reset(epoch: string, appended: number): void {
    this.count = 0
    this.next = 0
    this.epoch = epoch
    this.appended = appended
  }
}

export interface SharedRing {
  /**
   * Brings `copy` up to date with the ring under `base`, records the batch there, and judges
   * it on the copy as the in-process detector would: the smallest score (Infinity: none).
   */
  judge(base: string, copy: RingCopy, digests: readonly Buffer[], vectors: readonly Float32Array[], k: number): Promise<number>
}

export function sharedRing(store: ScreeningStore, capacity: number, dims: number, what: string): SharedRing {
  const redis = store.redis as Redis & SyncScript
  if (typeof (redis as Partial<SyncScript>).bulwarkRingSyncBuffer !== 'function') {
    store.redis.defineCommand('bulwarkRingSync', { numberOfKeys: 3, lua: SYNC_SCRIPT })
  }
  return {
    async judge(base, copy, digests, vectors, k) {
      const items = Buffer.concat(vectors.flatMap((v, i) => [digests[i]!, cellBytes(v)]))
      let reply: Buffer[]
      try {
        reply = await redis.bulwarkRingSyncBuffer(`${base}:d`, `${base}:v`, `${base}:w`, capacity, dims, store.ttlMs, copy.epoch || '-', copy.appended, copy.writer, items)
      } catch (err) {
        throw stateUnavailable(what, err)
      }
      // From here to the end, nothing waits: the copy moves in the order the replies came.
      const [epochB, idB, beforeB, fromB, vectorsB, appendedB] = reply
      const ringEpoch = epochB!.toString('latin1')
      const before = Number(beforeB!.toString())
      const from = Number(fromB!.toString())
      const whole = from === before - Math.min(before, capacity)
      if (ringEpoch !== copy.epoch || from > copy.appended || copy.appended > before) {
        if (!whole) {
          // The copy lacks queries Redis counted as sent to it: a reply to an earlier request was lost.
          const lost = new Error(`this replica's copy holds queries up to ${copy.appended}, the reply starts at ${from} (a reply was lost); the copy is fetched whole next time`)
          copy.reset('', 0)
          copy.writer = ''
          throw stateUnavailable(what, lost)
        }
        copy.reset(ringEpoch, from)
      }
      copy.writer = idB!.toString('latin1')
      for (let n = copy.appended; n < before; n++) copy.add(cellsFrom(vectorsB!, (n - from) * dims, dims))
      // As judgeBatch, with Redis saying which queries are new (appended).
      return scoreInTurn(copy, vectors.length, (i) => appendedB![i] === 0x31, (i) => vectors[i]!, (v) => copy.add(v), k)
    },
  }
}
