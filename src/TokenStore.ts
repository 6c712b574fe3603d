/**
 * Token accounting storage: usage per user and billing cycle, limits, and
 * idempotent recording per call.
 *
 * Every backend (the in-memory one here, Redis in `layers/RedisTokenStore.ts`)
 * implements `Service` and is wrapped with `withValidation`, so inputs are
 * checked by the same code whatever the backend:
 *
 * - token counts and costs are non-negative safe integers (`totalTokens` is
 *   stored as reported: providers may count tokens beyond prompt and completion);
 * - `userId` and `callId` are non-empty strings;
 * - `cycle` is a billing cycle start date `YYYY-MM-DD` (see `BillingCycle`);
 * - a limit is a non-negative safe integer.
 *
 * Recording is idempotent per user and call id: recording the same call again
 * (a retry after a lost reply) counts once and answers `"duplicate"`. The
 * prompt, completion and total counters of one record move together in one
 * atomic update.
 *
 * Limits: a user is over the limit when `totalTokens >= limit`. A limit is the
 * number of tokens a user may consume; once it is consumed, further calls should
 * be refused, so reaching the limit exactly counts as exceeded (and a limit of 0
 * is exceeded at once).
 *
 * `reset` clears the usage counters of a user and cycle and keeps the limit.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as BillingCycle from "./BillingCycle.js"
import * as HandlerError from "./HandlerError.js"

/**
 * Token counts of one call, or accumulated over a cycle.
 *
 * @since 0.1.0
 * @category models
 */
export interface TokenCounts {
  readonly promptTokens: number
  readonly completionTokens: number
  readonly totalTokens: number
  /** Input tokens read from the provider's prompt cache; part of `promptTokens`. */
  readonly cachedTokens?: number | undefined
  /** Input tokens written to the provider's prompt cache; part of `promptTokens`. */
  readonly cacheWriteTokens?: number | undefined
  /** Reasoning tokens; part of `completionTokens`. */
  readonly reasoningTokens?: number | undefined
}

/**
 * The counters a record adds to, in storage order: the three of the Python
 * design, the cost, the kinds of tokens kept apart, and the tokens recorded
 * as estimated. (The Redis hash fields are their snake_case names.)
 *
 * @since 0.3.0
 * @category models
 */
export const counters = [
  "promptTokens",
  "completionTokens",
  "totalTokens",
  "costMicros",
  "cachedTokens",
  "cacheWriteTokens",
  "reasoningTokens",
  "estimatedTokens"
] as const

/**
 * The snake_case name of each of the {@link counters}, in the same order: the
 * Redis hash fields and the SQL columns.
 *
 * @since 0.3.0
 * @category models
 */
export const counterFields = [
  "prompt_tokens",
  "completion_tokens",
  "total_tokens",
  "cost_micros",
  "cached_tokens",
  "cache_write_tokens",
  "reasoning_tokens",
  "estimated_tokens"
] as const

/**
 * One of the {@link counters}.
 *
 * @since 0.3.0
 * @category models
 */
export type Counter = (typeof counters)[number]

/**
 * What a record adds to each counter, in the order of {@link counters}.
 *
 * @since 0.3.0
 * @category getters
 */
export const incrementsOf = (input: RecordInput): ReadonlyArray<number> => [
  input.usage.promptTokens,
  input.usage.completionTokens,
  input.usage.totalTokens,
  input.costMicros ?? 0,
  input.usage.cachedTokens ?? 0,
  input.usage.cacheWriteTokens ?? 0,
  input.usage.reasoningTokens ?? 0,
  input.estimated === true ? input.usage.totalTokens : 0
]

/**
 * The levels a call is accounted and limited at: its user and, when the call
 * context names them, its team and organisation.
 *
 * @since 0.2.0
 * @category models
 */
export type Level = "user" | "team" | "org"

/**
 * One account at one level: a user, a team or an organisation.
 *
 * @since 0.2.0
 * @category models
 */
export interface Subject {
  readonly level: Level
  readonly id: string
}

/**
 * Whose usage a method reads or writes: a user id, or a subject at any level.
 *
 * @since 0.2.0
 * @category models
 */
export type Owner = string | Subject

/**
 * The subject of an owner (a string is a user id).
 *
 * @since 0.2.0
 * @category constructors
 */
export const subjectOf = (owner: Owner): Subject => typeof owner === "string" ? { level: "user", id: owner } : owner

/**
 * The subjects a call is accounted at: its user, then its team and its
 * organisation when given.
 *
 * @since 0.2.0
 * @category constructors
 */
export const subjectsOf = (
  input: { readonly userId: string; readonly teamId?: string | undefined; readonly orgId?: string | undefined }
): ReadonlyArray<Subject> => {
  const subjects: Array<Subject> = [{ level: "user", id: input.userId }]
  if (input.teamId !== undefined) subjects.push({ level: "team", id: input.teamId })
  if (input.orgId !== undefined) subjects.push({ level: "org", id: input.orgId })
  return subjects
}

/**
 * Usage of a subject in a cycle. Counters are 0 and the limit is none when
 * nothing was recorded or set.
 *
 * @since 0.1.0
 * @category models
 */
