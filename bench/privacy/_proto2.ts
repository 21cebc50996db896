import { loadMnist, PIXELS } from '../../models/mnist/data.ts'
import { forward, loadWeights } from '../../models/mnist/cnn.ts'
import { seededRng, permutation } from './rng.ts'
import { createMlp, train, agreement, softTarget, argmax } from './mlp.ts'
import { writeFileSync, readFileSync, existsSync } from 'node:fs'

const pool = (img: Float32Array) => { const o = new Float32Array(196); for (let y = 0; y < 14; y++) for (let x = 0; x < 14; x++) o[y*14+x] = (img[(2*y)*28+2*x]! + img[(2*y)*28+2*x+1]! + img[(2*y+1)*28+2*x]! + img[(2*y+1)*28+2*x+1]!) / 4; return o }
const p = loadWeights()
const data = loadMnist()
const rng = seededRng(1)
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
let full: number[][], testLabels: number[]
if (existsSync('/tmp/proto-cache.json')) ({ full, testLabels } = JSON.parse(readFileSync('/tmp/proto-cache.json', 'utf8')))
else { full = queries.map((x) => Array.from(forward(p, x).probs)); testLabels = data.test.images.map((x) => argmax(forward(p, x).probs)); writeFileSync('/tmp/proto-cache.json', JSON.stringify({ full, testLabels })) }
const lap = (b: number) => { const u = rng.uniform() - 0.5; return -b * Math.sign(u) * Math.log(1 - 2 * Math.abs(u)) }
const settings: Record<string, [(r: number[]) => number[], number]> = {
  full: [(r) => r.map((v) => Number(v.toFixed(9))), 5e-10],
  r2: [(r) => r.map((v) => Number(v.toFixed(2))), 0.005],
  r1: [(r) => r.map((v) => Number(v.toFixed(1))), 0.05],
  label: [(r) => { const o = r.map(() => 0); o[argmax(r)] = 1; return o }, 0.5],
  dp10: [(r) => { const n = r.map((v) => v + lap(0.2)); const m = n.map((v) => Math.min(1, Math.max(0, v))); const s = m.reduce((a, b) => a + b, 0); return m.map((v) => Number((v / s).toFixed(9))) }, 5e-10],
}
const hidden = Number(process.argv[2] ?? 0)
const modes = (process.argv[3] ?? 'd1,l').split(',')
const only = (process.argv[4] ?? 'full,r2,label').split(',')
const seeds = Number(process.argv[5] ?? 1)
const tx = queries.map(pool), testx = data.test.images.map(pool)
for (const [name, [f, floor]] of Object.entries(settings).filter(([k]) => only.includes(k))) {
  const rel = full.map(f)
  for (const mode of modes) {
    const res: string[] = []
    for (const n of (process.argv[6] ?? "500,2000,10000").split(",").map(Number)) {
      const t2 = performance.now()
      const accs = []
      for (let s = 0; s < seeds; s++) {
      const m = createMlp(196, hidden, 10, seededRng(7 + s))
      const epochs = Math.max(3, Math.round(40000 / n))
      const T = mode === 'l' ? 1 : Number(mode.slice(1))
      train(m, tx.slice(0, n), rel.slice(0, n).map((r) => mode === 'l' ? r : softTarget(r, T)), { hidden, epochs, batchSize: 32, learningRate: 2e-3, temperature: T, weightDecay: 1e-4, loss: mode === 'l' ? 'logits' : 'distill', floor }, seededRng(8 + s))
      accs.push((agreement(m, testx, testLabels) * 100).toFixed(1))
      }
      res.push(`${n}:${accs.join('/')} (${((performance.now() - t2) / 1000).toFixed(1)}s)`)
    }
    console.log(name, mode, res.join('  '))
  }
}
