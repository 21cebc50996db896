// A replica's copy of one principal's extraction state (prada-shared.ts): the in-process state
// (prada.ts) plus what ties it to Redis: the epoch and version it reflects and which classes'
// sets it holds. While a request is judged on it, a journal notes every slot the judgement
// wrote, so the commit sends only those, and a commit that lost a race is undone exactly: the
// copy is again the state of the version it was read at, never ahead of Redis.
//
// Exact repeats are not the copy's to tell: the ring of the last windowSize distinct digests
// lives in Redis alone, which answers for each query of the request, as the in-process
// remember() would in turn, whether it is new (prada-shared.ts READ_SCRIPT). The copy's
// remember() returns those answers, so it holds no digests.
//
// Fields as Redis keeps them (one string per principal, each at a fixed place):
//   d     Float64 count and next, then the ring of the last windowSize distances (Float64)
//   s     Float64 count and next, then the ring of the last windowSize distinct digests (16 B),
//         written by Redis from the request's digests, never sent to copies
//   c<k>  Float64 count, next, n, sum, sum of squares, threshold T_k, then the ring of class k's
//         growing set: pooled queries at one byte a value (shared-store.ts cellBytes)
// A field's write is a list of (byte offset, bytes): its header at 0 and each run of slots
// written; commits and the log carry them in one string (encodeWrites).
//
// Memory per principal: the in-process state's distances and sorted window, and its digests'
// ring (8 bytes a slot), which stays unused; measured with a full window of 1,000 and no class
// sets, about 28 KiB a copy against 44 KiB in process; then 4·dims bytes per stored pooled
// query (Float32, as in process), bounded by maxStoredQueries over all copies.

import { GrowingSet, PradaState } from './prada.ts'
import { bytesOf, cellBytes, cellsFrom, float64s } from './shared-store.ts'

export const RING_HEADER = 16 // count, next
export const CLASS_HEADER = 48 // count, next, n, sum, sumSq, threshold

/** Thrown when what Redis sent does not fit the copy: the caller drops the copy and reads whole. */
export class CopyOutOfStep extends Error {}

/** A field write: its name, whether the field is replaced (not patched), its slots' size, and (offset, bytes) pairs in offset order: the header at 0, then runs of slots. */
export interface FieldWrite {
  field: string
  reset: boolean
  slotBytes: number
  pairs: [number, Buffer][]
}

/**
 * Field writes in one string, as the commit script reads them and copies get them from the log:
 * per field its id (UInt32: 0 the distances, k + 1 class k's set), reset (UInt8), header, the
 * number of runs of consecutive slots (UInt16), then per run its first slot and count (UInt16
 * each) and their slots; little-endian. A distance slot is its 8 bytes; a pooled query is
 * zero-run coded (zeroRuns): most cells of an image's background are 0 (mnist: three in four).
 */
export function encodeWrites(writes: readonly FieldWrite[]): Buffer {
  const parts: Buffer[] = []
  for (const w of writes) {
    const klass = w.field !== 'd'
    const headerBytes = klass ? CLASS_HEADER : RING_HEADER
    const [[, header], ...runs] = w.pairs as [[number, Buffer], ...[number, Buffer][]]
    const head = Buffer.alloc(5)
    head.writeUInt32LE(klass ? Number(w.field.slice(1)) + 1 : 0, 0)
    head.writeUInt8(w.reset ? 1 : 0, 4)
    parts.push(head, header, u16s(runs.length))
    for (const [off, bytes] of runs) {
      const n = bytes.length / w.slotBytes
      parts.push(u16s((off - headerBytes) / w.slotBytes, n))
      if (!klass) parts.push(bytes)
      else for (let i = 0; i < n; i++) parts.push(zeroRuns(bytes.subarray(i * w.slotBytes, (i + 1) * w.slotBytes)))
    }
  }
  return Buffer.concat(parts)
}

function u16s(...values: number[]): Buffer {
  const b = Buffer.alloc(2 * values.length)
  values.forEach((v, i) => b.writeUInt16LE(v, 2 * i))
  return b
}

/**
 * Cells as pairs (zeros, literals: UInt8 each) followed by the literals, until every cell is
 * told; a lone 0 among other values stays a literal (a new pair would cost more).
 */
export function zeroRuns(cells: Uint8Array): Buffer {
  const out: number[] = []
  for (let i = 0; i < cells.length; ) {
    let zeros = 0
    while (i < cells.length && cells[i] === 0 && zeros < 255) {
      zeros++
      i++
    }
    const from = i
    while (i < cells.length && i - from < 255 && !(cells[i] === 0 && (i + 1 === cells.length || cells[i + 1] === 0))) i++
    out.push(zeros, i - from)
    for (let k = from; k < i; k++) out.push(cells[k]!)
  }
  return Buffer.from(out)
}

