/**
 * Handlers: a name, hooks (one per lifecycle phase, each optional), and a policy.
 *
 * Hooks read everything about a call from the event they receive; a handler
 * keeps no per-call state of its own, so any number of calls can run at once.
 *
 * @since 0.1.0
 */
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Schedule from "effect/Schedule"
import * as Cause from "effect/Cause"
import * as Data from "effect/Data"
import { dual } from "effect/Function"
import type { EndEvent, Phase, PhaseEvents } from "./Events.js"
import { type HookOf, phases, phaseTable } from "./internal/phases.js"

/**
 * @since 0.1.0
 * @category type ids
 */
export const TypeId: unique symbol = Symbol.for("effect-llm-callbacks/Handler")

/**
 * @since 0.1.0
 * @category type ids
 */
export type TypeId = typeof TypeId

/**
 * `"await"`: the call waits for the handler (bounded by its timeout).
 * `"background"`: the handler runs in a fiber owned by the dispatcher, fed
 * through a bounded buffer; the call does not wait.
 *
 * @since 0.1.0
 * @category models
 */
export type Mode = "await" | "background"

/**
 * How a handler is run. Unset fields take the dispatcher's defaults
 * (from `CALLBACK_*` configuration).
 *
 * @since 0.1.0
 * @category models
 */
export interface Policy {
  /** Bound on one invocation, retries included. */
  readonly timeout?: Duration.DurationInput | undefined
  /** Retries after a typed failure; `undefined` takes the default. */
  readonly retry?: Schedule.Schedule<unknown, unknown> | undefined
  readonly mode?: Mode | undefined
  /** Higher runs first; equal priorities run concurrently. Default 0. */
  readonly priority?: number | undefined
  /** Background mode: size of this handler's buffer (default from the dispatcher). */
  readonly bufferSize?: number | undefined
  /**
   * Background mode: deliveries handled at once (default 1). Each call's
   * deliveries stay in order (start before end); different calls may overlap.
   */
  readonly concurrency?: number | undefined
}

/**
 * A handler's hooks, one per phase (`onLlmStart`, `onLlmChunk`,
 * `onToolStart`, `onToolEnd`, `onToolError`, `onLlmEnd`, `onLlmError`), each
 * hearing its phase's event.
 *
 * @since 0.2.0
 * @category models
 */
export type Hooks<E, R> = {
  readonly [P in Phase as HookOf<P>]: ((event: PhaseEvents[P]) => Effect.Effect<void, E, R>) | undefined
}

/**
 * A handler whose hooks may fail with `E` and need `R`. `R` is satisfied when
 * the handler's layer is built ({@link toLayer} in `Dispatcher`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Handler<out E = never, out R = never> extends Hooks<E, R> {
  readonly [TypeId]: TypeId
  readonly name: string
  /**
   * Background mode: hears runs of consecutive end events at once (those its
   * buffer holds when it gets to them), instead of `onLlmEnd` for each; one
   * invocation (timeout, retries) per run. For handlers that write in bulk,
   * such as token accounting. Without `onLlmEnd`, await mode calls it with
   * one event.
   */
  readonly onLlmEndBatch: ((events: ReadonlyArray<EndEvent>) => Effect.Effect<void, E, R>) | undefined
  readonly policy: Policy
}

/**
 * The hook a handler runs for one event of `phase`: its hook for the phase,
 * or, for `end` without `onLlmEnd`, its batch hook called with one event.
 *
 * @since 0.2.0
 * @category getters
 */
export const hookOf = <E, R, P extends Phase>(
  handler: Handler<E, R>,
  phase: P
): ((event: PhaseEvents[P]) => Effect.Effect<void, E, R>) | undefined => {
  const hook = (handler as Hooks<E, R>)[phaseTable[phase].hook] as
    | ((event: PhaseEvents[P]) => Effect.Effect<void, E, R>)
    | undefined
  if (hook !== undefined || phase !== "end") return hook
  const batch = handler.onLlmEndBatch
  return batch === undefined ? undefined : (event) => batch([event as EndEvent])
}

/**
 * Options of {@link make}: a name, any of the hooks, the policy, and
 * `onLlmEndBatch`. Each hook may fail and need services of its own; the
 * handler's error and requirement types are their unions.
 *
 * @since 0.1.0
 * @category models
 */
export type MakeOptions =
  & Policy
  & { readonly name: string }
  & { readonly [K in keyof Hooks<any, any>]?: Hooks<any, any>[K] }
  & {
    /** See {@link Handler.onLlmEndBatch}. */
    readonly onLlmEndBatch?: ((events: ReadonlyArray<EndEvent>) => Effect.Effect<void, any, any>) | undefined
  }

type HookKey = keyof Hooks<any, any> | "onLlmEndBatch"

/**
 * The errors the hooks of some {@link MakeOptions} may fail with.
 *
 * @since 0.3.0
 * @category models
 */
export type ErrorOf<O> = {
  [K in HookKey & keyof O]: Returned<O[K]> extends Effect.Effect<void, infer E, any> ? E : never
}[HookKey & keyof O]

/** What a hook returns; `never` for a hook that only throws (its throw is a defect, no typed error). */
type Returned<F> = F extends (event: any) => infer X ? [X] extends [never] ? Effect.Effect<void> : X : never

/**
 * The services the hooks of some {@link MakeOptions} need.
 *
 * @since 0.3.0
 * @category models
 */
export type ContextOf<O> = {
  [K in HookKey & keyof O]: Returned<O[K]> extends Effect.Effect<void, any, infer R> ? R : never
}[HookKey & keyof O]

