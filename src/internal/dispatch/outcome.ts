/**
 * The outcome of one handler invocation, and the retry rule.
 */
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as FiberId from "effect/FiberId"
import * as Option from "effect/Option"
import type * as Metrics from "../../CallbackMetrics.js"
import type { Phase } from "../../Events.js"
import { HandlerError, isRetryable } from "../../HandlerError.js"

/** What became of one invocation (or, for background handlers, of its delivery). */
export interface Outcome {
  readonly status: Metrics.Status | "queued"
  readonly attempts: number
  readonly error: HandlerError | undefined
  /** Interrupted by the dispatch it belongs to (its caller was interrupted), not by the hook itself. */
  readonly cancelled?: true
}

export const SUCCESS: Outcome = { status: "success", attempts: 1, error: undefined }

/** A background delivery that was put in its handler's buffer. */
export const QUEUED: Outcome = { status: "queued", attempts: 0, error: undefined }

export const succeeded = (attempts: number): Outcome => attempts === 1 ? SUCCESS : { ...SUCCESS, attempts }

/**
 * The retry rule, in one place: only typed failures are retried (defects and
 * interruptions are not), and not those that say they would fail again
 * (`HandlerError.NonRetryable`).
 */
export const isRetriable = (cause: Cause.Cause<unknown>): boolean => {
  const failure = Cause.failureOption(cause)
  return Option.isSome(failure) && isRetryable(failure.value)
}

/**
 * A `HandlerError`, made the cheap way: its fields are ours (no validation
 * needed), and its stack would only show the dispatcher's internals (the
 * hook's own error, with its stack, is its `cause`). The class's constructor
 * (Schema defaults, an `Error` and its stack) costs about 3 µs, paid by every
 * failed invocation; this builds the same object (same prototype, the same
 * own properties in the same order, `message`, `cause` and `stack` not
 * enumerable) in a tenth of a µs. A test checks that both are equal.
 */
export const handlerError = (
  reason: HandlerError["reason"],
  handler: string,
  phase: Phase,
  message: string,
  cause?: unknown
): HandlerError => {
  const error = Object.create(HandlerError.prototype) as { -readonly [K in keyof HandlerError]: HandlerError[K] }
  Object.defineProperty(error, "stack", { value: `HandlerError: ${message}`, writable: true, configurable: true })
  Object.defineProperty(error, "message", { value: message, writable: true, configurable: true })
  if (cause !== undefined) Object.defineProperty(error, "cause", { value: cause, writable: true, configurable: true })
  error.reason = reason
  error.handler = handler
  error.phase = phase
  error._tag = "HandlerError"
  // What `Data.Error` keeps of its arguments for `toJSON`.
  Object.defineProperty(error, plainArgs, {
    value: cause === undefined ? { reason, handler, phase, message } : { reason, handler, phase, message, cause }
  })
  return error
}

const plainArgs = Symbol.for("effect/Data/Error/plainArgs")

const describe = (u: unknown): string => {
  if (u instanceof Error) return u.message === "" ? u.name : `${u.name}: ${u.message}`
  if (typeof u === "object" && u !== null && "_tag" in u) {
    const message = (u as { message?: unknown }).message
    return typeof message === "string" && message !== "" ? `${String(u._tag)}: ${message}` : String(u._tag)
  }
  try {
    return typeof u === "string" ? u : JSON.stringify(u) ?? String(u)
  } catch {
    return String(u)
  }
}

/** The outcome of an invocation that ended with `cause`. */
export const classify = (handler: string, phase: Phase, cause: Cause.Cause<unknown>, attempts: number): Outcome => {
  // Timeouts are the dispatcher's own (see `timedOut`): a hook failing with a
  // `TimeoutException` of its own has failed, not timed out.
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    return {
      status: "failed",
      attempts,
      error: handlerError("Failed", handler, phase, describe(failure.value), failure.value)
    }
  }
  const defect = Cause.dieOption(cause)
  if (Option.isSome(defect)) {
    return {
      status: "defect",
      attempts,
      error: handlerError("Defect", handler, phase, describe(defect.value), defect.value)
    }
  }
  return { status: "interrupted", attempts, error: handlerError("Interrupted", handler, phase, "interrupted") }
}

/** An invocation interrupted after it ran (timed out, shut down). */
export const interrupted = (handler: string, phase: Phase, attempts: number): Outcome =>
  classify(handler, phase, Cause.interrupt(FiberId.none), attempts)

/** An invocation cancelled by its dispatch before it heard the event. */
export const cancelled = (handler: string, phase: Phase, attempts: number): Outcome => ({
  ...interrupted(handler, phase, attempts),
  cancelled: true
})

/** The invocation outlived its handler's timeout (retries included). */
export const timedOut = (handler: string, phase: Phase, timeout: Duration.Duration, attempts: number): Outcome => ({
  status: "timeout",
  attempts,
  error: handlerError("Timeout", handler, phase, `timed out after ${Duration.format(timeout)} (${attempts} attempt(s))`)
})

/** A background delivery that was not delivered. */
export const dropped = (handler: string, phase: Phase, why: string): Outcome => ({
  status: "dropped",
  attempts: 0,
  error: handlerError("Dropped", handler, phase, `not delivered: ${why}`)
})