export interface UsageStats extends TokenCounts {
  /** Accumulated cost in millionths of the currency unit. */
  readonly costMicros: number
  readonly cachedTokens: number
  readonly cacheWriteTokens: number
  readonly reasoningTokens: number
  /** The total tokens of the calls recorded with estimated usage (counted with a tokenizer). */
  readonly estimatedTokens: number
  readonly limit: Option.Option<number>
  /** Tokens held by admitted calls that have not been recorded or released yet (see `reserve`). */
  readonly heldTokens: number
}

/**
 * The answer of `checkLimit`. Without a limit, `exceeded` is false and
 * `remaining` is none; with one, `exceeded` is `currentUsage >= limit` and
 * `remaining` is `max(0, limit - currentUsage)`.
 *
 * @since 0.1.0
 * @category models
 */
export interface LimitCheck {
  readonly exceeded: boolean
  /** Total tokens used in the cycle. */
  readonly currentUsage: number
  readonly limit: Option.Option<number>
  readonly remaining: Option.Option<number>
  /** Tokens held by admitted calls in flight (not part of `currentUsage`). */
  readonly heldTokens: number
}

/**
 * The usage of one call to record.
 *
 * @since 0.1.0
 * @category models
 */
export interface RecordInput {
  /** Identifies the call: recording the same call id for the same user twice counts once. */
  readonly callId: string
  readonly userId: string
  /** Billing cycle start date `YYYY-MM-DD`. */
  readonly cycle: string
  readonly usage: TokenCounts
  /** Cost of the call in millionths of the currency unit. */
  readonly costMicros?: number | undefined
  /** The usage was counted with a tokenizer, not reported: its total is added to `estimatedTokens` too. */
  readonly estimated?: boolean | undefined
  /** The call's team: its usage is added there too. */
  readonly teamId?: string | undefined
  /** The call's organisation: its usage is added there too. */
  readonly orgId?: string | undefined
  /** The provider that served the call (kept by stores with a ledger). */
  readonly provider?: string | undefined
  /** The model that answered (kept by stores with a ledger). */
  readonly model?: string | undefined
}

/**
 * Rate limits of one subject, over fixed one-minute windows (aligned to the
 * clock's minutes). Tokens count each call's reservation when it is admitted
 * (its worst case, as OpenAI's rate limiter counts `max_tokens`).
 *
 * @since 0.2.0
 * @category models
 */
export interface RateLimit {
  readonly requestsPerMinute?: number | undefined
  readonly tokensPerMinute?: number | undefined
}

/**
 * A reservation for one call: `tokens` are held at every subject (the user
 * first, then team and organisation) in one atomic step that checks, at
 * each subject, `used + held + tokens <= limit` and its rate limits.
 *
 * @since 0.2.0
 * @category models
 */
export interface ReserveInput {
  readonly callId: string
  readonly cycle: string
  readonly subjects: ReadonlyArray<Subject>
  /** The call's worst case: prompt tokens plus the most it may generate. */
  readonly tokens: number
  /** How long the hold lives if neither `record` nor `release` ends it (a process that died). */
  readonly holdTtlMillis: number
  /** Rate limits per level, applied to each subject of that level. */
  readonly rateLimits?: Partial<Record<Level, RateLimit>> | undefined
}

/**
 * The answer of `reserve`. `Reserved`: the tokens are held (reserving the
 * same call again holds nothing more). `OverLimit`: the tightest subject over
 * its token limit, with its figures. `RateLimited`: a subject over a rate
 * limit, and when its window ends.
 *
 * @since 0.2.0
 * @category models
 */
export type ReserveOutcome =
  | { readonly _tag: "Reserved" }
  | {
    readonly _tag: "OverLimit"
    readonly subject: Subject
    readonly limit: number
    readonly used: number
    readonly held: number
    readonly requested: number
  }
  | {
    readonly _tag: "RateLimited"
    readonly subject: Subject
    readonly kind: "requests" | "tokens"
    readonly limit: number
    readonly current: number
    readonly retryAfterMillis: number
  }

/**
 * Ends the holds of a call that will not be recorded (it failed or was
 * interrupted).
 *
 * @since 0.2.0
 * @category models
 */
export interface ReleaseInput {
  readonly callId: string
  readonly cycle: string
  readonly subjects: ReadonlyArray<Subject>
}

/**
 * `"recorded"` when the usage was added, `"duplicate"` when this call had
 * already been recorded (within the idempotency window) and nothing was added,
 * `"queued"` when the store could not take it now and an outbox holds it
 * until it is written (see `Outbox`).
 *
 * @since 0.1.0
 * @category models
 */
export type RecordOutcome = "recorded" | "duplicate" | "queued"

/**
 * A failure of the token store: the backend is unreachable or refuses for a
 * reason an operator fixes, such as a password, rights, memory or disk
 * (`Unavailable`), did not answer in time (`Timeout`), the input is invalid
 * (`InvalidInput`), or anything else (`Unknown`).
 *
 * @since 0.1.0
 * @category errors
 */