/** zeroRuns' cells (`dims` of them) at `at`, and where they end; throws CopyOutOfStep when malformed. */
function fromZeroRuns(b: Buffer, at: number, dims: number): [Buffer, number] {
  const cells = Buffer.alloc(dims)
  for (let filled = 0; filled < dims; ) {
    if (at + 2 > b.length) throw new CopyOutOfStep('pooled query cut short')
    const zeros = b[at]!
    const literals = b[at + 1]!
    if (zeros + literals === 0 || filled + zeros + literals > dims || at + 2 + literals > b.length) throw new CopyOutOfStep('pooled query malformed')
    b.copy(cells, filled + zeros, at + 2, at + 2 + literals)
    filled += zeros + literals
    at += 2 + literals
  }
  return [cells, at]
}

/** The field writes of encodeWrites' string; throws CopyOutOfStep when it is malformed. */
export function decodeWrites(b: Buffer, dims: number): FieldWrite[] {
  const writes: FieldWrite[] = []
  const need = (at: number, n: number) => {
    if (at + n > b.length) throw new CopyOutOfStep('field writes cut short')
  }
  for (let at = 0; at < b.length; ) {
    need(at, 5)
    const id = b.readUInt32LE(at)
    const reset = b.readUInt8(at + 4) === 1
    const [headerBytes, slotBytes] = id === 0 ? [RING_HEADER, 8] : [CLASS_HEADER, dims]
    at += 5
    need(at, headerBytes + 2)
    const pairs: [number, Buffer][] = [[0, b.subarray(at, at + headerBytes)]]
    const runs = b.readUInt16LE(at + headerBytes)
    at += headerBytes + 2
    for (let r = 0; r < runs; r++) {
      need(at, 4)
      const first = b.readUInt16LE(at)
      const n = b.readUInt16LE(at + 2)
      at += 4
      if (id === 0) {
        need(at, n * slotBytes)
        pairs.push([headerBytes + first * slotBytes, b.subarray(at, at + n * slotBytes)])
        at += n * slotBytes
      } else {
        const slots: Buffer[] = []
        for (let i = 0; i < n; i++) {
          const [cells, end] = fromZeroRuns(b, at, dims)
          slots.push(cells)
          at = end
        }
        pairs.push([headerBytes + first * slotBytes, Buffer.concat(slots)])
      }
    }
    writes.push({ field: id === 0 ? 'd' : `c${id - 1}`, reset, slotBytes, pairs })
  }
  return writes
}

/** count and next of a ring field, or null when the bytes are not a ring of `cap` slots of `slot` bytes. */
function ringHeader(bytes: Buffer, header: number, cap: number, slot: number): Float64Array | null {
  if (bytes.length < header) return null
  const h = float64s(bytes, 0, header / 8)
  return validCounts(h[0]!, h[1]!, cap) && bytes.length === header + h[0]! * slot ? h : null
}

function validCounts(count: number, next: number, cap: number): boolean {
  return Number.isInteger(count) && Number.isInteger(next) && count >= 0 && count <= cap && next >= 0 && next < cap && (count === cap || next === count)
}

/** count, next, n, sum, sumSq, threshold of a class's header. */
function setHeader(g: GrowingSet, h: Float64Array): void {
  g.count = h[0]!
  g.next = h[1]!
  g.n = h[2]!
  g.sum = h[3]!
  g.sumSq = h[4]!
  g.threshold = h[5]!
}

/** A growing set that notes which slots a request wrote, and what it overwrote (for undo). */
export class TrackedSet extends GrowingSet {
  readonly written = new Set<number>()
  /** The field in Redis was not a valid set: the next write replaces it. */
  reset = false
  private overwritten: [number, Float32Array][] = []
  private saved: Float64Array = new Float64Array(6)

  override add(v: Float32Array): number {
    if (this.next < this.count) this.overwritten.push([this.next, this.vectors.slice(this.next * this.dims, (this.next + 1) * this.dims)])
    const slot = super.add(v)
    this.written.add(slot)
    return slot
  }

  begin(): void {
    this.written.clear()
    this.overwritten = []
    this.saved = this.header()
  }

  undo(): void {
    for (const [slot, v] of this.overwritten.reverse()) this.vectors.set(v, slot * this.dims)
    setHeader(this, this.saved)
    this.written.clear()
    this.overwritten = []
  }

  header(): Float64Array<ArrayBuffer> {
    return Float64Array.of(this.count, this.next, this.n, this.sum, this.sumSq, this.threshold)
  }

