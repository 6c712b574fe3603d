/**
 * Token-usage handlers: on `end`, they add the call's token usage to its
 * user's billing cycle in the `TokenStore` in context (in memory, Redis...),
 * and to its team's and organisation's when the call names them. The same
 * atomic record ends the call's budget hold (see `Budget.guard`).
 *
 * - `layer`: the total handler. It records the usage the provider reported
 *   (prompt, completion and total; a provider that reports only a total is
 *   recorded as `0 / 0 / total`). A call whose response carries no usage is
 *   not recorded (logged at debug level) and its budget hold is released.
 * - Usage that does not decode (negative, fractional, not a number) is never
 *   recorded nor dropped silently: a warning with user, call id and value,
 *   `token_usage_invalid_total`, and one handler failure (not retried).
 * - `layerDetailed`: the detailed handler. It records prompt and completion
 *   separately and estimates what the provider did not report with a real
 *   tokenizer (gpt-tokenizer), see "Estimation" below.
 *
 * A call without a user id is not recorded: that is logged once per call, at
 * warning level (the tokens of that call are unaccounted for), and is not a
 * handler failure.
 *
 * The cost of the call (`Cost.microsOf`: its `costEstimate`, by default) is
 * recorded in the same atomic update as its tokens.
 *
 * The billing cycle of a call is the one containing the call's start
 * (`call.startedAt`), or the explicit `cycleStartDate`, so a retried record
 * always goes to the same cycle.
 *
 * Records are idempotent per user and call id (see `TokenStore`): the
 * handler's retry after a lost reply re-sends the same call id and counts once.
 * For the same reason, registering both handlers records each call once (the
 * first record wins): register one of them.
 *
 * Mode: `"await"` by default, whatever `CALLBACK_MODE` says. A record is one
 * short store round trip (sub-millisecond on a local Redis) next to an LLM call
 * of seconds; awaiting it lets concurrent calls record concurrently (ioredis
 * pipelines them) and makes a call's usage visible to the next budget check
 * (`Budget.guard`). `mode: "background"` takes the store off the call's path.
 *
 * ## Estimation (detailed handler)
 *
 * - No usage reported: prompt tokens are counted from the messages (content
 *   plus the chat format's per-message tokens and the assistant priming, as
 *   OpenAI chat models count them), completion tokens from the response
 *   content; total = prompt + completion.
 * - Only a total reported (prompt and completion both 0, total > 0, as the
 *   Python design's `tokens_used` decodes): the reported total is kept (it is
 *   what the provider bills); prompt is counted from the messages, capped at
 *   the total, and completion is the rest.
 * - Anything else is recorded exactly as reported: an explicit 0 (prompt,
 *   completion or all three) is never replaced by an estimate.
 *
 * Estimated usage is marked `estimated: true` in what `resolveUsage` returns
 * and in the handler's logs (the store keeps counts only).
 *
 * Encodings: the model's own where gpt-tokenizer knows it (exact name, a
 * `provider/` prefix removed, `ft:` fine-tunes and dated variants by their
 * base name); any other model (other providers, newer models) is counted with
 * `o200k_base`. Image and other non-text parts are not counted. Encodings are
 * large: each is loaded on first use, once per layer.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as DateTime from "effect/DateTime"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import type * as Schedule from "effect/Schedule"
import * as Schema from "effect/Schema"
import type { GptEncoding } from "gpt-tokenizer/GptEncoding"
import * as BillingCycle from "../src/BillingCycle.js"
import * as Budget from "../src/Budget.js"
import * as CallbackMetrics from "../src/CallbackMetrics.js"
import * as Cost from "../src/Cost.js"
import * as Dispatcher from "../src/Dispatcher.js"
import type { EndEvent, ErrorEvent, Message, Usage } from "../src/Events.js"
import * as Handler from "../src/Handler.js"
import type { HandlerRegistrationError } from "../src/HandlerError.js"
import * as TokenCounter from "../src/TokenCounter.js"
import * as TokenStore from "../src/TokenStore.js"

// -----------------------------------------------------------------------------
// Options
// -----------------------------------------------------------------------------

/**
 * Options of the token-usage handlers. Unset policy fields take the
 * dispatcher's defaults, except `mode` (default `"await"`).
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Handler name; default `"token-usage"` (`"token-usage-detailed"` for the detailed handler). */
  readonly name?: string | undefined
  /** An explicit billing cycle start date `YYYY-MM-DD`; when set it wins over `anchorDay`. */
  readonly cycleStartDate?: string | undefined
  /** Day of the month (1..28, UTC) on which monthly cycles start; default 1. */
  readonly anchorDay?: number | undefined
  /** Default `"await"` (see the module docs). */
  readonly mode?: Handler.Mode | undefined
  /** Retries of a failed record; each retry re-sends the same call id, so it counts once. */
  readonly retry?: Schedule.Schedule<unknown, unknown> | undefined
  /** Bound on one record, retries included. */
  readonly timeout?: Duration.DurationInput | undefined
  readonly priority?: number | undefined
  /** Background mode: records in flight at once (the handler's `concurrency`); default 1. */
  readonly concurrency?: number | undefined
  /**
   * The cost of a call in millionths of the currency unit, recorded in the
   * same atomic update as its tokens; `undefined` records no cost. Default
   * `Cost.microsOf`: the response's `costEstimate` (set by `instrument` from
   * the price table in force, see `Cost`).
   */
  readonly costMicros?: ((event: EndEvent) => number | undefined) | undefined
}

