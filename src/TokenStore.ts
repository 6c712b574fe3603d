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
}

/**
 * Usage of a user in a cycle. Counters are 0 and the limit is none when nothing
 * was recorded or set.
 *
 * @since 0.1.0
 * @category models
 */
export interface UsageStats extends TokenCounts {
  /** Accumulated cost in millionths of the currency unit. */
  readonly costMicros: number
  readonly limit: Option.Option<number>
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
}

/**
 * `"recorded"` when the usage was added, `"duplicate"` when this call had
 * already been recorded (within the idempotency window) and nothing was added.
 *
 * @since 0.1.0
 * @category models
 */
export type RecordOutcome = "recorded" | "duplicate"

/**
 * A failure of the token store: the backend is unreachable (`Unavailable`),
 * did not answer in time (`Timeout`), the input is invalid (`InvalidInput`),
 * or anything else (`Unknown`).
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
) {}

/**
 * The token store service.
 *
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** Adds the usage of one call, once per user and call id. */
  readonly record: (input: RecordInput) => Effect.Effect<RecordOutcome, TokenStoreError>
  /**
   * Adds the usage of several calls, each once, in one round trip where the
   * backend allows (outcomes in input order). Fails when any record fails;
   * those recorded stay recorded, so retrying the whole batch counts each once.
   */
  readonly recordMany: (
    inputs: ReadonlyArray<RecordInput>
  ) => Effect.Effect<ReadonlyArray<RecordOutcome>, TokenStoreError>
  readonly stats: (userId: string, cycle: string) => Effect.Effect<UsageStats, TokenStoreError>
  /** Clears the usage counters of a user and cycle; the limit stays. */
  readonly reset: (userId: string, cycle: string) => Effect.Effect<void, TokenStoreError>
  readonly setLimit: (userId: string, cycle: string, limit: number) => Effect.Effect<void, TokenStoreError>
  readonly checkLimit: (userId: string, cycle: string) => Effect.Effect<LimitCheck, TokenStoreError>
  /** Users with usage or a limit in a cycle, sorted. */
  readonly users: (cycle: string) => Effect.Effect<ReadonlyArray<string>, TokenStoreError>
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

const nonEmptyString = expected("a non-empty string of well-formed unicode")

// A lone surrogate has no UTF-8 encoding: a backend that stores ids as UTF-8
// (Redis) would map distinct ids to the same bytes, so such ids are refused.
const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/

const Id = Schema.String.annotations({ message: nonEmptyString }).pipe(
  Schema.filter((s) => s.length > 0 && !loneSurrogate.test(s), { message: nonEmptyString })
)

const cycleDate = expected("a billing cycle start date YYYY-MM-DD (a real calendar date)")

const Cycle = Schema.String.annotations({ message: cycleDate }).pipe(
  Schema.filter(BillingCycle.isCycleDate, { message: cycleDate })
)

const RecordInputSchema = Schema.Struct({
  callId: Id,
  userId: Id,
  cycle: Cycle,
  usage: Schema.Struct({ promptTokens: Count, completionTokens: Count, totalTokens: Count }).annotations({
    message: (issue) => `expected { promptTokens, completionTokens, totalTokens }, got ${showValue(issue.actual)}`
  }),
  costMicros: Schema.optional(Schema.UndefinedOr(Count))
})

const KeySchema = Schema.Struct({ userId: Id, cycle: Cycle })

const LimitSchema = Schema.Struct({ userId: Id, cycle: Cycle, limit: Count })

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

const isId = (u: unknown): boolean => typeof u === "string" && u.length > 0 && !loneSurrogate.test(u)

/** The same rules as `RecordInputSchema`, as a plain predicate for the hot path. */
const isValidRecordInput = (input: RecordInput): boolean =>
  typeof input === "object" && input !== null && isId(input.callId) && isId(input.userId) &&
  BillingCycle.isCycleDate(input.cycle) && typeof input.usage === "object" && input.usage !== null &&
  isCount(input.usage.promptTokens) && isCount(input.usage.completionTokens) && isCount(input.usage.totalTokens) &&
  (input.costMicros === undefined || isCount(input.costMicros))

const decodeRecordInput = validator(RecordInputSchema)
const decodeKey = validator(KeySchema)
const decodeLimit = validator(LimitSchema)
const decodeCycle = validator(CycleSchema)

/**
 * Validates a `RecordInput`, failing with an `InvalidInput` error whose
 * message names the offending field and value, e.g.
 * `Invalid usage.promptTokens: expected a non-negative safe integer, got -1`.
 *
 * @since 0.1.0
 * @category validation
 */
