// A map bounded to `max` keys that forgets the least recently used key first, each operation
// in constant time at any size, its memory growing with the keys it holds.
//
// Why not a plain Map in insertion order: V8 finds a Map's oldest key by skipping the slots of
// every key deleted before it, so evicting through `keys().next()` costs about 6 µs at 10,000
// keys and 50 µs at 100,000, on every new key once the map is full. Why not lru-cache: it
// allocates its arrays for `max` keys up front, hundreds of MiB for the largest bounds the
// configuration allows. Here: nodes in a doubly linked list, found through a Map that is
// never iterated.

interface Node<V> {
  readonly key: string
  value: V
  older: Node<V> | null
  newer: Node<V> | null
}

export class LruMap<V> {
  readonly #nodes = new Map<string, Node<V>>()
  readonly #max: number
  readonly #onEvict: (key: string, value: V) => void
  #oldest: Node<V> | null = null
  #newest: Node<V> | null = null

  /** `onEvict`: called for a key forgotten to make room (not for delete() or clear()). */
  constructor(max: number, onEvict: (key: string, value: V) => void = () => {}) {
    if (!Number.isInteger(max) || max < 1) throw new RangeError(`LruMap needs room for at least one key, not ${max}`)
    this.#max = max
    this.#onEvict = onEvict
  }

  get size(): number {
    return this.#nodes.size
  }

  /** The key's value, marked most recently used. */
  get(key: string): V | undefined {
    const node = this.#nodes.get(key)
    if (node === undefined) return undefined
    this.#toNewest(node)
    return node.value
  }

  /** The key's value, its recency unchanged. */
  peek(key: string): V | undefined {
    return this.#nodes.get(key)?.value
  }

  has(key: string): boolean {
    return this.#nodes.has(key)
  }

  /** Sets the key's value, most recently used; past `max` keys, the least recently used is evicted. */
  set(key: string, value: V): void {
    const known = this.#nodes.get(key)
    if (known !== undefined) {
      known.value = value
      this.#toNewest(known)
      return
    }
    const node: Node<V> = { key, value, older: null, newer: null }
    this.#nodes.set(key, node)
    this.#linkNewest(node)
    if (this.#nodes.size > this.#max) {
      const oldest = this.#oldest!
      this.#remove(oldest)
      this.#onEvict(oldest.key, oldest.value)
    }
  }

  delete(key: string): boolean {
    const node = this.#nodes.get(key)
    if (node === undefined) return false
    this.#remove(node)
    return true
  }

  /** The least recently used key, or undefined when empty. */
  oldestKey(): string | undefined {
    return this.#oldest?.key
  }

  clear(): void {
    this.#nodes.clear()
    this.#oldest = this.#newest = null
  }

  #remove(node: Node<V>): void {
    this.#nodes.delete(node.key)
    this.#unlink(node)
  }

  #toNewest(node: Node<V>): void {
    if (node === this.#newest) return
    this.#unlink(node)
    this.#linkNewest(node)
  }

  #unlink(node: Node<V>): void {
    if (node.older) node.older.newer = node.newer
    else this.#oldest = node.newer
    if (node.newer) node.newer.older = node.older
    else this.#newest = node.older
    node.older = node.newer = null
  }

  #linkNewest(node: Node<V>): void {
    node.older = this.#newest
    if (this.#newest) this.#newest.newer = node
    else this.#oldest = node
    this.#newest = node
  }
}