/**
 * The billing-cycle settings read from the environment:
 * `CALLBACK_BILLING_ANCHOR_DAY` (integer 1..28) and `CALLBACK_CYCLE_START_DATE`
 * (`YYYY-MM-DD`), both optional.
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  anchorDay: Config.option(
    Config.string("CALLBACK_BILLING_ANCHOR_DAY").pipe(
      Config.mapOrFail((raw) => {
        const day = Number(raw)
        return raw.trim() !== "" && Number.isInteger(day) && day >= 1 && day <= 28
          ? Either.right(day)
          : Either.left(ConfigError.InvalidData([], `expected an integer from 1 to 28, got ${JSON.stringify(raw)}`))
      })
    )
  ).pipe(Config.map(Option.getOrUndefined)),
  cycleStartDate: Config.option(
    Config.string("CALLBACK_CYCLE_START_DATE").pipe(
      Config.mapOrFail((raw) =>
        BillingCycle.isCycleDate(raw)
          ? Either.right(raw)
          : Either.left(ConfigError.InvalidData([], `expected a real calendar date YYYY-MM-DD, got ${JSON.stringify(raw)}`))
      )
    )
  ).pipe(Config.map(Option.getOrUndefined))
})

const invalidOption = (name: string, value: unknown, expected: string) =>
  Effect.fail(ConfigError.InvalidData([name], `Expected ${expected}, got ${safeShow(value)}`))

const safeShow = (value: unknown): string => {
  try {
    return typeof value === "function" ? "a function" : String(JSON.stringify(value))
  } catch {
    return String(value)
  }
}

/** Validates the options and returns how to find the cycle of a call. */
const validate = (options: Options) =>
  Effect.gen(function*() {
    if (options.name !== undefined && (typeof options.name !== "string" || options.name.length === 0)) {
      return yield* invalidOption("name", options.name, "a non-empty handler name")
    }
    if (options.mode !== undefined && options.mode !== "await" && options.mode !== "background") {
      return yield* invalidOption("mode", options.mode, `"await" or "background"`)
    }
    const anchorDay = options.anchorDay
    if (anchorDay !== undefined && (!Number.isInteger(anchorDay) || anchorDay < 1 || anchorDay > 28)) {
      return yield* invalidOption("anchorDay", anchorDay, "an integer from 1 to 28")
    }
    if (options.cycleStartDate !== undefined) {
      if (!BillingCycle.isCycleDate(options.cycleStartDate)) {
        return yield* invalidOption("cycleStartDate", options.cycleStartDate, "a real calendar date YYYY-MM-DD")
      }
      const fixed = Effect.succeed(options.cycleStartDate)
      return (_startedAt: number): Effect.Effect<string> => fixed
    }
    const cycleOptions = { anchorDay }
    return (startedAt: number): Effect.Effect<string> =>
      BillingCycle.containing(DateTime.unsafeMake(startedAt), cycleOptions)
  })