export class TokenStoreError extends Schema.TaggedError<TokenStoreError>("effect-llm-callbacks/TokenStoreError")(
  "TokenStoreError",
  {
    reason: Schema.Literal("Unavailable", "Timeout", "InvalidInput", "Unknown"),
    message: Schema.String,
    cause: Schema.optional(Schema.Defect)
  }
) {
  /**
   * Invalid input fails the same way every time: handlers do not retry it.
   *
   * @since 0.2.0
   */
  get [HandlerError.NonRetryable](): boolean {
    return this.reason === "InvalidInput"
  }

  /**
   * The store did not answer, not in time, or refused for a reason an
   * operator fixes (`Unavailable`, `Timeout`): the same request may succeed
   * later (an outbox keeps such a record, a budget tries such a release again).
   *
   * @since 0.4.0
   */
  get transient(): boolean {
    return this.reason === "Unavailable" || this.reason === "Timeout"
  }
}

/**
 * The token store service.
 *
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /**
   * Adds the usage of one call, once per user and call id, at its user and
   * (when given) its team and organisation, and ends the call's holds there.
   */
  readonly record: (input: RecordInput) => Effect.Effect<RecordOutcome, TokenStoreError>
  /**
   * Adds the usage of several calls, each once, in one round trip where the
   * backend allows (outcomes in input order). Fails when any record fails;
   * those recorded stay recorded, so retrying the whole batch counts each once.
   */
  readonly recordMany: (
    inputs: ReadonlyArray<RecordInput>
  ) => Effect.Effect<ReadonlyArray<RecordOutcome>, TokenStoreError>
  readonly stats: (owner: Owner, cycle: string) => Effect.Effect<UsageStats, TokenStoreError>
  /** Clears the usage counters of a subject and cycle; the limit stays. */
  readonly reset: (owner: Owner, cycle: string) => Effect.Effect<void, TokenStoreError>
  readonly setLimit: (owner: Owner, cycle: string, limit: number) => Effect.Effect<void, TokenStoreError>
  readonly checkLimit: (owner: Owner, cycle: string) => Effect.Effect<LimitCheck, TokenStoreError>
  /** Users with usage or a limit in a cycle, sorted. */
  readonly users: (cycle: string) => Effect.Effect<ReadonlyArray<string>, TokenStoreError>
  /** Holds a call's worst case at each of its subjects, if every limit allows it (see `ReserveInput`). */
  readonly reserve: (input: ReserveInput) => Effect.Effect<ReserveOutcome, TokenStoreError>
  /** Ends a call's holds without recording usage; idempotent. */
  readonly release: (input: ReleaseInput) => Effect.Effect<void, TokenStoreError>
  /**
   * How long a recorded call id is remembered (the dedupe window): a record
   * retried within it counts once. An outbox replaying records must not
   * keep them longer (see `Outbox`).
   */
  readonly idempotencyWindowMillis: number
}

/**
 * The token store service tag.
 *
 * @since 0.1.0
 * @category tags
 */
export class TokenStore extends Context.Tag("effect-llm-callbacks/TokenStore")<TokenStore, Service>() {}

const showValue = (u: unknown): string => {
  const shown = typeof u === "string"
    ? JSON.stringify(u)
    : typeof u === "object" && u !== null
    ? safeJson(u)
    : String(u)
  return shown.length > 80 ? `${shown.slice(0, 77)}...` : shown
}

const safeJson = (u: object): string => {
  try {
    return JSON.stringify(u) ?? String(u)
  } catch {
    return String(u)
  }
}

const expected = (what: string) => (issue: ParseResult.ParseIssue) => ({
  message: `expected ${what}, got ${showValue(issue.actual)}`,
  override: true
})

const nonNegativeSafeInteger = expected("a non-negative safe integer")

const Count = Schema.Number.annotations({ message: nonNegativeSafeInteger }).pipe(
  Schema.filter((n) => Number.isSafeInteger(n) && n >= 0, { message: nonNegativeSafeInteger })
)

const positiveSafeInteger = expected("a positive safe integer")

const PositiveCount = Schema.Number.annotations({ message: positiveSafeInteger }).pipe(
  Schema.filter((n) => Number.isSafeInteger(n) && n > 0, { message: positiveSafeInteger })
)

const nonEmptyString = expected("a non-empty string of well-formed unicode")

// A lone surrogate has no UTF-8 encoding: a backend that stores ids as UTF-8
// (Redis) would map distinct ids to the same bytes, so such ids are refused.
const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

const Id = Schema.String.annotations({ message: nonEmptyString }).pipe(
  Schema.filter((s) => s.length > 0 && !loneSurrogate.test(s), { message: nonEmptyString })
)

const label = expected("a string of well-formed unicode")

const Label = Schema.String.annotations({ message: label }).pipe(
  Schema.filter((s) => !loneSurrogate.test(s), { message: label })
)

const cycleDate = expected("a billing cycle start date YYYY-MM-DD (a real calendar date)")

const Cycle = Schema.String.annotations({ message: cycleDate }).pipe(
  Schema.filter(BillingCycle.isCycleDate, { message: cycleDate })
)

