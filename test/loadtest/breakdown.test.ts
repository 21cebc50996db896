// The breakdown against a real gateway's admin /metrics: two scrapes around N inferences
// diff to exactly N timed requests, every front-door and body link observed N times, each
// under its defence, the transport's encoding and sending of the answer observed N times too,
// the timed parts together no more than the server's time (they are disjoint parts of it),
// shares between 0 and 1 that (with the time outside the links) add up to the server's time;
// a refused request's answer is timed as well. And the stability rule on windows built by hand: three windows within
// the percentage are stable, one off is not, fewer than three never are.

import t from 'tap'
import { request } from 'undici'
import { mnistRequest, startGateway } from '../../kit/gateway.ts'
import { diffScrapes, parseScrape } from '../../src/loadtest/breakdown.ts'
import type { Window } from '../../src/loadtest/generator.ts'
import { stable, summarise } from '../../src/loadtest/stats.ts'

t.test('two scrapes of a real /metrics around N inferences', async (t) => {
  const gw = await startGateway({ models: ['mnist'], policies: { mnist: { model: 'mnist', allow: [{ verbs: ['infer'], workloads: ['spiffe://bulwark.local/ns/default/sa/dev'], scopes: ['mnist:use'] }] } } })
  t.teardown(() => gw.close())
  const scrape = async () => parseScrape(await (await request(`${gw.adminUrl}/metrics`)).body.text())
  const body = await mnistRequest()
  const token = await gw.token({ scopes: ['mnist:use'] })
  await gw.request('/v2/models/mnist/infer', { body, token }) // one before, so every series exists in both scrapes
  const before = await scrape()
  t.ok(before.get('bulwark_request_duration_seconds_count{model="mnist"}')! >= 1, 'the request histogram is read, by model')
  const N = 5
  for (let i = 0; i < N; i++) t.equal((await gw.request('/v2/models/mnist/infer', { body, token })).status, 200)
  const after = await scrape()

  const b = diffScrapes(before, after, 'mnist')!
  t.equal(b.requests, N, 'exactly the requests between the scrapes')
  t.ok(b.serverMeanMs > 0)
  const byLink = new Map(b.links.map((l) => [l.link, l]))
  for (const [link, group] of [['mtls-identity', 'front door'], ['jwt-auth', 'front door'], ['model-policy', 'front door'], ['body-read', 'validation'], ['input-validation', 'validation'], ['model-inference', 'queue + inference']] as const) {
    t.equal(byLink.get(link)?.count, N, `${link} observed once per request`)
    t.equal(byLink.get(link)?.group, group, `${link} belongs to ${group}`)
  }
  for (const link of ['encode-answer', 'send-answer']) {
    t.equal(byLink.get(link)?.count, N, `${link} observed once per request`)
    t.equal(byLink.get(link)?.group, 'answer', `${link} belongs to answer`)
  }
  const timed = b.links.reduce((s, l) => s + l.perRequestMs, 0)
  t.ok(timed <= b.serverMeanMs * (1 + 1e-9), `the timed parts (${timed.toFixed(3)} ms) fit in the server time (${b.serverMeanMs.toFixed(3)} ms): none overlaps another`)
  for (const l of b.links) t.ok(l.share >= 0 && l.share <= 1, `${l.link}: a share between 0 and 1`)
  const total = b.groups.reduce((s, g) => s + g.share, 0)
  t.ok(Math.abs(total - 1) < 1e-9, 'the groups, with the time outside the links, make up the server time')
  t.equal(diffScrapes(after, after, 'mnist'), null, 'no request between two scrapes: no breakdown')
  t.equal(diffScrapes(before, after, 'ocr-cls'), null, 'a model that saw no request: no breakdown')

  const refused = await gw.request('/v2/models/mnist/infer', { body, token: await gw.token({ scopes: ['other:use'] }) })
  t.equal(refused.status, 403, 'a token without the scope is refused')
  const r = diffScrapes(after, await scrape(), 'mnist')!
  const answer = new Map(r.links.map((l) => [l.link, l.count]))
  t.same([r.requests, answer.get('encode-answer'), answer.get('send-answer')], [1, 1, 1], "the refusal's answer is encoded and sent under the same two timings")
  t.notOk(answer.has('model-inference'), 'and it never reached the model')
})

t.test('parseScrape reads sums and counts, skips buckets and other metrics', async (t) => {
  const text = [
    '# HELP bulwark_stage_duration_seconds Time spent in each pipeline stage.',
    'bulwark_stage_duration_seconds_bucket{stage="jwt-auth",le="0.001"} 3',
    'bulwark_stage_duration_seconds_sum{stage="jwt-auth"} 0.5',
    'bulwark_stage_duration_seconds_count{stage="jwt-auth"} 4 1700000000000',
    'bulwark_requests_total{model="mnist"} 9',
  ].join('\n')
  t.same([...parseScrape(text)], [['bulwark_stage_duration_seconds_sum{stage="jwt-auth"}', 0.5], ['bulwark_stage_duration_seconds_count{stage="jwt-auth"}', 4]])
})

const win = (rps: number, latencyMs: number): Window => ({ startMs: 0, endMs: 1000, latenciesMs: Array.from({ length: rps }, () => latencyMs), items: rps, codes: { ok: rps }, statuses: { 200: rps } })

t.test('stability: three windows within the percentage', async (t) => {
  t.ok(stable([win(100, 10), win(104, 10.3), win(97, 9.8)], 10), 'within 10%')
  t.notOk(stable([win(100, 10), win(104, 10.3), win(70, 9.8)], 10), 'one window\'s throughput off')
  t.notOk(stable([win(100, 10), win(100, 10), win(100, 14)], 10), 'one window\'s latency off')
  t.notOk(stable([win(100, 10), win(100, 10)], 10), 'two windows are not enough')
  t.ok(stable([win(50, 30), win(100, 10), win(100, 10), win(101, 10)], 5), 'only the last three count')
  const s = summarise([win(100, 10), win(100, 20)])
  t.same([s.requests, s.seconds, s.rps, s.p50Ms, s.p99Ms, s.meanMs], [200, 2, 100, 10, 20, 15], 'figures over the kept windows')
})