// -----------------------------------------------------------------------------
// Estimation
// -----------------------------------------------------------------------------

/**
 * The tokenizer could not be loaded or failed on an input.
 *
 * @since 0.1.0
 * @category errors
 */
export class TokenizerError extends Schema.TaggedError<TokenizerError>("effect-llm-callbacks/TokenizerError")(
  "TokenizerError",
  {
    encoding: Schema.String,
    message: Schema.String,
    cause: Schema.optional(Schema.Defect)
  }
) {}

/**
 * The encodings of gpt-tokenizer.
 *
 * @since 0.1.0
 * @category models
 */
export type EncodingName = "o200k_base" | "cl100k_base" | "p50k_base" | "p50k_edit" | "r50k_base"

/**
 * The encoding used for models gpt-tokenizer does not know.
 *
 * @since 0.1.0
 * @category constants
 */
export const fallbackEncoding: EncodingName = "o200k_base"

interface Mapping {
  readonly modelToEncodingMap: Readonly<Record<string, EncodingName>>
  readonly chatModelParams: Readonly<Record<string, unknown>>
}

/**
 * Counts tokens for a model; built by {@link makeEstimator}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Estimator {
  /** The encoding used for a model. */
  readonly encodingFor: (model: string) => Effect.Effect<EncodingName, TokenizerError>
  /** Tokens of a text. Special-token markers in the text count as plain text. */
  readonly countText: (model: string, text: string) => Effect.Effect<number, TokenizerError>
  /** Tokens of a prompt: message contents plus the chat format's overhead. */
  readonly countMessages: (
    model: string,
    messages: ReadonlyArray<Message>
  ) => Effect.Effect<number, TokenizerError>
}

// A representative chat model of each encoding, for the chat format's overhead
// of models gpt-tokenizer has no chat parameters for.
const chatModelOf: Partial<Record<EncodingName, string>> = { o200k_base: "gpt-4o", cl100k_base: "gpt-4" }

const plainText = { disallowedSpecial: new Set<string>() }

const maxCachedModels = 1024

const baseName = (model: string): string => {
  const slash = model.lastIndexOf("/")
  let name = slash >= 0 ? model.slice(slash + 1) : model
  // Fine-tunes: "ft:gpt-4o-mini-2024-07-18:org::id".
  if (name.startsWith("ft:")) name = name.slice(3).split(":")[0] ?? name
  return name
}

const resolveModel = (mapping: Mapping, model: string): string | undefined => {
  const name = baseName(model)
  if (Object.hasOwn(mapping.modelToEncodingMap, name)) return name
  // Dated or suffixed variants: the longest known name followed by "-".
  let best: string | undefined
  for (const known of Object.keys(mapping.modelToEncodingMap)) {
    if (name.startsWith(`${known}-`) && (best === undefined || known.length > best.length)) best = known
  }
  return best
}

const loadEncoding = (encoding: EncodingName): Promise<GptEncoding> => {
  switch (encoding) {
    case "o200k_base":
      return import("gpt-tokenizer/encoding/o200k_base").then((m) => m.default)
    case "cl100k_base":
      return import("gpt-tokenizer/encoding/cl100k_base").then((m) => m.default)
    case "p50k_base":
      return import("gpt-tokenizer/encoding/p50k_base").then((m) => m.default)
    case "p50k_edit":
      return import("gpt-tokenizer/encoding/p50k_edit").then((m) => m.default)
    case "r50k_base":
      return import("gpt-tokenizer/encoding/r50k_base").then((m) => m.default)
  }
}

const textOf = (content: Message["content"]): ReadonlyArray<string> =>
  typeof content === "string"
    ? [content]
    : content.flatMap((part) => typeof part.text === "string" ? [part.text] : [])

