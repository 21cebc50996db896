import type { BenchResult } from './output.ts'

export function renderReport(result: BenchResult): string {
  return `<!doctype html><html><body><pre>${JSON.stringify(result.model)}</pre></body></html>`
}
