/**
 * Effect's steps used directly. Two made as the effects that commit to them
 * would make them at each run: one step of Effect's run loop less (the
 * commit), and the commit's closures. The class of steps is read off a step
 * Effect made; were it not found (a version of Effect made otherwise), the
 * public constructors are used. And effects of steps that need no fiber run
 * on the spot (see {@link runNow}).
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as FiberId from "effect/FiberId"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as RuntimeFlagsPatch from "effect/RuntimeFlagsPatch"
import { yieldWrapGet } from "effect/Utils"

/** A step as Effect makes it (members its interface does not export). */
interface Primitive {
  readonly _op: string
  effect_instruction_i0: unknown
  effect_instruction_i1: unknown
}

/** Effect's class of steps, read off the `Async` step that `Effect.async` without a canceller commits to. */
const Step: (new(op: string) => Primitive) | undefined = (() => {
  const committed = (Effect.async<void>((_resume) => {}) as unknown as { readonly commit: () => Primitive }).commit()
  return committed._op === "Async" ? committed.constructor as new(op: string) => Primitive : undefined
})()

/**
 * `Effect.async(register)` without a canceller, as the `Async` step it
 * commits to: the fiber calls `register` with its resume, of which the
 * first call counts. (`Effect.async` wraps that step in a commit that
 * proxies the resume: two closures and a step more per wait.)
 */
export const asyncStep = (register: (resume: (effect: Effect.Effect<void>) => void) => void): Effect.Effect<void> => {
  if (Step === undefined) return Effect.async<void>(register)
  const step = new Step("Async")
  step.effect_instruction_i0 = register
  step.effect_instruction_i1 = FiberId.none
  return step as unknown as Effect.Effect<void>
}

/** What `Effect.uninterruptibleMask` hands its body. */
export type Restore = <X, Y, Z>(effect: Effect.Effect<X, Y, Z>) => Effect.Effect<X, Y, Z>

const disableInterruption = RuntimeFlagsPatch.disable(RuntimeFlags.Interruption)

/**
 * `Effect.uninterruptibleMask(body)`, as the `UpdateRuntimeFlags` step it
 * commits to: the region's flags are the fiber's less interruption, and
 * `restore` is `Effect.interruptible` when the fiber was interruptible,
 * `Effect.uninterruptible` otherwise, as Effect's.
 */
