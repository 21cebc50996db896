// The extraction detector (prada.ts) with each principal's state in Redis, so replicas judge a
// caller on all of its queries the model answered (refused ones too, as prada.ts says), not on
// the share that reached them.
//
// Layout, per model and principal, under
// `<prefix>screening:extraction:<model>:w<windowSize>g<growingSetPerClass>d<dims>:<part>:<principal>`:
//   v    the state's version: a counter, one up per write
//   d    the last windowSize nearest-neighbour distances: a ring of Float64
//   s    the 128-bit digests of the last windowSize distinct queries (shared-store.ts), for
//        skipping exact repeats: a ring of 16-byte slots
//   c<k> predicted class k's growing set: its count, next slot, n, sum, sum of squares and
//        threshold T_k, then a ring of growingSetPerClass pooled vectors (Float32). Never raw inputs.
// Each ring is a string: a Float64 header (count, next; six numbers for a class), then its
// slots, so a write is a SETRANGE of the slots it changed. Each request renews the TTL
// (ttlMs) of the keys it read: a caller's state goes ttlMs after its last new query, a class's
// set ttlMs after the last query predicted as that class.
//
// Atomicity: reading a class's set, taking a distance and deciding whether the query joins
// the set is a read-modify-write, too much for a script. So this side reads the keys it needs
// (MGET: one snapshot), runs the in-process code (prada.ts judgeBatch) on a copy, and writes
// the changed slots with a Lua script that first checks the version: if another request wrote
// since, nothing is written and this side reads and judges again. A replica queues its own
// requests per principal (keyed-queue.ts), so only requests on other replicas at the same
// moment make it read again. The outcome is the one a single replica reaches with the
// requests in the order Redis committed them.
//
// Liveness: replicas that each stream one principal's requests could keep beating one
// another's writes. After OPTIMISTIC_ATTEMPTS lost races a request claims the principal's
// state (`claim`, SET NX with a lease of CLAIM_LEASE_MS): while a claim stands, only its
// holder's write is accepted, and the write ends it. A replica that dies holding a claim
// delays the others by the lease at most.

import type { Redis } from 'ioredis'
import { systemClock, type Clock, type RandomSource } from '../deps.ts'
import { BulwarkError } from '../errors.ts'
import type { DetectorResult, ScreenBatch, SharedDetector } from './detector.ts'
import { KeyedQueue } from './keyed-queue.ts'
import { argmax, GrowingSet, judgeBatch, PRADA_DETECTOR, PradaState, type PradaOptions } from './prada.ts'
import { bytesOf, DigestIds, float32s, float64s, SHARED_DIGEST_BYTES, sharedDigest, stateKey, stateUnavailable, type ScreeningStore } from './shared-store.ts'

/** Races lost to other replicas' writes before a request claims the principal's state. */
export const OPTIMISTIC_ATTEMPTS = 3
/** A claim's lease: longer than a read and a write take (two commands, commandTimeoutMs each). */
const CLAIM_LEASE_MS = 2_000
/** How often a request waiting for another replica's claim asks again, and for how long at most (clock time). */
const CLAIM_POLL_MS = 2
const CLAIM_WAIT_MS = 3_000

const RING_HEADER = 16 // count, next
const CLASS_HEADER = 48 // count, next, n, sum, sumSq, threshold

// KEYS[1]: the version counter; KEYS[2]: the claim; KEYS[3..]: the state's rings. ARGV[1]:
// the version the writes were computed from; ARGV[2]: TTL (ms); ARGV[3]: the request's claim
// token ('' without one); then for each ring: reset (1: delete it first), n, and n pairs
// (offset, bytes). Returns 1, or 0 without writing when the version moved on or another
// request holds the claim.
const COMMIT_SCRIPT = `
local claim = redis.call('GET', KEYS[2])
if claim and claim ~= ARGV[3] then return 0 end
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v ~= tonumber(ARGV[1]) then return 0 end
local a = 4
for i = 3, #KEYS do
  if ARGV[a] == '1' then redis.call('DEL', KEYS[i]) end
  local n = tonumber(ARGV[a + 1])
  a = a + 2
  for j = 1, n do
    redis.call('SETRANGE', KEYS[i], tonumber(ARGV[a]), ARGV[a + 1])
    a = a + 2
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if claim then redis.call('DEL', KEYS[2]) end
return 1
`

interface CommitScript {
  bulwarkScreeningCommit(numberOfKeys: number, ...args: (string | number | Buffer)[]): Promise<number>
}

/** A growing set that remembers which slots a request wrote. */
class TrackedSet extends GrowingSet {
  readonly written = new Set<number>()
  /** Stored bytes were not a valid set: replace them. */
  reset = false

