/**
 * Accounting of outcomes: each is counted once in the handler's stats and
 * metrics, kept for the dispatch report when asked for, and failures logged.
 */
import type * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Metrics from "../../CallbackMetrics.js"
import type { CallbackEvent } from "../../Events.js"
import { nativeTracer } from "../callSpan.js"
import { type PhaseIndex, phases } from "../phases.js"
import type { HandlerResult } from "./contract.js"
import type { Pending } from "./invocation.js"
import type { Outcome } from "./outcome.js"
import type { Entry } from "./plan.js"
import { monotonicNow } from "./timer.js"

/**
 * The results of one dispatch.
 *
 * A class, not an object literal (and its list of results, and the list of
 * the invocations a dispatch waits for, are made by `new Array`, not `[]`;
 * the names in `notStarted` keep nothing young alive): V8 makes the objects of a
 * literal in the old generation from the start once it has seen many of them
 * survive a young collection ("pretenuring"), and an object there keeps what
 * it points to alive until the next full collection, dead or not. Made there,
 * every dispatch's results and list kept its invocations, their fibers and
 * their callers alive through young collections, all promoted in turn: with
 * ten handlers that suspend, 1.8 MB promoted per young collection instead of
 * 0.2 MB, and a call a third slower (65-77 µs against 47-48). In the same
 * runs, no object made by a class's `new`, or by `new Array`, was pretenured.
 */
export class Results {
  readonly items = new Array<HandlerResult>()
  /** How many await groups were started (start phase only). */
  reached: number | undefined = undefined
  /** Handlers of started groups whose start was cancelled (queued for a slot, or running) or dropped. */
  notStarted: Array<string> | undefined = undefined
  /** The invocations the dispatch waits for now: cancelled when that wait is interrupted. */
  waiting: ReadonlyArray<Pending> | undefined = undefined

  /**
   * `collect`: keep every result (a report was asked for). Without it (the
   * path `instrument` takes, which discards the report) only the results
   * worth logging are kept, so a successful dispatch allocates nothing per handler.
   */
  constructor(readonly collect: boolean) {}
}

/** Counts an outcome of the phase at `index` in the handler's stats and metrics. */
const record = (clock: Clock.Clock, entry: Entry, index: PhaseIndex, outcome: Outcome, seconds: number): void => {
  const stats = entry.stats
  const status = outcome.status
  if (status === "queued") return
  const meter = entry.labels.meters[index]!
  meter.duration.update(seconds)
  if (outcome.attempts > 1) {
    stats.retries += outcome.attempts - 1
    Metrics.retriesTotal.unsafeUpdate(outcome.attempts - 1, meter.labels)
  }
  stats.lastOutcome = status
  if (status === "success") {
    meter.success().update(1)
    stats.successes++
    return
  }
  meter.execution(status).update(1)
  switch (status) {
    case "failed":
      stats.failures++
      break
    case "defect":
      stats.defects++
      break
    case "timeout":
      stats.timeouts++
      break
    case "interrupted":
      stats.interruptions++
      break
    case "dropped":
      stats.dropped++
      Metrics.droppedTotal.unsafeUpdate(1, entry.labels.handler)
      break
  }
  Metrics.errorsTotal.unsafeUpdate(1, entry.labels.error[status])
  if (outcome.error !== undefined) {
    stats.lastError = {
      phase: phases[index]!,
      reason: outcome.error.reason,
      message: outcome.error.message,
      at: clock.unsafeCurrentTimeMillis()
    }
  }
}

/** Records an outcome of the phase at `index` and adds it to `results`; returns the time it was recorded at. */
export const result = (
  clock: Clock.Clock,
  entry: Entry,
  index: PhaseIndex,
  outcome: Outcome,
  startedAt: number,
  results: Results
): number => {
  const now = monotonicNow()
  const ms = now - startedAt
  record(clock, entry, index, outcome, ms / 1000)
  if (results.collect || outcome.error !== undefined) {
    results.items.push({
      handler: entry.name,
      phase: phases[index]!,
      mode: entry.mode,
      status: outcome.status,
      attempts: outcome.attempts,
      durationMs: ms,
      error: outcome.error
    })
  }
  return now
}

export const hasError = (items: ReadonlyArray<HandlerResult>): boolean => {
  for (let i = 0; i < items.length; i++) {
    if (items[i]!.error !== undefined) return true
  }
  return false
}

/** One warning per failed invocation, annotated with the call and the handler. */
export const logFailures = (event: CallbackEvent, results: ReadonlyArray<HandlerResult>): Effect.Effect<void> =>
  Effect.withFiberRuntime((fiber) =>
    // Nobody would read the warnings: they are not built.
    readsWarnings(fiber) ? warnings(event, results) : Effect.void
  )

/**
 * Whether a warning logged on this fiber would go anywhere: a logger other
 * than Effect's tracer logger (which writes to spans, and only when a tracer
 * is installed), at a minimum level that lets warnings through.
 */
const readsWarnings = (fiber: Fiber.RuntimeFiber<unknown, unknown>): boolean => {
  if (LogLevel.greaterThan(fiber.getFiberRef(FiberRef.currentMinimumLogLevel), LogLevel.Warning)) return false
  const tracing = fiber.currentTracer !== nativeTracer
  for (const logger of fiber.getFiberRef(FiberRef.currentLoggers)) {
    if (logger !== Logger.tracerLogger || tracing) return true
  }
  return false
}

const warnings = (event: CallbackEvent, results: ReadonlyArray<HandlerResult>): Effect.Effect<void> =>
  Effect.forEach(results.filter((result) => result.error !== undefined), (result) =>
    Effect.logWarning(`callback handler ${result.handler} ${result.status} on ${result.phase}`).pipe(
      Effect.annotateLogs({
        callId: event.call.callId,
        handler: result.handler,
        phase: result.phase,
        reason: result.error!.reason,
        error: result.error!.message,
        attempts: result.attempts
      })
    ), { discard: true })
