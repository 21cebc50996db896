// The attacker's and the benign user's view of mnist: POST /v2/models/mnist/infer over mTLS
// with the dev client certificate and a dev token, inputs as an OIP binary tensor, outputs
// as JSON. Requests carry at most 64 digits (the model's maxBatchSize); several are kept in
// flight. A refusal (429 privacy_budget_exhausted, ...) is returned, not thrown, so the
// budget experiment can see where the accountant stopped an attack.

import { setTimeout as sleep } from 'node:timers/promises'
import { request, type Dispatcher } from 'undici'
import { HEADER_LENGTH } from '../../src/oip/codec.ts'
import { PIXELS } from '../../models/mnist/data.ts'

export const MAX_BATCH = 64

export interface Answer {
  /** One released score row per input (null where the request was refused). */
  rows: (Float64Array | null)[]
  /** The first refusal, if any: HTTP status and error code. */
  refused: { status: number; code: string; retryAfter: string | undefined; atQuery: number } | null
  /** Response parameters of the last successful request (privacy_epsilon_spent, ...). */
  parameters: Record<string, unknown>
  /** Sum of privacy_epsilon_cost over the answered requests (0 without noise). */
  epsilonCost: number
}

export interface MnistClient {
  /** Sends `images` in requests of up to 64; stops at the first refusal. */
  classify(images: Float32Array[]): Promise<Answer>
  /** Queries answered so far by this client. */
  readonly answered: number
}

export interface ClientOptions {
  url: string
  dispatcher: Dispatcher
  /** A bearer token for the caller; called once per classify() call, so tokens stay fresh. */
  token: () => Promise<string>
  /** Requests in flight at once. Default 4. */
  concurrency?: number
  /**
   * On 429 privacy_budget_exhausted, wait Retry-After and send the batch again instead of
   * stopping (for the utility and attack runs, whose budget is per second). Default false.
   */
  waitOnBudget?: boolean
}

/** One request of up to 64 digits: the released rows (null: an item screening withheld, the rest of the batch answered) and parameters, or the refusal. */
export async function inferDigits(o: Pick<ClientOptions, 'url' | 'dispatcher'>, images: Float32Array[], token: string): Promise<{ rows: (Float64Array | null)[]; parameters: Record<string, unknown> } | { status: number; code: string; retryAfter: string | undefined }> {
  const data = new Float32Array(images.length * PIXELS)
  images.forEach((img, i) => data.set(img, i * PIXELS))
  const head = Buffer.from(JSON.stringify({ inputs: [{ name: 'input', datatype: 'FP32', shape: [images.length, 1, 28, 28], parameters: { binary_data_size: data.byteLength } }] }))
  const res = await request(`${o.url}/v2/models/mnist/infer`, {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', [HEADER_LENGTH]: String(head.length), authorization: `Bearer ${token}` },
    body: Buffer.concat([head, Buffer.from(data.buffer)]),
    dispatcher: o.dispatcher,
  })
  const body = (await res.body.json()) as Record<string, any>
  if (res.statusCode !== 200) {
    const retry = res.headers['retry-after']
    return { status: res.statusCode, code: String(body.code ?? body.error), retryAfter: Array.isArray(retry) ? retry[0] : retry }
  }
  const out = (body.outputs as { name: string; shape: number[]; data: number[] }[]).find((t) => t.name === 'probabilities')!
  const classes = out.shape[1]!
  const parameters = (body.parameters as Record<string, unknown>) ?? {}
  const withheld = new Set(String(parameters.screening_withheld_items ?? '').split(',').filter(Boolean).map(Number))
  const rows: (Float64Array | null)[] = []
  for (let i = 0; i < images.length; i++) rows.push(withheld.has(i) ? null : Float64Array.from(out.data.slice(i * classes, (i + 1) * classes)))
  return { rows, parameters }
}

export function mnistClient(o: ClientOptions): MnistClient {
  const concurrency = o.concurrency ?? 4
  let answered = 0
  return {
    get answered() {
      return answered
    },
    async classify(images) {
      const rows: (Float64Array | null)[] = new Array(images.length).fill(null)
      const state: { refused: Answer['refused'] } = { refused: null }
      let parameters: Record<string, unknown> = {}
      let epsilonCost = 0
      let next = 0
      const token = await o.token()
      const worker = async () => {
        while (next < images.length && !state.refused) {
          const start = next
          const end = (next = Math.min(images.length, next + MAX_BATCH))
          let r = await inferDigits(o, images.slice(start, end), token)
          while (o.waitOnBudget && 'code' in r && r.code === 'privacy_budget_exhausted') {
            await sleep(1000 * Number(r.retryAfter ?? 1))
            r = await inferDigits(o, images.slice(start, end), token)
          }
          if ('rows' in r) {
            r.rows.forEach((row, i) => (rows[start + i] = row))
            answered += r.rows.filter((row) => row !== null).length
            parameters = r.parameters
            epsilonCost += Number(r.parameters.privacy_epsilon_cost ?? 0)
          } else {
            // Concurrent requests: keep the refusal of the earliest batch.
            const earlier = state.refused as Answer['refused']
            if (!earlier || start < earlier.atQuery) state.refused = { ...r, atQuery: start }
          }
        }
      }
      await Promise.all(Array.from({ length: concurrency }, worker))
      return { rows, refused: state.refused, parameters, epsilonCost }
    },
  }
}
