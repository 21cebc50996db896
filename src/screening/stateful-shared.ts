// The stateful query detector (stateful.ts) with each principal's ring of recent queries in
// Redis, so replicas judge a caller on all of its queries, not on the share that reached them.
//
// Layout: one string per model and principal,
// `<prefix>screening:stateful:<model>:h<historyPerPrincipal>d<dims>:<principal>`: a 40-byte
// ASCII header (count, next slot, capacity, slot size; 10 digits each), then up to
// historyPerPrincipal slots of 16 + 4·dims bytes: the query's 128-bit digest
// (shared-store.ts) and its pooled vector as Float32 (mnist: 212 bytes a query, 207 KiB for a
// full ring). Never raw inputs. The key expires `ttlMs` after the principal's last query.
//
// One round trip per request, atomic: this side pools the batch, and one Lua script appends
// the items that are not exact repeats (overwriting the oldest slot once the ring is full,
// as the in-process ring does) and returns the ring as it was before. This side then judges
// the batch against that ring with the in-process code (stateful.ts judgeBatch), so each
// query is judged against exactly the queries Redis recorded before it, whichever replica
// took them; concurrent requests are put in order by Redis, none is lost.
//
// Cost: the whole ring travels with every request (a full mnist ring: 207 KiB) and the script
// slices out its digests (1000 for a full ring). Memory in Redis: one ring per principal that
// queried the model within the TTL.

import type { Redis } from 'ioredis'
import type { DetectorResult, ScreenBatch, SharedDetector } from './detector.ts'
import { bytesOf, DigestIds, SHARED_DIGEST_BYTES, sharedDigest, stateKey, stateUnavailable, type ScreeningStore } from './shared-store.ts'
import { History, judgeBatch, STATEFUL_DETECTOR, type StatefulOptions } from './stateful.ts'

const HEADER_BYTES = 40

// KEYS[1]: the ring. ARGV: capacity, slot size, TTL (ms), then one slot per item (digest ..
// vector), in batch order. Returns the ring as it was (false when there was none).
const APPEND_SCRIPT = `
local key = KEYS[1]
local cap = tonumber(ARGV[1])
local slot = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local H = ${HEADER_BYTES}
local D = ${SHARED_DIGEST_BYTES}
local ring = redis.call('GET', key)
local count, nxt = 0, 0
if ring then
  count = tonumber(string.sub(ring, 1, 10))
  nxt = tonumber(string.sub(ring, 11, 20))
  if not count or not nxt or count > cap or nxt >= cap or string.len(ring) ~= H + count * slot then
    -- Not a ring this code wrote: start afresh rather than misread it.
    redis.call('DEL', key)
    ring = false
    count, nxt = 0, 0
  end
end
local seen = {}
for i = 0, count - 1 do seen[string.sub(ring, H + i * slot + 1, H + i * slot + D)] = true end
local written = {}
for j = 4, #ARGV do
  local item = ARGV[j]
  local d = string.sub(item, 1, D)
  if not seen[d] then
    if count == cap then
      seen[written[nxt] or string.sub(ring, H + nxt * slot + 1, H + nxt * slot + D)] = nil
    else
      count = count + 1
    end
    redis.call('SETRANGE', key, H + nxt * slot, item)
    written[nxt] = d
    seen[d] = true
    nxt = (nxt + 1) % cap
  end
end
redis.call('SETRANGE', key, 0, string.format('%010d%010d%010d%010d', count, nxt, cap, slot))
redis.call('PEXPIRE', key, ttl)
return ring
`

interface AppendScript {
  bulwarkStatefulAppendBuffer(key: string, capacity: number, slotBytes: number, ttlMs: number, ...slots: Buffer[]): Promise<Buffer | null>
}

/** The ring as Redis returned it, oldest query first, as an in-process History. */
function restore(ring: Buffer | null, o: StatefulOptions, slotBytes: number, ids: DigestIds): History {
  const dims = o.encoder.dims
  const cap = o.historyPerPrincipal
  const history = new History(dims, cap)
  if (!ring || ring.length < HEADER_BYTES) return history
  const count = Number(ring.toString('latin1', 0, 10))
  const next = Number(ring.toString('latin1', 10, 20))
  if (!(count <= cap && next < cap) || ring.length !== HEADER_BYTES + count * slotBytes) return history
  // One aligned copy; the vectors are views into it (History.add copies them again).
  const bytes = new Uint8Array(ring.length)
  bytes.set(ring)
  const first = count < cap ? 0 : next
  for (let i = 0; i < count; i++) {
    const off = HEADER_BYTES + ((first + i) % cap) * slotBytes
    const digest = Buffer.from(bytes.buffer, off, SHARED_DIGEST_BYTES)
    history.addQuery(new Float32Array(bytes.buffer, off + SHARED_DIGEST_BYTES, dims), ids.id(digest))
  }
  return history
}

export function createSharedStatefulDetector(o: StatefulOptions, model: string, store: ScreeningStore): SharedDetector {
  if (o.k > o.historyPerPrincipal) throw new RangeError(`stateful: k (${o.k}) must not exceed historyPerPrincipal (${o.historyPerPrincipal})`)
  const dims = o.encoder.dims
  const slotBytes = SHARED_DIGEST_BYTES + dims * 4
  const shape = `h${o.historyPerPrincipal}d${dims}`
  const redis = store.redis as Redis & AppendScript
  if (typeof (redis as Partial<AppendScript>).bulwarkStatefulAppendBuffer !== 'function') {
    store.redis.defineCommand('bulwarkStatefulAppend', { numberOfKeys: 1, lua: APPEND_SCRIPT })
  }
  return {
    ...STATEFUL_DETECTOR,
    mode: o.mode,
    shared: true,
    async inspect(batch: ScreenBatch): Promise<DetectorResult | null> {
      const digests = batch.items.map(sharedDigest)
      const vectors = batch.items.map((item) => o.encoder.encode(item))
      const slots = vectors.map((v, i) => Buffer.concat([digests[i]!, bytesOf(v)]))
      let before: Buffer | null
      try {
        before = await redis.bulwarkStatefulAppendBuffer(stateKey('stateful', model, shape, batch.principal), o.historyPerPrincipal, slotBytes, store.ttlMs, ...slots)
      } catch (err) {
        throw stateUnavailable(`stateful detector on model ${model}`, err)
      }
      const ids = new DigestIds()
      const history = restore(before, o, slotBytes, ids)
      const score = judgeBatch(history, digests.map((d) => ids.id(d)), (i) => vectors[i]!, o.k)
      if (score === Infinity) return null
      return { score, threshold: o.threshold, alarm: score < o.threshold }
    },
  }
}
