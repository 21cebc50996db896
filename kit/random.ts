// The seeded RandomSource of tests and benches: the same seed gives the same bytes on every
// run, so a statistical test, a digest key or an evaluation repeats exactly. xoshiro128**
// seeded from SHA-256 of the seed: fast and statistically good, and a string seed names
// what it is for ('snap', 'redis-vs-memory'). Not a CSPRNG: the gateway itself draws from
// cryptoRandom (src/deps.ts).

import { createHash } from 'node:crypto'
import type { RandomSource } from '../src/deps.ts'

/** A RandomSource whose stream is fixed by `seed` (a number seeds as its decimal text). */
export function seededRandom(seed: string | number): RandomSource {
  const h = createHash('sha256').update(String(seed)).digest()
  const s = new Uint32Array([h.readUInt32LE(0), h.readUInt32LE(4), h.readUInt32LE(8), h.readUInt32LE(12)])
  const next = (): number => {
    const result = Math.imul(rotl(Math.imul(s[1]!, 5), 7), 9) >>> 0
    const t = (s[1]! << 9) >>> 0
    s[2]! ^= s[0]!
    s[3]! ^= s[1]!
    s[1]! ^= s[2]!
    s[0]! ^= s[3]!
    s[2]! ^= t
    s[3] = rotl(s[3]!, 11)
    return result
  }
  let counter = 0
  return {
    bytes(n: number) {
      const out = new Uint8Array(n)
      for (let i = 0; i < n; i += 4) {
        const w = next()
        out[i] = w & 0xff
        if (i + 1 < n) out[i + 1] = (w >>> 8) & 0xff
        if (i + 2 < n) out[i + 2] = (w >>> 16) & 0xff
        if (i + 3 < n) out[i + 3] = w >>> 24
      }
      return out
    },
    // Distinct and in order, so a test can tell records apart and predict their ids.
    uuid() {
      counter++
      return `00000000-0000-4000-8000-${counter.toString(16).padStart(12, '0')}`
    },
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0
}
