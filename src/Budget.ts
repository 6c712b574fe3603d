/**
 * Budgets: token limits that hold under concurrency and across processes.
 *
 * `guard` wraps a region of an application (`guardStream` a stream); every
 * instrumented call (`Callbacks.instrument`, `Callbacks.begin`, the
 * `@effect/ai` layer's `generateText`, `generateObject` and `streamText`)
 * started inside it is admitted before any handler hears its `start`:
 *
 * 1. Its worst case is computed: the prompt's tokens (the `PromptCounter` in
 *    context; by default a safe upper bound, the UTF-8 size of the texts, or
 *    gpt-tokenizer with `TokenUsage.layerPromptCounter`) plus the most it may
 *    generate (`maxTokens`, `max_tokens`, `maxOutputTokens`,
 *    `max_output_tokens` or `max_completion_tokens` from its params, else the
 *    model's cap from `maxOutputTokens`, else `defaultMaxOutputTokens`).
 * 2. `TokenStore.reserve` holds it at the call's user and, when the call names
 *    them (`instrument`'s options, else the call context), its team and
 *    organisation, in one atomic step that checks at each level
 *    `used + held + this call <= limit` and the optional rate limits.
 * 3. Refused: the call fails with `UsageLimitExceeded` (the tightest level,
 *    with its figures) or `RateLimitExceeded` (with when to retry), without
 *    calling the model; no handler hears of it.
 * 4. Admitted: the call runs. Its token-usage record (`layers/TokenUsage`, with
 *    the same billing-cycle settings) adds the actual usage and ends the hold
 *    in one atomic, idempotent step (a stream cut off after it began records
 *    what it consumed). A call that fails or is interrupted has its holds
 *    released by the guard (a call begun by hand: when it is finished); when
 *    the store does not answer, the call goes on and the release is tried
 *    again in the background until it does. A hold that nothing ends
 *    (its process died) expires after `holdTtl`.
 *
 * A store failure follows `onStoreError`: `"allow"` (default) admits the call
 * and logs a warning; `"fail"` fails the call with the `TokenStoreError`. A
 * reservation not answered in time may have been made (or be made later):
 * it is released in the background, until the store takes the release.
 * A call without a user is not checked.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Budget, Callbacks } from "effect-llm-callbacks"
 *
 * declare const callModel: Effect.Effect<{ content: string }>
 *
 * const answer = callModel.pipe(
 *   Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", userId: "alice", teamId: "search", params: { maxTokens: 500 } }),
 *   Budget.guard()
 * )
 * ```
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as DateTime from "effect/DateTime"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import { dual } from "effect/Function"
import * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as BillingCycle from "./BillingCycle.js"
import { currentCallContext } from "./CallContext.js"
import * as CallbackMetrics from "./CallbackMetrics.js"
import type { Message, StartEvent } from "./Events.js"
import { currentGate, type Gate, type Ticket } from "./internal/admission.js"
import { liveClock } from "./internal/dispatch/timer.js"
import { isStream, locallyWith } from "./internal/streams.js"
import { type Level, type ReleaseInput, type ReserveOutcome, subjectsOf, TokenStore, TokenStoreError } from "./TokenStore.js"

/**
 * A call was refused because one of its levels (user, team or organisation)
 * has not enough tokens left in the billing cycle for the call's worst case.
 *
 * @since 0.1.0
 * @category errors
 */
