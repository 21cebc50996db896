// The policies in force, as one immutable generation at a time, and what each part of the
// gateway compiled from them (a view): the model-policy link's rule tables, the rate limits,
// the output policies, the screening detectors.
//
// A request reads one generation: the first view it asks pins the generation in force to the
// request (a WeakMap keyed by the request context, so nothing is kept after it), and every
// later view it asks answers from that same generation. A reload that lands while the request
// is in the chain therefore never shows it half of one policy and half of another; it applies
// to requests that start after the swap, all of a model's settings at once.
//
// A reload (propose) compiles every view for the new set, in the order they were registered
// (a view may read an earlier view of the same proposal through `peer`), each given its value
// in the generation in force so that state worth keeping (a rate limiter's counters, a
// detector's history) carries over. Only when every view compiles is the new generation
// swapped in, in one assignment; otherwise the problems are returned and nothing changes.

import { ConfigError } from './load.ts'
import type { PolicySet } from './policy.ts'

export interface PolicyView<T> {
  /** The value in the generation pinned to `request` (the first read pins the one in force). */
  for(request: object): T
  /** The value in the generation in force now. */
  now(): T
}

/**
 * Compiles a view's value from a policy set; throws a ConfigError (each problem names its
 * file, path and fix) when the set cannot be served. `previous` is the view's value in the
 * generation in force (undefined at start); `peer` reads a view compiled earlier in the same
 * set (undefined when that one failed).
 */
export type PolicyCompiler<T> = (policies: PolicySet, previous: T | undefined, peer: <U>(view: PolicyView<U>) => U | undefined) => T | Promise<T>

interface Generation {
  readonly seq: number
  readonly policies: PolicySet
  readonly values: ReadonlyMap<PolicyView<unknown>, unknown>
}

export class LivePolicies {
  #current: Generation
  readonly #pins = new WeakMap<object, Generation>()
  readonly #compilers: { view: PolicyView<unknown>; compile: PolicyCompiler<unknown> }[] = []
  /** Proposals run one at a time, so two reloads never compile from the same `previous`. */
  #queue: Promise<unknown> = Promise.resolve()

  constructor(initial: PolicySet) {
    this.#current = { seq: 1, policies: initial, values: new Map() }
  }

  /** The policy set in force. */
  get policies(): PolicySet {
    return this.#current.policies
  }

  /** How many generations have been in force (1 at start; +1 per applied reload). */
  get generation(): number {
    return this.#current.seq
  }

  /** The generation a request reads: the one in force at its first read. */
  #pinned(request: object): Generation {
    let g = this.#pins.get(request)
    if (g === undefined) this.#pins.set(request, (g = this.#current))
    return g
  }

  /** The policy set pinned to a request. */
  policiesFor(request: object): PolicySet {
    return this.#pinned(request).policies
  }

  /**
   * Registers a view and compiles it for the set in force; a problem stops the start (the
   * ConfigError is thrown to the caller), as it did before policies could change.
   */
  async view<T>(compile: PolicyCompiler<T>): Promise<PolicyView<T>> {
    const view: PolicyView<T> = {
      for: (request) => this.#pinned(request).values.get(view as PolicyView<unknown>) as T,
      now: () => this.#current.values.get(view as PolicyView<unknown>) as T,
    }
    const values = this.#current.values as Map<PolicyView<unknown>, unknown>
    values.set(view as PolicyView<unknown>, await compile(this.#current.policies, undefined, (v) => values.get(v as PolicyView<unknown>) as never))
    this.#compilers.push({ view: view as PolicyView<unknown>, compile: compile as PolicyCompiler<unknown> })
    return view
  }

  /**
   * Compiles every view for `next` and, when all succeed, puts it in force. Resolves to the
   * problems found (empty: applied). Never rejects.
   */
  propose(next: PolicySet): Promise<string[]> {
    const run = this.#queue.then(() => this.#compileAndSwap(next))
    this.#queue = run.catch(() => {})
    return run
  }

  async #compileAndSwap(next: PolicySet): Promise<string[]> {
    const previous = this.#current
    const values = new Map<PolicyView<unknown>, unknown>()
    const problems: string[] = []
    for (const { view, compile } of this.#compilers) {
      try {
        values.set(view, await compile(next, previous.values.get(view), (v) => values.get(v as PolicyView<unknown>) as never))
      } catch (err) {
        problems.push(...(err instanceof ConfigError ? err.problems : [(err as Error).message]))
      }
    }
    if (problems.length > 0) return problems
    this.#current = Object.freeze({ seq: previous.seq + 1, policies: next, values })
    return []
  }
}

/** A view over a fixed set (a stage built outside a gateway, as unit tests do): every request reads the same value. */
export function fixedView<T>(value: T): PolicyView<T> {
  return { for: () => value, now: () => value }
}
