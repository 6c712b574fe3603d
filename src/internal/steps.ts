/**
 * Two of Effect's steps made directly, as the effects that commit to them
 * would make them at each run: one step of Effect's run loop less (the
 * commit), and the commit's closures. The class of steps is read off a step
 * Effect made; were it not found (a version of Effect made otherwise), the
 * public constructors are used.
 */
import * as Effect from "effect/Effect"
import * as FiberId from "effect/FiberId"
import * as RuntimeFlags from "effect/RuntimeFlags"
import * as RuntimeFlagsPatch from "effect/RuntimeFlagsPatch"

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