/**
 * Builds an estimator over gpt-tokenizer. Nothing is loaded until the first
 * count; each encoding is then loaded once and kept for the estimator's life.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeEstimator: Effect.Effect<Estimator> = Effect.sync(() => {
  let mapping: Mapping | undefined
  const encodings = new Map<EncodingName, GptEncoding>()
  const models = new Map<string, { readonly encoding: EncodingName; readonly chatModel: string | undefined }>()

  const loadMapping: Effect.Effect<Mapping, TokenizerError> = Effect.suspend(() =>
    mapping !== undefined
      ? Effect.succeed(mapping)
      : Effect.tryPromise({
        try: () => import("gpt-tokenizer/mapping"),
        catch: (cause) =>
          new TokenizerError({ encoding: "mapping", message: "could not load gpt-tokenizer's model mapping", cause })
      }).pipe(Effect.map((loaded) => (mapping = loaded as Mapping)))
  )

  const modelInfo = (model: string) =>
    Effect.suspend(() => {
      const known = models.get(model)
      if (known !== undefined) return Effect.succeed(known)
      return Effect.map(loadMapping, (mapping) => {
        const resolved = resolveModel(mapping, model)
        const encoding = resolved === undefined ? fallbackEncoding : mapping.modelToEncodingMap[resolved]!
        const chatModel = resolved !== undefined && Object.hasOwn(mapping.chatModelParams, resolved)
          ? resolved
          : chatModelOf[encoding]
        const info = { encoding, chatModel }
        // Model names come from calls: bound what is remembered.
        if (models.size >= maxCachedModels) models.clear()
        models.set(model, info)
        return info
      })
    })

  const encodingApi = (encoding: EncodingName): Effect.Effect<GptEncoding, TokenizerError> =>
    Effect.suspend(() => {
      const loaded = encodings.get(encoding)
      if (loaded !== undefined) return Effect.succeed(loaded)
      return Effect.tryPromise({
        try: () => loadEncoding(encoding),
        catch: (cause) => new TokenizerError({ encoding, message: `could not load the ${encoding} encoding`, cause })
      }).pipe(Effect.tap((api) => Effect.sync(() => encodings.set(encoding, api))))
    })

  const count = <A>(encoding: EncodingName, f: (api: GptEncoding) => A) =>
    Effect.flatMap(encodingApi(encoding), (api) =>
      Effect.try({
        try: () => f(api),
        catch: (cause) => new TokenizerError({ encoding, message: `tokenizing failed: ${String(cause)}`, cause })
      }))

  const countTexts = (api: GptEncoding, texts: ReadonlyArray<string>): number => {
    let n = 0
    for (const text of texts) if (text.length > 0) n += api.countTokens(text, plainText)
    return n
  }

  return {
    encodingFor: (model) => Effect.map(modelInfo(model), (info) => info.encoding),
    countText: (model, text) =>
      Effect.flatMap(modelInfo(model), (info) => count(info.encoding, (api) => countTexts(api, [text]))),
    countMessages: (model, messages) =>
      Effect.flatMap(modelInfo(model), (info) =>
        count(info.encoding, (api) => {
          let n = 0
          for (const message of messages) n += countTexts(api, textOf(message.content))
          if (info.chatModel === undefined) return n
          // The chat format's tokens (role, separators, priming) are those of
          // the same chat with empty contents: contents are encoded apart.
          const skeleton = messages.map((message) => ({
            role: message.role as "system" | "user" | "assistant",
            content: ""
          }))
          return n + api.encodeChat(skeleton, info.chatModel as Parameters<GptEncoding["encodeChat"]>[1]).length
        }))
  }
})

/**
 * Whether the detailed handler estimates a call's usage: none reported, or
 * only a total (prompt and completion both 0, total above 0).
 *
 * @since 0.1.0
 * @category predicates
 */
export const needsEstimate = (usage: Usage | undefined): boolean =>
  usage === undefined ||
  (usage.estimated !== true && usage.promptTokens === 0 && usage.completionTokens === 0 && usage.totalTokens > 0)

/**
 * The usage the detailed handler records for a call: as reported, or
 * estimated (flagged `estimated: true`) as the module docs describe.
 *
 * @since 0.1.0
 * @category estimation
 */
