// A ring of encoded vectors that grows to its capacity: the per-caller memory of the
// stateful detector (recent queries) and of the extraction detector (each class's growing
// set). Storage starts small and doubles, so a caller with few queries costs little.

import { squaredDistance } from './encoder.ts'

export class VectorRing {
  vectors: Float32Array
  count = 0
  next = 0
  readonly capacity: number
  readonly dims: number

  constructor(dims: number, capacity: number, initial: number) {
    this.dims = dims
    this.capacity = capacity
    this.vectors = new Float32Array(Math.min(capacity, initial) * dims)
  }

  /** Stores `v` in the next slot (overwriting the oldest when full); returns the slot. */
  add(v: Float32Array): number {
    if (this.count < this.capacity && this.count * this.dims === this.vectors.length) this.grow(Math.min(this.capacity, this.count * 2))
    const slot = this.next
    this.vectors.set(v, slot * this.dims)
    if (this.count < this.capacity) this.count++
    this.next = (this.next + 1) % this.capacity
    return slot
  }

  /** Distance (Euclidean) from `v` to the nearest stored vector; Infinity when empty. */
  nearest(v: Float32Array): number {
    let best = Infinity
    for (let row = 0; row < this.count; row++) {
      const d = squaredDistance(v, this.vectors, row, best)
      if (d < best) best = d
    }
    return Math.sqrt(best)
  }

  /** Makes room for `slots` vectors; subclasses that keep per-slot data grow it too. */
  protected grow(slots: number): void {
    const grown = new Float32Array(slots * this.dims)
    grown.set(this.vectors)
    this.vectors = grown
  }
}