export class UsageLimitExceeded extends Schema.TaggedError<UsageLimitExceeded>(
  "effect-llm-callbacks/UsageLimitExceeded"
)("UsageLimitExceeded", {
  /** The call's user. */
  userId: Schema.String,
  /** The level whose limit refused the call. */
  level: Schema.Literal("user", "team", "org"),
  /** The id at that level (the user id, team id or organisation id). */
  id: Schema.String,
  /** Start date of the billing cycle, `YYYY-MM-DD`. */
  cycle: Schema.String,
  limit: Schema.Number,
  /** Tokens recorded at that level in the cycle. */
  currentUsage: Schema.Number,
  /** Tokens held at that level by admitted calls in flight. */
  heldTokens: Schema.Number,
  /** This call's worst case. */
  requestedTokens: Schema.Number
}) {
  /**
   * @since 0.1.0
   */
  override get message(): string {
    return `${this.level === "user" ? "User" : this.level === "team" ? "Team" : "Organisation"} ${
      JSON.stringify(this.id)
    } has used ${this.currentUsage} and holds ${this.heldTokens} of ${this.limit} tokens in the billing cycle ` +
      `starting ${this.cycle}; the call needs up to ${this.requestedTokens}`
  }
}

/**
 * A call was refused by a rate limit of one of its levels; it may be retried
 * after `retryAfterMillis`.
 *
 * @since 0.2.0
 * @category errors
 */
export class RateLimitExceeded extends Schema.TaggedError<RateLimitExceeded>(
  "effect-llm-callbacks/RateLimitExceeded"
)("RateLimitExceeded", {
  userId: Schema.String,
  level: Schema.Literal("user", "team", "org"),
  id: Schema.String,
  kind: Schema.Literal("requests", "tokens"),
  /** Requests or tokens per minute allowed. */
  limit: Schema.Number,
  /** Requests or tokens counted in the current minute. */
  current: Schema.Number,
  /** When the current one-minute window ends. */
  retryAfterMillis: Schema.Number
}) {
  /**
   * @since 0.2.0
   */
  override get message(): string {
    return `${this.level} ${JSON.stringify(this.id)} is at its limit of ${this.limit} ${this.kind} per minute ` +
      `(${this.current} this minute); retry in ${Math.ceil(this.retryAfterMillis / 1000)} s`
  }
}

/**
 * Counts the tokens of a prompt for a model.
 *
 * @since 0.2.0
 * @category models
 */
export type PromptCounter = (model: string, messages: ReadonlyArray<Message>) => Effect.Effect<number>

const utf8 = new TextEncoder()

/**
 * A safe upper bound of a prompt's tokens without a tokenizer: every token of
 * a byte-level BPE tokenizer (the GPT, Llama and Claude families) covers at
 * least one byte, so a text has at most as many tokens as UTF-8 bytes; plus
 * 4 tokens of chat format per message and 3 of priming. Non-text parts are
 * not counted.
 *
 * @since 0.2.0
 * @category constructors
 */
export const byteBound: PromptCounter = (_model, messages) =>
  Effect.sync(() => {
    let n = 3
    for (const message of messages) {
      n += 4
      if (typeof message.content === "string") n += utf8.encode(message.content).length
      else for (const part of message.content) if (typeof part.text === "string") n += utf8.encode(part.text).length
    }
    return n
  })

/**
 * The prompt counter budgets use; by default {@link byteBound}.
 * `TokenUsage.layerPromptCounter` sets gpt-tokenizer's exact count.
 *
 * @since 0.2.0
 * @category references
 */
export class CurrentPromptCounter extends Context.Reference<CurrentPromptCounter>()(
  "effect-llm-callbacks/Budget/CurrentPromptCounter",
  { defaultValue: (): PromptCounter => byteBound }
) {}

/**
 * Options of {@link guard} and {@link check}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** `check` only: the user to check; default the call context's. (`guard` checks each call's own user.) */
  readonly userId?: string | undefined
  /** An explicit billing cycle start date `YYYY-MM-DD`; when set it wins over `anchorDay`. */
  readonly cycleStartDate?: string | undefined
  /** Day of the month (1..28, UTC) on which monthly cycles start; default 1. */
  readonly anchorDay?: number | undefined
  /** What a store failure does: `"allow"` (default) runs the call, `"fail"` fails it. */
  readonly onStoreError?: "allow" | "fail" | undefined
  /** Bound on the admission's store round trip; beyond it the store counts as failed (reason `Timeout`). */
  readonly timeout?: Duration.DurationInput | undefined
  /** Caps on the tokens a call may generate when its params set none, per model name. */
  readonly maxOutputTokens?: Readonly<Record<string, number>> | undefined
  /** The cap for models not in `maxOutputTokens`; default 4096. */
  readonly defaultMaxOutputTokens?: number | undefined
  /** How long a hold lives when nothing ends it (its process died); default 10 minutes. Longer than any call. */
  readonly holdTtl?: Duration.DurationInput | undefined
  /** Requests and tokens per minute, per level (each user, each team, each organisation). */
  readonly rateLimits?: Partial<Record<Level, {
    readonly requestsPerMinute?: number | undefined
    readonly tokensPerMinute?: number | undefined
  }>> | undefined
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