  override add(v: Float32Array): number {
    const slot = super.add(v)
    this.written.add(slot)
    return slot
  }
}

/** A principal's state loaded for one request, remembering which slots the request wrote. */
class TrackedState extends PradaState {
  readonly distanceSlots = new Set<number>()
  readonly seenSlots = new Set<number>()
  seenCount = 0
  resetDistances = false
  resetSeen = false

  override remember(digest: number): boolean {
    const slot = this.seenNext
    if (!super.remember(digest)) return false
    this.seenSlots.add(slot)
    if (this.seenCount < this.seenRing.length) this.seenCount++
    return true
  }

  override record(d: number): void {
    this.distanceSlots.add(this.next)
    super.record(d)
  }

  override newClass(dims: number, capacity: number): GrowingSet {
    return new TrackedSet(dims, capacity)
  }
}

/** count and next of a ring string, or null when the bytes are not a ring of `cap` slots of `slot` bytes. */
function ringHeader(bytes: Buffer, header: number, cap: number, slot: number): Float64Array | null {
  if (bytes.length < header) return null
  const h = float64s(bytes, 0, header / 8)
  const [count, next] = [h[0]!, h[1]!]
  const valid = Number.isInteger(count) && Number.isInteger(next) && count >= 0 && count <= cap && next >= 0 && next < cap && (count === cap || next === count)
  return valid && bytes.length === header + count * slot ? h : null
}

/** The snapshot as an in-process state; each part that is not valid is empty and marked for replacement. */
function restore(values: readonly (Buffer | null)[], classes: readonly number[], o: PradaOptions, ids: DigestIds): TrackedState {
  const dims = o.encoder.dims
  const W = o.windowSize
  const s = new TrackedState(W)
  const [, d, seen] = values
  if (d) {
    const h = ringHeader(d, RING_HEADER, W, 8)
    if (h) {
      s.count = h[0]!
      s.next = h[1]!
      s.distances.set(float64s(d, RING_HEADER, s.count))
    } else s.resetDistances = true
  }
  if (seen) {
    const h = ringHeader(seen, RING_HEADER, W, SHARED_DIGEST_BYTES)
    if (h) {
      s.seenCount = h[0]!
      s.seenNext = h[1]!
      for (let i = 0; i < s.seenCount; i++) {
        const off = RING_HEADER + i * SHARED_DIGEST_BYTES
        const id = ids.id(seen.subarray(off, off + SHARED_DIGEST_BYTES))
        s.seenRing[i] = id
        s.seen.add(id)
      }
    } else s.resetSeen = true
  }
  classes.forEach((c, i) => {
    const bytes = values[3 + i]
    if (!bytes) return
    const g = new TrackedSet(dims, o.growingSetPerClass)
    const h = ringHeader(bytes, CLASS_HEADER, o.growingSetPerClass, dims * 4)
    if (h) {
      const count = h[0]!
      if (count > 0) g.vectors = float32s(bytes, CLASS_HEADER, count * dims)
      g.count = count
      g.next = h[1]!
      g.n = h[2]!
      g.sum = h[3]!
      g.sumSq = h[4]!
      g.threshold = h[5]!
    } else g.reset = true
    s.classes.set(c, g)
  })
  return s
}

/** The script's arguments for one ring: reset flag, then its header and written slots. */
function ringWrites(reset: boolean, header: Float64Array, slots: Iterable<number>, headerBytes: number, slotBytes: number, slot: (i: number) => Buffer): (string | number | Buffer)[] {
  const out: (string | number | Buffer)[] = [reset ? '1' : '0', 0, 0, bytesOf(header)]
  for (const i of slots) out.push(headerBytes + i * slotBytes, slot(i))
  out[1] = (out.length - 2) / 2
  return out
}

