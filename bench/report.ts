// One table per bench run, and the JSON results under bench/results/.

import { mkdirSync, writeFileSync } from 'node:fs'
import path from 'node:path'

export interface Row {
  group: string
  scenario: string
  concurrency?: number | string
  itemsPerSec: number
  p50?: number
  p99?: number
  /** Ratio to the group's reference (the ceiling or the baseline), printed beside the row. */
  ratio?: number
  ratioTo?: string
  errors?: number
  note?: string
}

const fmt = (v: number | undefined, digits = 2) => (v === undefined || Number.isNaN(v) ? '' : v.toFixed(digits))

export function printTable(rows: Row[]): string {
  const header = ['group', 'scenario', 'conc', 'items/s', 'p50 ms', 'p99 ms', 'ratio', 'errors', 'note']
  const cells = rows.map((r) => [
    r.group,
    r.scenario,
    r.concurrency === undefined ? '' : String(r.concurrency),
    fmt(r.itemsPerSec, 0),
    fmt(r.p50),
    fmt(r.p99),
    r.ratio === undefined ? '' : `${(r.ratio * 100).toFixed(0)}% of ${r.ratioTo}`,
    r.errors ? String(r.errors) : '',
    r.note ?? '',
  ])
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => c[i]!.length)))
  const line = (c: string[]) => c.map((x, i) => (i >= 3 && i <= 5 ? x.padStart(widths[i]!) : x.padEnd(widths[i]!))).join('  ')
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line)].join('\n')
}

export function writeResults(name: string, data: unknown): string {
  const dir = path.resolve(import.meta.dirname, 'results')
  mkdirSync(dir, { recursive: true })
  const file = path.join(dir, `${name}-${new Date().toISOString().replace(/[:.]/g, '-')}.json`)
  writeFileSync(file, JSON.stringify(data, null, 2) + '\n')
  return file
}
