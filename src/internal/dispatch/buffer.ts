/**
 * The bounded buffer of a background lane: many producers, one consumer.
 *
 * Producers put deliveries in synchronously; the consumer waits until there
 * is something, then takes everything buffered at once. The consumer, when it waits, is woken once per turn of
 * the event loop (`setImmediate`), not once per delivery: deliveries made
 * meanwhile, by calls completing in the same turn, are taken as one batch,
 * for the price of one fiber wake-up; or at once when the buffer is half
 * full, before a busy turn fills it. A background delivery is not awaited
 * by its call, so the turn it waits is latency no call sees. (On a clock
 * other than the live one, a `TestClock`, it is woken at once.)
 */
import * as Effect from "effect/Effect"

export class Buffer<A> {
  private items: Array<A> = []
  private wake: ((effect: Effect.Effect<void>) => void) | undefined = undefined
  private waking = false

  /**
   * `perTurn`: wake the consumer once per event-loop turn (the live clock);
   * else at once, so that on a `TestClock` deliveries happen at the virtual
   * instant they are made, before the clock can be moved.
   */
  constructor(readonly capacity: number, private readonly perTurn: boolean) {
    this.highWater = Math.ceil(capacity / 2)
  }

  /**
   * Half full: the consumer is woken at once, not at the next turn. A turn
   * in which many calls complete (thousands in flight) would otherwise fill
   * the buffer before the consumer runs, and make the calls wait for room.
   */
  private readonly highWater: number

  get size(): number {
    return this.items.length
  }

  /** Puts `a` in, unless the buffer is full. */
  offer(a: A): boolean {
    if (this.size >= this.capacity) return false
    this.put(a)
    return true
  }

  /**
   * Puts `a` in, full or not: for a delivery that must not wait for room
   * (made by a call that a hook of the consumer's own dispatcher waits for,
   * see `enqueue`).
   */
  put(a: A): void {
    this.items.push(a)
    if (this.wake !== undefined) {
      if (!this.perTurn || this.items.length >= this.highWater) {
        this.resume()
      } else if (!this.waking) {
        this.waking = true
        setImmediate(this.wakeUp)
      }
    }
  }

  /** The turn's wake (a wake at once meanwhile leaves it pending: it then finds nobody waiting, or wakes early). */
  private readonly wakeUp = (): void => {
    this.waking = false
    this.resume()
  }

  private resume(): void {
    const wake = this.wake
    this.wake = undefined
    if (wake !== undefined) wake(Effect.void)
  }

  /** Takes everything buffered, in order. */
  takeAll(): Array<A> {
    const all = this.items
    this.items = []
    return all
  }

  /** Waits until something is buffered (the one consumer's wait). */
  readonly waitNonEmpty: Effect.Effect<void> = Effect.async<void>((resume) => {
    if (this.size > 0) return resume(Effect.void)
    this.wake = resume
    return Effect.sync(() => {
      this.wake = undefined
    })
  })
}