export const resolveUsage = (
  estimator: Estimator,
  event: Pick<EndEvent, "call" | "messages" | "response">
): Effect.Effect<Usage, TokenizerError> => {
  const reported = event.response.usage
  if (reported !== undefined && !needsEstimate(reported)) return Effect.succeed(reported)
  const model = event.response.model ?? event.call.model
  return Effect.flatMap(estimator.countMessages(model, event.messages), (prompt): Effect.Effect<
    Usage,
    TokenizerError
  > => {
    if (reported !== undefined) {
      const promptTokens = Math.min(prompt, reported.totalTokens)
      return Effect.succeed({
        ...reported,
        promptTokens,
        completionTokens: reported.totalTokens - promptTokens,
        estimated: true
      })
    }
    const reasoning = event.response.reasoning
    const output = reasoning === undefined
      ? estimator.countText(model, event.response.content)
      : Effect.zipWith(estimator.countText(model, event.response.content), estimator.countText(model, reasoning), (a, b) => a + b)
    return Effect.map(output, (completion) => ({
      promptTokens: prompt,
      completionTokens: completion,
      totalTokens: prompt + completion,
      estimated: true
    }))
  })
}

// -----------------------------------------------------------------------------
// Handlers
// -----------------------------------------------------------------------------

const logNoUser = (name: string, event: EndEvent | ErrorEvent) =>
  Effect.logWarning("token usage not recorded: the call has no user id").pipe(
    Effect.annotateLogs({ handler: name, callId: event.call.callId, model: event.call.model })
  )

/**
 * The response's usage could not be decoded (negative, fractional, not a
 * number...): nothing is recorded, and that is never silent: a warning with the
 * user, the call id and the value, `token_usage_invalid_total`, and a handler
 * failure in `health` (not retried: it would fail the same way).
 */
const invalidUsage = (name: string, event: EndEvent, userId: string) => {
  const issues = event.outputIssues!.join("; ")
  return Effect.logWarning("token usage not recorded: the reported usage is invalid").pipe(
    Effect.annotateLogs({ handler: name, callId: event.call.callId, userId, model: event.call.model, issues }),
    Effect.zipRight(
      Metric.update(CallbackMetrics.invalidUsageTotal.pipe(Metric.tagged("callback_type", name)), 1)
    ),
    Effect.zipRight(
      Effect.fail(
        new TokenStore.TokenStoreError({
          reason: "InvalidInput",
          message: `TokenUsage: the usage of call ${event.call.callId} (user ${JSON.stringify(userId)}) is invalid: ${issues}`
        })
      )
    )
  )
}

/** What a call billed: an end event, or an error event carrying what the call consumed before it failed. */
type Billed = EndEvent | (Pick<EndEvent, "call" | "messages" | "response"> & { readonly _tag: "Error" })

const makeHandler = <E>(
  defaultName: string,
  usageOf: (event: Billed) => Effect.Effect<Usage | undefined, E>
) =>
(options: Options = {}): Effect.Effect<
  Handler.Handler<TokenStore.TokenStoreError | E>,
  ConfigError.ConfigError,
  TokenStore.TokenStore