const outputKeys = ["maxTokens", "max_tokens", "maxOutputTokens", "max_output_tokens", "max_completion_tokens"]

/**
 * The most tokens a call may generate according to its request params, if
 * they say.
 *
 * @since 0.2.0
 * @category getters
 */
export const maxOutputOf = (params: Readonly<Record<string, unknown>>): number | undefined => {
  for (const key of outputKeys) {
    const value = params[key]
    if (typeof value === "number" && Number.isSafeInteger(value) && value >= 0) return value
  }
  return undefined
}

const invalid = (message: string) => Effect.die(new Cause.IllegalArgumentException(`Budget: ${message}`))

const isCount = (n: unknown): n is number => typeof n === "number" && Number.isSafeInteger(n) && n >= 0

interface Settings {
  readonly anchorDay: number
  readonly defaultCap: number
  readonly holdTtlMillis: number
}

/** Validates the options once per guard: the settings, or what is wrong (a bad option is a defect naming it). */
const validate = (options: Options): Settings | string => {
  if (options.cycleStartDate !== undefined && !BillingCycle.isCycleDate(options.cycleStartDate)) {
    return `cycleStartDate: expected a real calendar date YYYY-MM-DD, got ${JSON.stringify(options.cycleStartDate)}`
  }
  const anchorDay = options.anchorDay ?? 1
  if (!Number.isInteger(anchorDay) || anchorDay < 1 || anchorDay > 28) {
    return `anchorDay: expected an integer from 1 to 28, got ${String(options.anchorDay)}`
  }
  const defaultCap = options.defaultMaxOutputTokens ?? 4096
  if (!isCount(defaultCap)) return `defaultMaxOutputTokens: expected a non-negative integer, got ${String(defaultCap)}`
  if (options.maxOutputTokens !== undefined) {
    for (const [model, cap] of Object.entries(options.maxOutputTokens)) {
      if (!isCount(cap)) return `maxOutputTokens[${JSON.stringify(model)}]: expected a non-negative integer, got ${String(cap)}`
    }
  }
  const holdTtlMillis = options.holdTtl === undefined ? 600_000 : Duration.toMillis(Duration.decode(options.holdTtl))
  if (!(holdTtlMillis >= 1 && Number.isFinite(holdTtlMillis))) {
    return `holdTtl: expected a finite duration of at least 1 millisecond`
  }
  if (options.rateLimits !== undefined) {
    for (const [level, rate] of Object.entries(options.rateLimits)) {
      for (const [name, value] of Object.entries(rate ?? {})) {
        if (value !== undefined && !(isCount(value) && value > 0)) {
          return `rateLimits.${level}.${name}: expected a positive integer, got ${String(value)}`
        }
      }
    }
  }
  return { anchorDay, defaultCap, holdTtlMillis: Math.round(holdTtlMillis) }
}

const cycleOf = (options: Options, anchorDay: number, startedAt: number): Effect.Effect<string> =>
  options.cycleStartDate !== undefined
    ? Effect.succeed(options.cycleStartDate)
    : BillingCycle.containing(DateTime.unsafeMake(startedAt), { anchorDay })

const noTicket: Ticket = { close: () => Effect.void }

