// The squeezers match their references: models/mnist/squeeze.ts (what the model was trained
// with) and scipy.ndimage.median_filter (what the paper's code uses).
import t from 'tap'
import { loadMnist } from '../../models/mnist/data.ts'
import { bitDepth1, median2x2 } from '../../models/mnist/squeeze.ts'
import { parseSqueezer } from '../../src/screening/squeezers.ts'
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