const LevelSchema = Schema.Literal("user", "team", "org").annotations({
  message: expected(`"user", "team" or "org"`)
})

const SubjectSchema = Schema.Struct({ level: LevelSchema, id: Id })

const sumsFit = (issue: ParseResult.ParseIssue) =>
  `expected counts whose sum (promptTokens + completionTokens) is a safe integer, got ${showValue(issue.actual)}`

const UsageSchema = Schema.Struct({
  promptTokens: Count,
  completionTokens: Count,
  totalTokens: Count,
  cachedTokens: Schema.optional(Schema.UndefinedOr(Count)),
  cacheWriteTokens: Schema.optional(Schema.UndefinedOr(Count)),
  reasoningTokens: Schema.optional(Schema.UndefinedOr(Count))
}).annotations({
  message: (issue) => `expected { promptTokens, completionTokens, totalTokens }, got ${showValue(issue.actual)}`
}).pipe(
  Schema.filter((u) => Number.isSafeInteger(u.promptTokens + u.completionTokens), { message: sumsFit })
)

const RecordInputSchema = Schema.Struct({
  callId: Id,
  userId: Id,
  cycle: Cycle,
  usage: UsageSchema,
  costMicros: Schema.optional(Schema.UndefinedOr(Count)),
  estimated: Schema.optional(Schema.UndefinedOr(Schema.Boolean)),
  teamId: Schema.optional(Schema.UndefinedOr(Id)),
  orgId: Schema.optional(Schema.UndefinedOr(Id)),
  provider: Schema.optional(Schema.UndefinedOr(Label)),
  model: Schema.optional(Schema.UndefinedOr(Label))
})

const RateLimitSchema = Schema.Struct({
  requestsPerMinute: Schema.optional(Schema.UndefinedOr(PositiveCount)),
  tokensPerMinute: Schema.optional(Schema.UndefinedOr(PositiveCount))
})

const nonEmptySubjects = (issue: ParseResult.ParseIssue) =>
  `expected a non-empty array of { level, id } with one subject per level, got ${showValue(issue.actual)}`

const ReserveInputSchema = Schema.Struct({
  callId: Id,
  cycle: Cycle,
  subjects: Schema.Array(SubjectSchema).pipe(
    Schema.filter((subjects) =>
      subjects.length > 0 && new Set(subjects.map((s) => s.level)).size === subjects.length, {
      message: nonEmptySubjects
    })
  ),
  tokens: Count,
  holdTtlMillis: PositiveCount,
  rateLimits: Schema.optional(Schema.UndefinedOr(Schema.Struct({
    user: Schema.optional(RateLimitSchema),
    team: Schema.optional(RateLimitSchema),
    org: Schema.optional(RateLimitSchema)
  })))
})

const ReleaseInputSchema = Schema.Struct({ callId: Id, cycle: Cycle, subjects: Schema.Array(SubjectSchema) })

const KeySchema = Schema.Struct({ owner: SubjectSchema, cycle: Cycle })

const UserKeySchema = Schema.Struct({ userId: Id, cycle: Cycle })

const LimitSchema = Schema.Struct({ owner: SubjectSchema, cycle: Cycle, limit: Count })

const UserLimitSchema = Schema.Struct({ userId: Id, cycle: Cycle, limit: Count })

const CycleSchema = Schema.Struct({ cycle: Cycle })

const validator = <A, I>(schema: Schema.Schema<A, I>) => {
  const decode = Schema.decodeUnknownEither(schema, { errors: "first", onExcessProperty: "ignore" })
  return (input: unknown): Effect.Effect<A, TokenStoreError> =>
    Either.match(decode(input), {
      onLeft: (error) => {
        const issue = ParseResult.ArrayFormatter.formatErrorSync(error)[0]
        const field = issue === undefined || issue.path.length === 0 ? "input" : issue.path.join(".")
        return Effect.fail(
          new TokenStoreError({
            reason: "InvalidInput",
            message: `Invalid ${field}: ${issue?.message ?? ParseResult.TreeFormatter.formatErrorSync(error)}`
          })
        )
      },
      onRight: Effect.succeed
    })
}

const isCount = (u: unknown): boolean => typeof u === "number" && Number.isSafeInteger(u) && u >= 0

const isOptionalCount = (u: unknown): boolean => u === undefined || isCount(u)

const isLabel = (u: unknown): boolean => typeof u === "string" && !loneSurrogate.test(u)

const isId = (u: unknown): boolean => typeof u === "string" && u.length > 0 && !loneSurrogate.test(u)

