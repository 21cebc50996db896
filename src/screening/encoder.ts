// The compact view of a query that the stateful detectors keep and compare: the item's
// values scaled to [0, 1] by the input's range, average-pooled over blocks of
// pool x pool along the last two dimensions (per channel). Pooling keeps the coarse shape of
// an input, which is what near-duplicate attack queries share, drops pixel-level noise, and
// divides memory and distance cost by pool^2 (mnist: 784 values -> 49 at pool 4).
//
// The cells are laid out centre first (by distance from the middle of the image): distances
// do not depend on the order, but the early exit of squaredDistance does, and the middle of
// an image is where inputs differ (the borders of digits are blank in all of them).
//
// Each cell is kept at 8 bits (a multiple of 1/255, clamped to [0, 1]): an average of inputs in
// range needs no more for distances measured against thresholds of about 0.015 (the rounding
// moves an RMS distance by about 0.001), and it lets the shared stores carry a pooled query as
// one byte a value (shared-store.ts cellBytes), which is what keeps their Redis traffic small.

import type { ItemLayout } from './squeezers.ts'

/** Levels of a pooled cell: 8 bits. */
export const CELL_LEVELS = 255

export interface Encoder {
  /** Values per encoded item. */
  readonly dims: number
  encode(item: Float32Array): Float32Array
}

export function poolingEncoder(layout: ItemLayout, pool: number): Encoder {
  const { channels, height, width, lo, hi } = layout
  const ph = Math.ceil(height / pool)
  const pw = Math.ceil(width / pool)
  const dims = channels * ph * pw
  const scale = 1 / (hi - lo)
  // Output position of each pooled cell: centre first.
  const centre = (ph - 1) / 2
  const centreW = (pw - 1) / 2
  const cells = Array.from({ length: dims }, (_, i) => i)
  const rank = (i: number) => {
    const y = Math.floor((i % (ph * pw)) / pw)
    const x = i % pw
    return (y - centre) ** 2 + (x - centreW) ** 2
  }
  cells.sort((a, b) => rank(a) - rank(b) || a - b)
  const position = new Int32Array(dims)
  cells.forEach((cell, at) => (position[cell] = at))
  // Each output cell averages the input cells that fall in it (edge blocks may be smaller).
  const cellOf = new Int32Array(channels * height * width)
  const weight = new Float32Array(dims)
  for (let ch = 0; ch < channels; ch++) {
    for (let r = 0; r < height; r++) {
      for (let c = 0; c < width; c++) {
        const cell = position[(ch * ph + Math.floor(r / pool)) * pw + Math.floor(c / pool)]!
        cellOf[(ch * height + r) * width + c] = cell
        weight[cell]!++
      }
    }
  }
  for (let i = 0; i < dims; i++) weight[i] = scale / weight[i]!
  return {
    dims,
    encode(item) {
      const out = new Float32Array(dims)
      for (let i = 0; i < item.length; i++) out[cellOf[i]!]! += item[i]! - lo
      for (let i = 0; i < dims; i++) out[i] = Math.round(Math.min(1, Math.max(0, out[i]! * weight[i]!)) * CELL_LEVELS) / CELL_LEVELS
      return out
    },
  }
}

/** Squared L2 distance between `a` and row `row` of the packed matrix `m`, giving up once it passes `bound`. */
export function squaredDistance(a: Float32Array, m: Float32Array, row: number, bound: number): number {
  const dims = a.length
  const off = row * dims
  let s = 0
  for (let i = 0; i < dims; i++) {
    const d = a[i]! - m[off + i]!
    s += d * d
    // Checked every 4 values: cheap, and most rows of a benign history are far away.
    if ((i & 3) === 3 && s > bound) return s
  }
  return s
}
