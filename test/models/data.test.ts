// The MNIST split is fixed and documented in models/mnist/data.ts; attack evaluations and
// calibration rely on it never moving.
import { createHash } from 'node:crypto'
import t from 'tap'
import { CLASSES, loadMnist, PIXELS, readDigitFiles, splitBounds, SPLIT_COUNTS } from '../../models/mnist/data.ts'

// First 16 hex digits of sha256(images as float32 bytes, then labels as bytes) per split.
const PINNED_DIGESTS = { train: '13d9126196fc4fc9', calibration: 'b56bb8f9b29bfc12', test: '3b9b52919efd0c00' }

const splits = loadMnist()
const raw = readDigitFiles()

t.test('documented sizes', async (t) => {
  t.equal(raw.reduce((n, d) => n + d.length / PIXELS, 0), 10_000, 'the mnist package ships 10,000 digits')
  for (const name of ['train', 'calibration', 'test'] as const) {
    t.equal(splits[name].images.length, SPLIT_COUNTS[name], `${name} has ${SPLIT_COUNTS[name]} images`)
    t.equal(splits[name].labels.length, SPLIT_COUNTS[name], `${name} has ${SPLIT_COUNTS[name]} labels`)
    t.ok(splits[name].images.every((x) => x.length === PIXELS && x.every((v) => v >= 0 && v <= 1)), `${name}: 784 values in [0,1] each`)
  }
  t.ok(splits.test.images.length >= 2000, 'held-out test split has at least 2,000 digits')
})

t.test('per-class 60/10/30 split by index, disjoint and covering', async (t) => {
  for (let d = 0; d < CLASSES; d++) {
    const data = raw[d]!
    const n = data.length / PIXELS
    const [trainEnd, calEnd] = splitBounds(n)
    // Concatenating the class's images from train, calibration, test in order must give back
    // the class's file exactly: every sample in exactly one split, in index order.
    const parts = (['train', 'calibration', 'test'] as const).map((s) => splits[s].images.filter((_, i) => splits[s].labels[i] === d))
    t.same(parts.map((p) => p.length), [trainEnd, calEnd - trainEnd, n - calEnd], `class ${d}: split sizes`)
    const joined = new Float32Array(n * PIXELS)
    parts.flat().forEach((img, i) => joined.set(img, i * PIXELS))
    t.ok(joined.every((v, i) => v === Math.fround(data[i]!)), `class ${d}: splits partition the samples in order`)
  }
  // No image (by content) appears in two splits.
  const seen = new Map<string, string>()
  let shared = 0
  for (const [name, split] of Object.entries(splits)) {
    for (const img of split.images) {
      const key = Buffer.from(img.buffer, img.byteOffset, img.byteLength).toString('base64')
      if (seen.has(key) && seen.get(key) !== name) shared++
      seen.set(key, name)
    }
  }
  t.equal(shared, 0, 'no image is shared between splits')
})

t.test('deterministic', async (t) => {
  const digest = (s: typeof splits.test): string => {
    const h = createHash('sha256')
    for (const img of s.images) h.update(new Uint8Array(img.buffer, img.byteOffset, img.byteLength))
    return h.update(Uint8Array.from(s.labels)).digest('hex')
  }
  // Pinned so a change in the mnist package or in the split rule fails loudly (weights,
  // accuracy numbers and calibrated thresholds would all silently move otherwise).
  for (const name of ['train', 'calibration', 'test'] as const) {
    t.equal(digest(splits[name]).slice(0, 16), PINNED_DIGESTS[name], `${name} split content is pinned`)
  }
  t.equal(loadMnist(), splits, 'loadMnist is cached')
})
