/**
 * The events a handler hears: `start`, then exactly one of `end` / `error`.
 *
 * Everything here is Schema-defined so that events can be logged, sent over a
 * wire, and decoded from the records of the Python design this library
 * reimplements (snake_case dictionaries such as `tokens_used`, `prompt_tokens`,
 * `completion_tokens`, `response_time`, `cost_estimate`).
 *
 * @since 0.1.0
 */
import * as Either from "effect/Either"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"

/**
 * A part of a multi-part message content (text, image, file, tool call...).
 * Only `type` is required; other fields are kept as they came.
 *
 * @since 0.1.0
 * @category models
 */
export const ContentPart = Schema.Struct(
  { type: Schema.String, text: Schema.optional(Schema.String) },
  Schema.Record({ key: Schema.String, value: Schema.Unknown })
)

/**
 * @since 0.1.0
 * @category models
 */
export type ContentPart = typeof ContentPart.Type

/**
 * A chat message: a role and a content that is either text or parts.
 *
 * @since 0.1.0
 * @category models
 */
export const Message = Schema.Struct({
  role: Schema.String,
  content: Schema.Union(Schema.String, Schema.Array(ContentPart))
})

/**
 * @since 0.1.0
 * @category models
 */
export type Message = typeof Message.Type

/**
 * Token usage of one call. `estimated` is true when the counts were computed
 * with a tokenizer because the provider reported none.
 *
 * @since 0.1.0
 * @category models
 */
export const Usage = Schema.Struct({
  promptTokens: Schema.NonNegativeInt,
  completionTokens: Schema.NonNegativeInt,
  totalTokens: Schema.NonNegativeInt,
  cachedTokens: Schema.optional(Schema.NonNegativeInt),
  reasoningTokens: Schema.optional(Schema.NonNegativeInt),
  /** True when counted with a tokenizer because the provider reported no usage; absent means false. */
  estimated: Schema.optional(Schema.Boolean)
})

/**
 * @since 0.1.0
 * @category models
 */
export type Usage = typeof Usage.Type

/**
 * What the model answered, as far as the handlers are concerned.
 *
 * `usage` is absent when the provider reported none (the detailed token
 * handler then estimates it).
 *
 * @since 0.1.0
 * @category models
 */
export const LlmResponse = Schema.Struct({
  content: Schema.String,
  usage: Schema.optional(Usage),
  finishReason: Schema.optional(Schema.String),
  model: Schema.optional(Schema.String),
  /** Set by the cost handler, in the currency of its price table. */
  costEstimate: Schema.optional(Schema.Number)
})

/**
 * @since 0.1.0
 * @category models
 */
export type LlmResponse = typeof LlmResponse.Type

/**
 * The response dictionary of the Python design (`content`, `tokens_used`,
 * `prompt_tokens`, `completion_tokens`, `response_time`, `cost_estimate`),
 * decoded into an {@link LlmResponse}.
 *
 * @since 0.1.0
 * @category schemas
 */
export const PythonResponse = Schema.transform(
  Schema.Struct({
    content: Schema.optionalWith(Schema.String, { default: () => "" }),
    tokens_used: Schema.optional(Schema.NonNegativeInt),
    prompt_tokens: Schema.optional(Schema.NonNegativeInt),
    completion_tokens: Schema.optional(Schema.NonNegativeInt),
    response_time: Schema.optional(Schema.NonNegative),
    cost_estimate: Schema.optional(Schema.NonNegative),
    model: Schema.optional(Schema.String)
  }),
  Schema.typeSchema(LlmResponse),
  {
    strict: true,
    decode: (python) => {
      const prompt = python.prompt_tokens
      const completion = python.completion_tokens
      const total = python.tokens_used ?? (prompt !== undefined || completion !== undefined
        ? (prompt ?? 0) + (completion ?? 0)
        : undefined)
      return {
        content: python.content,
        ...(total !== undefined
          ? {
            usage: {
              promptTokens: prompt ?? 0,
              completionTokens: completion ?? 0,
              totalTokens: total
            }
          }
          : {}),
        ...(python.model !== undefined ? { model: python.model } : {}),
        ...(python.cost_estimate !== undefined ? { costEstimate: python.cost_estimate } : {})
      }
    },
    encode: (response) => ({
      content: response.content,
      ...(response.usage !== undefined
        ? {
          tokens_used: response.usage.totalTokens,
          prompt_tokens: response.usage.promptTokens,
          completion_tokens: response.usage.completionTokens
        }
        : {}),
      ...(response.model !== undefined ? { model: response.model } : {}),
      ...(response.costEstimate !== undefined ? { cost_estimate: response.costEstimate } : {})
    })
  }
)

