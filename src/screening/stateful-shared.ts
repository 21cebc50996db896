// The stateful query detector (stateful.ts) with each principal's ring of recent queries in
// Redis, so replicas judge a caller on all of its queries, not on the share that reached them.
//
// The ring is a shared ring (shared-ring.ts) under
// `<prefix>screening:stateful:<model>:h<historyPerPrincipal>d<dims>u8:<principal>` (`:d` digests,
// `:v` pooled queries at one byte a value; mnist: 65 bytes a query, 65 KiB for a full ring), expiring
// `ttlMs` after the principal's last query. Never raw inputs. Each replica keeps a copy of the
// rings of the principals it judged lately (bounded like the in-process store: maxPrincipals,
// maxStoredQueries, least recently seen forgotten first; a forgotten copy is fetched whole on
// the principal's next request) and, per request, one round trip sends the batch's queries and
// brings back only what the other replicas appended since. The batch is judged on the copy
// with the in-process code (stateful.ts judgeBatch), so each query is judged against exactly the
// queries Redis recorded before it, whichever replica took them.

import type { DetectorResult, ScreenBatch, SharedDetector } from './detector.ts'
import { PrincipalStore } from './principal-store.ts'
import { RingCopy, sharedRing } from './shared-ring.ts'
import { sharedDigest, stateKey, type ScreeningStore } from './shared-store.ts'
import { STATEFUL_DETECTOR, type StatefulOptions } from './stateful.ts'

export function createSharedStatefulDetector(o: StatefulOptions, model: string, store: ScreeningStore): SharedDetector {
  if (o.k > o.historyPerPrincipal) throw new RangeError(`stateful: k (${o.k}) must not exceed historyPerPrincipal (${o.historyPerPrincipal})`)
  const dims = o.encoder.dims
  const shape = `h${o.historyPerPrincipal}d${dims}u8`
  const ring = sharedRing(store, o.historyPerPrincipal, dims, `stateful detector on model ${model}`)
  const copies = new PrincipalStore<RingCopy>({
    maxPrincipals: o.maxPrincipals,
    maxUnits: Math.max(o.maxStoredQueries, o.historyPerPrincipal),
    create: () => new RingCopy(dims, o.historyPerPrincipal),
    units: (c) => c.count,
  })
  return {
    ...STATEFUL_DETECTOR,
    mode: o.mode,
    shared: true,
    async inspect(batch: ScreenBatch): Promise<DetectorResult | null> {
      const digests = batch.items.map(sharedDigest)
      const vectors = batch.items.map((item) => o.encoder.encode(item))
      const copy = copies.use(batch.principal)
      const score = await ring.judge(stateKey('stateful', model, shape, batch.principal), copy, digests, vectors, o.k)
      copies.settle(batch.principal)
      if (score === Infinity) return null
      return { score, threshold: o.threshold, alarm: score < o.threshold }
    },
    memory: () => ({ principals: copies.principals, stored: copies.units, evictions: copies.evictions }),
  }
}
