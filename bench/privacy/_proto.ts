import { loadMnist, PIXELS } from '../../models/mnist/data.ts'
import { forward, loadWeights } from '../../models/mnist/cnn.ts'
import { seededRng, permutation } from './rng.ts'
import { createMlp, train, agreement, softTarget, argmax } from './mlp.ts'

const p = loadWeights()
const data = loadMnist()
const rng = seededRng(1)
const t0 = performance.now()
const testLabels = data.test.images.map((x) => argmax(forward(p, x).probs))
console.log('test labels', performance.now() - t0)

function shift(img: Float32Array, dx: number, dy: number) {
  const out = new Float32Array(PIXELS)
  for (let y = 0; y < 28; y++) for (let x = 0; x < 28; x++) {
    const sy = y - dy, sx = x - dx
    if (sy >= 0 && sy < 28 && sx >= 0 && sx < 28) out[y * 28 + x] = img[sy * 28 + sx]!
  }
  return out
}
const order = permutation(data.train.images.length, rng)
const queries: Float32Array[] = order.map((i) => data.train.images[i]!)
while (queries.length < 10000) {
  const src = data.train.images[order[queries.length % order.length]!]!
  const img = shift(src, rng.int(5) - 2, rng.int(5) - 2)
  for (let i = 0; i < PIXELS; i++) img[i] = Math.min(1, Math.max(0, img[i]! + 0.1 * rng.normal()))
  queries.push(img)
}
const t1 = performance.now()
const full = queries.map((x) => Array.from(forward(p, x).probs))
console.log('answers', performance.now() - t1)
const lap = (b: number) => { const u = rng.uniform() - 0.5; return -b * Math.sign(u) * Math.log(1 - 2 * Math.abs(u)) }
const only = (process.argv[4] ?? "full,r2,label").split(",")
const settings: Record<string, (r: number[]) => number[]> = {
  full: (r) => r.map((v) => Number(v.toFixed(9))),
  r2: (r) => r.map((v) => Number(v.toFixed(2))),
  r1: (r) => r.map((v) => Number(v.toFixed(1))),
  label: (r) => { const o = r.map(() => 0); o[argmax(r)] = 1; return o },
  dp10: (r) => { const n = r.map((v) => v + lap(0.2)); const m = n.map((v) => Math.min(1, Math.max(0, v))); const s = m.reduce((a, b) => a + b, 0); return m.map((v) => Number((v / s).toFixed(9))) },
}
const hidden = Number(process.argv[2] ?? 0)
const temps = (process.argv[3] ?? '1,4').split(',').map(Number)
for (const [name, f] of Object.entries(settings).filter(([k]) => only.includes(k))) {
  const rel = full.map(f)
  for (const T of temps) {
    const res: string[] = []
    for (const n of [500, 2000, 10000]) {
      const t2 = performance.now()
      const m = createMlp(PIXELS, hidden, 10, seededRng(7))
      const epochs = Math.max(4, Math.round(60000 / n / (hidden ? 2 : 1)))
      train(m, queries.slice(0, n), rel.slice(0, n).map((r) => softTarget(r, T)), { hidden, epochs, batchSize: 32, learningRate: 2e-3, temperature: T, weightDecay: 1e-4 }, seededRng(8))
      res.push(`${n}:${(agreement(m, data.test.images, testLabels) * 100).toFixed(1)} (${((performance.now() - t2) / 1000).toFixed(1)}s)`)
    }
    console.log(name, 'T', T, res.join('  '))
  }
}