/**
 * Whether a value looks like the Python design's response dictionary (has
 * one of its snake_case keys).
 *
 * @since 0.1.0
 * @category guards
 */
export const isPythonResponse = (u: unknown): boolean =>
  typeof u === "object" && u !== null &&
  ("tokens_used" in u || "prompt_tokens" in u || "completion_tokens" in u || "response_time" in u ||
    "cost_estimate" in u)

/**
 * Identity and context of one instrumented call, shared by all its events.
 *
 * @since 0.1.0
 * @category models
 */
export const CallInfo = Schema.Struct({
  callId: Schema.String,
  parentCallId: Schema.optional(Schema.String),
  provider: Schema.String,
  model: Schema.String,
  userId: Schema.optional(Schema.String),
  /** The team the call is billed to, from `instrument` or the call context. */
  teamId: Schema.optional(Schema.String),
  /** The organisation the call is billed to, from `instrument` or the call context. */
  orgId: Schema.optional(Schema.String),
  tags: Schema.Array(Schema.String),
  metadata: Schema.Record({ key: Schema.String, value: Schema.Unknown }),
  /** Epoch milliseconds, from Effect's `Clock`. */
  startedAt: Schema.Number
})

/**
 * @since 0.1.0
 * @category models
 */
export type CallInfo = typeof CallInfo.Type

/**
 * Request parameters (`temperature`, `maxTokens`, ...), kept as given.
 *
 * @since 0.1.0
 * @category models
 */
export const RequestParams = Schema.Record({ key: Schema.String, value: Schema.Unknown })

/**
 * @since 0.1.0
 * @category models
 */
export type RequestParams = typeof RequestParams.Type

/**
 * Why a call failed, as data: the typed error or the defect (kept as the
 * original value in `error`), with a printable `message` and `errorType`.
 *
 * @since 0.1.0
 * @category models
 */
export const CallFailure = Schema.Struct({
  kind: Schema.Literal("failure", "defect", "interrupted"),
  /** The `_tag` of a tagged error, the constructor name of an `Error`, or `typeof`. */
  errorType: Schema.String,
  message: Schema.String,
  error: Schema.Unknown
})

/**
 * @since 0.1.0
 * @category models
 */
export type CallFailure = typeof CallFailure.Type

/**
 * Emitted before the call runs.
 *
 * `inputIssues` lists what could not be decoded from the messages given to
 * `instrument` (the call is never failed for it).
 *
 * @since 0.1.0
 * @category models
 */
export const StartEvent = Schema.TaggedStruct("Start", {
  call: CallInfo,
  messages: Schema.Array(Message),
  params: RequestParams,
  inputIssues: Schema.optional(Schema.Array(Schema.String))
})

/**
 * @since 0.1.0
 * @category models
 */
export type StartEvent = typeof StartEvent.Type

/**
 * Emitted once when the call succeeded.
 *
 * @since 0.1.0
 * @category models
 */
export const EndEvent = Schema.TaggedStruct("End", {
  call: CallInfo,
  messages: Schema.Array(Message),
  response: LlmResponse,
  durationMs: Schema.Number,
  /** Time to the first streamed part, for streams. */
  timeToFirstTokenMs: Schema.optional(Schema.Number),
  outputIssues: Schema.optional(Schema.Array(Schema.String))
})

/**
 * @since 0.1.0
 * @category models
 */
export type EndEvent = typeof EndEvent.Type

/**
 * Emitted once when the call failed, died or was interrupted.
 *
 * @since 0.1.0
 * @category models
 */
export const ErrorEvent = Schema.TaggedStruct("Error", {
  call: CallInfo,
  messages: Schema.Array(Message),
  failure: CallFailure,
  durationMs: Schema.Number,
  interrupted: Schema.Boolean,
  timeToFirstTokenMs: Schema.optional(Schema.Number)
})

/**
 * @since 0.1.0
 * @category models
 */
export type ErrorEvent = typeof ErrorEvent.Type

/**
 * Any event.
 *
 * @since 0.1.0
 * @category models
 */
