// Made-up model names do not grow /metrics. A real gateway (real mTLS, real tokens, the real
// mnist model) gets 300 requests for invented model names: unauthenticated (401), with a
// token the policies refuse (403) and for metadata (403); the admin listener's /metrics
// stays within a small bound of its size before, names none of them, and counts them all
// under model="_unknown". The served model keeps its own label.

import t from 'tap'
import { request } from 'undici'
import { mnistRequest, startGateway } from '../../kit/gateway.ts'

// Each unauthenticated refusal closes its connection and costs this address
// server.closedOnRefusalCost new connections: at 1, all 300 reach the front door, which is what
// this test measures (the connection limits have tests of their own).
const gw = await startGateway({ models: ['mnist'], config: { server: { closedOnRefusalCost: 1 } } })
t.teardown(() => gw.close())
const body = await mnistRequest()

async function scrape(): Promise<string> {
  const res = await request(`${gw.adminUrl}/metrics`)
  if (res.statusCode !== 200) throw new Error(`GET /metrics answered ${res.statusCode}`)
  return res.body.text()
}

/** Runs `jobs` with at most `width` in flight (a keep-alive connection pool, not 300 handshakes at once). */
async function inParallel(jobs: (() => Promise<void>)[], width: number): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < jobs.length) await jobs[next++]!()
  }))
}

t.test('300 requests for invented model names leave /metrics bounded, and without those names', async (t) => {
  // Every series the refusals can create exists after one of each kind: the rest must add nothing.
  const warmUp = [
    gw.request('/v2/models/warm-up-a/infer', { body, token: null }),
    gw.request('/v2/models/warm-up-b/infer', { body }),
    gw.request('/v2/models/warm-up-c', {}),
    gw.request('/v2/models/mnist/infer', { body }),
  ]
  t.same((await Promise.all(warmUp)).map((r) => r.status), [401, 403, 403, 200])
  const before = await scrape()

  const token = await gw.token()
  const statuses = new Map<number, number>()
  const names: string[] = []
  const jobs: (() => Promise<void>)[] = []
  for (let i = 0; i < 300; i++) {
    const name = `invented-${i.toString(36)}-${'q'.repeat(40)}`
    names.push(name)
    const kind = i % 3
    jobs.push(async () => {
      const res =
        kind === 0
          ? await gw.request(`/v2/models/${name}/infer`, { body, token: null })
          : kind === 1
            ? await gw.request(`/v2/models/${name}/infer`, { body, token })
            : await gw.request(`/v2/models/${name}`, { token })
      statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
    })
  }
  await inParallel(jobs, 8)
  t.same(Object.fromEntries(statuses), { 401: 100, 403: 200 }, 'each invented name was refused at the front door')

  const after = await scrape()
  const leaked = names.filter((n) => after.includes(n))
  t.same(leaked, [], 'no invented name is a label value')
  // Counter values grow by a few digits; no series is added (before the fix: about +900 KB).
  t.ok(after.length - before.length < 1024, `/metrics grew by ${after.length - before.length} bytes (${before.length} -> ${after.length})`)
  // Series by identity (name and labels, not value). Those with a model label must be the
  // same as before; a series of another metric may come and go with time (a key-set refresh).
  const seriesOf = (text: string) => new Set(text.split('\n').filter((l) => l.startsWith('bulwark_')).map((l) => l.slice(0, l.lastIndexOf(' '))))
  const [was, now] = [seriesOf(before), seriesOf(after)]
  const added = [...now].filter((s) => !was.has(s))
  t.same(added.filter((s) => s.includes('model=')), [], `no series with a model label was added${added.length > 0 ? ` (added: ${added.slice(0, 5).join(', ')}${added.length > 5 ? `, and ${added.length - 5} more` : ''})` : ''}`)

  const count = (labels: string) => Number(new RegExp(`^bulwark_requests_total\\{${labels}\\} (\\d+)$`, 'm').exec(after)?.[1] ?? -1)
  t.equal(count('code="unauthenticated",model="_unknown",status="401",verb="infer"'), 101, 'the unauthenticated ones count under _unknown')
  t.equal(count('code="forbidden",model="_unknown",status="403",verb="infer"'), 101, 'the refused infer calls too')
  t.equal(count('code="forbidden",model="_unknown",status="403",verb="metadata"'), 101, 'and the metadata calls')
  t.equal(count('code="ok",model="mnist",status="200",verb="infer"'), 1, 'the served model keeps its own label')
  t.match(after, /^bulwark_request_duration_seconds_count\{model="_unknown"\} 303$/m, 'their durations go to _unknown')
})