> =>
  Effect.gen(function*() {
    const cycle = yield* validate(options)
    const store = yield* TokenStore.TokenStore
    const name = options.name ?? defaultName
    const costOf = options.costMicros ?? Cost.microsOf
    const inputFor = (event: Billed, userId: string, usage: Usage, cycle: string): TokenStore.RecordInput => ({
      callId: event.call.callId,
      userId,
      cycle,
      usage: {
        promptTokens: usage.promptTokens,
        completionTokens: usage.completionTokens,
        totalTokens: usage.totalTokens,
        cachedTokens: usage.cachedTokens,
        cacheWriteTokens: usage.cacheWriteTokens,
        reasoningTokens: usage.reasoningTokens
      },
      costMicros: event._tag === "End" ? costOf(event) : Cost.microsOf(event),
      estimated: usage.estimated,
      teamId: event.call.teamId,
      orgId: event.call.orgId,
      provider: event.call.provider,
      // The model that answered when the provider names it (a dated version), else the one asked for.
      model: event.response?.model ?? event.call.model
    })
    // A call admitted by a budget holds tokens until its record ends the hold;
    // a call that will not be recorded releases it now.
    const release = (event: EndEvent, userId: string) =>
      Effect.flatMap(cycle(event.call.startedAt), (cycle) =>
        store.release({
          callId: event.call.callId,
          cycle,
          subjects: TokenStore.subjectsOf({ userId, teamId: event.call.teamId, orgId: event.call.orgId })
        }))
    const onLlmEnd = (event: EndEvent): Effect.Effect<void, TokenStore.TokenStoreError | E> => {
      const userId = event.call.userId
      if (userId === undefined) return logNoUser(name, event)
      if (event.outputIssues !== undefined) return Effect.zipRight(Effect.ignore(release(event, userId)), invalidUsage(name, event, userId))
      return Effect.flatMap(usageOf(event), (usage) => {
        if (usage === undefined) {
          return Effect.logDebug("token usage not recorded: the response reports no usage").pipe(
            Effect.annotateLogs({ handler: name, callId: event.call.callId }),
            Effect.zipRight(release(event, userId))
          )
        }
        const recorded = Effect.flatMap(cycle(event.call.startedAt), (cycle) => store.record(inputFor(event, userId, usage, cycle)))
        return usage.estimated === true
          ? Effect.tap(recorded, () =>
            Effect.logDebug("recorded estimated token usage").pipe(
              Effect.annotateLogs({
                handler: name,
                callId: event.call.callId,
                estimated: true,
                promptTokens: usage.promptTokens,
                completionTokens: usage.completionTokens,
                totalTokens: usage.totalTokens
              })
            ))
          : recorded
      })
    }
    // Background mode: a run of end events is recorded in one round trip.
    // Every good event is recorded; each bad one is reported on its own, and
    // the run then fails with the first failure (a retry re-sends the good
    // records, which count once).
    const inputOf = (event: EndEvent): Effect.Effect<TokenStore.RecordInput | undefined, TokenStore.TokenStoreError | E> => {
      const userId = event.call.userId
      if (userId === undefined) return Effect.as(logNoUser(name, event), undefined)
      if (event.outputIssues !== undefined) return Effect.zipRight(Effect.ignore(release(event, userId)), invalidUsage(name, event, userId))
      return Effect.flatMap(usageOf(event), (usage) =>
        usage === undefined
          ? Effect.as(release(event, userId), undefined)
          : Effect.map(cycle(event.call.startedAt), (cycle) => inputFor(event, userId, usage, cycle)))
    }
    const onLlmEndBatch = (events: ReadonlyArray<EndEvent>): Effect.Effect<void, TokenStore.TokenStoreError | E> =>
      Effect.flatMap(Effect.forEach(events, (event) => Effect.either(inputOf(event))), (results) => {
        const present: Array<TokenStore.RecordInput> = []
        let failure: TokenStore.TokenStoreError | E | undefined
        let failed = false
        for (const result of results) {
          if (Either.isLeft(result)) {
            if (!failed) failure = result.left
            failed = true
          } else if (result.right !== undefined) present.push(result.right)
        }
        const recorded = present.length === 0 ? Effect.void : Effect.asVoid(store.recordMany(present))
        return failed ? Effect.zipRight(recorded, Effect.fail(failure as TokenStore.TokenStoreError | E)) : recorded
      })
    // A call that failed or was cut off after it consumed tokens (a stream stopped early or failing
    // midway) is billed for them: its error event carries them, recorded as an end's are.
    const onLlmError = (event: ErrorEvent): Effect.Effect<void, TokenStore.TokenStoreError | E> => {
      const response = event.response
      if (response === undefined) return Effect.void
      const userId = event.call.userId
      if (userId === undefined) return logNoUser(name, event)
      return Effect.flatMap(usageOf({ _tag: "Error", call: event.call, messages: event.messages, response }), (usage) =>
        usage === undefined
          ? Effect.void
          : Effect.flatMap(
            cycle(event.call.startedAt),
            (cycle) => store.record(inputFor({ _tag: "Error", call: event.call, messages: event.messages, response }, userId, usage, cycle))
          ))
    }
    return Handler.make({
      name,
      onLlmEnd,
      onLlmError,
      onLlmEndBatch,
      mode: options.mode ?? "await",
      retry: options.retry,
      timeout: options.timeout,
      priority: options.priority,
      concurrency: options.concurrency
    })
  })

