// Where the time goes: the gateway's own histograms (src/telemetry/metrics.ts:
// bulwark_stage_duration_seconds by link, bulwark_request_duration_seconds by model), read
// from the admin listener's Prometheus /metrics before and after a step and diffed, give
// each link's mean time per request at that load and its share of the request's time on the
// server. Links are grouped into the defences an operator thinks in.
//
// The link histogram has no model label: other traffic to the same gateway during a step
// is counted in it too. The transport times its own work beside the links (encoding the
// answer, writing it to the socket: the 'answer' group). The request histogram's time not
// spent in any of them (routing between fastify's hooks, waiting for the event loop) is
// reported as its own row.

/** Histogram sums and counts, by series (`name{labels}` as in the exposition). */
export type Scrape = Map<string, number>

const STAGE = 'bulwark_stage_duration_seconds'
const REQUEST = 'bulwark_request_duration_seconds'

/** The defence each link belongs to (the pipeline's order: src/pipeline.ts). */
export const LINK_GROUPS: ReadonlyMap<string, string> = new Map(Object.entries({
  trace: 'front door',
  'load-shedding': 'front door',
  'client-limit': 'front door',
  'mtls-identity': 'front door',
  'jwt-auth': 'front door',
  'caller-key': 'front door',
  'model-policy': 'front door',
  'rate-limit': 'front door',
  'body-read': 'validation',
  'input-validation': 'validation',
  'screen-input': 'screening',
  'screen-variants': 'screening',
  'screen-output': 'screening',
  'model-inference': 'queue + inference',
  'privacy-precheck': 'privacy',
  'privacy-charge': 'privacy',
  'output-privacy': 'privacy',
  'audit-log': 'audit',
  metrics: 'other',
  'model-stats': 'other',
  // The transport's own work (src/transport/http-chain.ts, grpc-chain.ts), timed beside the links.
  'encode-answer': 'answer',
  'send-answer': 'answer',
}))
export const GROUP_ORDER = ['front door', 'validation', 'screening', 'queue + inference', 'privacy', 'audit', 'answer', 'other', 'outside the links']

/** The _sum and _count samples of the two histograms in a Prometheus text exposition. */
export function parseScrape(text: string): Scrape {
  const out: Scrape = new Map()
  for (const raw of text.split('\n')) {
    const line = raw.trim()
    if (!line.startsWith(STAGE) && !line.startsWith(REQUEST)) continue
    // name{labels} value [timestamp]; label values here are link and model names, without braces.
    const close = line.indexOf('}')
    const series = close >= 0 ? line.slice(0, close + 1) : line.split(' ')[0]!
    const name = close >= 0 ? series.slice(0, series.indexOf('{')) : series
    if (!name.endsWith('_sum') && !name.endsWith('_count')) continue
    const value = Number(line.slice(series.length).trim().split(' ')[0])
    if (Number.isFinite(value)) out.set(series, value)
  }
  return out
}

function label(series: string, name: string): string | null {
  const m = new RegExp(`${name}="((?:[^"\\\\]|\\\\.)*)"`).exec(series) // eslint-disable-line security/detect-non-literal-regexp -- name is one of this module's label names
  return m ? m[1]! : null
}

export interface LinkTime {
  link: string
  group: string
  /** Observations of the link over the step. */
  count: number
  /** Mean time in the link per observation, ms. */
  meanMs: number
  /** Mean time in the link per request of the model, ms (what it adds to a request). */
  perRequestMs: number
  /** Share of the requests' server-side time, 0..1. */
  share: number
}

export interface Breakdown {
  /** Requests of the model the gateway timed over the step. */
  requests: number
  /** Mean server-side time per request (arrival to answer), ms. */
  serverMeanMs: number
  links: LinkTime[]
  /** Per defence group: ms per request and share, in GROUP_ORDER, 'outside the links' included. */
  groups: { group: string; perRequestMs: number; share: number }[]
}

/** The difference of two scrapes over a step, for one model; null when the step saw no timed request. */
export function diffScrapes(before: Scrape, after: Scrape, model: string): Breakdown | null {
  const delta = (key: string) => (after.get(key) ?? 0) - (before.get(key) ?? 0)
  const reqKey = [...after.keys()].find((k) => k.startsWith(`${REQUEST}_count`) && label(k, 'model') === model)
  const requests = reqKey ? delta(reqKey) : 0
  if (requests <= 0) return null
  const serverS = delta(reqKey!.replace('_count', '_sum'))
  const links: LinkTime[] = []
  for (const key of after.keys()) {
    if (!key.startsWith(`${STAGE}_count`)) continue
    const link = label(key, 'stage')
    const count = delta(key)
    if (link === null || count <= 0) continue
    const sumS = delta(key.replace('_count', '_sum'))
    links.push({ link, group: LINK_GROUPS.get(link) ?? 'other', count, meanMs: (sumS / count) * 1000, perRequestMs: (sumS / requests) * 1000, share: serverS > 0 ? sumS / serverS : 0 })
  }
  const order = [...LINK_GROUPS.keys()]
  links.sort((a, b) => (order.indexOf(a.link) + 1 || 99) - (order.indexOf(b.link) + 1 || 99))
  const serverMeanMs = (serverS / requests) * 1000
  const inLinks = links.reduce((s, l) => s + l.perRequestMs, 0)
  const groups = GROUP_ORDER.map((group) => {
    const perRequestMs = group === 'outside the links' ? Math.max(0, serverMeanMs - inLinks) : links.filter((l) => l.group === group).reduce((s, l) => s + l.perRequestMs, 0)
    return { group, perRequestMs, share: serverMeanMs > 0 ? perRequestMs / serverMeanMs : 0 }
  }).filter((g) => g.perRequestMs > 0)
  return { requests, serverMeanMs, links, groups }
}
