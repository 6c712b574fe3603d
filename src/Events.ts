/**
 * The events a handler hears: `start`, then stream chunks, then exactly one
 * of `end` / `error`; and for each tool run, `tool_start` then exactly one of
 * `tool_end` / `tool_error`.
 *
 * Everything here is Schema-defined so that events can be logged, sent over a
 * wire, and decoded from the records of the Python design this library
 * reimplements (snake_case dictionaries such as `tokens_used`, `prompt_tokens`,
 * `completion_tokens`, `response_time`, `cost_estimate`).
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"
import * as Phases from "./internal/phases.js"

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
 * Token usage of one call, whatever the client library's shape. `promptTokens`
 * counts every input token, cached ones included (`cachedTokens` read from the
 * provider's prompt cache, `cacheWriteTokens` written to it);
 * `completionTokens` counts every output token, reasoning ones included.
 * `estimated` is true when the counts were computed with a tokenizer because
 * the provider reported none (or the call was cut off before it could).
 *
 * @since 0.1.0
 * @category models
 */
export const Usage = Schema.Struct({
  promptTokens: Schema.NonNegativeInt,
  completionTokens: Schema.NonNegativeInt,
  totalTokens: Schema.NonNegativeInt,
  /** Input tokens served from the provider's prompt cache (cache read); part of `promptTokens`. */
  cachedTokens: Schema.optional(Schema.NonNegativeInt),
  /** Input tokens written to the provider's prompt cache; part of `promptTokens`. */
  cacheWriteTokens: Schema.optional(Schema.NonNegativeInt),
  /** Reasoning tokens; part of `completionTokens`. */
  reasoningTokens: Schema.optional(Schema.NonNegativeInt),
  /** True when counted with a tokenizer because the provider reported no usage; absent means false. */
  estimated: Schema.optional(Schema.Boolean)
})

/**
 * @since 0.1.0
 * @category models
 */
export type Usage = typeof Usage.Type

const countOf = (u: unknown): number | undefined =>
  typeof u === "number" && Number.isSafeInteger(u) && u >= 0 ? u : undefined

const field = (u: unknown, key: string): unknown =>
  typeof u === "object" && u !== null ? (u as Record<string, unknown>)[key] : undefined

/**
 * The one normalized {@link Usage} of a client library's or a provider's
 * usage, whatever its shape: this library's own; `@effect/ai`'s flat one
 * (`inputTokens`, `outputTokens`, `totalTokens`, `cachedInputTokens`,
 * `reasoningTokens`); the nested one of newer AI SDKs (`inputTokens: { total,
 * cacheRead, cacheWrite }`, `outputTokens: { total, reasoning }`); OpenAI's
 * Chat Completions (`prompt_tokens`, `completion_tokens`,
 * `prompt_tokens_details.cached_tokens`, ...) and Responses (`input_tokens`,
 * `output_tokens`, `input_tokens_details.cached_tokens`,
 * `output_tokens_details.reasoning_tokens`) usage; and Anthropic's, whose
 * `input_tokens` leaves out the cache (`cache_read_input_tokens`,
 * `cache_creation_input_tokens` are added to the prompt). `undefined` when
 * neither input nor output is reported; a field that is not a non-negative
 * integer counts as unreported.
 *
 * @since 0.3.0
 * @category conversions
 */