/** The same rules as `RecordInputSchema`, as a plain predicate for the hot path. */
const isValidRecordInput = (input: RecordInput): boolean =>
  typeof input === "object" && input !== null && isId(input.callId) && isId(input.userId) &&
  BillingCycle.isCycleDate(input.cycle) && typeof input.usage === "object" && input.usage !== null &&
  isCount(input.usage.promptTokens) && isCount(input.usage.completionTokens) && isCount(input.usage.totalTokens) &&
  Number.isSafeInteger(input.usage.promptTokens + input.usage.completionTokens) &&
  isOptionalCount(input.usage.cachedTokens) && isOptionalCount(input.usage.cacheWriteTokens) &&
  isOptionalCount(input.usage.reasoningTokens) &&
  (input.estimated === undefined || typeof input.estimated === "boolean") &&
  (input.costMicros === undefined || isCount(input.costMicros)) &&
  (input.teamId === undefined || isId(input.teamId)) && (input.orgId === undefined || isId(input.orgId)) &&
  (input.provider === undefined || isLabel(input.provider)) && (input.model === undefined || isLabel(input.model))

const isLevel = (u: unknown): boolean => u === "user" || u === "team" || u === "org"

const isSubjects = (u: unknown): boolean => {
  if (!Array.isArray(u)) return false
  let levels = 0
  for (const subject of u as ReadonlyArray<Subject>) {
    if (typeof subject !== "object" || subject === null || !isLevel(subject.level) || !isId(subject.id)) return false
    const bit = subject.level === "user" ? 1 : subject.level === "team" ? 2 : 4
    if ((levels & bit) !== 0) return false
    levels |= bit
  }
  return true
}

const isPositiveCount = (u: unknown): boolean => isCount(u) && (u as number) > 0

/** The same rules as `ReserveInputSchema`, as a plain predicate for the hot path. */
const isValidReserveInput = (input: ReserveInput): boolean => {
  if (
    typeof input !== "object" || input === null || !isId(input.callId) || !BillingCycle.isCycleDate(input.cycle) ||
    !isSubjects(input.subjects) || input.subjects.length === 0 || !isCount(input.tokens) ||
    !isPositiveCount(input.holdTtlMillis)
  ) return false
  if (input.rateLimits === undefined) return true
  if (typeof input.rateLimits !== "object" || input.rateLimits === null) return false
  for (const rate of Object.values(input.rateLimits)) {
    if (rate === undefined) continue
    if (typeof rate !== "object" || rate === null) return false
    if (rate.requestsPerMinute !== undefined && !isPositiveCount(rate.requestsPerMinute)) return false
    if (rate.tokensPerMinute !== undefined && !isPositiveCount(rate.tokensPerMinute)) return false
  }
  return true
}

const isValidReleaseInput = (input: ReleaseInput): boolean =>
  typeof input === "object" && input !== null && isId(input.callId) && BillingCycle.isCycleDate(input.cycle) &&
  isSubjects(input.subjects)

const decodeRecordInput = validator(RecordInputSchema)
const decodeReserveInput = validator(ReserveInputSchema)
const decodeReleaseInput = validator(ReleaseInputSchema)
const decodeSubjectKey = validator(KeySchema)
const decodeUserKey = validator(UserKeySchema)
const decodeSubjectLimit = validator(LimitSchema)
const decodeUserLimit = validator(UserLimitSchema)
// A user id is named `userId` in errors, a subject `owner`.
const decodeKey = ({ cycle, owner }: { readonly owner: Owner; readonly cycle: string }): Effect.Effect<
  unknown,
  TokenStoreError
> => typeof owner === "string" ? decodeUserKey({ userId: owner, cycle }) : decodeSubjectKey({ owner, cycle })
const decodeLimit = (
  { cycle, limit, owner }: { readonly owner: Owner; readonly cycle: string; readonly limit: number }
): Effect.Effect<unknown, TokenStoreError> =>
  typeof owner === "string"
    ? decodeUserLimit({ userId: owner, cycle, limit })
    : decodeSubjectLimit({ owner, cycle, limit })
const decodeCycle = validator(CycleSchema)

/**
 * The error of a record whose counters would leave the safe integers: nothing
 * of it is written.
 *
 * @since 0.2.0
 * @category errors
 */
export const overflowError = (subject: Subject, cycle: string, method = "record"): TokenStoreError =>
  new TokenStoreError({
    reason: "InvalidInput",
    message: `TokenStore.${method}: the counters of ${subject.level} ${
      JSON.stringify(subject.id)
    } in cycle ${cycle} would exceed ${Number.MAX_SAFE_INTEGER}; nothing was written`
  })

/**
 * Wraps a backend so that every input is validated before it reaches it:
 * invalid input fails with a `TokenStoreError` of reason `InvalidInput` whose
 * message names the field and the value. Backends see validated inputs only.
 *
 * @since 0.1.0
 * @category combinators
 */