/** The live clock, whose sleeps do not keep the process alive (see {@link inBackground}). */
const backgroundClock: Clock.Clock = {
  [Clock.ClockTypeId]: Clock.ClockTypeId,
  unsafeCurrentTimeMillis: () => liveClock.unsafeCurrentTimeMillis(),
  currentTimeMillis: liveClock.currentTimeMillis,
  unsafeCurrentTimeNanos: () => liveClock.unsafeCurrentTimeNanos(),
  currentTimeNanos: liveClock.currentTimeNanos,
  sleep: (duration) =>
    Effect.async<void>((resume) => {
      const handle = setTimeout(() => resume(Effect.void), Duration.toMillis(duration))
      // A Node timer has `unref`; elsewhere a timer does not hold the program open.
      if (typeof handle === "object" && "unref" in handle) handle.unref()
      return Effect.sync(() => clearTimeout(handle))
    })
}

/**
 * Runs `self` (work in the background, best effort) with waits that do not
 * keep the process alive: an app whose main program ended exits, and what
 * was left undone is the holds', which expire by themselves. Under another
 * clock than the live one (a `TestClock`), it runs as it is.
 */
const inBackground = <A, E, R>(self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.clockWith((clock) => clock === liveClock ? Effect.withClock(self, backgroundClock) : self)

/** When a release the store did not take is tried again: from 100 ms, backing off to every 5 s, while the holds live. */
const releaseRetries = (holdTtlMillis: number) =>
  Schedule.exponential("100 millis").pipe(
    Schedule.union(Schedule.spaced("5 seconds")),
    Schedule.upTo(Duration.millis(holdTtlMillis))
  )

/** The holds of an admitted call, and how long they live. */
interface HeldCall {
  readonly input: ReleaseInput
  readonly userId: string
  readonly ttlMillis: number
}

const warnOf = (message: string, held: HeldCall, error: TokenStoreError) =>
  Effect.annotateLogs(Effect.logWarning(message), {
    callId: held.input.callId,
    userId: held.userId,
    cycle: held.input.cycle,
    reason: error.reason,
    error: error.message
  })

const notReleased = "budget hold not released; it expires by itself"

/** Releases a call's holds; when the store fails, a warning says that they expire by themselves. */
const releaseHolds = (store: TokenStore["Type"], held: HeldCall): Effect.Effect<void> =>
  Effect.catchAll(store.release(held.input), (error) => warnOf(notReleased, held, error))

/**
 * Releases the holds of a call that failed or was interrupted. When the store
 * does not answer, the call goes on, and the release is tried again in the
 * background until the store answers (the room is back when the store is, not
 * when the holds expire), for as long as the holds would live.
 */
const releaseFailed = (store: TokenStore["Type"], held: HeldCall): Effect.Effect<void> =>
  Effect.catchAll(store.release(held.input), (error) =>
    error.transient
      ? Effect.zipRight(
        warnOf("budget hold not released yet; tried again until the store answers, else it expires", held, error),
        Effect.forkDaemon(inBackground(
          store.release(held.input).pipe(
            Effect.retry({ schedule: releaseRetries(held.ttlMillis), while: (error) => error.transient }),
            Effect.catchAll((error) => warnOf(notReleased, held, error))
          )
        ))
      )
      : warnOf(notReleased, held, error))

/**
 * Releases, in the background, the holds of a reservation that was not
 * answered in time: it may have been made, or be made later (a client sends
 * again what was in flight when its connection dropped). The release is tried
 * until the store takes it (it then comes after the reservation, on the same
 * connection), while it cannot even be sent; one sent but not answered in time
 * is on its way too, and is left to run.
 */
const releaseUnanswered = (store: TokenStore["Type"], held: HeldCall): Effect.Effect<void> =>
  Effect.asVoid(Effect.forkDaemon(inBackground(
    store.release(held.input).pipe(
      Effect.retry({ schedule: releaseRetries(held.ttlMillis), while: (error) => error.reason === "Unavailable" }),
      Effect.catchAll((error) => error.reason === "Timeout" ? Effect.void : warnOf(notReleased, held, error))
    )
  )))

type Outcome = "admitted" | "over_limit" | "rate_limited" | "store_error"

// One label array per (level, outcome), made once: metric hooks are cached
// per label array identity, so an update is a map lookup (tagging a metric
// per update would build and format a new metric key each time).
const admissionLabels: Readonly<Record<Level | "none", Readonly<Record<Outcome, ReadonlyArray<MetricLabel.MetricLabel>>>>> =
  (() => {
    const outcomes: ReadonlyArray<Outcome> = ["admitted", "over_limit", "rate_limited", "store_error"]
    const table = {} as Record<Level | "none", Record<Outcome, ReadonlyArray<MetricLabel.MetricLabel>>>
    for (const level of ["user", "team", "org", "none"] as const) {
      table[level] = {} as Record<Outcome, ReadonlyArray<MetricLabel.MetricLabel>>
      for (const outcome of outcomes) {
        table[level][outcome] = [MetricLabel.make("level", level), MetricLabel.make("outcome", outcome)]
      }
    }
    return table
  })()

const counted = (level: Level | "none", outcome: Outcome) =>
  Effect.sync(() => CallbackMetrics.budgetAdmissionsTotal.unsafeUpdate(1, admissionLabels[level][outcome]))

/** The typed error of a refused reservation. */
const refusal = (
  verdict: Exclude<ReserveOutcome, { readonly _tag: "Reserved" }>,
  userId: string,
  cycle: string
): UsageLimitExceeded | RateLimitExceeded =>
  verdict._tag === "OverLimit"
    ? new UsageLimitExceeded({
      userId,
      level: verdict.subject.level,
      id: verdict.subject.id,
      cycle,
      limit: verdict.limit,
      currentUsage: verdict.used,
      heldTokens: verdict.held,
      requestedTokens: verdict.requested
    })
    : new RateLimitExceeded({
      userId,
      level: verdict.subject.level,
      id: verdict.subject.id,
      kind: verdict.kind,
      limit: verdict.limit,
      current: verdict.current,
      retryAfterMillis: verdict.retryAfterMillis
    })

/** The gate of one guarded region. */
const makeGate = (
  store: TokenStore["Type"],
  counter: PromptCounter,
  options: Options,
  settings: Settings,
  admitted: { count: number }
): Gate => ({
  admit: (start: StartEvent) =>
    Effect.suspend(() => {
      admitted.count++
      const call = start.call
      const userId = call.userId
      if (userId === undefined) return Effect.succeed(noTicket)
      const subjects = subjectsOf({ userId, teamId: call.teamId, orgId: call.orgId })
      return Effect.gen(function*() {
        const cycle = yield* cycleOf(options, settings.anchorDay, call.startedAt)
        const prompt = yield* counter(call.model, start.messages)
        const output = maxOutputOf(start.params) ?? options.maxOutputTokens?.[call.model] ?? settings.defaultCap
        const tokens = prompt + output
        const held: HeldCall = { input: { callId: call.callId, cycle, subjects }, userId, ttlMillis: settings.holdTtlMillis }
        const release = releaseHolds(store, held)
        const reserve = store.reserve({
          callId: call.callId,
          cycle,
          subjects,
          tokens,
          holdTtlMillis: settings.holdTtlMillis,
          rateLimits: options.rateLimits
        })
        const bounded = options.timeout === undefined ? reserve : reserve.pipe(
          Effect.timeoutFail({
            duration: options.timeout,
            onTimeout: () =>
              new TokenStoreError({ reason: "Timeout", message: `Budget: the admission took longer than the guard's timeout` })
          })
        )
        // Interrupted (or timed out) while the reservation was in flight: it may
        // have been made, so it is released (a release of nothing is harmless).
        const outcome = yield* Effect.either(Effect.onInterrupt(bounded, () => release))
        if (outcome._tag === "Left") {
          yield* counted("none", "store_error")
          if (outcome.left.reason === "Timeout") yield* releaseUnanswered(store, held)
          if (options.onStoreError === "fail") return yield* Effect.fail(outcome.left)
          yield* Effect.logWarning("budget check failed; the call is allowed").pipe(
            Effect.annotateLogs({ callId: call.callId, userId, reason: outcome.left.reason, error: outcome.left.message })
          )
          return noTicket
        }
        const verdict = outcome.right
        if (verdict._tag !== "Reserved") {
          yield* counted(verdict.subject.level, verdict._tag === "OverLimit" ? "over_limit" : "rate_limited")
          return yield* Effect.fail(refusal(verdict, userId, cycle))
        }
        yield* counted("none", "admitted")
        // A success is settled by its token-usage record (same call id), which
        // ends the hold in the same atomic step that adds the usage.
        return { close: (exit) => Exit.isSuccess(exit) ? Effect.void : releaseFailed(store, held) } satisfies Ticket
      })
    })
})

const noCallInside = Effect.logWarning(
  "Budget.guard: no instrumented call ran inside it, so nothing was checked " +
    "(put it around Callbacks.instrument or an instrumented LanguageModel call)"
)

/** The gate of one guarded region, over the store and prompt counter of the fiber that enters it. */
const gateOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>, options: Options, settings: Settings) => {
  const store = Context.get(fiber.currentContext as Context.Context<TokenStore>, TokenStore)
  const counter = Context.get(fiber.currentContext, CurrentPromptCounter)
  const admitted = { count: 0 }
  const gate = makeGate(store, counter, options, settings, admitted)
  const checked = Effect.suspend(() => admitted.count === 0 ? noCallInside : Effect.void)
  return { gate, checked }
}

