/**
 * What handlers and model calls do in the property tests (the isolation law
 * and the reference-model comparison): one vocabulary for both.
 */
import { Cause, Chunk, Effect, Exit } from "effect"

export const behaviours = [
  "succeed",
  "sync",
  "fail",
  "die",
  "throw",
  "syncThrow",
  "hang",
  "slow",
  "interruptSelf",
  "failOnce",
  "suspend",
  "ignoreInterruption",
  "promise",
  "promiseDie",
  "promiseThrow",
  "suspendThrow",
  "asyncNow",
  "asyncFailNow",
  "asyncFail",
  "asyncHang",
  "steps",
  "stepsThenSlow",
  "stepsThenFail",
  "promiseThenSteps",
  "promiseThenFail"
] as const
export type Behaviour = typeof behaviours[number]

/** A hook's effect for a behaviour; `attempt` is the 1-based attempt of this invocation. */
export const behave = (behaviour: Behaviour, attempt: number): Effect.Effect<void, string> => {
  switch (behaviour) {
    case "succeed":
      return Effect.void
    case "sync":
      return Effect.sync(() => undefined)
    case "fail":
      return Effect.fail("handler failed")
    case "die":
      return Effect.die(new Error("handler defect"))
    case "throw":
      throw new Error("handler threw")
    case "syncThrow":
      return Effect.sync(() => {
        throw new Error("handler threw in a synchronous step")
      })
    case "hang":
      return Effect.never
    case "slow":
      return Effect.sleep("300 millis")
    case "interruptSelf":
      return Effect.interrupt
    case "failOnce":
      return attempt === 1 ? Effect.fail("first attempt fails") : Effect.void
    case "suspend":
      return Effect.zipRight(Effect.yieldNow(), Effect.zipRight(Effect.yieldNow(), Effect.yieldNow()))
    case "ignoreInterruption":
      return Effect.uninterruptible(Effect.sleep("1500 millis"))
    // A hook that is one asynchronous step (as `Effect.promise(() => fetch(...))` is), resumed from
    // outside any fiber: the dispatcher runs it with no fiber.
    case "promise":
      return Effect.promise(() => Promise.resolve())
    case "promiseDie":
      return Effect.promise(() => Promise.reject(new Error("handler promise rejected")))
    case "promiseThrow":
      return Effect.promise(() => {
        throw new Error("handler threw making its promise")
      })
    case "suspendThrow":
      return Effect.suspend(() => {
        throw new Error("handler threw in a suspended step")
      })
    case "asyncNow":
      return Effect.async<void, string>((resume) => resume(Effect.void))
    case "asyncFailNow":
      return Effect.async<void, string>((resume) => resume(Effect.fail("handler failed at once")))
    case "asyncFail":
      return Effect.async<void, string>((resume) => {
        Promise.resolve().then(() => resume(Effect.fail("handler failed after a turn")))
      })
    case "asyncHang":
      return Effect.async<void, string>(() => {})
    // Hooks of several steps: the dispatcher runs those that need no fiber on the spot, the rest on a fiber.
    case "steps":
      return Effect.gen(function*() {
        const a = yield* Effect.sync(() => attempt)
        yield* Effect.succeed(a + 1)
      })
    case "stepsThenSlow":
      return Effect.sync(() => attempt).pipe(Effect.flatMap(() => Effect.sleep("300 millis")))
    case "stepsThenFail":
      return Effect.gen(function*() {
        yield* Effect.sync(() => attempt)
        return yield* Effect.fail("handler failed after its steps")
      })
    // Hooks that wait inside continuations (a generator awaiting a promise, a promise then a failure): the
    // dispatcher waits with no fiber, and goes on with the continuations where the wait is resumed.
    case "promiseThenSteps":
      return Effect.gen(function*() {
        const a = yield* Effect.promise(() => Promise.resolve(attempt))
        yield* Effect.sync(() => a + 1)
        yield* Effect.promise(() => Promise.resolve())
      })
    case "promiseThenFail":
      return Effect.promise(() => Promise.resolve(attempt)).pipe(
        Effect.flatMap((a) => a === 1 ? Effect.fail("handler failed after a wait") : Effect.void)
      )
  }
}

export class CallFailed {
  readonly _tag = "CallFailed"
}

const defect = new Error("call defect")

export const callOutcomes = ["succeed", "fail", "die", "interrupt", "slowSucceed", "slowFail"] as const
export type CallOutcome = typeof callOutcomes[number]

/** A model call with the given outcome (slow ones take 700 ms). */
export const bareCall = (outcome: CallOutcome): Effect.Effect<string, CallFailed> => {
  switch (outcome) {
    case "succeed":
      return Effect.succeed("ok")
    case "fail":
      return Effect.fail(new CallFailed())
    case "die":
      return Effect.die(defect)
    case "interrupt":
      return Effect.interrupt
    case "slowSucceed":
      return Effect.sleep("700 millis").pipe(Effect.as("late"))
    case "slowFail":
      return Effect.sleep("700 millis").pipe(Effect.zipRight(Effect.fail(new CallFailed())))
  }
}

/** The parts of an Exit that must be preserved, without fiber ids. */
export const normalize = (exit: Exit.Exit<unknown, unknown>) =>
  Exit.isSuccess(exit)
    ? { success: exit.value }
    : {
      failures: Chunk.toReadonlyArray(Cause.failures(exit.cause)),
      defects: Chunk.toReadonlyArray(Cause.defects(exit.cause)),
      interrupted: Cause.isInterrupted(exit.cause)
    }
