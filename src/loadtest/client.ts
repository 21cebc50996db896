// The bench's client side: one interface the load generator drives, whatever the protocol.
// REST over undici here; gRPC in src/transport/grpc-client.ts (driven by src/loadtest/grpc.ts):
// send one prepared request, say how it ended, and the rest of the tool does not change.

import { Pool, type Dispatcher } from 'undici'

/** One prepared request. Built once per distinct input and sent many times. */
export interface LoadRequest {
  method: 'GET' | 'POST'
  path: string
  headers?: Record<string, string>
  body?: Buffer | string
  /** Items the request carries (batch size), for items/s. */
  items?: number
}

/** How one request ended: its status (0 when no answer came) and Bulwark's stable code. */
export interface Outcome {
  status: number
  /** 'ok' for a 2xx; the gateway's error `code`; `http_<status>` when the body had none; a client error's code (ECONNREFUSED...). */
  code: string
}

export interface LoadClient {
  send(request: LoadRequest): Promise<Outcome>
  close(): Promise<void>
}

export interface RestClientOptions {
  origin: string
  /** Connections kept open; a closed loop gives one per client. */
  connections: number
  /** undici's TLS connect options: ca, cert, key (PEM). */
  tls?: Record<string, unknown>
  /** Sent as `authorization: Bearer ...` on every request. */
  token?: string
  /** Several callers' tokens: each request carries the next one in turn (round robin); overrides token. */
  tokens?: string[]
  /** Whether to read error bodies for their code (a GET scrape needs not). */
  readCodes?: boolean
}

/** The `code` of a JSON error body, as Bulwark sends it, when the body has one. */
export function errorCode(status: number, body: string): string {
  try {
    const parsed = JSON.parse(body) as { code?: unknown }
    if (typeof parsed.code === 'string' && /^[a-z0-9_]{1,64}$/.test(parsed.code)) return parsed.code
  } catch {}
  return `http_${status}`
}

/** A client-side failure (no answer) as a code: undici's or the system's, else its name. */
function failureCode(err: unknown): string {
  const e = err as { code?: unknown; name?: unknown }
  const code = typeof e.code === 'string' ? e.code : typeof e.name === 'string' ? e.name : 'client_error'
  return code.replace(/[^A-Za-z0-9_]/g, '_').slice(0, 64)
}

async function sendOn(pool: Dispatcher, r: LoadRequest, headers: Record<string, string>, readCodes: boolean): Promise<Outcome> {
  try {
    const res = await pool.request({ method: r.method, path: r.path, headers: r.headers ? { ...headers, ...r.headers } : headers, body: r.body ?? null })
    if (res.statusCode < 300) {
      await res.body.dump({ limit: Infinity })
      return { status: res.statusCode, code: 'ok' }
    }
    if (!readCodes) {
      await res.body.dump({ limit: Infinity })
      return { status: res.statusCode, code: `http_${res.statusCode}` }
    }
    return { status: res.statusCode, code: errorCode(res.statusCode, await res.body.text()) }
  } catch (err) {
    return { status: 0, code: failureCode(err) }
  }
}

export function restClient(o: RestClientOptions): LoadClient {
  const pool = new Pool(o.origin, { connections: o.connections, pipelining: 1, keepAliveTimeout: 60_000, ...(o.tls ? { connect: o.tls } : {}) })
  // One connection pool for every caller: the identity is the request's token, not its connection.
  const tokens = o.tokens && o.tokens.length > 0 ? o.tokens : o.token !== undefined ? [o.token] : []
  const headers: Record<string, string>[] = tokens.length > 0 ? tokens.map((t) => ({ authorization: `Bearer ${t}` })) : [{}]
  const readCodes = o.readCodes ?? true
  let next = 0
  return {
    send: (r) => sendOn(pool, r, headers[next++ % headers.length]!, readCodes),
    close: () => pool.close(),
  }
}

/** Spreads requests over several clients in turn (one per caller, where a client holds its caller's credentials). */
export function roundRobin(clients: LoadClient[]): LoadClient {
  let next = 0
  return {
    send: (r) => clients[next++ % clients.length]!.send(r),
    close: async () => {
      await Promise.all(clients.map((c) => c.close()))
    },
  }
}

/** A GET over a client, with its JSON body (model metadata), or the reason it failed. */
export async function getJson(o: RestClientOptions, urlPath: string): Promise<{ status: number; body: unknown }> {
  const pool = new Pool(o.origin, { connections: 1, ...(o.tls ? { connect: o.tls } : {}) })
  try {
    const res = await pool.request({ method: 'GET', path: urlPath, headers: o.token !== undefined ? { authorization: `Bearer ${o.token}` } : {} })
    const text = await res.body.text()
    let body: unknown = text
    try {
      body = JSON.parse(text)
    } catch {}
    return { status: res.statusCode, body }
  } finally {
    await pool.close()
  }
}
