// Feature squeezers (Xu, Evans, Qi, NDSS 2018): transforms that remove detail a classifier
// should not depend on. An input whose prediction moves a lot when squeezed is likely
// adversarial. Each squeezer maps one item (a flattened [channels, height, width] row) to a
// new row of the same size; `parseSqueezer` reads the policy's names:
//
//   bit-depth-B   B bits per value over the input's range [lo, hi]: round((x-lo)/(hi-lo)*(2^B-1))
//   median-HxW    median filter over the last two dimensions, per channel, defined as
//                 scipy.ndimage.median_filter(size=(H, W), mode='reflect') is (what the paper's
//                 code uses): the window of (r, c) spans rows r-floor(H/2) .. r+H-1-floor(H/2),
//                 edges reflect (d c b a | a b c d), and of an even count the upper middle value
//                 is taken, so the output is always one of the input's values
//   a+b           a, then b

export interface ItemLayout {
  /** Product of every non-batch dimension but the last two (1 for a grey image). */
  channels: number
  height: number
  width: number
  /** The input's value range (from the manifest). */
  lo: number
  hi: number
}

export type Squeezer = (item: Float32Array) => Float32Array

export function bitDepth(bits: number, layout: ItemLayout): Squeezer {
  const levels = 2 ** bits - 1
  const { lo, hi } = layout
  const span = hi - lo
  return (item) => {
    const out = new Float32Array(item.length)
    for (let i = 0; i < item.length; i++) {
      const v = Math.min(1, Math.max(0, (item[i]! - lo) / span))
      out[i] = lo + (Math.round(v * levels) / levels) * span
    }
    return out
  }
}

/** scipy's 'reflect' boundary: index -1 -> 0, -2 -> 1, n -> n-1, n+1 -> n-2. */
function reflect(i: number, n: number): number {
  const period = 2 * n
  let j = ((i % period) + period) % period
  if (j >= n) j = period - 1 - j
  return j
}

export function median(h: number, w: number, layout: ItemLayout): Squeezer {
  const { channels, height, width } = layout
  const size = h * w
  const plane = height * width
  // For each pixel of a plane, the plane offsets of its window (the reflection never changes).
  const sources = new Int32Array(plane * size)
  for (let r = 0; r < height; r++) {
    for (let c = 0; c < width; c++) {
      let k = (r * width + c) * size
      for (let dr = 0; dr < h; dr++) {
        const rr = reflect(r - Math.floor(h / 2) + dr, height)
        for (let dc = 0; dc < w; dc++) sources[k++] = rr * width + reflect(c - Math.floor(w / 2) + dc, width)
      }
    }
  }
  if (size === 4) {
    // 2x2, the common case: the upper middle of four values is the second largest,
    // max(min of the pairs' maxima, max of the pairs' minima): no sorting at all.
    return (item) => {
      const out = new Float32Array(item.length)
      for (let ch = 0; ch < channels; ch++) {
        const base = ch * plane
        for (let px = 0, at = 0; px < plane; px++, at += 4) {
          const a = item[base + sources[at]!]!
          const b = item[base + sources[at + 1]!]!
          const c = item[base + sources[at + 2]!]!
          const d = item[base + sources[at + 3]!]!
          const lo1 = a < b ? a : b
          const hi1 = a < b ? b : a
          const lo2 = c < d ? c : d
          const hi2 = c < d ? d : c
          const minHi = hi1 < hi2 ? hi1 : hi2
          const maxLo = lo1 > lo2 ? lo1 : lo2
          out[base + px] = minHi > maxLo ? minHi : maxLo
        }
      }
      return out
    }
  }
  const rank = Math.floor(size / 2)
  const window = new Float64Array(size)
  return (item) => {
    const out = new Float32Array(item.length)
    for (let ch = 0; ch < channels; ch++) {
      const base = ch * plane
      for (let px = 0; px < plane; px++) {
        // Insertion sort of at most 25 values: far cheaper than a typed-array sort per pixel.
        const at = px * size
        for (let n = 0; n < size; n++) {
          const v = item[base + sources[at + n]!]!
          let j = n
          while (j > 0 && window[j - 1]! > v) {
            window[j] = window[j - 1]!
            j--
          }
          window[j] = v
        }
        out[base + px] = window[rank]!
      }
    }
    return out
  }
}

/** A squeezer from its policy name (see the file header); throws on a name it cannot build. */
export function parseSqueezer(name: string, layout: ItemLayout): Squeezer {
  const one = parseSqueezers([name], layout)
  return (item) => one(item)[0]!
}

/**
 * All of a policy's squeezers at once, as one function from an item to its variants (in the
 * order of `names`). Steps that several names share as a prefix run once: the bundled mnist
 * policy's bit-depth-1 and bit-depth-1+median-2x2 squeeze the bits once, not twice.
 */
export function parseSqueezers(names: readonly string[], layout: ItemLayout): (item: Float32Array) => Float32Array[] {
  const steps = new Map<string, Squeezer>()
  const chains = names.map((name) =>
    name.split('+').map((step) => {
      if (!steps.has(step)) steps.set(step, parseStep(step, name, layout))
      return step
    }),
  )
  return (item) => {
    const done = new Map<string, Float32Array>()
    return chains.map((chain) => {
      let x = item
      let prefix = ''
      for (const step of chain) {
        prefix = prefix ? `${prefix}+${step}` : step
        let y = done.get(prefix)
        if (!y) done.set(prefix, (y = steps.get(step)!(x)))
        x = y
      }
      return x
    })
  }
}

function parseStep(step: string, name: string, layout: ItemLayout): Squeezer {
  let m = /^bit-depth-([1-8])$/.exec(step)
  if (m) return bitDepth(Number(m[1]), layout)
  m = /^median-([2-5])x([2-5])$/.exec(step)
  if (m) {
    const h = Number(m[1])
    const w = Number(m[2])
    if (h > layout.height || w > layout.width) throw new Error(`squeezer ${name}: a ${h}x${w} window does not fit the ${layout.height}x${layout.width} input`)
    return median(h, w, layout)
  }
  throw new Error(`unknown squeezer step "${step}" in "${name}"; use bit-depth-B (B in 1..8) or median-HxW (H, W in 2..5), joined by +`)
}
