// The shipped-policy part's tables (bench/privacy/shipped.ts), as printed by
// `npm run eval:privacy` and copied into docs/privacy.md.

import type { ShippedRun, Snapshot, UndefendedMembership } from './shipped.ts'

const pct = (x: number, d = 1) => (Number.isFinite(x) ? (x * 100).toFixed(d) : '-')
const int = (x: number) => Math.round(x).toLocaleString('en-US')

function table(header: string[], rows: string[][]): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)))
  const line = (c: string[]) => c.map((x, i) => (i < 2 ? x.padEnd(widths[i]!) : x.padStart(widths[i]!))).join('  ')
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)]
}

const refused = (s: Snapshot) =>
  Object.entries(s.totals.refusals)
    .map(([code, n]) => `${n} ${code}`)
    .join(', ') || 'none'

export function shippedTables(runs: ShippedRun[], o: { windowMs: number; heldOut: number; undefended?: UndefendedMembership; policy?: string }): string[] {
  const hours = (w: number) => `${((w * o.windowMs) / 3_600_000).toFixed(0)} h`
  const out: string[] = []
  const c = runs[0]?.cost
  if (o.policy) out.push(`mnist policy: ${o.policy}`)
  if (c) out.push(`shipped policies: ε ${c.epsilon} per charge, budget ε ${int(c.budget)} per ${hours(1)} per identity (${Math.floor(c.budget / c.epsilon + 1e-6)} charges); screening on: +${runs.find((r) => r.screening)?.cost.verdicts ?? 0} charge per item (its squeezing verdict)`)
  out.push('', 'honest callers (held-out digits, each identity sends what one hour allows):')
  out.push(
    ...table(
      ['screening', 'requests', 'sent', 'answered requests %', 'digits answered %', 'digits answered correctly %', 'identities', 'refusals'],
      runs.flatMap((r) =>
        r.honest.map((h) => [
          r.screening ? 'on' : 'off',
          h.pattern,
          int(h.requests),
          pct(h.answeredRequests / h.requests),
          pct(h.answeredDigits / h.digits),
          pct(h.correctDigits / h.digits),
          String(h.identities),
          Object.entries(h.refusals).map(([code, n]) => `${n} ${code}`).join(', ') || 'none',
        ]),
      ),
    ),
  )
  out.push('', `extraction (CNN surrogate, active selection) and label-only membership inference; agreement with the undefended model on ${o.heldOut} held-out digits:`)
  const rows: string[][] = []
  const u = o.undefended
  if (u) rows.push(['none', 'undefended model, no budget', '', '', '', '', int(u.answers), `${u.members}+${u.nonMembers}`, `${pct(u.tpr)} (FPR ${pct(u.fpr, 2)})`, u.auc.toFixed(3), '0', 'none'])
  for (const r of runs) {
    for (const e of r.extraction) {
      const m = r.membership.find((x) => x.identities === e.identities)
      for (const s of e.snapshots) {
        const ms = m?.snapshots.find((x) => x.window === s.window)
        rows.push([
          r.screening ? 'on' : 'off',
          `${e.identities} identit${e.identities === 1 ? 'y' : 'ies'}, ${hours(s.window)}`,
          int(s.answers),
          pct(s.agreement),
          int(s.epsilonPerIdentity.max),
          refused(s),
          ms ? int(ms.answers) : '-',
          ms ? `${ms.members}+${ms.nonMembers}` : '-',
          ms ? `${pct(ms.tpr)} (FPR ${pct(ms.fpr, 2)})` : '-',
          ms ? ms.auc.toFixed(3) : '-',
          ms ? int(ms.epsilonPerIdentity.max) : '-',
          ms ? refused(ms) : '-',
        ])
      }
    }
  }
  out.push(
    ...table(
      ['screening', 'attacker', 'extraction answers', 'agreement %', 'ε per identity (max)', 'extraction refusals', 'MIA answers', 'MIA candidates (in+out)', 'TPR % at 0.1% FPR', 'AUC', 'ε per identity (max)', 'MIA refusals'],
      rows,
    ),
  )
  out.push('', 'extraction: the first window whose surrogate reaches each agreement (answers received by then):')
  for (const r of runs) {
    for (const e of r.extraction) {
      const reach = [0.8, 0.9, 0.95].map((a) => {
        const hit = e.curve.find((p) => p.agreement >= a)
        return `${pct(a, 0)}%: ${hit ? `${hours(hit.window)} (${int(hit.answers)})` : `not in ${hours(e.curve.length)}`}`
      })
      out.push(`  screening ${r.screening ? 'on ' : 'off'}, ${e.identities} identit${e.identities === 1 ? 'y' : 'ies'}: ${reach.join(', ')}`)
    }
  }
  return out
}
