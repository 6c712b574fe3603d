/**
 * An opt-in budget guard: a combinator put around an LLM call that checks the
 * user's token limit (`TokenStore.checkLimit`) before the call runs and fails
 * it with `UsageLimitExceeded`, without calling the model, when the user is
 * over the limit (`currentUsage >= limit`).
 *
 * - The user is `options.userId`, else the current call context's
 *   (`Callbacks.withCallContext`). A call without a user is not checked.
 * - The cycle is `options.cycleStartDate`, else the monthly cycle containing
 *   now (`anchorDay`, UTC, from Effect's `Clock`): use the same settings as the
 *   token-usage handler.
 * - A store that fails (or exceeds `timeout`) does not block calls by default
 *   (`onStoreError: "allow"`: the failure is logged and the call runs); with
 *   `"fail"` the call fails with the `TokenStoreError`.
 * - Put the guard outside `Callbacks.instrument` and a refused call emits no
 *   events; inside it, handlers hear `start` and an `error` with the
 *   `UsageLimitExceeded`.
 * - The guard checks usage recorded so far: calls running concurrently may
 *   together go past the limit (by at most what they consume).
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import { dual } from "effect/Function"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as BillingCycle from "./BillingCycle.js"
import { currentCallContext } from "./CallContext.js"
import { TokenStore, TokenStoreError } from "./TokenStore.js"

/**
 * The user has consumed their token limit for the billing cycle.
 *
 * @since 0.1.0
 * @category errors
 */
export class UsageLimitExceeded extends Schema.TaggedError<UsageLimitExceeded>(
  "effect-llm-callbacks/UsageLimitExceeded"
)("UsageLimitExceeded", {
  userId: Schema.String,
  /** Start date of the billing cycle, `YYYY-MM-DD`. */
  cycle: Schema.String,
  limit: Schema.Number,
  currentUsage: Schema.Number
}) {
  /**
   * @since 0.1.0
   */
  override get message(): string {
    return `User ${JSON.stringify(this.userId)} has used ${this.currentUsage} of ${this.limit} tokens ` +
      `in the billing cycle starting ${this.cycle}`
  }
}

/**
 * Options of {@link guard} and {@link check}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** The user to check; default: the current call context's user. */
  readonly userId?: string | undefined
  /** An explicit billing cycle start date `YYYY-MM-DD`; when set it wins over `anchorDay`. */
  readonly cycleStartDate?: string | undefined
  /** Day of the month (1..28, UTC) on which monthly cycles start; default 1. */
  readonly anchorDay?: number | undefined
  /** What a store failure does: `"allow"` (default) runs the call, `"fail"` fails it. */
  readonly onStoreError?: "allow" | "fail" | undefined
  /** Bound on the limit check; beyond it the store counts as failed (reason `Timeout`). Default: none. */
  readonly timeout?: Duration.DurationInput | undefined
}

/**
 * Options that fail the call when the store fails.
 *
 * @since 0.1.0
 * @category models
 */
export interface FailOptions extends Options {
  readonly onStoreError: "fail"
}

const resolveCycle = (options: Options): Effect.Effect<string> =>
  // A bad cycle setting is a programming or configuration error: a defect
  // naming the setting (as `BillingCycle.current` does for `anchorDay`).
  Effect.catchAll(
    BillingCycle.resolve(options),
    (error) => Effect.die(new Cause.IllegalArgumentException(`Budget: cycleStartDate: ${error.message}`))
  )

const checkImpl = (options: Options): Effect.Effect<void, UsageLimitExceeded | TokenStoreError, TokenStore> =>
  Effect.withFiberRuntime((fiber) => {
    const userId = options.userId ?? fiber.getFiberRef(currentCallContext).userId
    if (userId === undefined) return Effect.void
    return Effect.flatMap(resolveCycle(options), (cycle) => {
      const checked = Effect.flatMap(TokenStore, (store) => store.checkLimit(userId, cycle))
      const bounded = options.timeout === undefined ? checked : checked.pipe(
        Effect.timeoutFail({
          duration: options.timeout,
          onTimeout: () =>
            new TokenStoreError({
              reason: "Timeout",
              message: `Budget: the limit check took longer than the guard's timeout`
            })
        })
      )
      return Effect.flatMap(bounded, (result) =>
        result.exceeded && Option.isSome(result.limit)
          ? Effect.fail(
            new UsageLimitExceeded({ userId, cycle, limit: result.limit.value, currentUsage: result.currentUsage })
          )
          : Effect.void)
    }).pipe(Effect.withSpan("Budget.check"))
  })

/**
 * Checks the user's limit now: fails with `UsageLimitExceeded` when it is
 * consumed, or with the store's error. Succeeds when there is no user or no
 * limit. `onStoreError` is ignored here (see {@link guard}).
 *
 * @since 0.1.0
 * @category constructors
 */
export const check = (
  options: Options = {}
): Effect.Effect<void, UsageLimitExceeded | TokenStoreError, TokenStore> => checkImpl(options)

const guardImpl = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  options: Options = {}
): Effect.Effect<A, E | UsageLimitExceeded | TokenStoreError, R | TokenStore> => {
  const checked = checkImpl(options)
  const gate = options.onStoreError === "fail" ? checked : Effect.catchTag(
    checked,
    "TokenStoreError",
    (error) =>
      Effect.logWarning("budget check failed; the call is allowed").pipe(
        Effect.annotateLogs({ reason: error.reason, error: error.message })
      )
  )
  return Effect.zipRight(gate, self)
}

/**
 * Guards a call with the user's token limit: the call runs only when the user
 * is under the limit, else it fails with `UsageLimitExceeded` and the model is
 * not called. The error channel gains `TokenStoreError` only with
 * `onStoreError: "fail"`.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Budget, Callbacks } from "effect-llm-callbacks"
 *
 * declare const callModel: Effect.Effect<{ content: string }>
 *
 * const answer = callModel.pipe(
 *   Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini" }),
 *   Budget.guard(),
 *   Callbacks.withCallContext({ userId: "alice" })
 * )
 * ```
 *
 * @since 0.1.0
 * @category combinators
 */
export const guard: {
  (
    options: FailOptions
  ): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E | UsageLimitExceeded | TokenStoreError, R | TokenStore>
  (
    options?: Options
  ): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E | UsageLimitExceeded, R | TokenStore>
  <A, E, R>(
    self: Effect.Effect<A, E, R>,
    options: FailOptions
  ): Effect.Effect<A, E | UsageLimitExceeded | TokenStoreError, R | TokenStore>
  <A, E, R>(self: Effect.Effect<A, E, R>, options?: Options): Effect.Effect<A, E | UsageLimitExceeded, R | TokenStore>
} = dual(
  // The options are optional: tell `guard(self)` from `guard(options)` by the first argument.
  (args) => Effect.isEffect(args[0]),
  guardImpl
)
