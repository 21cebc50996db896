// `node bench/probe.ts URL RATE DURATION_MS`: open-loop GETs at a fixed rate, in a process of
// its own; prints the LoadResult as JSON. Used to time health checks while another process
// drives load, so that the load generator's own work does not delay the probes.

import { openLoop } from './load.ts'

const [url, rate, duration] = process.argv.slice(2)
const u = new URL(url!)
const result = await openLoop({ origin: u.origin, ratePerSec: Number(rate), connections: 2, durationMs: Number(duration), next: () => ({ method: 'GET', path: u.pathname }) })
process.stdout.write(JSON.stringify(result))