export const uninterruptibleMask = <A, E, R>(body: (restore: Restore) => Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => {
  if (Step === undefined) return Effect.uninterruptibleMask(body)
  const step = new Step("UpdateRuntimeFlags")
  step.effect_instruction_i0 = disableInterruption
  step.effect_instruction_i1 = (flags: RuntimeFlags.RuntimeFlags) =>
    body(RuntimeFlags.interruption(flags) ? Effect.interruptible : Effect.uninterruptible)
  return step as unknown as Effect.Effect<A, E, R>
}

/** What a step that throws `defect` exits with, as Effect's run loop takes it (an interrupted exception interrupts too). */
export const thrown = (defect: unknown): Exit.Exit<never, unknown> =>
  Cause.isInterruptedException(defect)
    ? Exit.failCause(Cause.sequential(Cause.die(defect), Cause.interrupt(FiberId.none)))
    : Exit.die(defect)

/** A continuation on the stack of {@link runNow}: a step of kind `OnSuccess`, `OnFailure` or `OnSuccessAndFailure`. */
interface Frame {
  readonly _op: string
  readonly effect_instruction_i0: Effect.Effect<unknown, unknown>
  readonly effect_instruction_i1: (input: unknown) => Effect.Effect<unknown, unknown>
  readonly effect_instruction_i2: (value: unknown) => Effect.Effect<unknown, unknown>
}

/** An effect as the step it is (see {@link Frame}; a commit has `commit`). */
const stepOf = (effect: unknown): Frame & { readonly commit: () => unknown } =>
  effect as Frame & { readonly commit: () => unknown }

/** The innermost continuation a success goes to (not of kind `OnFailure`), popped with those above it; `undefined` when none is left. */
const popForSuccess = (stack: Array<Frame>): Frame | undefined => {
  for (let frame = stack.pop(); frame !== undefined; frame = stack.pop()) {
    if (frame._op !== "OnFailure") return frame
  }
  return undefined
}

/**
 * The innermost continuation a failure goes to (not of kind `OnSuccess`, nor
 * a generator: one is not resumed with failures, as on a fiber), popped with
 * those above it; `undefined` when none is left.
 */
const popForFailure = (stack: Array<Frame>): Frame | undefined => {
  for (let frame = stack.pop(); frame !== undefined; frame = stack.pop()) {
    if (frame._op !== "OnSuccess" && frame._op !== "Iterator") return frame
  }
  return undefined
}

/** What {@link runNow} did not run: `current`, inside the continuations still on `stack`. */
const rest = (current: Effect.Effect<unknown, unknown>, stack: ReadonlyArray<Frame>): Effect.Effect<unknown, unknown> => {
  let effect = current
  for (let i = stack.length - 1; i >= 0; i--) {
    const frame = stack[i]!
    effect = frame._op === "OnSuccess"
      ? Effect.flatMap(effect, frame.effect_instruction_i1)
      : frame._op === "Iterator"
      ? Effect.flatMap(effect, (value) => iterate(frame, value))
      : frame._op === "OnFailure"
      ? Effect.catchAllCause(effect, frame.effect_instruction_i1)
      : Effect.matchCauseEffect(effect, { onFailure: frame.effect_instruction_i1, onSuccess: frame.effect_instruction_i2 })
  }
  return effect
}

/** What an `Async` step calls: with the function that resumes its fiber, of which the first call counts. */
export type Register = (resume: (effect: Effect.Effect<void, unknown>) => void) => void

/**
 * The wait of what {@link runNow} left, when it is one `Async` step inside
 * continuations only (`Effect.promise(f).pipe(Effect.map(g))`, an
 * `Effect.gen` at a `yield* Effect.promise(f)`): a register function that
 * registers the step and hands its resume, of which the first call counts,
 * the effect it was resumed with put back inside those continuations, which
 * {@link runNow} goes on with. `undefined` for anything else. The
 * continuations are of kinds `OnSuccess`, `OnFailure` and
 * `OnSuccessAndFailure` in the interruptible region they ran in (`runNow`
 * runs no change of runtime flags): an interrupted fiber waiting on the step
 * would run none of them, as a wait given up on does not.
 */
export const waitOf = (effect: Effect.Effect<unknown, unknown>): Register | undefined => {
  let step = stepOf(effect)
  let frames: Array<Frame> | undefined
  while (step._op === "OnSuccess" || step._op === "OnFailure" || step._op === "OnSuccessAndFailure") {
    ;(frames ??= []).push(step)
    step = stepOf(step.effect_instruction_i0)
  }
  if (step._op !== "Async") return undefined
  const register = step.effect_instruction_i0 as unknown as Register
  if (frames === undefined) return register
  const stack = frames
  return (resume) => register((resumed) => resume(rest(resumed, stack) as Effect.Effect<void, unknown>))
}

/**
 * A generator's steps from `value` on, as a fiber's run loop runs the
 * `Iterator` step of `Effect.gen` (`frame`, popped): it is fed the values of
 * the effects it yields, at once while they are completed ones, and its
 * first effect that is not is returned, with `frame` pushed back on `stack`
 * as its continuation (no `flatMap` and closure per yield); a failure ends
 * it (a generator is not resumed with failures, as on a fiber).
 */
const feed = (frame: Frame, value: unknown, stack: Array<Frame>): ReturnType<typeof stepOf> => {
  // An `Iterator` step holds its generator.
  const iterator = frame.effect_instruction_i0 as unknown as Iterator<unknown, unknown, unknown>
  for (;;) {
    const state = iterator.next(value)
    if (state.done === true) return stepOf(Exit.succeed(state.value))
    const yielded = stepOf(yieldWrapGet(state.value as Parameters<typeof yieldWrapGet>[0]))
    // Effect's exits are its steps of kinds `Success` and `Failure` (`Exit.isExit` reads a symbol property:
    // a megamorphic lookup where hooks yield effects of many shapes).
    const op = yielded._op
    if (op === "Failure") return yielded
    if (op !== "Success") {
      stack.push(frame)
      return yielded
    }
    value = yielded.effect_instruction_i0
  }
}

/** {@link feed} as an effect, for what {@link runNow} hands back (see `rest`): its continuation a `flatMap`. */
const iterate = (frame: Frame, value: unknown): Effect.Effect<unknown, unknown> => {
  const stack: Array<Frame> = []
  const step = feed(frame, value, stack) as unknown as Effect.Effect<unknown, unknown>
  return stack.length === 0 ? step : Effect.flatMap(step, (next) => iterate(frame, next))
}

/**
 * Runs `effect` on the spot, with no fiber, as Effect's run loop would, as
 * far as its steps need no fiber: successes and failures, synchronous steps
 * (`Effect.sync`), commits (`Effect.suspend`), generators (`Effect.gen`), and
 * the continuations of `flatMap`, `map`, `catchAllCause` and
 * `matchCauseEffect` (what a schedule's step is made of, when it reads no
 * service, and hooks of synchronous work). A step that throws fails with a
 * defect, as on a fiber. Returns its exit when it ran to the end; else what
 * is left of it, from the first step that needs a fiber (a service read, a
 * log, an asynchronous step, a change of runtime flags...) on, inside the
 * continuations not run yet, to be run on a fiber; so too after `budget`
 * steps, so that a long computation runs on a fiber, which yields.
 */
export const runNow = <A, E>(
  effect: Effect.Effect<A, E>,
  budget = 1_000
): Exit.Exit<A, E> | Effect.Effect<A, E> => {
  const stack: Array<Frame> = []
  let current = stepOf(effect)
  for (let steps = 0; steps < budget; steps++) {
    try {
      switch (current._op) {
        case "Success": {
          const frame = popForSuccess(stack)
          if (frame === undefined) return current as unknown as Exit.Exit<A, E>
          const value = current.effect_instruction_i0
          current = frame._op === "OnSuccess"
            ? stepOf(frame.effect_instruction_i1(value))
            : frame._op === "Iterator"
            ? feed(frame, value, stack)
            : stepOf(frame.effect_instruction_i2(value))
          break
        }
        case "Failure": {
          const frame = popForFailure(stack)
          if (frame === undefined) return current as unknown as Exit.Exit<A, E>
          current = stepOf(frame.effect_instruction_i1(current.effect_instruction_i0))
          break
        }
        case "Sync":
          current = stepOf(Exit.succeed((current.effect_instruction_i0 as unknown as () => unknown)()))
          break
        case "Commit":
          current = stepOf(current.commit())
          break
        case "Iterator":
          current = feed(current, undefined, stack)
          break
        case "OnSuccess":
        case "OnFailure":
        case "OnSuccessAndFailure":
          stack.push(current)
          current = stepOf(current.effect_instruction_i0)
          break
        default:
          return rest(current as unknown as Effect.Effect<unknown, unknown>, stack) as Effect.Effect<A, E>
      }
    } catch (defect) {
      current = stepOf(thrown(defect))
    }
  }
  return rest(current as unknown as Effect.Effect<unknown, unknown>, stack) as Effect.Effect<A, E>
}
