/**
 * The fan-out of one event: background deliveries are enqueued, then the
 * await handlers run by priority group, highest first, the handlers of a
 * group concurrently, each group after the one before has settled. It runs
 * on the caller's fiber, synchronously as far as the handlers allow.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import type * as Tracer from "effect/Tracer"
import { type CallbackEvent, phaseOf } from "../../Events.js"
import { type PhaseIndex, phaseIndexOfTag, phases, roleAt } from "../phases.js"
import { awaitLines } from "./chunks.js"
import type { DispatchReport } from "./contract.js"
import { type Caller, callerOf, tracingOf, type Tracing } from "./caller.js"
import { awaitAll, cancelAll, type Done, invokeTraced, type Pending } from "./invocation.js"
import { enqueue } from "./lanes.js"
import type { PhasePlan, State, Token } from "./plan.js"
import { withoutUnreached } from "./plan.js"
import { hasError, logFailures, result, Results } from "./report.js"
import { monotonicNow } from "./timer.js"

/** What a dispatch does once every group has run: log its failures, if any. */
const afterGroups = (event: CallbackEvent, results: Results): Effect.Effect<void> =>
  hasError(results.items) ? logFailures(event, results.items) : Effect.void

/**
 * Runs the await groups from `from` on, synchronously as far as they go:
 * returns `undefined` when every invocation completed without suspending,
 * or the effect that waits for the suspended ones, runs the rest, and ends
 * with {@link afterGroups}.
 */
const runGroups = (
  state: State,
  plan: PhasePlan,
  index: PhaseIndex,
  event: CallbackEvent,
  results: Results,
  from: number,
  caller: Caller,
  span: Tracer.AnySpan | undefined,
  tracing: Tracing | undefined
): Effect.Effect<void> | undefined => {
  const phase = phases[index]!
  let time = monotonicNow()
  // One function for every invocation of the dispatch (an invocation hands back its entry and start).
  const done: Done = (outcome, entry, startedAt) => {
    // Cancelled (queued for a slot, or running) by the interruption of the start
    // dispatch: the handler did not hear start, so it hears no terminal event either.
    if (outcome.cancelled === true) (results.notStarted ??= []).push(entry.name)
    time = result(state.clock, entry, index, outcome, startedAt, results)
  }
  for (let g = from; g < plan.groups.length; g++) {
    const group = plan.groups[g]!
    results.reached = g + 1
    let waiting: Array<Pending> | undefined
    for (let i = 0; i < group.length; i++) {
      const entry = group[i]!
      const started = invokeTraced(state, entry, phase, entry.hooks[index]!, event, caller, span, tracing, time, done)
      if (started !== undefined) {
        // `new Array`, not a literal: see `Results`.
        ;(waiting ??= new Array<Pending>()).push(started)
        time = monotonicNow()
      }
    }
    if (waiting !== undefined) {
      // Cancelled if the wait is interrupted (see `settleOpening`).
      results.waiting = waiting
      const rest = g + 1
      return rest < plan.groups.length
        ? Effect.zipRight(
          awaitAll(waiting),
          Effect.withFiberRuntime<void>((fiber) =>
            runGroups(state, plan, index, event, results, rest, callerOf(fiber, state), fiber.currentSpan, tracing) ??
              afterGroups(event, results)
          )
        )
        : awaitAll(waiting, () => afterGroups(event, results))
    }
  }
  return undefined
}

/**
 * Dispatches one event of a call on the caller's fiber. Returns `undefined`
 * when everything is done and nothing needs logging (the common case, with
 * no effect allocated), or the effect that completes the dispatch. A start
 * dispatch that returns an effect is settled by its caller once that effect
 * has ended (see `settleStart`).
 */