/**
 * Defines a handler.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Handler } from "effect-llm-callbacks"
 *
 * const printer = Handler.make({
 *   name: "printer",
 *   onLlmChunk: (event) => Effect.log(`${event.call.callId} #${event.index}: ${event.delta}`),
 *   onToolEnd: (event) => Effect.log(`tool ${event.tool.name} took ${event.durationMs} ms`),
 *   onLlmEnd: (event) => Effect.log(`${event.call.model}: ${event.response.content}`),
 *   timeout: "2 seconds"
 * })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = <const O extends MakeOptions>(options: O): Handler<ErrorOf<O>, ContextOf<O>> => {
  const handler: Record<string | symbol, unknown> = {
    [TypeId]: TypeId,
    name: options.name,
    onLlmEndBatch: options.onLlmEndBatch,
    policy: {
      timeout: options.timeout,
      retry: options.retry,
      mode: options.mode,
      priority: options.priority,
      bufferSize: options.bufferSize,
      concurrency: options.concurrency
    }
  }
  for (const phase of phases) {
    const hook = phaseTable[phase].hook
    handler[hook] = options[hook]
  }
  return handler as unknown as Handler<ErrorOf<O>, ContextOf<O>>
}

/**
 * A hook that does its work synchronously, in the hook call itself, and
 * returns a completed effect: the dispatcher then runs it inline, without a
 * fiber of its own (its fastest path). For work that never waits, such as
 * updating a metric. A throw is a defect of the handler, as for any hook; a
 * retry calls `f` again. (A hook returning `Effect.sync(f)` gets no fiber
 * either, unless its invocations are traced or it was registered inside a
 * span.)
 *
 * @example
 * ```ts
 * import { Handler } from "effect-llm-callbacks"
 *
 * let calls = 0
 * const counter = Handler.make({ name: "counter", onLlmEnd: Handler.sync(() => { calls++ }) })
 * ```
 *
 * @since 0.1.0
 * @category constructors
 */
export const sync = <Event>(f: (event: Event) => void) => (event: Event): Effect.Effect<void> => {
  f(event)
  return Effect.void
}

/**
 * @since 0.1.0
 * @category guards
 */
export const isHandler = (u: unknown): u is Handler<unknown, unknown> =>
  typeof u === "object" && u !== null && TypeId in u

/**
 * Returns the handler with some policy fields replaced.
 *
 * @since 0.1.0
 * @category combinators
 */
export const withPolicy: {
  (policy: Policy): <E, R>(self: Handler<E, R>) => Handler<E, R>
  <E, R>(self: Handler<E, R>, policy: Policy): Handler<E, R>
} = dual(2, <E, R>(self: Handler<E, R>, policy: Policy): Handler<E, R> => {
  const merged: { -readonly [K in keyof Policy]: Policy[K] } = { ...self.policy }
  for (const key of Object.keys(policy) as Array<keyof Policy>) {
    if (policy[key] !== undefined) (merged as any)[key] = policy[key]
  }
  return { ...self, policy: merged }
})

/**
 * The failure of a composite handler: which children failed and how.
 *
 * @since 0.1.0
 * @category errors
 */
export class CompositeHandlerError extends Data.TaggedError("CompositeHandlerError")<{
  readonly failures: ReadonlyArray<{ readonly handler: string; readonly cause: Cause.Cause<unknown> }>
}> {
  override get message(): string {
    return `${this.failures.length} handler(s) failed: ` +
      this.failures.map((f) => `${f.handler}: ${Cause.pretty(f.cause)}`).join("; ")
  }
}

/** The children's hooks of one phase as one hook, or `undefined` when no child has one. */
const runAll = <E, R, P extends Phase>(children: ReadonlyArray<Handler<E, R>>, phase: P) => {
  const hooks = children.flatMap((child) => {
    const hook = hookOf(child, phase)
    return hook === undefined ? [] : [{ name: child.name, hook }]
  })
  if (hooks.length === 0) return undefined
  return (event: PhaseEvents[P]): Effect.Effect<void, CompositeHandlerError, R> =>
    Effect.flatMap(
      Effect.forEach(hooks, ({ hook, name }) =>
        Effect.map(
          Effect.exit(Effect.suspend(() => hook(event))),
          (exit) => Exit.isFailure(exit) ? { handler: name, cause: exit.cause as Cause.Cause<unknown> } : undefined
        )),
      (outcomes) => {
        const failures = outcomes.filter((o) => o !== undefined)
        return failures.length === 0 ? Effect.void : Effect.fail(new CompositeHandlerError({ failures }))
      }
    )
}

/**
 * Several handlers as one, like the Python design's `CompositeCallbackHandler`:
 * the children run in order, each isolated from the others' failures; the
 * composite fails (with every child failure) only after all have run.
 *
 * The composite has one policy: a retry re-runs every child.
 *
 * @since 0.1.0
 * @category constructors
 */
export const composite = <E, R>(
  name: string,
  children: ReadonlyArray<Handler<E, R>>,
  policy: Policy = {}
): Handler<CompositeHandlerError, R> => {
  const hooks = {} as { -readonly [K in keyof Hooks<CompositeHandlerError, R>]: Hooks<CompositeHandlerError, R>[K] }
  for (const phase of phases) (hooks as Record<string, unknown>)[phaseTable[phase].hook] = runAll(children, phase)
  return { [TypeId]: TypeId, name, ...hooks, onLlmEndBatch: undefined, policy }
}
