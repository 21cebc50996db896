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

const MIN_CLASS_BYTES = 4096

export class BufferPool {
  readonly #free = new Map<number, ArrayBuffer[]>()
  /** Buffers handed out by take() and not yet transferred away: a backend may transfer them whole. */
  readonly #issued = new WeakSet<ArrayBuffer>()
  /** Buffers in the free lists, so that one given back twice is not handed out twice. */
  readonly #pooled = new WeakSet<ArrayBuffer>()
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
   * read or write it again (a buffer just transferred back from a worker does).
   */
  give(buf: ArrayBuffer): void {
    const capacity = buf.byteLength
    // Detached (0 bytes), or not one of ours (not a capacity class): let it go.
    if (capacity < MIN_CLASS_BYTES || capacity !== BufferPool.capacityFor(capacity)) return
    if (this.#pooled.has(buf)) return
    this.#issued.delete(buf)
    if (this.#heldBytes + capacity > this.#maxBytes) return
    let list = this.#free.get(capacity)
    if (!list) this.#free.set(capacity, (list = []))
    if (list.length >= this.#maxPerClass) return
    list.push(buf)
    this.#pooled.add(buf)
    this.#heldBytes += capacity
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