export const withValidation = (backend: Service): Service => ({
  // Valid input (the common case) takes a plain check; Schema runs to name what is wrong.
  record: (input) => isValidRecordInput(input) ? backend.record(input) : Effect.flatMap(decodeRecordInput(input), backend.record),
  recordMany: (inputs) => {
    for (const input of inputs) {
      if (!isValidRecordInput(input)) return Effect.flatMap(decodeRecordInput(input), () => backend.recordMany(inputs))
    }
    return backend.recordMany(inputs)
  },
  stats: (owner, cycle) => Effect.flatMap(decodeKey({ owner, cycle }), () => backend.stats(owner, cycle)),
  reset: (owner, cycle) => Effect.flatMap(decodeKey({ owner, cycle }), () => backend.reset(owner, cycle)),
  setLimit: (owner, cycle, limit) =>
    Effect.flatMap(decodeLimit({ owner, cycle, limit }), () => backend.setLimit(owner, cycle, limit)),
  checkLimit: (owner, cycle) =>
    Effect.flatMap(decodeKey({ owner, cycle }), () => backend.checkLimit(owner, cycle)),
  users: (cycle) => Effect.flatMap(decodeCycle({ cycle }), () => backend.users(cycle)),
  reserve: (input) =>
    isValidReserveInput(input)
      ? backend.reserve(input)
      : Effect.flatMap(decodeReserveInput(input), () => backend.reserve(input)),
  release: (input) =>
    isValidReleaseInput(input)
      ? backend.release(input)
      : Effect.flatMap(decodeReleaseInput(input), () => backend.release(input)),
  idempotencyWindowMillis: backend.idempotencyWindowMillis
})

/**
 * The limit check for a total, an optional limit and the tokens held
 * (`exceeded` when `currentUsage >= limit`), shared by the backends.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeLimitCheck = (currentUsage: number, limit: Option.Option<number>, heldTokens = 0): LimitCheck =>
  Option.match(limit, {
    onNone: () => ({ exceeded: false, currentUsage, limit, remaining: Option.none(), heldTokens }),
    onSome: (max) => ({
      exceeded: currentUsage >= max,
      currentUsage,
      limit,
      remaining: Option.some(Math.max(0, max - currentUsage)),
      heldTokens
    })
  })

/** The position of `totalTokens` among the counters. */
const total = counters.indexOf("totalTokens")

/**
 * The stats of a subject and cycle from its counters (in the order of
 * {@link counters}; none recorded: zeros), limit and held tokens, shared by
 * the backends.
 *
 * @since 0.3.0
 * @category constructors
 */
export const statsOf = (
  counts: ReadonlyArray<number> | undefined,
  limit: Option.Option<number>,
  heldTokens: number
): UsageStats => {
  const stats = { limit, heldTokens } as { -readonly [K in keyof UsageStats]: UsageStats[K] }
  for (let c = 0; c < counters.length; c++) stats[counters[c]!] = counts?.[c] ?? 0
  return stats
}

/**
 * The start of the one-minute rate window containing `now` (epoch ms).
 *
 * @since 0.2.0
 * @category constructors
 */
export const rateWindowOf = (now: number): number => Math.floor(now / 60_000) * 60_000

/**
 * Chooses the refusal of a reservation among the subjects' verdicts: the
 * tightest token limit (least room left) first, else the first rate limit
 * hit; `Reserved` when there is none. Shared by the backends (the Redis
 * script applies the same rule).
 *
 * @since 0.3.0
 * @category constructors
 */
export const chooseRefusal = (verdicts: ReadonlyArray<ReserveOutcome>): ReserveOutcome => {
  let best: ReserveOutcome = reserved
  let room = Infinity
  for (const verdict of verdicts) {
    if (verdict._tag === "OverLimit") {
      const left = verdict.limit - verdict.used - verdict.held
      if (left < room) {
        room = left
        best = verdict
      }
    } else if (verdict._tag === "RateLimited" && best._tag === "Reserved") {
      best = verdict
    }
  }
  return best
}

/**
 * The verdict of one subject on a reservation of `tokens`: its token limit
 * first, then its rate limits. Shared by the backends (the Redis script
 * applies the same rule).
 *
 * @since 0.3.0
 * @category constructors
 */
export const verdictOf = (
  subject: Subject,
  account: { readonly used: number; readonly held: number; readonly limit: number | undefined },
  window: { readonly requests: number; readonly tokens: number },
  rate: RateLimit | undefined,
  tokens: number,
  now: number
): ReserveOutcome => {
  if (account.limit !== undefined && account.used + account.held + tokens > account.limit) {
    return { _tag: "OverLimit", subject, limit: account.limit, used: account.used, held: account.held, requested: tokens }
  }
  const retryAfterMillis = rateWindowOf(now) + 60_000 - now
  if (rate?.requestsPerMinute !== undefined && window.requests + 1 > rate.requestsPerMinute) {
    return {
      _tag: "RateLimited",
      subject,
      kind: "requests",
      limit: rate.requestsPerMinute,
      current: window.requests,
      retryAfterMillis
    }
  }
  if (rate?.tokensPerMinute !== undefined && window.tokens + tokens > rate.tokensPerMinute) {
    return {
      _tag: "RateLimited",
      subject,
      kind: "tokens",
      limit: rate.tokensPerMinute,
      current: window.tokens,
      retryAfterMillis
    }
  }
  return reserved
}

const reserved: ReserveOutcome = { _tag: "Reserved" }

/**
 * Options of the in-memory store.
 *
 * @since 0.1.0
 * @category models
 */
export interface MemoryOptions {
  /** How long a recorded call id is remembered for idempotency; default 24 hours. */
  readonly idempotencyWindow?: Duration.DurationInput | undefined
  /**
   * The most call ids remembered at once (one per call and level); beyond it
   * the oldest are forgotten first. Default 100 000.
   */
  readonly maxIdempotencyKeys?: number | undefined
}

