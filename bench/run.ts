// `npm run bench [-- --only core,grpc,frontdoor,abuse] [--duration-ms N]`: runs the scenario groups side
// by side in one run, prints one table, and writes JSON under bench/results/. Every load is
// bounded in time, targets 127.0.0.1 and stops by itself.

import { parseArgs } from 'node:util'
import { coreBench } from './core.ts'
import { frontdoorBench } from './frontdoor.ts'
import { auditBench, privacyBench, screeningBench } from './defences.ts'
import { scaleoutBench } from './scaleout.ts'
import { abuseBench } from './abuse.ts'
import { scaleBench } from './scale.ts'
import { grpcBench } from './grpc.ts'
import { defendedBench } from './defended.ts'
import { printTable, writeResults, type Row } from './report.ts'

const { values } = parseArgs({
  options: {
    only: { type: 'string', default: 'core,grpc' },
    'duration-ms': { type: 'string', default: '5000' },
    'warmup-ms': { type: 'string', default: '1000' },
  },
})
const opts = { durationMs: Number(values['duration-ms']), warmupMs: Number(values['warmup-ms']) }
const groups: Record<string, typeof coreBench> = { core: coreBench, frontdoor: frontdoorBench, audit: auditBench, privacy: privacyBench, screening: screeningBench, scaleout: scaleoutBench, abuse: abuseBench, scale: scaleBench, grpc: grpcBench, defended: defendedBench }
const selected = values.only!.split(',')
for (const g of selected) if (!groups[g]) throw new Error(`unknown bench group ${g}; known: ${Object.keys(groups).join(', ')}`)

const rows: Row[] = []
const raw: Record<string, unknown> = { startedAt: new Date().toISOString(), node: process.version, opts }
for (const g of selected) {
  const out = await groups[g]!(opts, (s) => process.stderr.write(`[${g}] ${s}\n`))
  rows.push(...out.rows)
  raw[g] = out.raw
}
console.log(printTable(rows))
console.log(`\nresults: ${writeResults('bench', { ...raw, rows })}`)
