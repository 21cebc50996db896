// The two "feature squeezing" transforms (Xu et al., NDSS 2018) that a screening stage compares
// the model's predictions under. Training sees some squeezed digits (train.ts) so that benign
// predictions stay stable under both, and build.ts reports the accuracy after each.

import { IMAGE_SIZE } from './data.ts'

/** 1-bit colour depth: x -> x >= 0.5 ? 1 : 0. */
export function bitDepth1(image: Float32Array): Float32Array {
  const out = new Float32Array(image.length)
  for (let i = 0; i < image.length; i++) out[i] = image[i]! >= 0.5 ? 1 : 0
  return out
}

/**
 * 2x2 median filter, defined as scipy.ndimage.median_filter(x, size=2) (what the paper's code
 * uses): the window of pixel (r, c) is rows {r-1, r} x cols {c-1, c}, an index of -1 reflects
 * to 0 (so edges repeat), and the "median" of the 4 values is the upper middle one (rank 2 of
 * 0..3), which keeps the output a value of the input.
 */
export function median2x2(image: Float32Array, size = IMAGE_SIZE): Float32Array {
  const out = new Float32Array(image.length)
  const w = [0, 0, 0, 0]
  for (let r = 0; r < size; r++) {
    const r0 = Math.max(r - 1, 0)
    for (let c = 0; c < size; c++) {
      const c0 = Math.max(c - 1, 0)
      w[0] = image[r0 * size + c0]!
      w[1] = image[r0 * size + c]!
      w[2] = image[r * size + c0]!
      w[3] = image[r * size + c]!
      w.sort((a, b) => a - b)
      out[r * size + c] = w[2]!
    }
  }
  return out
}