export function createSharedPradaDetector(o: PradaOptions, model: string, store: ScreeningStore, random: RandomSource, clock: Clock = systemClock): SharedDetector {
  const dims = o.encoder.dims
  const shape = `w${o.windowSize}g${o.growingSetPerClass}d${dims}`
  const redis = store.redis as Redis & CommitScript
  if (typeof (redis as Partial<CommitScript>).bulwarkScreeningCommit !== 'function') store.redis.defineCommand('bulwarkScreeningCommit', { lua: COMMIT_SCRIPT })
  const queue = new KeyedQueue()
  // Claim tokens: this replica's random id and a count, unique across replicas.
  const replica = Buffer.from(random.bytes(12)).toString('hex')
  let claims = 0
  const unavailable = (err: unknown) => stateUnavailable(`extraction detector on model ${model}`, err)
  const contention = (why: string) =>
    new BulwarkError('state_unavailable', 'screening state cannot be updated right now; retry after the Retry-After delay', {
      reason: `extraction detector on model ${model}: ${why}`,
      headers: { 'retry-after': '1' },
    })

  /**
   * One read, judgement and conditional write; null when another request wrote first or holds
   * the claim. With a claim token the write is made even when nothing changed, to end the claim.
   */
  const attempt = async (batch: ScreenBatch, probabilities: readonly Float32Array[], digests: readonly Buffer[], classes: readonly number[], token: string): Promise<{ result: DetectorResult | null } | null> => {
    const key = (part: string) => stateKey('extraction', model, `${shape}:${part}`, batch.principal)
    const keys = [key('v'), key('d'), key('s'), ...classes.map((c) => key(`c${c}`))]
    let values: (Buffer | null)[]
    try {
      values = await redis.mgetBuffer(...keys)
    } catch (err) {
      throw unavailable(err)
    }
    const version = values[0] ? Number(values[0].toString('latin1')) : 0
    const ids = new DigestIds()
    const s = restore(values, classes, o, ids)
    const result = judgeBatch(s, { principal: batch.principal, items: batch.items, digests: digests.map((d) => ids.id(d)) }, probabilities, o)
    if (s.seenSlots.size === 0 && !token) return { result } // only exact repeats: nothing to write

    const args: (string | number | Buffer)[] = [version, store.ttlMs, token]
    const ringKeys = [key('d'), key('s')]
    args.push(...ringWrites(s.resetDistances, Float64Array.of(s.count, s.next), s.distanceSlots, RING_HEADER, 8, (i) => bytesOf(s.distances, i, 1)))
    args.push(...ringWrites(s.resetSeen, Float64Array.of(s.seenCount, s.seenNext), s.seenSlots, RING_HEADER, SHARED_DIGEST_BYTES, (i) => ids.digest(s.seenRing[i]!)))
    // Every class the batch was predicted as: its set changed, or only its TTL is renewed.
    for (const [c, g] of s.classes) {
      if (!(g instanceof TrackedSet)) continue
      ringKeys.push(key(`c${c}`))
      if (g.written.size === 0 && !g.reset) args.push('0', 0)
      else {
        const header = Float64Array.of(g.count, g.next, g.n, g.sum, g.sumSq, g.threshold)
        args.push(...ringWrites(g.reset, header, g.written, CLASS_HEADER, dims * 4, (i) => bytesOf(g.vectors, i * dims, dims)))
      }
    }
    let committed: number
    try {
      committed = await redis.bulwarkScreeningCommit(2 + ringKeys.length, keys[0]!, key('claim'), ...ringKeys, ...args)
    } catch (err) {
      throw unavailable(err)
    }
    return committed === 1 ? { result } : null
  }

  /** Waits until this request holds the principal's claim (SET NX), polling while another does. */
  const claim = async (principal: string, token: string): Promise<void> => {
    const claimKey = stateKey('extraction', model, `${shape}:claim`, principal)
    const giveUpMs = clock.monotonicMs() + CLAIM_WAIT_MS
    for (;;) {
      let ok: string | null
      try {
        ok = await redis.set(claimKey, token, 'PX', CLAIM_LEASE_MS, 'NX')
      } catch (err) {
        throw unavailable(err)
      }
      if (ok === 'OK') return
      if (clock.monotonicMs() >= giveUpMs) break
      await clock.sleep(CLAIM_POLL_MS)
    }
    throw contention(`another replica held the principal's state for ${CLAIM_WAIT_MS} ms`)
  }

  return {
    ...PRADA_DETECTOR,
    mode: o.mode,
    shared: true,
    inspect(batch: ScreenBatch): Promise<DetectorResult | null> {
      const probabilities = batch.probabilities
      if (!probabilities) return Promise.reject(new Error('extraction detector needs the model output'))
      const digests = batch.items.map(sharedDigest)
      const classes = [...new Set(probabilities.map(argmax))]
      return queue.run(batch.principal, async () => {
        for (let i = 0; i < OPTIMISTIC_ATTEMPTS; i++) {
          const done = await attempt(batch, probabilities, digests, classes, '')
          if (done) return done.result
        }
        // Contended: claim the state so that this write is the next one. Holding the claim, the
        // write fails only if the lease ran out first; then claim again, twice at most.
        for (let i = 0; i < 2; i++) {
          const token = `${replica}:${++claims}`
          await claim(batch.principal, token)
          const done = await attempt(batch, probabilities, digests, classes, token)
          if (done) return done.result
        }
        throw contention(`the principal's claim ran out twice before its write (lease ${CLAIM_LEASE_MS} ms)`)
      })
    },
  }
}
