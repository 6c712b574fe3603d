/**
 * Timers on the clock in force: a plain `setTimeout` with the live clock (no
 * fiber), a fiber sleeping on any other clock (a `TestClock` in tests).
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DefaultServices from "effect/DefaultServices"
import * as Duration from "effect/Duration"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as FiberRefs from "effect/FiberRefs"
import { constVoid } from "effect/Function"
import * as Runtime from "effect/Runtime"

/** `performance`, read once: in Node, every read of the global runs a getter. */
const perf = globalThis.performance

/** Milliseconds on the monotonic clock (`performance.now()`), as the dispatcher times invocations. */
export const monotonicNow = (): number => perf.now()

/** The default (live) clock, for which a timer needs no fiber of its own. */
export const liveClock: Clock.Clock = Context.get(DefaultServices.liveServices, Clock.Clock)

/** The clock a runtime's fibers see. */
export const clockOf = (runtime: Runtime.Runtime<never>): Clock.Clock =>
  Context.get(FiberRefs.getOrDefault(runtime.fiberRefs, DefaultServices.currentServices), Clock.Clock)

/** setTimeout's longest delay; longer ones would fire at once. */
const maxTimerMillis = 2_147_483_647

/**
 * Calls `onTimeout` after `timeout` on the clock of `runtime`, and returns
 * the function that cancels it.
 */
export const startTimer = (
  timeout: Duration.Duration,
  runtime: Runtime.Runtime<never>,
  onTimeout: () => void
): () => void => {
  if (!Duration.isFinite(timeout)) return constVoid
  const clock = clockOf(runtime)
  if (clock === liveClock) {
    const handle = setTimeout(onTimeout, Math.min(Duration.toMillis(timeout), maxTimerMillis))
    return () => clearTimeout(handle)
  }
  const fiber = Runtime.runFork(runtime)(clock.sleep(timeout))
  fiber.addObserver((exit) => {
    if (Exit.isSuccess(exit)) onTimeout()
  })
  return () => fiber.unsafeInterruptAsFork(FiberId.none)
}
