/**
 * The global bound on handler invocations in flight. Effect's `Semaphore`
 * offers no synchronous try-acquire, and waiting on it costs a fiber per
 * waiting invocation. Here an invocation that finds no free slot is queued as
 * a thunk, started (synchronously, in order) when a slot frees up.
 */

/** A start waiting for a slot; `start` is cleared once it ran or was cancelled. */
export interface QueuedStart {
  start: (() => void) | undefined
}

export class Slots {
  active = 0
  private queue: Array<QueuedStart | undefined> = []
  private head = 0
  private draining = false
  private held = 0
  constructor(readonly max: number) {}

  /**
   * Runs `f` with the queue held: slots freed meanwhile go to queued starts
   * only once `f` returned. A dispatch cancelling its invocations does so
   * held, so that a slot one of them frees never goes to another of them
   * still queued (which would then hear an event its call never had).
   */
  holding(f: () => void): void {
    this.held++
    try {
      f()
    } finally {
      this.held--
      this.drain()
    }
  }

  tryTake(): boolean {
    if (this.active < this.max) {
      this.active++
      return true
    }
    return false
  }

  /**
   * Takes a slot whether one is free or not: for an invocation of a call a
   * hook makes, which must not wait for the slot its own hook holds (see
   * `invoke`). Queued starts wait until enough slots are free again.
   */
  takeBeyondBound(): void {
    this.active++
  }

  release(): void {
    this.active--
    this.drain()
  }

  /** Queues `start`, to be called holding a slot; the handle is for `cancel`. */
  enqueue(start: () => void): QueuedStart {
    const queued: QueuedStart = { start }
    this.queue.push(queued)
    this.drain()
    return queued
  }

  /**
   * Removes a queued start that has not run; false when it already ran. The
   * handle is the queued start itself, never a position: positions are reused
   * once the queue is emptied and reset.
   */
  cancel(queued: QueuedStart): boolean {
    if (queued.start === undefined) return false
    queued.start = undefined
    return true
  }

  private drain(): void {
    if (this.draining || this.held > 0) return
    this.draining = true
    try {
      while (this.active < this.max && this.head < this.queue.length) {
        const queued = this.queue[this.head]!
        this.queue[this.head++] = undefined
        const start = queued.start
        if (start !== undefined) {
          queued.start = undefined
          this.active++
          start()
        }
      }
      if (this.head > 0 && this.head === this.queue.length) {
        this.queue = []
        this.head = 0
      }
    } finally {
      this.draining = false
    }
  }
}
