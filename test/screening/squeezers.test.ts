// The squeezers match their references: models/mnist/squeeze.ts (what the model was trained
// with) and scipy.ndimage.median_filter (what the paper's code uses).
import t from 'tap'
import { loadMnist } from '../../models/mnist/data.ts'
import { bitDepth1, median2x2 } from '../../models/mnist/squeeze.ts'
import { parseSqueezer, parseSqueezers } from '../../src/screening/squeezers.ts'
import { MNIST_LAYOUT } from './helpers.ts'

const digits = loadMnist().test.images.filter((_, i) => i % 300 === 0)

t.test('bit-depth-1 and median-2x2 equal the training-time squeezers on real digits', async (t) => {
  const bits = parseSqueezer('bit-depth-1', MNIST_LAYOUT)
  const med = parseSqueezer('median-2x2', MNIST_LAYOUT)
  for (const x of digits) {
    t.same(Array.from(bits(x)), Array.from(bitDepth1(x)))
    t.same(Array.from(med(x)), Array.from(median2x2(x)))
  }
})

t.test('a chain applies its steps left to right', async (t) => {
  const chain = parseSqueezer('bit-depth-1+median-2x2', MNIST_LAYOUT)
  for (const x of digits) t.same(Array.from(chain(x)), Array.from(median2x2(bitDepth1(x))))
})

t.test('median windows of other sizes follow scipy median_filter (reflect mode)', async (t) => {
  const x = Float32Array.from([0.1, 0.9, 0.3, 0.5, 0.7, 0.2, 0.8, 0.4, 0.6, 0.0, 1.0, 0.35])
  const layout = { channels: 1, height: 3, width: 4, lo: 0, hi: 1 }
  const f32 = (a: number[]) => Array.from(Float32Array.from(a))
  // scipy.ndimage.median_filter(x.reshape(3, 4), size=..., mode='reflect')
  t.same(Array.from(parseSqueezer('median-3x3', layout)(x)), f32([0.2, 0.3, 0.5, 0.5, 0.6, 0.6, 0.4, 0.4, 0.6, 0.6, 0.35, 0.4]))
  t.same(Array.from(parseSqueezer('median-2x2', layout)(x)), f32([0.1, 0.9, 0.9, 0.5, 0.7, 0.7, 0.8, 0.5, 0.7, 0.6, 0.8, 0.8]))
  t.same(Array.from(parseSqueezer('median-2x3', layout)(x)), f32([0.1, 0.3, 0.5, 0.5, 0.7, 0.7, 0.5, 0.5, 0.6, 0.7, 0.4, 0.4]))
})

t.test('bit depth works over the input range and per channel', async (t) => {
  const layout = { channels: 2, height: 1, width: 3, lo: -1, hi: 1 }
  const out = parseSqueezer('bit-depth-2', layout)(Float32Array.from([-1, -0.4, 0.1, 0.35, 0.9, 1]))
  // 4 levels over [-1, 1]: -1, -1/3, 1/3, 1
  t.same(Array.from(out), Array.from(Float32Array.from([-1, -1 / 3, 1 / 3, 1 / 3, 1, 1])))
})

t.test('unknown or oversized squeezers are refused with a fix', async (t) => {
  t.throws(() => parseSqueezer('blur-3', MNIST_LAYOUT), /unknown squeezer step "blur-3".*bit-depth-B/)
  t.throws(() => parseSqueezer('median-5x5', { channels: 1, height: 1, width: 10, lo: 0, hi: 1 }), /does not fit/)
})

t.test('parseSqueezers gives what each squeezer gives alone, sharing common prefixes', async (t) => {
  const names = ['bit-depth-1', 'bit-depth-1+median-2x2', 'median-2x2', 'bit-depth-3+median-3x3']
  const all = parseSqueezers(names, MNIST_LAYOUT)
  for (const x of digits) {
    const got = all(x)
    t.equal(got.length, names.length)
    names.forEach((name, i) => t.same(Array.from(got[i]!), Array.from(parseSqueezer(name, MNIST_LAYOUT)(x)), name))
  }
})

t.test('the 2x2 median is the upper middle of each reflected window, ties included', async (t) => {
  // A plain reference: gather the window (scipy 'reflect' edges), sort, take index 2 of 4.
  const reflect = (i: number, n: number) => (i < 0 ? -i - 1 : i >= n ? 2 * n - i - 1 : i)
  const reference = (x: Float32Array, channels: number, h: number, w: number) => {
    const out = new Float32Array(x.length)
    for (let ch = 0; ch < channels; ch++) {
      for (let r = 0; r < h; r++) {
        for (let c = 0; c < w; c++) {
          const win = [0, 1].flatMap((dr) => [0, 1].map((dc) => x[ch * h * w + reflect(r - 1 + dr, h) * w + reflect(c - 1 + dc, w)]!)).sort((a, b) => a - b)
          out[ch * h * w + r * w + c] = win[2]!
        }
      }
    }
    return out
  }
  let seed = 7
  const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648
  let differ = 0
  for (let k = 0; k < 200; k++) {
    const layout = { channels: 1 + (k % 3), height: 2 + (k % 7), width: 2 + (k % 5), lo: 0, hi: 1 }
    // Few distinct values (ties are common) or many.
    const levels = k % 2 ? 3 : 1000
    const x = Float32Array.from({ length: layout.channels * layout.height * layout.width }, () => Math.floor(next() * levels) / levels)
    if (JSON.stringify(Array.from(parseSqueezer('median-2x2', layout)(x))) !== JSON.stringify(Array.from(reference(x, layout.channels, layout.height, layout.width)))) differ++
  }
  t.equal(differ, 0, '200 random images of 1 to 3 channels, 2 to 8 rows, 2 to 6 columns: identical')
})
