// A keyed 53-bit digest of an item's exact bytes. The stateful detectors use it to tell an
// exact repeat (a client retrying; the model's answer teaches nothing new) from a
// near-duplicate (an attack probing around a point). The key is secret and per process
// (from deps.random), so a caller cannot craft two different inputs with the same digest to
// make a probe look like a repeat.

import { randomUint32, type RandomSource } from '../deps.ts'

function mix(h: number): number {
  h ^= h >>> 16
  h = Math.imul(h, 0x85ebca6b)
  h ^= h >>> 13
  h = Math.imul(h, 0xc2b2ae35)
  h ^= h >>> 16
  return h >>> 0
}

export type Digester = (item: Float32Array) => number

export function keyedDigester(random: RandomSource): Digester {
  const k1 = randomUint32(random)
  const k2 = randomUint32(random) | 1
  return (item) => {
    const words = new Uint32Array(item.buffer, item.byteOffset, item.length)
    let a = k1
    let b = k2
    for (let i = 0; i < words.length; i++) {
      const w = words[i]!
      a = Math.imul(a ^ w, 0x9e3779b1) + 0x7f4a7c15
      a = (a << 13) | (a >>> 19)
      b = Math.imul(b + w, 0x85ebca77) ^ (b >>> 15)
    }
    const hi = mix(a ^ words.length) & 0x1fffff
    const lo = mix(b ^ k1)
    return hi * 2 ** 32 + lo
  }
}
