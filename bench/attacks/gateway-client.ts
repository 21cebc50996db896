// The evaluation's view of a gateway: in-process gateways that differ only in the mnist
// policy's `screening:` section, and a client that sends one digit per request through the
// public API (TLS with the dev client certificate, a JWT per subject).

import { performance } from 'node:perf_hooks'
import path from 'node:path'
import { request } from 'undici'
import { DEV_WORKLOAD } from '../../src/config/security.ts'
import { startGateway, type TestGateway } from '../../kit/gateway.ts'
import { repoRoot } from '../../kit/paths.ts'

export const calibrationFile = path.join(repoRoot, 'policies/mnist.screening.json')

export function policyWith(screening: Record<string, unknown> | null): Record<string, unknown> {
  return {
    model: 'mnist',
    allow: [{ verbs: ['infer', 'metadata'], workloads: [DEV_WORKLOAD], scopes: ['mnist:infer'] }],
    // The evaluation's principals send thousands of requests; the bundled limits stay as they are.
    rateLimit: { requestsPerWindow: 1_000_000, windowMs: 1000 },
    // Scores for the score-based attacks, at full precision (the bundled default is label only).
    output: { mode: 'scores', roundDecimals: 9 },
    ...(screening ? { screening: { ...screening, calibrationFile } } : {}),
  }
}

export async function evalGateway(screening: Record<string, unknown> | null): Promise<TestGateway> {
  return startGateway({
    models: ['mnist'],
    policies: { mnist: policyWith(screening) },
    // The per-client limit before the token would throttle the attack's thousands of queries
    // from one certificate into 429s, which would read as neither fooled nor refused: off here,
    // so the figures are the detectors'.
    config: { rateLimits: { maxInFlightPerPrincipal: 64 }, audit: { durability: 'relaxed' }, clientLimits: { enabled: false } },
  })
}

export interface Answer {
  status: number
  code: string | null
  probs: Float32Array | null
  ms: number
}

export async function infer(gw: TestGateway, token: string, x: Float32Array): Promise<Answer> {
  const t0 = performance.now()
  const res = await request(`${gw.url}/v2/models/mnist/infer`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ inputs: [{ name: 'input', datatype: 'FP32', shape: [1, 1, 28, 28], data: Array.from(x) }] }),
    dispatcher: gw.agent,
  })
  const body = (await res.body.json()) as { code?: string; outputs?: { name: string; data: number[] }[] }
  const out = body.outputs?.find((o) => o.name === 'probabilities')
  return { status: res.statusCode, code: body.code ?? null, probs: out ? Float32Array.from(out.data) : null, ms: performance.now() - t0 }
}

export async function mapPool<T, R>(items: readonly T[], concurrency: number, fn: (item: T, i: number) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length)
  let next = 0
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length) {
      const i = next++
      out[i] = await fn(items[i]!, i)
    }
  }))
  return out
}

const tokens = new Map<string, string>()
/** A token for subject `sub` on this gateway (one identity per subject), minted once. */
export async function tokenFor(gw: TestGateway, sub: string): Promise<string> {
  const key = `${gw.url} ${sub}`
  let t = tokens.get(key)
  if (!t) tokens.set(key, (t = await gw.token({ sub, ttlSeconds: 3600 })))
  return t
}