const guardImpl = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  options: Options = {}
): Effect.Effect<A, E | UsageLimitExceeded | RateLimitExceeded | TokenStoreError, R | TokenStore> => {
  const settings = validate(options)
  if (typeof settings === "string") return invalid(settings)
  return Effect.withFiberRuntime((fiber) => {
    const { checked, gate } = gateOf(fiber, options, settings)
    return Effect.ensuring(Effect.locally(self, currentGate, gate), checked)
  })
}

const guardStreamImpl = <A, E, R>(
  self: Stream.Stream<A, E, R>,
  options: Options = {}
): Stream.Stream<A, E | UsageLimitExceeded | RateLimitExceeded | TokenStoreError, R | TokenStore> => {
  const settings = validate(options)
  if (typeof settings === "string") return Stream.fromEffect(invalid(settings))
  return Stream.unwrapScoped(Effect.withFiberRuntime((fiber) => {
    const { checked, gate } = gateOf(fiber, options, settings)
    // Its pulls run under the gate, nothing else the consuming fiber does; checked when the stream ends.
    return Effect.as(Effect.addFinalizer(() => checked), locallyWith(self, currentGate, () => gate))
  }))
}

/**
 * Guards every instrumented call inside `self` with the budget (see the
 * module docs): each call is admitted, before its `start`, only if its worst
 * case fits every limit of its user, team and organisation, else it fails
 * with `UsageLimitExceeded` or `RateLimitExceeded` and the model is not
 * called. The error channel gains `TokenStoreError` only with
 * `onStoreError: "fail"`. A bad option is a defect naming it.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Budget, Callbacks } from "effect-llm-callbacks"
 *
 * declare const callModel: Effect.Effect<{ content: string }>
 *
 * const answer = callModel.pipe(
 *   Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", userId: "alice", params: { maxTokens: 256 } }),
 *   Budget.guard({ rateLimits: { user: { requestsPerMinute: 60 } } })
 * )
 * ```
 *
 * @since 0.1.0
 * @category combinators
 */