export const validateRecordInput = (input: RecordInput): Effect.Effect<RecordInput, TokenStoreError> =>
  decodeRecordInput(input)

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
  stats: (userId, cycle) => Effect.flatMap(decodeKey({ userId, cycle }), () => backend.stats(userId, cycle)),
  reset: (userId, cycle) => Effect.flatMap(decodeKey({ userId, cycle }), () => backend.reset(userId, cycle)),
  setLimit: (userId, cycle, limit) =>
    Effect.flatMap(decodeLimit({ userId, cycle, limit }), () => backend.setLimit(userId, cycle, limit)),
  checkLimit: (userId, cycle) =>
    Effect.flatMap(decodeKey({ userId, cycle }), () => backend.checkLimit(userId, cycle)),
  users: (cycle) => Effect.flatMap(decodeCycle({ cycle }), () => backend.users(cycle))
})

/**
 * The limit check for a total and an optional limit (`exceeded` when
 * `currentUsage >= limit`), shared by the backends.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeLimitCheck = (currentUsage: number, limit: Option.Option<number>): LimitCheck =>
  Option.match(limit, {
    onNone: () => ({ exceeded: false, currentUsage, limit, remaining: Option.none() }),
    onSome: (max) => ({
      exceeded: currentUsage >= max,
      currentUsage,
      limit,
      remaining: Option.some(Math.max(0, max - currentUsage))
    })
  })

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
   * The most call ids remembered at once; beyond it the oldest are forgotten
   * first. Default 100 000.
   */
  readonly maxIdempotencyKeys?: number | undefined
}

interface MemoryEntry {
  readonly promptTokens: number
  readonly completionTokens: number
  readonly totalTokens: number
  readonly costMicros: number
  readonly limit: number | undefined
}

const emptyEntry: MemoryEntry = {
  promptTokens: 0,
  completionTokens: 0,
  totalTokens: 0,
  costMicros: 0,
  limit: undefined
}

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
    const cycles = new Map<string, Map<string, MemoryEntry>>()
    // Insertion order is expiry order (constant window, monotonic clock), so
    // pruning only ever looks at the front of the map.
    const markers = new Map<string, number>()

    const prune = (now: number): void => {
      for (const [key, expiresAt] of markers) {
        if (expiresAt > now && markers.size < maxKeys) break
        markers.delete(key)
      }
    }

    const entry = (userId: string, cycle: string): MemoryEntry => cycles.get(cycle)?.get(userId) ?? emptyEntry

    const update = (userId: string, cycle: string, f: (entry: MemoryEntry) => MemoryEntry): void => {
      let users = cycles.get(cycle)
      if (users === undefined) {
        users = new Map()
        cycles.set(cycle, users)
      }
      users.set(userId, f(users.get(userId) ?? emptyEntry))
    }

    const clear = (userId: string, cycle: string): void => {
      const users = cycles.get(cycle)
      const current = users?.get(userId)
      if (users === undefined || current === undefined) return
      if (current.limit === undefined) {
        users.delete(userId)
        if (users.size === 0) cycles.delete(cycle)
      } else {
        users.set(userId, { ...emptyEntry, limit: current.limit })
      }
    }

    const recordAt = (input: RecordInput, now: number): RecordOutcome => {
      // Length-prefixed so that distinct (user, call) pairs never share a key.
      const marker = `${input.userId.length}:${input.userId}${input.callId}`
      const expiresAt = markers.get(marker)
      if (expiresAt !== undefined && expiresAt > now) return "duplicate"
      markers.delete(marker)
      if (windowMillis > 0) markers.set(marker, now + windowMillis)
      update(input.userId, input.cycle, (current) => ({
        promptTokens: current.promptTokens + input.usage.promptTokens,
        completionTokens: current.completionTokens + input.usage.completionTokens,
        totalTokens: current.totalTokens + input.usage.totalTokens,
        costMicros: current.costMicros + (input.costMicros ?? 0),
        limit: current.limit
      }))
      return "recorded"
    }

    const backend: Service = {
      recordMany: (inputs) =>
        Effect.map(Clock.currentTimeMillis, (now) => {
          prune(now)
          return inputs.map((input) => recordAt(input, now))
        }),
      record: (input) =>
        Effect.map(Clock.currentTimeMillis, (now): RecordOutcome => {
          prune(now)
          return recordAt(input, now)
        }),
      stats: (userId, cycle) =>
        Effect.sync((): UsageStats => {
          const current = entry(userId, cycle)
          return {
            promptTokens: current.promptTokens,
            completionTokens: current.completionTokens,
            totalTokens: current.totalTokens,
            costMicros: current.costMicros,
            limit: Option.fromNullable(current.limit)
          }
        }),
      reset: (userId, cycle) => Effect.sync(() => clear(userId, cycle)),
      setLimit: (userId, cycle, limit) =>
        Effect.sync(() => update(userId, cycle, (current) => ({ ...current, limit }))),
      checkLimit: (userId, cycle) =>
        Effect.sync(() => {
          const current = entry(userId, cycle)
          return makeLimitCheck(current.totalTokens, Option.fromNullable(current.limit))
        }),
      users: (cycle) => Effect.sync(() => Array.from(cycles.get(cycle)?.keys() ?? []).sort())
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
