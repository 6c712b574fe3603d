/**
 * The timeouts of a handler's pending invocations, on the live clock, with
 * one `setTimeout` for all of them rather than one each.
 *
 * Every invocation of a handler has the same timeout, so deadlines come in
 * the order invocations are added: a list in that order is sorted by
 * deadline. Invocations are the list's nodes (no allocation per timeout), a
 * settled one leaves it in O(1), and one timer is armed for the earliest
 * deadline; when it fires, the expired invocations time out and it is armed
 * again for the next one. While nothing is pending it stays armed, unref'd. A pending invocation thus costs a few field writes,
 * not a timer object, a closure and two timer-list updates.
 */
import * as Duration from "effect/Duration"
import { monotonicNow } from "./timer.js"

/** A node of a deadline list: an invocation under its timeout. */
export interface Timed {
  deadline: number
  previousTimed: Timed | undefined
  nextTimed: Timed | undefined
  /** In a list (its deadline not reached, and not removed). */
  timed: boolean
  /** Its deadline was reached. */
  expire(): void
}

/** setTimeout's longest delay; longer ones would fire at once. */
const maxTimerMillis = 2_147_483_647

export class Deadlines {
  private first: Timed | undefined = undefined
  private last: Timed | undefined = undefined
  private timer: ReturnType<typeof setTimeout> | undefined = undefined
  private readonly millis: number

  constructor(timeout: Duration.Duration) {
    this.millis = Math.min(Duration.toMillis(timeout), maxTimerMillis)
  }

  add(node: Timed): void {
    node.deadline = monotonicNow() + this.millis
    node.timed = true
    node.previousTimed = this.last
    node.nextTimed = undefined
    if (this.last === undefined) {
      this.first = node
      // The timer armed for an earlier deadline fires first: it holds the process again.
      if (this.timer !== undefined) this.timer.ref()
    } else {
      this.last.nextTimed = node
    }
    this.last = node
    if (this.timer === undefined) this.arm(this.millis)
  }

  remove(node: Timed): void {
    if (!node.timed) return
    node.timed = false
    const previous = node.previousTimed
    const next = node.nextTimed
    if (previous === undefined) this.first = next
    else previous.nextTimed = next
    if (next === undefined) this.last = previous
    else next.previousTimed = previous
    node.previousTimed = undefined
    node.nextTimed = undefined
    // Nothing pending: the timer stays armed (it is cheaper than arming one
    // per invocation) but no longer holds the process open.
    if (this.first === undefined && this.timer !== undefined) this.timer.unref()
  }

  private arm(millis: number): void {
    this.timer = setTimeout(this.fire, Math.max(0, Math.ceil(millis)))
  }

  /** Times out the invocations whose deadline is reached; armed again for the next one, if any. */
  private readonly fire = (): void => {
    this.timer = undefined
    const now = monotonicNow()
    let node = this.first
    while (node !== undefined && node.deadline <= now) {
      this.remove(node)
      node.expire()
      node = this.first
    }
    if (node !== undefined && this.timer === undefined) this.arm(node.deadline - now)
  }
}