  /** Makes room for `slots` stored queries (a patch from Redis may fill slots add() never did). */
  ensure(slots: number): void {
    if (this.vectors.length >= slots * this.dims) return
    const grown = new Float32Array(slots * this.dims)
    grown.set(this.vectors)
    this.vectors = grown
  }
}

export class PradaCopy extends PradaState {
  /** Redis's state this copy is: its epoch ('' while Redis has none) and version. */
  epoch = ''
  version = 0
  /** Classes whose set this copy holds as Redis has it (absent from `classes`: Redis has none yet). */
  readonly known = new Set<number>()
  resetDistances = false
  readonly distanceSlots = new Set<number>()
  // Redis's answer for each query of the request being judged: new (true) or an exact repeat.
  private answers: readonly boolean[] = []
  // The journal of the request being judged (undo in reverse order).
  private distanceLog: [number, number][] = []
  private savedCounts: number[] = []
  private batchClasses: readonly number[] = []
  private createdClasses: number[] = []

  readonly windowSize: number
  readonly dims: number
  readonly setCapacity: number

  constructor(windowSize: number, dims: number, setCapacity: number) {
    super(windowSize)
    this.windowSize = windowSize
    this.dims = dims
    this.setCapacity = setCapacity
  }

  override newClass(dims: number, capacity: number): GrowingSet {
    const g = new TrackedSet(dims, capacity)
    g.begin()
    return g
  }

  /** Query `i` of the request (judgeBatch passes each query's index as its digest): Redis's answer. */
  override remember(i: number): boolean {
    return this.answers[i] === true
  }

  override record(d: number): void {
    this.distanceLog.push([this.next, this.distances[this.next]!])
    this.distanceSlots.add(this.next)
    super.record(d)
  }

  /** Starts the journal for a request predicted as `classes`, with Redis's answer (new or a repeat) for each query. */
  begin(classes: readonly number[], answers: readonly boolean[]): void {
    this.answers = answers
    this.batchClasses = classes
    this.createdClasses = classes.filter((c) => !this.classes.has(c))
    for (const c of classes) (this.classes.get(c) as TrackedSet | undefined)?.begin()
    this.savedCounts = [this.count, this.next, this.stored]
  }

  /** Takes back everything the request's judgement changed. */
  undo(): void {
    for (const [slot, old] of this.distanceLog.reverse()) this.distances[slot] = old
    const [count, next, stored] = this.savedCounts
    this.count = count!
    this.next = next!
    this.stored = stored!
    for (const c of this.createdClasses) this.classes.delete(c)
    for (const c of this.batchClasses) (this.classes.get(c) as TrackedSet | undefined)?.undo()
    this.distancesChanged()
    this.end()
  }

  /** The commit succeeded: the copy is Redis's state `version`. */
  committed(epoch: string, version: number): void {
    this.epoch = epoch
    this.version = version
    this.resetDistances = false
    for (const c of this.batchClasses) {
      this.known.add(c)
      const g = this.classes.get(c) as TrackedSet | undefined
      if (g) g.reset = false
    }
    this.end()
  }

  /** Ends the journal. */
  end(): void {
    this.answers = []
    this.distanceLog = []
    this.distanceSlots.clear()
    this.createdClasses = []
    for (const c of this.batchClasses) (this.classes.get(c) as TrackedSet | undefined)?.begin()
    this.batchClasses = []
  }

  /** What the request changed, as field writes (empty when it changed nothing). */
  writes(): FieldWrite[] {
    const out: FieldWrite[] = []
    const ring = (field: string, reset: boolean, header: Float64Array, slots: Set<number>, slotBytes: number, bytes: (i: number) => Buffer, headerBytes = RING_HEADER) => {
      if (slots.size === 0 && !reset) return
      // Runs of consecutive slots (a request writes each ring from its next slot on) go as one write.
      const pairs: [number, Buffer][] = [[0, bytesOf(header)]]
      const sorted = [...slots].sort((a, b) => a - b)
      for (let r = 0; r < sorted.length; ) {
        let end = r + 1
        while (end < sorted.length && sorted[end] === sorted[end - 1]! + 1) end++
        pairs.push([headerBytes + sorted[r]! * slotBytes, Buffer.concat(sorted.slice(r, end).map(bytes))])
        r = end
      }
      out.push({ field, reset, slotBytes, pairs })
    }
    ring('d', this.resetDistances, Float64Array.of(this.count, this.next), this.distanceSlots, 8, (i) => bytesOf(this.distances, i, 1))
    for (const c of this.batchClasses) {
      const g = this.classes.get(c) as TrackedSet | undefined
      if (g) ring(`c${c}`, g.reset, g.header(), g.written, this.dims, (i) => cellBytes(g.vectors.subarray(i * this.dims, (i + 1) * this.dims)), CLASS_HEADER)
    }
    return out
  }