export const guard: {
  (
    options: FailOptions
  ): <A, E, R>(
    self: Effect.Effect<A, E, R>
  ) => Effect.Effect<A, E | UsageLimitExceeded | RateLimitExceeded | TokenStoreError, R | TokenStore>
  (
    options?: Options
  ): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E | UsageLimitExceeded | RateLimitExceeded, R | TokenStore>
  <A, E, R>(
    self: Effect.Effect<A, E, R>,
    options: FailOptions
  ): Effect.Effect<A, E | UsageLimitExceeded | RateLimitExceeded | TokenStoreError, R | TokenStore>
  <A, E, R>(
    self: Effect.Effect<A, E, R>,
    options?: Options
  ): Effect.Effect<A, E | UsageLimitExceeded | RateLimitExceeded, R | TokenStore>
} = dual(
  // The options are optional: tell `guard(self)` from `guard(options)` by the first argument.
  (args) => Effect.isEffect(args[0]),
  guardImpl
)

/**
 * {@link guard} for a stream: every call begun while the stream runs (an
 * `@effect/ai` `streamText` through `layers/AiLanguageModel`, or
 * `Callbacks.begin`) is admitted before its `start`, or the stream fails with
 * `UsageLimitExceeded` / `RateLimitExceeded` before the model is called. The
 * call's hold lasts until the stream's call finishes: settled by its token
 * record (a stream cut off early records what it consumed), released when it
 * failed before any output. Use it for a stream handed to someone else to run
 * (an HTTP response); a stream run inside the effect given to `guard`
 * (`Stream.runCollect`, `Stream.runForEach`) is guarded by `guard` already.
 *
 * @example
 * ```ts
 * import { LanguageModel } from "@effect/ai"
 * import { Budget } from "effect-llm-callbacks"
 *
 * const reply = LanguageModel.streamText({ prompt: "Hello" }).pipe(Budget.guardStream())
 * ```
 *
 * @since 0.4.0
 * @category combinators
 */
