// Repeated identical refusals as one record with a count. A client that sends junk (no token,
// invented routes, past its limit) would otherwise leave one synced record of about a
// kilobyte per request, and a full audit disk refuses everyone. Instead:
//
// - the first refusal of a kind is written in full, as always, and opens a run;
// - identical refusals in the run's window (audit.aggregation.windowMs from the first) are
//   counted and answered without a write of their own;
// - when the window closes (a clock timer), or at shutdown, one "aggregate" record holds the
//   count, the first and last time, and the fields they share. It is chained and
//   checkpointed like any other line.
//
// Identical means: the same client (certificate SHA-256, else address), principal (token
// issuer and subject, or none), status, code (for refusals by the HTTP parser, which have no
// code, the parser's reason), stage, method, route template and verb. The model named in the
// URL, the client address and the precise reason may differ within a run: the aggregate
// record tallies them (at most TALLY_MAX distinct values each, the rest counted together),
// so a client cannot defeat aggregation by inventing model names or paths, and the record
// still says what it tried (a forged token and a missing one are both 401 unauthenticated at
// jwt-auth: the reasons tell them apart).
//
// Never aggregated: answers that were served (decision "allowed"); refusals that carry
// evidence of their own (input or output digests, a body digest, screening flags, a privacy
// charge); and exchanges the client cut short (client_closed_request, request_timeout),
// whose reason says how far its upload got. Those keep one record each.

import type { Clock, Logger, Timer } from '../deps.ts'
import type { AuditIdentity, AuditRecord } from './record.ts'

/** Distinct model names, addresses or reasons an aggregate record lists; the rest are counted as `more`. */
export const TALLY_MAX = 16
const MAX_TALLY_KEY = 200

/** Codes of exchanges cut short by the client or its network rather than refused: never aggregated. */
const CUT_SHORT: ReadonlySet<string> = new Set(['client_closed_request', 'request_timeout'])

export interface Tally {
  /** How many counted refusals had each value. */
  values: Record<string, number>
  /** Counted refusals whose value did not fit in `values` (past TALLY_MAX distinct ones). */
  more: number
}

export interface AggregateRecord {
  type: 'aggregate'
  /** The request id of the refusal written in full that opened the run. */
  firstId: string
  /** Refusals this record stands for (the one written in full not included). */
  count: number
  /** receivedAt of the first and the last refusal counted. */
  firstAt: string
  lastAt: string
  windowMs: number
  method: string
  /** The route template that matched ('' when none did). */
  route: string
  verb: AuditRecord['verb']
  client: { tls: string | null; addresses: Tally }
  identity: AuditIdentity | null
  principal: AuditRecord['principal']
  decision: AuditRecord['decision']
  stage: string
  status: number
  code: AuditRecord['code']
  /** The precise reasons of the counted refusals (the one written in full has its own). */
  reasons: Tally
  /** The model names the counted refusals asked for (none for server-level routes). */
  models: Tally
}

/**
 * What makes refusals identical, or null when `r` is never aggregated (an answer served, or
 * a refusal with evidence of its own).
 */
export function aggregationKey(r: AuditRecord, route: string): string | null {
  if (r.decision === 'allowed') return null
  if (r.inputs !== null || r.outputs !== null || r.bodySha256 !== null || r.flags.length > 0 || r.privacy !== null) return null
  if (r.code !== null && CUT_SHORT.has(r.code)) return null
  const client = r.identity?.certSha256 ? `cert:${r.identity.certSha256}` : `addr:${r.client.address}`
  return JSON.stringify([client, r.principal?.iss ?? null, r.principal?.sub ?? null, r.status, r.code, r.code === null ? r.reason : null, r.stage, r.method, route, r.verb])
}