interface Hold {
  readonly tokens: number
  readonly expiresAt: number
}

interface Account {
  /** Per counter, in the order of `counters`. */
  readonly counts: Array<number>
  limit: number | undefined
  held: number
  readonly holds: Map<string, Hold>
}

interface RateWindow {
  window: number
  requests: number
  tokens: number
}

const emptyWindow = { requests: 0, tokens: 0 }

const newAccount = (): Account => ({
  counts: counters.map(() => 0),
  limit: undefined,
  held: 0,
  holds: new Map()
})

// Length-prefixed so that distinct subjects never share a key.
const subjectKey = (subject: Subject): string => `${subject.level}|${subject.id}`

/**
 * Builds an in-memory token store, the embedded default. Call ids are
 * remembered for the idempotency window (measured with Effect's `Clock`) and
 * at most `maxIdempotencyKeys` of them, so memory stays bounded; a call
 * recorded again after it was forgotten counts again.
 *
 * A bad option (a negative window, a max that is not a positive integer) is a
 * defect.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeMemory = (options?: MemoryOptions): Effect.Effect<Service> =>
  Effect.suspend(() => {
    const windowMillis = Duration.toMillis(Duration.decode(options?.idempotencyWindow ?? Duration.hours(24)))
    const maxKeys = options?.maxIdempotencyKeys ?? 100_000
    if (!(windowMillis >= 0)) {
      return Effect.dieMessage(`TokenStore.makeMemory: idempotencyWindow must not be negative`)
    }
    if (!Number.isSafeInteger(maxKeys) || maxKeys < 1) {
      return Effect.dieMessage(
        `TokenStore.makeMemory: maxIdempotencyKeys must be a positive integer, got ${String(maxKeys)}`
      )
    }
    // Plain maps mutated inside single synchronous steps: each operation is
    // atomic because nothing yields between its read and its write.
    const cycles = new Map<string, Map<string, Account>>()
    const rates = new Map<string, RateWindow>()
    // Insertion order is expiry order (constant window, monotonic clock), so
    // pruning only ever looks at the front of the map.
    const markers = new Map<string, number>()

    const prune = (now: number): void => {
      for (const [key, expiresAt] of markers) {
        if (expiresAt > now && markers.size < maxKeys) break
        markers.delete(key)
      }
    }

    const markerOf = (subject: Subject, callId: string): string =>
      `${subject.level}|${subject.id.length}:${subject.id}${callId}`

    const isMarked = (subject: Subject, callId: string, now: number): boolean => {
      const expiresAt = markers.get(markerOf(subject, callId))
      return expiresAt !== undefined && expiresAt > now
    }

    const find = (subject: Subject, cycle: string): Account | undefined => cycles.get(cycle)?.get(subjectKey(subject))

    const account = (subject: Subject, cycle: string): Account => {
      let accounts = cycles.get(cycle)
      if (accounts === undefined) {
        accounts = new Map()
        cycles.set(cycle, accounts)
      }
      const key = subjectKey(subject)
      let found = accounts.get(key)
      if (found === undefined) {
        found = newAccount()
        accounts.set(key, found)
      }
      return found
    }

    const purge = (current: Account, now: number): void => {
      if (current.holds.size === 0) return
      for (const [callId, hold] of current.holds) {
        if (hold.expiresAt <= now) {
          current.holds.delete(callId)
          current.held -= hold.tokens
        }
      }
    }

    const releaseHold = (current: Account | undefined, callId: string): void => {
      const hold = current?.holds.get(callId)
      if (current === undefined || hold === undefined) return
      current.holds.delete(callId)
      current.held -= hold.tokens
    }

    const fits = (n: number): boolean => n <= Number.MAX_SAFE_INTEGER

    const recordAt = (input: RecordInput, now: number): Either.Either<RecordOutcome, TokenStoreError> => {
      const subjects = subjectsOf(input)
      const increments = incrementsOf(input)
      // Every level is checked before anything is written: counters move together or not at all.
      const fresh = subjects.map((subject) => !isMarked(subject, input.callId, now))
      for (let i = 0; i < subjects.length; i++) {
        if (!fresh[i]) continue
        const current = find(subjects[i]!, input.cycle)
        if (current !== undefined && !current.counts.every((count, c) => fits(count + increments[c]!))) {
          return Either.left(overflowError(subjects[i]!, input.cycle))
        }
      }
      for (let i = 0; i < subjects.length; i++) {
        const subject = subjects[i]!
        if (fresh[i]) {
          const marker = markerOf(subject, input.callId)
          markers.delete(marker)
          if (windowMillis > 0) markers.set(marker, now + windowMillis)
          const current = account(subject, input.cycle)
          for (let c = 0; c < increments.length; c++) current.counts[c]! += increments[c]!
        }
        releaseHold(find(subject, input.cycle), input.callId)
      }
      return Either.right(fresh[0] ? "recorded" : "duplicate")
    }

    const windowOf = (subject: Subject, now: number): RateWindow => {
      const key = subjectKey(subject)
      const window = rateWindowOf(now)
      let current = rates.get(key)
      if (current === undefined || current.window !== window) {
        current = { window, requests: 0, tokens: 0 }
        rates.set(key, current)
      }
      return current
    }

    const reserveAt = (input: ReserveInput, now: number): Either.Either<ReserveOutcome, TokenStoreError> => {
      const first = input.subjects[0]!
      // Reserving the same call again (a retry after a lost reply), or one already recorded, holds nothing more.
      const own = find(first, input.cycle)?.holds.get(input.callId)
      if ((own !== undefined && own.expiresAt > now) || isMarked(first, input.callId, now)) {
        return Either.right(reserved)
      }
      const verdicts: Array<ReserveOutcome> = []
      for (const subject of input.subjects) {
        const current = find(subject, input.cycle)
        if (current !== undefined) purge(current, now)
        if (current !== undefined && !fits(current.held + input.tokens)) {
          return Either.left(overflowError(subject, input.cycle, "reserve"))
        }
        verdicts.push(verdictOf(
          subject,
          { used: current?.counts[total] ?? 0, held: current?.held ?? 0, limit: current?.limit },
          // A rate window is kept only for subjects that have rate limits.
          input.rateLimits?.[subject.level] === undefined ? emptyWindow : windowOf(subject, now),
          input.rateLimits?.[subject.level],
          input.tokens,
          now
        ))
      }
      const outcome = chooseRefusal(verdicts)
      if (outcome._tag !== "Reserved") return Either.right(outcome)
      for (const subject of input.subjects) {
        const current = account(subject, input.cycle)
        // A subject may hold the call for another of its users already (one
        // call id given to two): that hold is replaced, not added to.
        const replaced = current.holds.get(input.callId)
        current.holds.set(input.callId, { tokens: input.tokens, expiresAt: now + input.holdTtlMillis })
        current.held += input.tokens - (replaced?.tokens ?? 0)
        if (input.rateLimits?.[subject.level] !== undefined) {
          const window = windowOf(subject, now)
          window.requests += 1
          window.tokens += input.tokens
        }
      }
      return Either.right(reserved)
    }

    const clear = (subject: Subject, cycle: string): void => {
      const accounts = cycles.get(cycle)
      const current = accounts?.get(subjectKey(subject))
      if (accounts === undefined || current === undefined) return
      current.counts.fill(0)
      if (current.limit === undefined && current.holds.size === 0) {
        accounts.delete(subjectKey(subject))
        if (accounts.size === 0) cycles.delete(cycle)
      }
    }

    const purged = (owner: Owner, cycle: string, now: number): Account | undefined => {
      const current = find(subjectOf(owner), cycle)
      if (current !== undefined) purge(current, now)
      return current
    }

    const backend: Service = {
      recordMany: (inputs) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) => {
          prune(now)
          const outcomes: Array<RecordOutcome> = []
          let failure: TokenStoreError | undefined
          // Each record stands alone: a bad one does not keep the others out.
          for (const input of inputs) {
            const outcome = recordAt(input, now)
            if (Either.isLeft(outcome)) failure ??= outcome.left
            else outcomes.push(outcome.right)
          }
          return failure === undefined ? Effect.succeed(outcomes) : Effect.fail(failure)
        }),
      record: (input) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) => {
          prune(now)
          return recordAt(input, now)
        }),
      stats: (owner, cycle) =>
        Effect.map(Clock.currentTimeMillis, (now): UsageStats => {
          const current = purged(owner, cycle, now)
          return statsOf(current?.counts, Option.fromNullable(current?.limit), current?.held ?? 0)
        }),
      reset: (owner, cycle) => Effect.sync(() => clear(subjectOf(owner), cycle)),
      setLimit: (owner, cycle, limit) =>
        Effect.sync(() => {
          account(subjectOf(owner), cycle).limit = limit
        }),
      checkLimit: (owner, cycle) =>
        Effect.map(Clock.currentTimeMillis, (now) => {
          const current = purged(owner, cycle, now)
          return makeLimitCheck(current?.counts[total] ?? 0, Option.fromNullable(current?.limit), current?.held ?? 0)
        }),
      users: (cycle) =>
        Effect.sync(() => {
          const users: Array<string> = []
          for (const key of cycles.get(cycle)?.keys() ?? []) if (key.startsWith("user|")) users.push(key.slice(5))
          return users.sort()
        }),
      reserve: (input) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) => {
          prune(now)
          return reserveAt(input, now)
        }),
      release: (input) =>
        Effect.sync(() => {
          for (const subject of input.subjects) releaseHold(find(subject, input.cycle), input.callId)
        }),
      idempotencyWindowMillis: windowMillis
    }
    return Effect.succeed(withValidation(backend))
  })

/**
 * The in-memory token store with default options.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemory: Layer.Layer<TokenStore> = Layer.effect(TokenStore, makeMemory())

/**
 * The in-memory token store with options.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerMemoryWith = (options: MemoryOptions): Layer.Layer<TokenStore> =>
  Layer.effect(TokenStore, makeMemory(options))