export const run = (
  state: State,
  token: Token,
  event: CallbackEvent,
  fiber: Fiber.RuntimeFiber<unknown, unknown>,
  results: Results
): Effect.Effect<void> | undefined => {
  // The phase's index, read once: the per-phase tables are arrays (see `PhaseIndex`).
  const index = phaseIndexOfTag(event._tag)
  let plan = token.snapshot.plans[index]!
  const role = roleAt[index]
  const opening = role === "open"
  if (token.lines !== undefined && role === "close") {
    // A handler hears a call's end after every chunk of it (see `chunks`).
    const waiting = awaitLines(state, token, callerOf(fiber, state))
    if (waiting !== undefined) {
      return Effect.zipRight(
        waiting,
        Effect.withFiberRuntime<void>((fiber) => run(state, token, event, fiber, results) ?? Effect.void)
      )
    }
  }
  if (!opening && token.excluded !== undefined) plan = withoutUnreached(plan, token.excluded)
  if (plan.empty) return undefined
  const tracing = tracingOf(fiber)
  let backpressure: Array<Effect.Effect<void>> | undefined
  for (let i = 0; i < plan.background.length; i++) {
    const waiting = enqueue(state, plan.background[i]!, index, event, fiber.currentSpan, results, fiber)
    if (waiting !== undefined) (backpressure ??= []).push(waiting)
  }
  let rest: Effect.Effect<void> | undefined
  if (backpressure !== undefined) {
    // Backpressure: the await handlers run after the buffers took the
    // deliveries (each wait is bounded by its handler's timeout).
    rest = Effect.zipRight(
      Effect.all(backpressure, { discard: true }),
      Effect.withFiberRuntime<void>((fiber) =>
        runGroups(state, plan, index, event, results, 0, callerOf(fiber, state), fiber.currentSpan, tracing) ??
          afterGroups(event, results)
      )
    )
  } else if (plan.groups.length > 0) {
    rest = runGroups(state, plan, index, event, results, 0, callerOf(fiber, state), fiber.currentSpan, tracing)
  }
  if (rest === undefined) {
    if (opening && results.notStarted !== undefined) token.excluded = new Set(results.notStarted)
    return hasError(results.items) ? logFailures(event, results.items) : undefined
  }
  if (opening) {
    // Its caller settles it, whichever way it ends (see `settleStart`).
    const startPlan = plan
    token.opening = (failed) => settleOpening(state, token, results, startPlan, failed)
  }
  return rest
}

/**
 * Whichever way a start dispatch that waited ends, the token says who did
 * not hear it: those cancelled (here, when it failed, that is, was
 * interrupted, while they were pending or queued) or dropped, and, when it
 * failed, the groups it never reached.
 */
const settleOpening = (state: State, token: Token, results: Results, plan: PhasePlan, failed: boolean): void => {
  if (failed && results.waiting !== undefined) cancelAll(state.slots, results.waiting)
  // Made only when someone did not hear it (the commonest dispatch leaves no one out).
  let excluded = results.notStarted === undefined ? undefined : new Set<string>(results.notStarted)
  if (failed) {
    for (let g = results.reached ?? 0; g < plan.groups.length; g++) {
      for (const entry of plan.groups[g]!) (excluded ??= new Set()).add(entry.name)
    }
  }
  if (excluded !== undefined && excluded.size > 0) token.excluded = excluded
}

/**
 * Settles a start dispatch that waited, once its effect has ended (`failed`:
 * it did not succeed, that is, it was interrupted). Its caller calls this
 * from a continuation that runs whichever way the effect ends: `instrument`
 * from its region's, a dispatch by hand from its `onExit`.
 */
export const settleStart = (token: Token, failed: boolean): void => {
  const settle = token.opening
  token.opening = undefined
  if (settle !== undefined) settle(failed)
}

/** {@link run}, reporting every handler's outcome. */
export const dispatchWith = (state: State, token: Token, event: CallbackEvent): Effect.Effect<DispatchReport> =>
  Effect.withFiberRuntime((fiber) => {
    const results = new Results(true)
    const report: DispatchReport = { phase: phaseOf(event), callId: event.call.callId, results: results.items }
    const rest = run(state, token, event, fiber, results)
    if (rest === undefined) return Effect.succeed(report)
    // A dispatch by hand may be interrupted whatever its event (instrument's
    // terminal ones are uninterruptible): a start dispatch is settled as
    // instrument settles its own, any other has what it waits for cancelled.
    return Effect.as(
      Effect.onExit(rest, (exit) =>
        Effect.sync(() => {
          const failed = Exit.isFailure(exit)
          if (token.opening !== undefined) settleStart(token, failed)
          else if (failed && results.waiting !== undefined) cancelAll(state.slots, results.waiting)
        })),
      report
    )
  })