export const guardStream: {
  (
    options: FailOptions
  ): <A, E, R>(
    self: Stream.Stream<A, E, R>
  ) => Stream.Stream<A, E | UsageLimitExceeded | RateLimitExceeded | TokenStoreError, R | TokenStore>
  (
    options?: Options
  ): <A, E, R>(self: Stream.Stream<A, E, R>) => Stream.Stream<A, E | UsageLimitExceeded | RateLimitExceeded, R | TokenStore>
  <A, E, R>(
    self: Stream.Stream<A, E, R>,
    options: FailOptions
  ): Stream.Stream<A, E | UsageLimitExceeded | RateLimitExceeded | TokenStoreError, R | TokenStore>
  <A, E, R>(
    self: Stream.Stream<A, E, R>,
    options?: Options
  ): Stream.Stream<A, E | UsageLimitExceeded | RateLimitExceeded, R | TokenStore>
} = dual(
  (args) => isStream(args[0]),
  guardStreamImpl
)

/**
 * Checks a user's recorded usage now, without reserving anything: fails with
 * `UsageLimitExceeded` when the limit is consumed (`used >= limit`), or with
 * the store's error. Succeeds when there is no user or no limit. The user is
 * `options.userId`, else the call context's. For admission use {@link guard}.
 *
 * @since 0.1.0
 * @category constructors
 */
export const check = (
  options: Options = {}
): Effect.Effect<void, UsageLimitExceeded | TokenStoreError, TokenStore> =>
  Effect.withFiberRuntime((fiber) => {
    const userId = options.userId ?? fiber.getFiberRef(currentCallContext).userId
    if (userId === undefined) return Effect.void
    const settings = validate(options)
    if (typeof settings === "string") return invalid(settings)
    return Effect.gen(function*() {
      const cycle = options.cycleStartDate ?? (yield* BillingCycle.current({ anchorDay: settings.anchorDay }))
      const store = yield* TokenStore
      const result = yield* store.checkLimit(userId, cycle)
      if (result.exceeded && Option.isSome(result.limit)) {
        return yield* Effect.fail(
          new UsageLimitExceeded({
            userId,
            level: "user",
            id: userId,
            cycle,
            limit: result.limit.value,
            currentUsage: result.currentUsage,
            heldTokens: result.heldTokens,
            requestedTokens: 0
          })
        )
      }
    }).pipe(Effect.withSpan("Budget.check"))
  })
