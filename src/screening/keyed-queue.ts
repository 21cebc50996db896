// Runs the tasks of one key one after another and tasks of different keys side by side. The
// shared extraction detector (prada-shared.ts) reads a principal's state, judges, and writes
// back only if nobody wrote in between; queueing a replica's own requests per principal keeps
// them from racing each other, so only requests on other replicas can make it read again.

export class KeyedQueue {
  private readonly tails = new Map<string, Promise<void>>()

  run<T>(key: string, task: () => Promise<T>): Promise<T> {
    const before = this.tails.get(key)
    const result = before ? before.then(task) : task()
    const tail = result.then(
      () => {},
      () => {},
    )
    this.tails.set(key, tail)
    // The last task of a key removes it: the map holds only keys with tasks in flight.
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key)
    })
    return result
  }

  /** Keys with tasks queued or running (for tests). */
  get size(): number {
    return this.tails.size
  }
}
