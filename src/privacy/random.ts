// Exact uniform integers and rational coin flips from a RandomSource (the OS CSPRNG in
// production, a seeded source in tests). Everything here is integer arithmetic: a uniform
// integer below n comes from rejection sampling on whole random bytes, never from
// `Math.floor(random() * n)`, which is biased and, with doubles, not uniform at all.
//
// Bytes are read from the source in blocks to keep the per-draw cost low; a reader is
// meant to live for one request (the stage creates one per answer), so buffered
// randomness never outlives the answer it was drawn for.

import type { RandomSource } from '../deps.ts'

const BLOCK_BYTES = 256

export class RandomReader {
  readonly #source: RandomSource
  #buf: Uint8Array = new Uint8Array(0)
  #pos = 0

  constructor(source: RandomSource) {
    this.#source = source
  }

  #byte(): number {
    if (this.#pos >= this.#buf.length) {
      this.#buf = this.#source.bytes(BLOCK_BYTES)
      this.#pos = 0
      if (this.#buf.length !== BLOCK_BYTES) throw new Error('random source returned the wrong number of bytes')
    }
    return this.#buf[this.#pos++]!
  }

  /** A uniformly random integer in [0, n), for 1 <= n <= 2^32. */
  uniformSmall(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > 2 ** 32) throw new RangeError(`uniformSmall: bad bound ${n}`)
    if (n === 1) return 0
    const bits = 32 - Math.clz32(n - 1)
    const bytes = Math.ceil(bits / 8)
    const topMask = (1 << (bits - 8 * (bytes - 1))) - 1
    for (;;) {
      let v = this.#byte() & topMask
      for (let i = 1; i < bytes; i++) v = v * 256 + this.#byte()
      if (v < n) return v
    }
  }

  /** A uniformly random integer in [0, n), for n >= 1. */
  uniform(n: bigint): bigint {
    if (n < 1n) throw new RangeError(`uniform: bound must be at least 1, got ${n}`)
    if (n <= 0x1_0000_0000n) return BigInt(this.uniformSmall(Number(n)))
    const bits = bitLength(n - 1n)
    const bytes = Math.ceil(bits / 8)
    const topBits = bits - 8 * (bytes - 1)
    const topMask = (1 << topBits) - 1
    for (;;) {
      // Build the value 32 bits at a time: fewer BigInt operations than byte by byte.
      let v = BigInt(this.#byte() & topMask)
      let rest = bytes - 1
      while (rest >= 4) {
        const w = ((this.#byte() << 24) | (this.#byte() << 16) | (this.#byte() << 8) | this.#byte()) >>> 0
        v = (v << 32n) | BigInt(w)
        rest -= 4
      }
      while (rest > 0) {
        v = (v << 8n) | BigInt(this.#byte())
        rest--
      }
      if (v < n) return v
    }
  }

  /** True with probability num/den exactly (0 <= num <= den, den >= 1). */
  bernoulli(num: bigint, den: bigint): boolean {
    if (num < 0n || den < 1n || num > den) throw new RangeError(`bernoulli: bad probability ${num}/${den}`)
    return this.uniform(den) < num
  }

  /** A fair coin. */
  coin(): boolean {
    return (this.#byte() & 1) === 1
  }
}

/** Number of bits needed to write n >= 0 in binary (0 for 0). */
export function bitLength(n: bigint): number {
  if (n < 0n) throw new RangeError('bitLength of a negative number')
  // toString(2) is linear in the size and fast enough for the < 200-bit values used here.
  return n === 0n ? 0 : n.toString(2).length
}

/** floor(sqrt(n)) for n >= 0, exactly (Newton's method on integers). */
export function isqrt(n: bigint): bigint {
  if (n < 0n) throw new RangeError('isqrt of a negative number')
  if (n < 2n) return n
  let x = 1n << BigInt(Math.ceil(bitLength(n) / 2))
  for (;;) {
    const y = (x + n / x) >> 1n
    if (y >= x) return x
    x = y
  }
}

export function gcd(a: bigint, b: bigint): bigint {
  a = a < 0n ? -a : a
  b = b < 0n ? -b : b
  while (b !== 0n) [a, b] = [b, a % b]
  return a
}
