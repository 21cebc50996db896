// Reusable ArrayBuffers for request bodies and batch tensors. An image model's request is
// 100 KiB or more and its batch megabytes (ocr-cls: 110 KiB per item, 32 items): allocated
// fresh each time, V8 counts that much external memory and runs full garbage collections
// for it, which cost as much CPU as the gateway's own request handling. Bodies go back to
// the pool once their response is sent (server.ts); batch buffers go to the inference worker
// (transferred, not copied) and come back with the result.
//
// Capacities are powers of two, so batches of neighbouring sizes share buffers; a caller
// gets a buffer at least as large as it asked for and views only what it needs. The pool
// keeps a bounded number of bytes; beyond that, returned buffers are left to the GC.
//
// A request body's bytes may be read after its owner is done with them: the batcher and the
// upstream backend send a request's tensors, views of its body, while the transport may
// already have given the body back (the client went away, or its deadline answered it). So
// a reader holds the buffers it reads (hold/release): a buffer given back while held joins
// the free list at its last release, never before. A reader that cannot tell when it stops
// reading (an upstream call that ended early may leave body bytes queued on its socket)
// retires the buffer instead: it is never pooled again, and the GC frees it.

import type { TensorData } from './tensor.ts'

const MIN_CLASS_BYTES = 4096

export class BufferPool {
  readonly #free = new Map<number, ArrayBuffer[]>()
  /** Buffers handed out by take() and not yet transferred away: a backend may transfer them whole. */
  readonly #issued = new WeakSet<ArrayBuffer>()
  /** Buffers in the free lists, so that one given back twice is not handed out twice. */
  readonly #pooled = new WeakSet<ArrayBuffer>()
  /** Readers of issued buffers (hold/release): a buffer given back while held waits for the last. */
  readonly #readers = new WeakMap<ArrayBuffer, number>()
  /** Buffers given back while held: they join the free list at their last release. */
  readonly #givenWhileHeld = new WeakSet<ArrayBuffer>()
  /** Buffers that someone may still read without saying when they stop: never pooled again. */
  readonly #retired = new WeakSet<ArrayBuffer>()
  readonly #maxBytes: number
  readonly #maxPerClass: number
  #heldBytes = 0

  constructor(options: { maxBytes: number; maxPerClass?: number }) {
    this.#maxBytes = options.maxBytes
    this.#maxPerClass = options.maxPerClass ?? 4
  }

  /** The capacity a request for `bytes` gets: the next power of two, at least 4 KiB. */
  static capacityFor(bytes: number): number {
    return Math.max(MIN_CLASS_BYTES, 2 ** Math.ceil(Math.log2(Math.max(1, bytes))))
  }

  /** A buffer of at least `bytes` that nobody else holds (from the pool, or new). */
  take(bytes: number): ArrayBuffer {
    const capacity = BufferPool.capacityFor(bytes)
    let buf = this.#free.get(capacity)?.pop()
    if (buf) {
      this.#heldBytes -= capacity
      this.#pooled.delete(buf)
    } else buf = new ArrayBuffer(capacity)
    this.#issued.add(buf)
    return buf
  }

  /** Whether `buf` came from take(): its holder owns all of it, beyond the bytes in use. */
  issued(buf: ArrayBufferLike): boolean {
    return buf instanceof ArrayBuffer && this.#issued.has(buf)
  }

  /**
   * Hands a buffer back for reuse. The caller must hold the only reference that will ever
   * write it again, and nobody may read it but the readers that hold() it: a held buffer
   * is reused only after their last release. (A buffer just transferred back from a worker
   * is one's own.)
   */
  give(buf: ArrayBuffer): void {
    const capacity = buf.byteLength
    // Detached (0 bytes), or not one of ours (not a capacity class): let it go.
    if (capacity < MIN_CLASS_BYTES || capacity !== BufferPool.capacityFor(capacity)) return
    if (this.#pooled.has(buf) || this.#retired.has(buf)) return
    if (this.#readers.has(buf)) {
      this.#givenWhileHeld.add(buf)
      return
    }
    this.#issued.delete(buf)
    if (this.#heldBytes + capacity > this.#maxBytes) return
    let list = this.#free.get(capacity)
    if (!list) this.#free.set(capacity, (list = []))
    if (list.length >= this.#maxPerClass) return
    list.push(buf)
    this.#pooled.add(buf)
    this.#heldBytes += capacity
  }

  /**
   * Marks a reader of `buf` (one that take() issued and nobody gave back yet): until its
   * release, give() only notes that the owner is done. False, and nothing held, for any
   * other buffer (not from this pool, or already back in it).
   */
  hold(buf: ArrayBufferLike): buf is ArrayBuffer {
    if (!(buf instanceof ArrayBuffer) || !this.#issued.has(buf)) return false
    this.#readers.set(buf, (this.#readers.get(buf) ?? 0) + 1)
    return true
  }

  /** Ends one hold(); at the last, a buffer given back meanwhile goes back to the pool now. */
  release(buf: ArrayBuffer): void {
    const n = this.#readers.get(buf)
    if (n === undefined) return
    if (n > 1) {
      this.#readers.set(buf, n - 1)
      return
    }
    this.#readers.delete(buf)
    if (this.#givenWhileHeld.delete(buf)) this.give(buf)
  }

  /**
   * Ends one hold() of a reader that may go on reading `buf` without telling when it stops:
   * the buffer is never handed out again, and is left to the GC once everyone drops it.
   */
  retire(buf: ArrayBuffer): void {
    this.#retired.add(buf)
    this.#issued.delete(buf)
    this.#givenWhileHeld.delete(buf)
    this.release(buf)
  }

  /** Bytes held for reuse now (for tests and metrics). */
  get heldBytes(): number {
    return this.#heldBytes
  }
}

/** The process's pool for batch tensors on their way to and from inference workers. */
export const batchBuffers = new BufferPool({ maxBytes: 64 * 1024 * 1024 })

/** The process's pool for request bodies (src/transport/read-body.ts): one per request in flight. */
export const bodyBuffers = new BufferPool({ maxBytes: 64 * 1024 * 1024, maxPerClass: 128 })

/** Holds on the request bodies some tensors view, let go of once, by release() or retire(). */
export interface BodyHold {
  /** The reader is done: a body its owner gave back meanwhile returns to the pool. */
  release(): void
  /** The reader may still be reading: the bodies are never pooled again. */
  retire(): void
}

/** Holds each pooled request body (bodyBuffers) that `tensors` view (bodyBuffers.hold). */
export function holdBodies(tensors: readonly { data: TensorData }[]): BodyHold {
  const held: ArrayBuffer[] = []
  for (const t of tensors) if (bodyBuffers.hold(t.data.buffer)) held.push(t.data.buffer)
  let done = held.length === 0
  const end = (how: 'release' | 'retire') => {
    if (done) return
    done = true
    for (const b of held) bodyBuffers[how](b)
  }
  return { release: () => end('release'), retire: () => end('retire') }
}
