// Small inline-SVG charts for the bench report: a line chart with points, vertical bars, and
// stacked bars, each with axes, ticks and a legend. Plain strings, every text escaped, no
// script and no external reference, so the page opens anywhere and shows the same.

export interface Series {
  name: string
  color: string
  /** A dashed line (to tell apart two series that may coincide). */
  dashed?: boolean
  points: { x: number; y: number; label?: string }[]
}

const W = 560
const H = 300
const M = { top: 16, right: 16, bottom: 44, left: 56 }

export function esc(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;')
}

const num = (v: number) => (Number.isInteger(v) || Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : Number(v.toPrecision(2)).toString())

/** Round tick values covering [0, max] (1, 2 or 5 times a power of ten apart). */
export function ticks(max: number, count = 5): number[] {
  if (!(max > 0)) return [0, 1]
  const raw = max / count
  const pow = 10 ** Math.floor(Math.log10(raw))
  const step = [1, 2, 5, 10].map((m) => m * pow).find((s) => s >= raw)!
  const out: number[] = []
  for (let v = 0; v <= max + step * 1e-9; v += step) out.push(Number(v.toPrecision(12)))
  if (out[out.length - 1]! < max) out.push(Number((out[out.length - 1]! + step).toPrecision(12)))
  return out
}

interface Frame {
  x: (v: number) => number
  y: (v: number) => number
  body: string[]
}

/** The axes, grid and titles; returns scales for the plot area. */
function frame(o: { xTicks: number[] | null; yTicks: number[]; xTitle: string; yTitle: string }): Frame {
  const plotW = W - M.left - M.right
  const plotH = H - M.top - M.bottom
  const yMax = o.yTicks[o.yTicks.length - 1]!
  const xMax = o.xTicks ? o.xTicks[o.xTicks.length - 1]! : 1
  const x = (v: number) => M.left + (v / xMax) * plotW
  const y = (v: number) => M.top + plotH - (v / yMax) * plotH
  const body: string[] = []
  for (const t of o.yTicks) {
    body.push(`<line x1="${M.left}" x2="${W - M.right}" y1="${y(t).toFixed(1)}" y2="${y(t).toFixed(1)}" stroke="#e3e3e3"/>`)
    body.push(`<text x="${M.left - 6}" y="${(y(t) + 4).toFixed(1)}" text-anchor="end">${num(t)}</text>`)
  }
  for (const t of o.xTicks ?? []) body.push(`<text x="${x(t).toFixed(1)}" y="${H - M.bottom + 16}" text-anchor="middle">${num(t)}</text>`)
  body.push(`<line x1="${M.left}" x2="${W - M.right}" y1="${y(0)}" y2="${y(0)}" stroke="#888"/>`)
  body.push(`<line x1="${M.left}" x2="${M.left}" y1="${M.top}" y2="${y(0)}" stroke="#888"/>`)
  body.push(`<text x="${M.left + plotW / 2}" y="${H - 6}" text-anchor="middle">${esc(o.xTitle)}</text>`)
  body.push(`<text x="14" y="${M.top + plotH / 2}" text-anchor="middle" transform="rotate(-90 14 ${M.top + plotH / 2})">${esc(o.yTitle)}</text>`)
  return { x, y, body }
}

function svg(body: string[], legend: { name: string; color: string }[], title: string): string {
  const items = legend.map((l, i) => `<g transform="translate(${M.left + 8 + (i % 3) * 160},${M.top + 4 + Math.floor(i / 3) * 16})"><rect width="10" height="10" fill="${l.color}"/><text x="14" y="9">${esc(l.name)}</text></g>`)
  return `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" height="${H}" role="img" aria-label="${esc(title)}" font-family="sans-serif" font-size="11">${[...body, ...items].join('')}</svg>`
}

/** Lines through points (x ascending as given), each point marked and optionally labelled. */
export function lineChart(series: Series[], o: { xTitle: string; yTitle: string; title: string }): string {
  const all = series.flatMap((s) => s.points).filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y))
  const f = frame({ xTicks: ticks(Math.max(0, ...all.map((p) => p.x))), yTicks: ticks(Math.max(0, ...all.map((p) => p.y)) * 1.15), xTitle: o.xTitle, yTitle: o.yTitle })
  for (const s of series) {
    const pts = s.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.y))
    if (pts.length > 1) f.body.push(`<polyline fill="none" stroke="${s.color}" stroke-width="2"${s.dashed ? ' stroke-dasharray="6 4"' : ''} points="${pts.map((p) => `${f.x(p.x).toFixed(1)},${f.y(p.y).toFixed(1)}`).join(' ')}"/>`)
    for (const p of pts) {
      f.body.push(`<circle cx="${f.x(p.x).toFixed(1)}" cy="${f.y(p.y).toFixed(1)}" r="3.5" fill="${s.color}"/>`)
      if (p.label) f.body.push(`<text x="${(f.x(p.x) + 5).toFixed(1)}" y="${(f.y(p.y) - 6).toFixed(1)}" fill="#555">${esc(p.label)}</text>`)
    }
  }
  return svg(f.body, series, o.title)
}

/** Stacked vertical bars, one per category, segments in `layers` order (values ≥ 0). */
export function stackedBars(categories: string[], layers: { name: string; color: string; values: number[] }[], o: { xTitle: string; yTitle: string; title: string; legend?: boolean }): string {
  const totals = categories.map((_, i) => layers.reduce((s, l) => s + Math.max(0, l.values[i] ?? 0), 0))
  const f = frame({ xTicks: null, yTicks: ticks(Math.max(0, ...totals) * 1.25), xTitle: o.xTitle, yTitle: o.yTitle })
  const slot = (W - M.left - M.right) / Math.max(1, categories.length)
  categories.forEach((c, i) => {
    const x0 = M.left + i * slot + slot * 0.2
    let acc = 0
    for (const l of layers) {
      const v = Math.max(0, l.values[i] ?? 0)
      if (v <= 0) continue
      const top = f.y(acc + v)
      f.body.push(`<rect x="${x0.toFixed(1)}" y="${top.toFixed(1)}" width="${(slot * 0.6).toFixed(1)}" height="${(f.y(acc) - top).toFixed(1)}" fill="${l.color}"><title>${esc(`${c}: ${l.name} ${num(v)}`)}</title></rect>`)
      acc += v
    }
    // At most about a dozen labels, so they never overlap.
    if (i % Math.ceil(categories.length / 12) === 0) f.body.push(`<text x="${(x0 + slot * 0.3).toFixed(1)}" y="${H - M.bottom + 16}" text-anchor="middle">${esc(c)}</text>`)
  })
  return svg(f.body, o.legend === false ? [] : layers.filter((l) => l.values.some((v) => v > 0)), o.title)
}

/** One bar per bucket (labels under the bars), for a histogram. */
export function barChart(labels: string[], values: number[], o: { xTitle: string; yTitle: string; title: string; color: string }): string {
  return stackedBars(labels, [{ name: o.yTitle, color: o.color, values }], { ...o, legend: false })
}