export const usageFromUnknown = (u: unknown): Usage | undefined => {
  if (typeof u !== "object" || u === null) return undefined
  let prompt: number | undefined
  let completion: number | undefined
  let total: number | undefined
  let cached: number | undefined
  let cacheWrite: number | undefined
  let reasoning: number | undefined
  let estimated: boolean | undefined
  if ("promptTokens" in u || "completionTokens" in u) {
    prompt = countOf(field(u, "promptTokens"))
    completion = countOf(field(u, "completionTokens"))
    total = countOf(field(u, "totalTokens"))
    cached = countOf(field(u, "cachedTokens"))
    cacheWrite = countOf(field(u, "cacheWriteTokens"))
    reasoning = countOf(field(u, "reasoningTokens"))
    if (field(u, "estimated") === true) estimated = true
  } else if ("inputTokens" in u || "outputTokens" in u) {
    const input = field(u, "inputTokens")
    const output = field(u, "outputTokens")
    if (typeof input === "object" && input !== null) {
      prompt = countOf(field(input, "total"))
      cached = countOf(field(input, "cacheRead"))
      cacheWrite = countOf(field(input, "cacheWrite"))
    } else {
      prompt = countOf(input)
      cached = countOf(field(u, "cachedInputTokens"))
    }
    if (typeof output === "object" && output !== null) {
      completion = countOf(field(output, "total"))
      reasoning = countOf(field(output, "reasoning"))
    } else {
      completion = countOf(output)
      reasoning = countOf(field(u, "reasoningTokens"))
    }
    total = countOf(field(u, "totalTokens"))
  } else if ("prompt_tokens" in u || "completion_tokens" in u) {
    prompt = countOf(field(u, "prompt_tokens"))
    completion = countOf(field(u, "completion_tokens"))
    total = countOf(field(u, "total_tokens")) ?? countOf(field(u, "tokens_used"))
    cached = countOf(field(field(u, "prompt_tokens_details"), "cached_tokens"))
    reasoning = countOf(field(field(u, "completion_tokens_details"), "reasoning_tokens"))
  } else if ("input_tokens" in u || "output_tokens" in u) {
    const read = countOf(field(u, "cache_read_input_tokens"))
    const write = countOf(field(u, "cache_creation_input_tokens"))
    completion = countOf(field(u, "output_tokens"))
    total = countOf(field(u, "total_tokens"))
    if (read !== undefined || write !== undefined) {
      // Anthropic: input_tokens are the uncached ones only.
      prompt = (countOf(field(u, "input_tokens")) ?? 0) + (read ?? 0) + (write ?? 0)
      cached = read
      cacheWrite = write
    } else {
      prompt = countOf(field(u, "input_tokens"))
      cached = countOf(field(field(u, "input_tokens_details"), "cached_tokens"))
      reasoning = countOf(field(field(u, "output_tokens_details"), "reasoning_tokens"))
    }
  }
  if (prompt === undefined && completion === undefined) return undefined
  const promptTokens = prompt ?? 0
  const completionTokens = completion ?? 0
  const usage: { -readonly [K in keyof Usage]: Usage[K] } = {
    promptTokens,
    completionTokens,
    // A total of 0 next to counts means the provider did not report one.
    totalTokens: total !== undefined && total > 0 ? total : promptTokens + completionTokens
  }
  if (cached !== undefined) usage.cachedTokens = cached
  if (cacheWrite !== undefined) usage.cacheWriteTokens = cacheWrite
  if (reasoning !== undefined) usage.reasoningTokens = reasoning
  if (estimated === true) usage.estimated = true
  return usage
}

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
  /** The reasoning text the provider streamed, when it did (its tokens are output tokens). */
  reasoning: Schema.optional(Schema.String),
  usage: Schema.optional(Usage),
  finishReason: Schema.optional(Schema.String),
  model: Schema.optional(Schema.String),
  /** The provider's id of the response (`gen_ai.response.id`). */
  id: Schema.optional(Schema.String),
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
  startedAt: Schema.Number,
  /**
   * The operation this call is an attempt of (`Callbacks.withOperation`): every
   * retried attempt of one logical call shares it. Absent: the call is an
   * operation of its own.
   */
  operationId: Schema.optional(Schema.String),
  /** The attempt number within its operation, from 1. Absent means 1. */
  attempt: Schema.optional(Schema.Int)
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
export const StartEvent = Schema.TaggedStruct(Phases.phaseTable.start.tag, {
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
export const EndEvent = Schema.TaggedStruct(Phases.phaseTable.end.tag, {
  call: CallInfo,
  messages: Schema.Array(Message),
  response: LlmResponse,
  durationMs: Schema.Number,
  /** Time to the first streamed part, for streams. */
  timeToFirstTokenMs: Schema.optional(Schema.Number),
  /**
   * For streams: the time between consecutive chunks, ms, for each chunk
   * after the first (the GenAI `time_per_output_chunk`; at most 10,000 kept).
   */
  chunkIntervalsMs: Schema.optional(Schema.Array(Schema.Number)),
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
export const ErrorEvent = Schema.TaggedStruct(Phases.phaseTable.error.tag, {
  call: CallInfo,
  messages: Schema.Array(Message),
  failure: CallFailure,
  durationMs: Schema.Number,
  interrupted: Schema.Boolean,
  timeToFirstTokenMs: Schema.optional(Schema.Number),
  /** For streams: the time between consecutive chunks, ms (see `EndEvent`). */
  chunkIntervalsMs: Schema.optional(Schema.Array(Schema.Number)),
  /**
   * What the call produced before it failed or was cut off (a stream stopped
   * early, or failing midway): the content received and the tokens it
   * consumed (the prompt and the output received; estimated with a
   * tokenizer when the provider reported none, and then flagged). Billed
   * tokens are recorded from it like an end event's.
   */
  response: Schema.optional(LlmResponse)
})

/**
 * @since 0.1.0
 * @category models
 */
export type ErrorEvent = typeof ErrorEvent.Type

/**
 * One streamed piece of a call's output, between its start and its terminal
 * event: a text delta, or a reasoning delta (`kind: "reasoning"`).
 *
 * @since 0.3.0
 * @category models
 */
export const ChunkEvent = Schema.TaggedStruct(Phases.phaseTable.chunk.tag, {
  call: CallInfo,
  /** Position of the chunk among the call's chunks, from 0. */
  index: Schema.Int,
  kind: Schema.Literal("text", "reasoning"),
  delta: Schema.String,
  /** Milliseconds since the call started. */
  elapsedMs: Schema.Number,
  /** Milliseconds since the call's previous chunk (since its start for the first). */
  intervalMs: Schema.Number
})

/**
 * @since 0.3.0
 * @category models
 */
export type ChunkEvent = typeof ChunkEvent.Type

/**
 * The tool a tool run executes: its name, and the id of the tool call the
 * model made (the provider's id when known).
 *
 * @since 0.3.0
 * @category models
 */
export const ToolCall = Schema.Struct({ name: Schema.String, id: Schema.optional(Schema.String) })

/**
 * @since 0.3.0
 * @category models
 */
export type ToolCall = typeof ToolCall.Type

/**
 * Emitted before a tool runs. `call` is the tool run's own info: its
 * `callId` is the run's, its `parentCallId` the LLM call that asked for the
 * tool, its `provider` and `model` that call's (when known), and
 * `metadata["gen_ai.operation.name"]` is `"execute_tool"`.
 *
 * @since 0.3.0
 * @category models
 */
export const ToolStartEvent = Schema.TaggedStruct(Phases.phaseTable.tool_start.tag, {
  call: CallInfo,
  tool: ToolCall,
  params: Schema.Unknown
})

/**
 * @since 0.3.0
 * @category models
 */
export type ToolStartEvent = typeof ToolStartEvent.Type

/**
 * Emitted once when a tool run succeeded.
 *
 * @since 0.3.0
 * @category models
 */
export const ToolEndEvent = Schema.TaggedStruct(Phases.phaseTable.tool_end.tag, {
  call: CallInfo,
  tool: ToolCall,
  params: Schema.Unknown,
  result: Schema.Unknown,
  durationMs: Schema.Number
})

/**
 * @since 0.3.0
 * @category models
 */
export type ToolEndEvent = typeof ToolEndEvent.Type

/**
 * Emitted once when a tool run failed, died or was interrupted.
 *
 * @since 0.3.0
 * @category models
 */
export const ToolErrorEvent = Schema.TaggedStruct(Phases.phaseTable.tool_error.tag, {
  call: CallInfo,
  tool: ToolCall,
  params: Schema.Unknown,
  failure: CallFailure,
  durationMs: Schema.Number,
  interrupted: Schema.Boolean
})

/**
 * @since 0.3.0
 * @category models
 */
export type ToolErrorEvent = typeof ToolErrorEvent.Type

/**
 * Any event.
 *
 * @since 0.1.0
 * @category models
 */
export const CallbackEvent = Schema.Union(
  StartEvent,
  ChunkEvent,
  ToolStartEvent,
  ToolEndEvent,
  ToolErrorEvent,
  EndEvent,
  ErrorEvent
)

/**
 * @since 0.1.0
 * @category models
 */
export type CallbackEvent = PhaseEvents[Phase]

/**
 * The lifecycle phases: `start`, `chunk`s, then exactly one of `end` /
 * `error`; for tool runs `tool_start` then one of `tool_end` / `tool_error`.
 *
 * @since 0.1.0
 * @category models
 */
export type Phase = Phases.Phase

/**
 * The event of each phase.
 *
 * @since 0.2.0
 * @category models
 */
export interface PhaseEvents {
  readonly start: StartEvent
  readonly chunk: ChunkEvent
  readonly tool_start: ToolStartEvent
  readonly tool_end: ToolEndEvent
  readonly tool_error: ToolErrorEvent
  readonly end: EndEvent
  readonly error: ErrorEvent
}

/**
 * The phase of an event.
 *
 * @since 0.1.0
 * @category getters
 */
export const phaseOf = (event: CallbackEvent): Phase => Phases.phases[Phases.phaseIndexOfTag(event._tag)]!