/**
 * Builds the total handler (see the module docs) over the `TokenStore` in
 * context. A bad option fails with a `ConfigError` naming it.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make: (
  options?: Options
) => Effect.Effect<Handler.Handler<TokenStore.TokenStoreError>, ConfigError.ConfigError, TokenStore.TokenStore> =
  makeHandler("token-usage", (event) => Effect.succeed(event.response.usage))

/**
 * Builds the detailed handler (see the module docs) over the `TokenStore` in
 * context, with its own estimator.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeDetailed = (options: Options = {}): Effect.Effect<
  Handler.Handler<TokenStore.TokenStoreError | TokenizerError>,
  ConfigError.ConfigError,
  TokenStore.TokenStore
> =>
  Effect.flatMap(
    makeEstimator,
    (estimator) => makeHandler("token-usage-detailed", (event) => resolveUsage(estimator, event))(options)
  )

/**
 * A token-usage handler layer: it registers the handler with the dispatcher
 * and records into the `TokenStore` in context.
 *
 * @since 0.1.0
 * @category models
 */
export type HandlerLayer = Layer.Layer<
  never,
  ConfigError.ConfigError | HandlerRegistrationError,
  Dispatcher.Dispatcher | TokenStore.TokenStore
>

/**
 * The total token-usage handler, registered with the dispatcher for the
 * layer's lifetime.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { Dispatcher, TokenStore } from "effect-llm-callbacks"
 * import * as TokenUsage from "effect-llm-callbacks/layers/TokenUsage"
 *
 * const Callbacks = TokenUsage.layer({ anchorDay: 1 }).pipe(
 *   Layer.provideMerge(Layer.merge(Dispatcher.layer(), TokenStore.layerMemory))
 * )
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): HandlerLayer => Dispatcher.toLayer(make(options))

/**
 * The detailed token-usage handler (prompt and completion, estimated with
 * gpt-tokenizer when not reported), registered for the layer's lifetime.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDetailed = (
  options: Options = {}
): HandlerLayer => Dispatcher.toLayer(makeDetailed(options))

/**
 * The total handler with options read from `Config` (by default
 * {@link config}: the billing cycle from the environment). A bad setting fails
 * the layer with a `ConfigError` naming it.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config.Wrap<Options> = config
): HandlerLayer => Dispatcher.toLayer(Effect.flatMap(Config.unwrap(options), make))

/**
 * The detailed handler with options read from `Config` (by default
 * {@link config}).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerDetailedConfig = (
  options: Config.Config.Wrap<Options> = config
): HandlerLayer => Dispatcher.toLayer(Effect.flatMap(Config.unwrap(options), makeDetailed))

/**
 * Makes budgets (`Budget.guard`) count prompt tokens with gpt-tokenizer (the
 * model's encoding and chat format, as the detailed handler estimates them)
 * instead of the default upper bound, so reservations are as tight as the
 * prompt. A prompt the tokenizer cannot count falls back to the bound.
 *
 * @since 0.2.0
 * @category layers
 */
export const layerPromptCounter: Layer.Layer<Budget.CurrentPromptCounter> = Layer.unwrapEffect(
  Effect.map(makeEstimator, (estimator) =>
    Layer.succeed(
      Budget.CurrentPromptCounter,
      (model, messages) =>
        Effect.catchAll(estimator.countMessages(model, messages), () => Budget.byteBound(model, messages))
    ))
)

/**
 * Counts what providers did not report with gpt-tokenizer (the model's
 * encoding and chat format): the usage of a call cut off before its provider
 * reported it (a stream stopped early, or failing midway) is then counted
 * when the call ends, carried by its error event flagged estimated, and
 * recorded by the token handlers. Without it, only the detailed handler
 * counts such usage (it has a tokenizer of its own); the total handler and
 * the metrics see none.
 *
 * @since 0.3.0
 * @category layers
 */
export const layerTokenCounter: Layer.Layer<TokenCounter.CurrentTokenCounter> = Layer.unwrapEffect(
  Effect.map(makeEstimator, (estimator) =>
    Layer.succeed(TokenCounter.CurrentTokenCounter, {
      countMessages: estimator.countMessages,
      countText: estimator.countText
    }))
)