export const CallbackEvent = Schema.Union(StartEvent, EndEvent, ErrorEvent)

/**
 * @since 0.1.0
 * @category models
 */
export type CallbackEvent = StartEvent | EndEvent | ErrorEvent

/**
 * The three lifecycle phases.
 *
 * @since 0.1.0
 * @category models
 */
export type Phase = "start" | "end" | "error"

/**
 * The phase of an event.
 *
 * @since 0.1.0
 * @category getters
 */
export const phaseOf = (event: CallbackEvent): Phase =>
  event._tag === "Start" ? "start" : event._tag === "End" ? "end" : "error"

// -----------------------------------------------------------------------------
// Decoding input given to `instrument`
// -----------------------------------------------------------------------------

const isPlainMessage = (u: unknown): u is Message =>
  typeof u === "object" && u !== null && typeof (u as any).role === "string" &&
  typeof (u as any).content === "string"

const decodeMessages = Schema.decodeUnknownEither(Schema.Array(Message), { errors: "all" })

/**
 * Decodes messages of any shape. Well-formed text messages take a fast path;
 * anything else goes through Schema. What cannot be decoded is returned as
 * `issues`, never as a failure: malformed input must not break a call.
 *
 * @since 0.1.0
 * @category decoding
 */
export const decodeMessagesLenient = (input: unknown): {
  readonly messages: ReadonlyArray<Message>
  readonly issues: ReadonlyArray<string> | undefined
} => {
  if (input === undefined) return { messages: [], issues: undefined }
  if (Array.isArray(input)) {
    let plain = true
    for (let i = 0; i < input.length; i++) {
      if (!isPlainMessage(input[i])) {
        plain = false
        break
      }
    }
    if (plain) return { messages: input as ReadonlyArray<Message>, issues: undefined }
  }
  const decoded = decodeMessages(input)
  if (Either.isRight(decoded)) return { messages: decoded.right, issues: undefined }
  // Keep every message that decodes on its own, report the others.
  if (Array.isArray(input)) {
    const messages: Array<Message> = []
    const issues: Array<string> = []
    input.forEach((item, index) => {
      const one = Schema.decodeUnknownEither(Message)(item)
      if (Either.isRight(one)) messages.push(one.right)
      else issues.push(`messages[${index}]: ${ParseResult.TreeFormatter.formatErrorSync(one.left)}`)
    })
    return { messages, issues }
  }
  return { messages: [], issues: [`messages: ${ParseResult.TreeFormatter.formatErrorSync(decoded.left)}`] }
}

const decodeResponse = Schema.decodeUnknownEither(LlmResponse, { errors: "all" })
const decodePythonResponse = Schema.decodeUnknownEither(PythonResponse, { errors: "all" })

const isNonNegativeInt = (u: unknown): u is number => typeof u === "number" && Number.isInteger(u) && u >= 0

const isPlainUsage = (u: unknown): boolean =>
  u === undefined ||
  (typeof u === "object" && u !== null && isNonNegativeInt((u as any).promptTokens) &&
    isNonNegativeInt((u as any).completionTokens) && isNonNegativeInt((u as any).totalTokens) &&
    ((u as any).estimated === undefined || typeof (u as any).estimated === "boolean") &&
    ((u as any).cachedTokens === undefined || isNonNegativeInt((u as any).cachedTokens)) &&
    ((u as any).reasoningTokens === undefined || isNonNegativeInt((u as any).reasoningTokens)))

/**
 * Decodes a response of any shape (ours or the Python design's dictionary).
 * What cannot be decoded is returned as `issues` with an empty response.
 *
 * @since 0.1.0
 * @category decoding
 */
export const decodeResponseLenient = (input: unknown): {
  readonly response: LlmResponse
  readonly issues: ReadonlyArray<string> | undefined
} => {
  if (
    typeof input === "object" && input !== null && typeof (input as any).content === "string" &&
    isPlainUsage((input as any).usage) && !isPythonResponse(input)
  ) {
    return { response: input as LlmResponse, issues: undefined }
  }
  const decoded = isPythonResponse(input) ? decodePythonResponse(input) : decodeResponse(input)
  if (Either.isRight(decoded)) return { response: decoded.right, issues: undefined }
  return {
    response: { content: typeof input === "string" ? input : "" },
    issues: [`response: ${ParseResult.TreeFormatter.formatErrorSync(decoded.left)}`]
  }
}
