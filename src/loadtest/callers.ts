// Per-caller limits measure the caller, not the gateway: a load test from one identity
// against a model with a privacy budget (the bundled mnist policy answers one identity about
// 200 single digits an hour) or a per-caller rate limit soon measures refusals. When a step's
// errors are mostly those refusals, the bench says so and names the way out: --callers.

import type { StepResult } from './output.ts'

/** The codes a gateway answers when one caller, not the gateway, reached a limit. */
const PER_CALLER = ['privacy_budget_exhausted', 'rate_limited'] as const

/** Share of a step's answers under which a few per-caller refusals are not worth a hint. */
const MIN_SHARE = 0.01

/** One line naming --callers, when some step's errors are dominated by per-caller refusals; else null. */
export function callersHint(steps: StepResult[], callers: number): string | null {
  for (const s of steps) {
    const { codes, requests } = s.stats
    const errors = requests - (codes.ok ?? 0)
    const [code, n] = PER_CALLER.map((c) => [c, codes[c] ?? 0] as const).sort((a, b) => b[1] - a[1])[0]!
    const both = PER_CALLER.reduce((sum, c) => sum + (codes[c] ?? 0), 0)
    if (both === 0 || 2 * both <= errors || both < MIN_SHARE * requests) continue
    const who = callers === 1 ? 'one identity' : `${callers} identities`
    return `${s.mode} ${s.level}: ${n} of ${requests} answers were ${code}, a limit per caller: the load came from ${who}, so this measures the limit, not the gateway; spread it over more identities with --callers N (development credentials) or --token-file with one token a line`
  }
  return null
}
