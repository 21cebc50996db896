// What the screening detectors share across replicas when `state.redis` is configured
// (docs/scaleout.md): the Redis client (keys under the configured keyPrefix, which the client
// adds), how long a caller's state outlives its last query, the key of a detector's state, the
// digest that tells exact repeats apart on every replica, and the one error a store failure
// becomes.
//
// Digests. In-process detectors use a 53-bit digest keyed with a per-process secret
// (digest.ts), which differs between replicas, so a retry sent to another replica would look
// like a new query at distance 0. Replicas share no secret, so the shared stores use SHA-256 of
// the item's bytes, cut to 128 bits: no key is needed because finding two inputs with the same
// digest (to pass a probe off as a retry) costs about 2^64 hashes.
//
// Pooled queries are stored one byte a value (the encoder keeps them at 8 bits, encoder.ts);
// other numbers as the platform's Float32/Float64 bytes (little-endian on x86-64 and arm64,
// where the replicas of one gateway run).

import { createHash } from 'node:crypto'
import type { Redis } from 'ioredis'
import { BulwarkError } from '../errors.ts'
import { CELL_LEVELS } from './encoder.ts'

export const SHARED_DIGEST_BYTES = 16

export interface ScreeningStore {
  readonly redis: Redis
  /** How long a caller's screening state is kept after its last query (PEXPIRE on every write). */
  readonly ttlMs: number
}

/**
 * Key of one principal's state of one detector on one model. `shape` names the stored layout
 * (history length, vector size...): a policy change that alters it starts afresh instead of
 * misreading old bytes, and the old keys expire.
 */
export function stateKey(detector: string, model: string, shape: string, principal: string): string {
  return `screening:${detector}:${model}:${shape}:${principal}`
}

/** SHA-256 of the item's bytes, first 128 bits. */
export function sharedDigest(item: Float32Array): Buffer {
  return createHash('sha256').update(new Uint8Array(item.buffer, item.byteOffset, item.byteLength)).digest().subarray(0, SHARED_DIGEST_BYTES)
}

/**
 * Lua, for the scripts of the shared stores: the exact-repeat rule of the in-process detectors
 * (stateful.ts judgeBatch, prada.ts remember) on a ring of digests kept in Redis. `ds` holds
 * the ring's `count` used slots from byte `base` + 1 on (slot i at base + i * D), the next
 * query goes to slot `nextSlot` of `cap`. `rule.take(d)` returns nil when the query is a repeat (its
 * digest is in a slot no earlier query of the request overwrote, or an earlier query of the
 * request has it and its slot was not overwritten since), else the slot it takes, moving
 * `rule.count` and `rule.next` on. `ds` holds nothing past the used slots.
 */
export const REPEAT_RULE_LUA = `
local function repeatRule(ds, base, count, nextSlot, cap)
  local D = ${SHARED_DIGEST_BYTES}
  local rule, overwritten, added, addedAt = {count = count, next = nextSlot}, {}, {}, {}
  local function repeated(d)
    if added[d] then return true end
    local at = base + 1
    while true do
      local p = string.find(ds, d, at, true)
      if not p then return false end
      local off = p - 1 - base
      if off % D == 0 and not overwritten[off / D] then return true end
      at = p + 1
    end
  end
  function rule.take(d)
    if repeated(d) then return nil end
    local slot = rule.next
    if rule.count == cap then
      overwritten[slot] = true
      if addedAt[slot] then added[addedAt[slot]] = nil end
    end
    added[d], addedAt[slot] = true, d
    rule.next = (slot + 1) % cap
    if rule.count < cap then rule.count = rule.count + 1 end
    return slot
  end
  return rule
end
`

/** A Redis failure (down, timed out, refused) as the request's refusal: 503, fail closed. */
export function stateUnavailable(what: string, err: unknown): BulwarkError {
  if (err instanceof BulwarkError) return err
  return new BulwarkError('state_unavailable', 'screening state cannot be read right now; retry after the Retry-After delay', {
    reason: `${what}: Redis: ${(err as Error).message}`,
    headers: { 'retry-after': '1' },
    cause: err,
  })
}

/** A Float64Array copy of `bytes` (Redis replies are not aligned for a view). */
export function float64s(bytes: Buffer, offset: number, count: number): Float64Array {
  const out = new Float64Array(count)
  new Uint8Array(out.buffer).set(bytes.subarray(offset, offset + count * 8))
  return out
}

/** A copy of the bytes of a typed array (or part of one), as Redis arguments want them. */
export function bytesOf(a: Float32Array | Float64Array, start = 0, length = a.length - start): Buffer {
  return Buffer.from(new Uint8Array(a.buffer, a.byteOffset + start * a.BYTES_PER_ELEMENT, length * a.BYTES_PER_ELEMENT))
}

/** A pooled query (encoder.ts: each value a multiple of 1/255 in [0, 1]) as one byte a value. */
export function cellBytes(v: Float32Array): Buffer {
  const out = Buffer.allocUnsafe(v.length)
  for (let i = 0; i < v.length; i++) out[i] = Math.round(v[i]! * CELL_LEVELS)
  return out
}

/** The pooled query of `dims` bytes at `offset`: the exact values the encoder produced. */
export function cellsFrom(bytes: Uint8Array, offset: number, dims: number): Float32Array {
  const out = new Float32Array(dims)
  for (let i = 0; i < dims; i++) out[i] = bytes[offset + i]! / CELL_LEVELS
  return out
}
