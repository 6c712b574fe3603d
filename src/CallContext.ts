/**
 * The call context: who a call is made for (user, team, organisation), its
 * tags and metadata, and the instrumented calls enclosing it (parents).
 * `instrument` reads it, and so do the budget and the metrics layers; it is a
 * module of its own so that none of them imports the others for it.
 *
 * @since 0.2.0
 */
import * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import { dual } from "effect/Function"
import { globalValue } from "effect/GlobalValue"
import * as Stream from "effect/Stream"
import { currentOperation, type Operation } from "./internal/operation.js"
import { enclosingOf, parentsOf, popParentOf } from "./internal/parents.js"
import { aroundPulls, isStream, locallyWith } from "./internal/streams.js"

/**
 * Context for the instrumented calls inside a region: the user, team and
 * organisation, tags, metadata, and a parent call id. (The parent of a call
 * made inside another instrumented call is that call, without any context.)
 *
 * @since 0.1.0
 * @category models
 */
export interface CallContext {
  readonly userId?: string | undefined
  /** The team the call is billed to (budgets may limit it). */
  readonly teamId?: string | undefined
  /** The organisation the call is billed to (budgets may limit it). */
  readonly orgId?: string | undefined
  readonly tags?: ReadonlyArray<string> | undefined
  readonly metadata?: Readonly<Record<string, unknown>> | undefined
  readonly parentCallId?: string | undefined
}

/**
 * The current call context, set by {@link withCallContext}; every
 * `instrument` inside it reads it (its own options win).
 *
 * @since 0.1.0
 * @category fiber refs
 */
export const currentCallContext: FiberRef.FiberRef<CallContext> = globalValue(
  Symbol.for("effect-llm-callbacks/Callbacks/currentCallContext"),
  () => FiberRef.unsafeMake<CallContext>({})
)

/**
 * Makes `callId` the parent of the instrumented calls that start in this
 * fiber (and in fibers it forks) until {@link popParent}. For integrations
 * whose call spans an acquire/release pair (streams); otherwise prefer
 * {@link withParent}.
 *
 * @since 0.1.0
 * @category combinators
 */
export const pushParent = (callId: string): Effect.Effect<void> =>
  Effect.withFiberRuntime((fiber) => {
    parentsOf(fiber).push(callId)
    return Effect.void
  })

/**
 * Undoes {@link pushParent}.
 *
 * @since 0.1.0
 * @category combinators
 */
export const popParent = (callId: string): Effect.Effect<void> =>
  Effect.withFiberRuntime((fiber) => {
    popParentOf(fiber, callId)
    return Effect.void
  })

/**
 * Runs `self` with the call context that nested instrumented calls inherit
 * (their parent is this call).
 *
 * @since 0.1.0
 * @category combinators
 */
export const withParent: {
  (callId: string): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, callId: string): Effect.Effect<A, E, R>
} = dual(
  2,
  <A, E, R>(self: Effect.Effect<A, E, R>, callId: string): Effect.Effect<A, E, R> =>
    Effect.acquireUseRelease(pushParent(callId), () => self, () => popParent(callId))
)

/**
 * Merges an inner call context into an outer one: tags and metadata are
 * merged, the other fields replace the outer ones where set.
 *
 * @since 0.2.0
 * @category combinators
 */
export const merge = (outer: CallContext, inner: CallContext): CallContext => ({
  userId: inner.userId ?? outer.userId,
  teamId: inner.teamId ?? outer.teamId,
  orgId: inner.orgId ?? outer.orgId,
  parentCallId: inner.parentCallId ?? outer.parentCallId,
  tags: inner.tags === undefined ? outer.tags : outer.tags === undefined ? inner.tags : [...outer.tags, ...inner.tags],
  metadata: inner.metadata === undefined
    ? outer.metadata
    : outer.metadata === undefined
    ? inner.metadata
    : { ...outer.metadata, ...inner.metadata }
})

/** What `withCallContext` takes: an effect or a stream (it gives back the same type). */
type EffectOrStream = Effect.Effect<any, any, any> | Stream.Stream<any, any, any>

