import { startGateway } from '../../test/helpers/gateway.ts'
import { loadMnist } from '../../models/mnist/data.ts'
import { mnistClient } from './client.ts'
import { parse } from 'yaml'
import { readFileSync } from 'node:fs'
const { screening: _s, ...base } = parse(readFileSync('policies/mnist.yaml', 'utf8'))
const data = loadMnist()
for (const output of [{ mode: 'scores', roundDecimals: 9 }, { mode: 'scores', roundDecimals: 9, noise: { mechanism: 'laplace', epsilon: 1 }, budget: { epsilon: 100000 } }]) {
  const gw = await startGateway({ models: ['mnist'], policies: { mnist: { ...base, rateLimit: { requestsPerWindow: 100000, windowMs: 1000 }, output } } })
  const c = mnistClient({ url: gw.url, dispatcher: gw.agent, token: () => gw.token({ ttlSeconds: 3600 }), concurrency: Number(process.argv[2] ?? 4) })
  const t = performance.now()
  const a = await c.classify(data.test.images)
  const ms = performance.now() - t
  console.log(JSON.stringify(output), a.refused, a.rows[0], (data.test.images.length / ms * 1000).toFixed(0), 'q/s', a.parameters)
  await gw.close()
}
