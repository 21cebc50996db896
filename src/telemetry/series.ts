// The label sets of one metric, each mapped to the one series object it counts in. A metric
// is recorded a few times per request with a fresh labels object each time ({ stage }, four
// labels for a request), so the lookup builds no string and no copy: the labels as written are
// walked through a tree of Maps (name, then value, per label), which leads to the series once
// that order of names was seen. Only a miss computes the label set's identity (sorted keys,
// as JSON), to find or create its series. Each series holds one frozen attributes object
// (keys sorted) that goes to OpenTelemetry every time.
//
// At most `maxSeries` label sets are kept, the overflow series included: past that, a new
// label set counts in the overflow series (`otel.metric.overflow`, the OpenTelemetry
// convention). Only kept series are entered in the tree, so label sets past the bound (made-up
// values) add no memory, each taking the miss path again.

import type { Attributes } from '@opentelemetry/api'

export type Labels = Record<string, string>

/** Label sets per metric when the configuration gives none (the OpenTelemetry SDK's own default). */
export const DEFAULT_MAX_SERIES = 2000

/** The series that label sets past a metric's bound are counted in (the OpenTelemetry SDK's overflow attribute). */
export const OVERFLOW_ATTRIBUTES: Attributes = Object.freeze({ 'otel.metric.overflow': true })
const OVERFLOW_KEY = JSON.stringify(OVERFLOW_ATTRIBUTES)

/** The labels with their keys in sorted order (stable series identity and exposition order). */
export function sortedLabels(labels: Labels): Attributes {
  const keys = Object.keys(labels)
  if (keys.length < 2) return labels
  keys.sort()
  const out: Attributes = {}
  // eslint-disable-next-line bulwark/object-injection -- read-only copy: k comes from Object.keys(labels), the object's own keys
  for (const k of keys) out[k] = labels[k]
  return out
}

function labelKey(labels: Labels): string {
  return JSON.stringify(sortedLabels(labels))
}

/** One step of the walk: a label name leads to its values, a value to the next name (or the series). */
interface Step<S> {
  readonly next: Map<string | undefined, Step<S>>
  series?: S
}

export class SeriesIndex<S> {
  /** Most label sets kept, the overflow series included. */
  maxSeries = DEFAULT_MAX_SERIES
  private readonly create: (attributes: Attributes) => S
  /** By label-set identity (labelKey), in the order first seen; the overflow series under OVERFLOW_KEY. */
  private readonly kept = new Map<string, S>()
  private readonly root: Step<S> = { next: new Map() }

  constructor(create: (attributes: Attributes) => S) {
    this.create = create
  }

  /**
   * The series `labels` count in: their own while there is room (one place is left for the
   * overflow series, as the SDK counts), else the overflow series.
   */
  get(labels: Labels): S {
    let step: Step<S> | undefined = this.root
    for (const name in labels) {
      // eslint-disable-next-line bulwark/object-injection -- read-only: name comes from the for-in over labels itself
      step = step.next.get(name)?.next.get(labels[name])
      if (step === undefined) break
    }
    return step?.series ?? this.place(labels)
  }

  /** The series of `labels` if it is kept (no overflow, nothing created). */
  find(labels: Labels): S | undefined {
    return this.kept.get(labelKey(labels))
  }

  /** The overflow series, once a label set went there. */
  overflow(): S | undefined {
    return this.kept.get(OVERFLOW_KEY)
  }

  /** Label sets held, the overflow series included. */
  get size(): number {
    return this.kept.size
  }

  /** Every series held, in the order first seen. */
  values(): IterableIterator<S> {
    return this.kept.values()
  }

  private place(labels: Labels): S {
    const key = labelKey(labels)
    let series = this.kept.get(key)
    if (series === undefined) {
      if (this.kept.size >= this.maxSeries - 1) return this.overflowSeries()
      // A copy: the caller's object is theirs to change.
      series = this.create(Object.freeze(sortedLabels({ ...labels })))
      this.kept.set(key, series)
    }
    this.remember(labels, series)
    return series
  }

  private overflowSeries(): S {
    let series = this.kept.get(OVERFLOW_KEY)
    if (series === undefined) {
      series = this.create(OVERFLOW_ATTRIBUTES)
      this.kept.set(OVERFLOW_KEY, series)
    }
    return series
  }

  /** Enters the labels as written (in their key order) into the walk, leading to `series`. */
  private remember(labels: Labels, series: S): void {
    let step = this.root
    for (const name in labels) {
      // eslint-disable-next-line bulwark/object-injection -- read-only: name comes from the for-in over labels itself
      for (const part of [name, labels[name]]) {
        let next = step.next.get(part)
        if (next === undefined) step.next.set(part, (next = { next: new Map() }))
        step = next
      }
    }
    step.series = series
  }
}