/**
 * Runs an effect, or a stream, with a call context: the user, team and
 * organisation, tags, metadata and parent call id that the instrumented
 * calls inside it report. Tags and metadata are merged with the enclosing
 * context; the other fields replace it. A stream has it while it runs (each
 * of its pulls), wherever it is run: set it on a stream handed to someone
 * else to run (an HTTP response of `streamText`), where an effect around the
 * code that built it has ended by then.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Callbacks } from "effect-llm-callbacks"
 *
 * declare const answer: Effect.Effect<string>
 * const forAlice = answer.pipe(Callbacks.withCallContext({ userId: "alice", teamId: "search", tags: ["chat"] }))
 * ```
 *
 * @since 0.1.0
 * @category combinators
 */
export const withCallContext: {
  (context: CallContext): <Self extends EffectOrStream>(self: Self) => Self
  <Self extends EffectOrStream>(self: Self, context: CallContext): Self
} = dual(
  2,
  <A, E, R>(
    self: Effect.Effect<A, E, R> | Stream.Stream<A, E, R>,
    context: CallContext
  ): Effect.Effect<A, E, R> | Stream.Stream<A, E, R> => {
    const within = (outer: CallContext) => merge(outer, context)
    const parentCallId = context.parentCallId
    if (isStream(self)) {
      const withContext = locallyWith(self, currentCallContext, within)
      // The parent of its calls, as for an effect, also inside another call (each pull, as the context).
      return parentCallId === undefined ? withContext : aroundPulls(withContext, (pull) => withParent(pull, parentCallId))
    }
    const withContext = Effect.locallyWith(self, currentCallContext, within)
    return parentCallId === undefined ? withContext : withParent(withContext, parentCallId)
  }
)

/**
 * Runs `self` as one operation: every instrumented call made directly in it
 * (not the calls nested inside those) is an attempt of that operation, with
 * its `operationId` and its `attempt` number (1, 2, ...) in `CallInfo`. Put
 * the retry inside it: each attempt is then a call of its own, heard and
 * accounted on its own (its tokens recorded once, under its own call id), and
 * a dashboard or a ledger can group them by operation. `self` may be a
 * stream (`streamText(...).pipe(Stream.retry(schedule), withOperation())`):
 * an operation each time it is run, wherever it is run.
 *
 * @example
 * ```ts
 * import { Effect, Schedule } from "effect"
 * import { Callbacks } from "effect-llm-callbacks"
 *
 * declare const callModel: Effect.Effect<{ content: string }, Error>
 *
 * const answer = callModel.pipe(
 *   Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", userId: "alice" }),
 *   Effect.retry(Schedule.recurs(2)),
 *   Callbacks.withOperation()
 * )
 * ```
 *
 * @since 0.3.0
 * @category combinators
 */
export const withOperation: {
  (options?: { readonly operationId?: string | undefined }): <Self extends EffectOrStream>(self: Self) => Self
  <Self extends EffectOrStream>(self: Self, options?: { readonly operationId?: string | undefined }): Self
} = dual(
  (args) => Effect.isEffect(args[0]) || isStream(args[0]),
  <A, E, R>(
    self: Effect.Effect<A, E, R> | Stream.Stream<A, E, R>,
    options?: { readonly operationId?: string | undefined }
  ): Effect.Effect<A, E, R> | Stream.Stream<A, E, R> => {
    // Made anew each time the region runs (a stream: each time it is run).
    const operation = (fiber: Fiber.RuntimeFiber<unknown, unknown>): Operation => ({
      id: options?.operationId ?? crypto.randomUUID(),
      enclosing: enclosingOf(fiber),
      attempts: 0
    })
    if (isStream(self)) {
      return Stream.unwrap(Effect.withFiberRuntime((fiber) => {
        const current = operation(fiber)
        return Effect.succeed(locallyWith(self, currentOperation, () => current))
      }))
    }
    return Effect.withFiberRuntime((fiber) => Effect.locally(self, currentOperation, operation(fiber)))
  }
)
