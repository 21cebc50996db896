// Exact uniform integers and rational coin flips from a RandomSource (the OS CSPRNG in
// production, a seeded source in tests). Everything here is integer arithmetic: a uniform
// integer below n comes from rejection sampling on random bits, never from
// `Math.floor(random() * n)`, which is biased and, with doubles, not uniform at all.
//
// Bits, not bytes. The samplers spend most of their draws on coin flips of a rational
// probability num/den (CKS Algorithm 1). Such a flip compares a uniform random real
// u = 0.b1 b2 b3... with num/den one binary digit at a time and stops at the first digit
// where they differ: it reads 2 random bits on average, where a uniform integer below den
// would take up to 32. The result is exactly Bernoulli(num/den): u < num/den with
// probability num/den, and u equals it with probability 0.
//
// Bytes are read from the source in blocks so that the per-draw cost stays low. One reader
// may serve many answers (the output-privacy stage keeps one): the draws of one answer are
// independent of those of every other answer whichever block they come from, and a
// seeded source still gives one fixed sequence of draws.

import type { RandomSource } from '../deps.ts'

const BLOCK_BYTES = 4096
/** The largest den of the number path of `bernoulliSmall`: 2·den stays an exact integer. */
const EXACT_DEN = 2 ** 52

export class RandomReader {
  readonly #source: RandomSource
  #buf: Uint8Array = new Uint8Array(0)
  #pos = 0
  /** Unread random bits, the high `#left` bits of `#word` below bit 32. */
  #word = 0
  #left = 0

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

  /** The next 32 random bits, once the last word is used up. */
  #refill(): void {
    this.#word = ((this.#byte() << 24) | (this.#byte() << 16) | (this.#byte() << 8) | this.#byte()) >>> 0
    this.#left = 32
  }

  /** One random bit. */
  #bit(): number {
    if (this.#left === 0) this.#refill()
    this.#left--
    return (this.#word >>> this.#left) & 1
  }

  /** k random bits (1 <= k <= 32) as an unsigned integer, most significant first. */
  #bits(k: number): number {
    let v = 0
    while (k > 0) {
      if (this.#left === 0) this.#refill()
      const n = k < this.#left ? k : this.#left
      this.#left -= n
      if (n === 32) {
        v = this.#word // all 32 bits of a fresh word; v was 0 (k <= 32)
      } else {
        // v has at most 32 - k bits, so v · 2^n + chunk fits in 32 bits: shifts, then unsigned.
        v = ((v << n) | ((this.#word >>> this.#left) & ((1 << n) - 1))) >>> 0
      }
      k -= n
    }
    return v
  }

  /** A uniformly random integer in [0, n), for 1 <= n <= 2^32. */
  uniformSmall(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > 2 ** 32) throw new RangeError(`uniformSmall: bad bound ${n}`)
    if (n === 1) return 0
    const bits = 32 - Math.clz32(n - 1)
    for (;;) {
      const v = this.#bits(bits)
      if (v < n) return v
    }
  }

  /** A uniformly random integer in [0, n), for n >= 1. */
  uniform(n: bigint): bigint {
    if (n < 1n) throw new RangeError(`uniform: bound must be at least 1, got ${n}`)
    if (n <= 0x1_0000_0000n) return BigInt(this.uniformSmall(Number(n)))
    const bits = bitLength(n - 1n)
    for (;;) {
      // The top bits first, then 32 at a time: fewer BigInt operations than bit by bit.
      let rest = bits % 32 || 32
      let v = BigInt(this.#bits(rest))
      for (; rest < bits; rest += 32) v = (v << 32n) | BigInt(this.#bits(32))
      if (v < n) return v
    }
  }

  /** True with probability num/den exactly (integers, 0 <= num <= den, 1 <= den <= 2^52). */
  bernoulliSmall(num: number, den: number): boolean {
    if (!Number.isInteger(num) || !Number.isInteger(den) || num < 0 || den < 1 || num > den || den > EXACT_DEN) {
      throw new RangeError(`bernoulliSmall: bad probability ${num}/${den}`)
    }
    if (num === den) return true
    // The binary digits of num/den, by doubling the remainder (below 2^53: exact), compared
    // with random bits until one differs.
    let r = num
    for (;;) {
      r *= 2
      const digit = r >= den ? 1 : 0
      r -= digit * den
      const b = this.#bit()
      if (b !== digit) return b < digit
    }
  }

  /** True with probability num/den exactly (0 <= num <= den, den >= 1). */
  bernoulli(num: bigint, den: bigint): boolean {
    if (num < 0n || den < 1n || num > den) throw new RangeError(`bernoulli: bad probability ${num}/${den}`)
    if (den <= EXACT_DEN) return this.bernoulliSmall(Number(num), Number(den))
    if (num === den) return true
    let r = num
    for (;;) {
      r <<= 1n
      const digit = r >= den ? 1 : 0
      if (digit) r -= den
      const b = this.#bit()
      if (b !== digit) return b < digit
    }
  }

  /** A fair coin. */
  coin(): boolean {
    return this.#bit() === 1
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