class Tallier {
  readonly #values = new Map<string, number>()
  #more = 0
  add(value: string): void {
    const v = value.slice(0, MAX_TALLY_KEY)
    const n = this.#values.get(v)
    if (n !== undefined) this.#values.set(v, n + 1)
    else if (this.#values.size < TALLY_MAX) this.#values.set(v, 1)
    else this.#more++
  }
  toJSON(): Tally {
    return { values: Object.fromEntries(this.#values), more: this.#more }
  }
}

interface Run {
  first: AuditRecord
  route: string
  count: number
  firstAt: string
  lastAt: string
  addresses: Tallier
  reasons: Tallier
  models: Tallier
  timer: Timer
}

export interface RefusalRunsOptions {
  windowMs: number
  maxOpenRuns: number
  clock: Clock
  log: Logger
  /** Writes one aggregate record (a JSON object text); resolves once it is durable. */
  write(body: string): Promise<void>
}

export class RefusalRuns {
  readonly #o: RefusalRunsOptions
  readonly #runs = new Map<string, Run>()
  readonly #writing = new Set<Promise<void>>()
  #closed = false

  constructor(options: RefusalRunsOptions) {
    this.#o = options
  }

  /** Runs open now. */
  get open(): number {
    return this.#runs.size
  }

  /** Counts `r` into the open run of its kind: true when counted (it needs no record of its own). */
  count(key: string, r: AuditRecord): boolean {
    const run = this.#runs.get(key)
    if (!run) return false
    run.count++
    if (run.count === 1) run.firstAt = r.receivedAt
    run.lastAt = r.receivedAt
    run.addresses.add(r.client.address)
    if (r.reason !== null) run.reasons.add(r.reason)
    if (r.model !== null) run.models.add(r.model)
    return true
  }

  /**
   * Opens a run after `r`, a refusal of kind `key`, was written in full. Past maxOpenRuns,
   * none is opened: the next refusal of the kind is written in full too.
   */
  opened(key: string, r: AuditRecord, route: string): void {
    if (this.#closed || this.#runs.has(key) || this.#runs.size >= this.#o.maxOpenRuns) return
    const timer = this.#o.clock.setTimeout(() => this.#end(key), this.#o.windowMs, { keepAlive: false })
    this.#runs.set(key, { first: r, route, count: 0, firstAt: r.receivedAt, lastAt: r.receivedAt, addresses: new Tallier(), reasons: new Tallier(), models: new Tallier(), timer })
  }

  /** Ends every run now, writing the aggregate records of those with a count (shutdown). */
  async flush(): Promise<void> {
    this.#closed = true
    for (const [key, run] of [...this.#runs]) {
      run.timer.cancel()
      this.#end(key)
    }
    await Promise.all([...this.#writing])
  }

  #end(key: string): void {
    const run = this.#runs.get(key)
    if (!run) return
    this.#runs.delete(key)
    if (run.count === 0) return
    const record = aggregateRecord(run, this.#o.windowMs)
    const body = JSON.stringify(record)
    const writing = this.#o.write(body).then(
      () => {},
      (err: unknown) => {
        // The count would be lost with the record: the server log keeps it.
        this.#o.log.error({ err: err instanceof Error ? err.message : String(err), aggregate: record }, 'an aggregate audit record could not be written')
      },
    )
    this.#writing.add(writing)
    void writing.finally(() => this.#writing.delete(writing))
  }
}

function aggregateRecord(run: Run, windowMs: number): AggregateRecord {
  const f = run.first
  return {
    type: 'aggregate',
    firstId: f.id,
    count: run.count,
    firstAt: run.firstAt,
    lastAt: run.lastAt,
    windowMs,
    method: f.method,
    route: run.route,
    verb: f.verb,
    client: { tls: f.client.tls, addresses: run.addresses.toJSON() },
    identity: f.identity,
    principal: f.principal,
    decision: f.decision,
    stage: f.stage,
    status: f.status,
    code: f.code,
    reasons: run.reasons.toJSON(),
    models: run.models.toJSON(),
  }
}