  /** Empties the copy: it stands for no state of Redis's (the next read brings the whole state). */
  clear(): void {
    this.epoch = ''
    this.version = 0
    this.count = 0
    this.next = 0
    this.stored = 0
    this.classes.clear()
    this.known.clear()
    this.resetDistances = false
    this.distancesChanged()
    this.answers = []
    this.distanceLog = []
    this.batchClasses = []
  }

  /** Sets the distances from Redis's whole field (absent: none yet; not valid: empty, replaced at the next write). */
  restoreDistances(d: Buffer | null): void {
    if (d) {
      const h = ringHeader(d, RING_HEADER, this.windowSize, 8)
      if (h) {
        this.count = h[0]!
        this.next = h[1]!
        this.distances.set(float64s(d, RING_HEADER, this.count))
      } else this.resetDistances = true
    }
    this.distancesChanged()
  }

  /** Sets class c's set from Redis's whole field (null: Redis has none). */
  restoreClass(c: number, bytes: Buffer | null): void {
    this.known.add(c)
    this.classes.delete(c)
    if (bytes) {
      const g = new TrackedSet(this.dims, this.setCapacity)
      const h = ringHeader(bytes, CLASS_HEADER, this.setCapacity, this.dims)
      if (h) {
        g.ensure(h[0]!)
        for (let i = 0; i < h[0]!; i++) g.vectors.set(cellsFrom(bytes, CLASS_HEADER + i * this.dims, this.dims), i * this.dims)
        setHeader(g, h)
      } else g.reset = true
      g.begin()
      this.classes.set(c, g)
    }
    this.recount()
  }

  private recount(): void {
    let stored = 0
    for (const g of this.classes.values()) stored += g.count
    this.stored = stored
  }

  /** Applies another replica's commit (its field writes) to the copy; throws CopyOutOfStep when they do not fit. */
  apply(writes: readonly FieldWrite[]): void {
    for (const w of writes) {
      if (w.field === 'd') this.patchDistances(w)
      else if (/^c\d+$/.test(w.field)) this.patchClass(Number(w.field.slice(1)), w)
      else throw new CopyOutOfStep(`unknown field ${w.field}`)
    }
    this.distancesChanged()
    this.recount()
  }

  /** The header at offset 0 and the slots' indices of a ring write; throws when a pair does not fit. */
  private slots(w: FieldWrite, headerBytes: number, slotBytes: number, cap: number): { header: Float64Array; slots: [number, Buffer][] } {
    let header: Float64Array | null = null
    const slots: [number, Buffer][] = []
    for (const [off, bytes] of w.pairs) {
      if (off === 0 && bytes.length === headerBytes) header = float64s(bytes, 0, headerBytes / 8)
      else {
        const first = (off - headerBytes) / slotBytes
        const n = bytes.length / slotBytes
        if (!Number.isInteger(first) || !Number.isInteger(n) || first < 0 || n < 1 || first + n > cap) throw new CopyOutOfStep(`write to ${w.field} at ${off} does not fit`)
        for (let k = 0; k < n; k++) slots.push([first + k, bytes.subarray(k * slotBytes, (k + 1) * slotBytes)])
      }
    }
    if (!header || !validCounts(header[0]!, header[1]!, cap)) throw new CopyOutOfStep(`write to ${w.field} without a valid header`)
    return { header, slots }
  }

  private patchDistances(w: FieldWrite): void {
    const { header, slots } = this.slots(w, RING_HEADER, 8, this.windowSize)
    for (const [i, bytes] of slots) this.distances[i] = float64s(bytes, 0, 1)[0]!
    this.count = header[0]!
    this.next = header[1]!
    this.resetDistances = false
  }

  private patchClass(c: number, w: FieldWrite): void {
    if (!this.known.has(c)) return // not held: fetched whole when a request needs it
    const { header, slots } = this.slots(w, CLASS_HEADER, this.dims, this.setCapacity)
    let g = this.classes.get(c) as TrackedSet | undefined
    if (!g || w.reset) this.classes.set(c, (g = new TrackedSet(this.dims, this.setCapacity)))
    g.ensure(Math.max(header[0]!, ...slots.map(([i]) => i + 1)))
    for (const [i, bytes] of slots) g.vectors.set(cellsFrom(bytes, 0, this.dims), i * this.dims)
    setHeader(g, header)
    g.reset = false
    g.begin()
  }
}
