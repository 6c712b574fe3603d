/**
 * Structured logs of every call through Effect's `Logger`: one line per phase
 * (`llm start`, `llm end` at Info, `llm error` at Error, or Warning when the
 * call was interrupted), annotated with the handler's name, the trace and
 * span ids (with a tracer installed), the call id, parent call id,
 * operation id and attempt, provider, model, user id, duration, token counts
 * (cached, cache-write and reasoning ones apart), cost, and for errors their
 * type, kind and HTTP status (when the error carries one) and what a cut-off
 * call consumed. Tool runs get `tool start`, `tool end` (Info) and `tool
 * error` (Error) lines with the tool's name, its run's and its parent call's
 * ids and the duration. Stream chunks are not logged one by one.
 *
 * Message and response content, tool parameters and results, and error
 * messages (a provider's error often quotes the prompt), are redacted by
 * default: only their length in characters is logged. `includeContent` logs
 * them, truncated to `maxContentLength` characters.
 *
 * `level` (`CALLBACK_LOG_LEVEL`) is the minimum level of these lines: with
 * `Error`, only errors are logged; with `None`, nothing. Effect's own
 * minimum log level still applies on top.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { Dispatcher } from "effect-llm-callbacks"
 * import * as Logging from "effect-llm-callbacks/layers/Logging"
 *
 * const Callbacks = Logging.layer({ level: "Info", includeContent: true, maxContentLength: 200 }).pipe(
 *   Layer.provideMerge(Dispatcher.layer())
 * )
 * ```
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Dispatcher from "../src/Dispatcher.js"
import type {
  CallbackEvent,
  EndEvent,
  ErrorEvent,
  Message,
  StartEvent,
  ToolEndEvent,
  ToolErrorEvent,
  ToolStartEvent,
  Usage
} from "../src/Events.js"
import * as Handler from "../src/Handler.js"
import type { HandlerRegistrationError } from "../src/HandlerError.js"

/**
 * Options of the logging handler.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Handler name, default `"logging"`. */
  readonly name?: string | undefined
  /** Minimum level of the handler's lines. Default `Info`. */
  readonly level?: LogLevel.Literal | undefined
  /** Log message and response content (truncated). Default `false`: lengths only. */
  readonly includeContent?: boolean | undefined
  /** Characters of content kept when `includeContent` is set. Default 500. */
  readonly maxContentLength?: number | undefined
  readonly mode?: Handler.Mode | undefined
}

/**
 * Options with every default applied.
 *
 * @since 0.1.0
 * @category models
 */
export interface Resolved {
  readonly name: string
  readonly level: LogLevel.LogLevel
  readonly includeContent: boolean
  readonly maxContentLength: number
  readonly mode: Handler.Mode | undefined
}

const invalid = (name: string, value: unknown, expected: string) =>
  ConfigError.InvalidData([], `${name}: expected ${expected}, got ${JSON.stringify(value)}`)

const levelNames: Readonly<Record<string, LogLevel.LogLevel>> = {
  all: LogLevel.All,
  trace: LogLevel.Trace,
  debug: LogLevel.Debug,
  info: LogLevel.Info,
  warn: LogLevel.Warning,
  warning: LogLevel.Warning,
  error: LogLevel.Error,
  fatal: LogLevel.Fatal,
  critical: LogLevel.Fatal,
  none: LogLevel.None,
  off: LogLevel.None
}

const levelExpected = "one of All, Trace, Debug, Info, Warning, Error, Fatal, None (or WARN, CRITICAL, OFF)"

/**
 * Reads a log level name: Effect's (`Info`, `Warning`, ...) or Python's
 * (`INFO`, `WARNING`, `CRITICAL`), in any case.
 *
 * @since 0.1.0
 * @category constructors
 */
export const parseLevel = (raw: string): LogLevel.LogLevel | undefined => levelNames[raw.trim().toLowerCase()]

/**
 * Checks options and fills in defaults; the error names the setting and its value.
 *
 * @since 0.1.0
 * @category constructors
 */
export const resolve = (options: Options = {}): Either.Either<Resolved, ConfigError.ConfigError> => {
  let level: LogLevel.LogLevel = LogLevel.Info
  if (options.level !== undefined) {
    const parsed = typeof options.level === "string" ? parseLevel(options.level) : undefined
    if (parsed === undefined) return Either.left(invalid("level", options.level, levelExpected))
    level = parsed
  }
  const max = options.maxContentLength
  if (max !== undefined && (!Number.isSafeInteger(max) || max < 0)) {
    return Either.left(invalid("maxContentLength", max, "an integer >= 0"))
  }
  if (options.mode !== undefined && options.mode !== "await" && options.mode !== "background") {
    return Either.left(invalid("mode", options.mode, `"await" or "background"`))
  }
  return Either.right({
    name: options.name ?? "logging",
    level,
    includeContent: options.includeContent ?? false,
    maxContentLength: max ?? 500,
    mode: options.mode
  })
}

/**
 * The handler's settings from the environment: `CALLBACK_LOG_LEVEL` (default
 * `Info`) and `CALLBACK_LOG_CONTENT` (default `false`).
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  level: Config.string("CALLBACK_LOG_LEVEL").pipe(
    Config.mapOrFail((raw) => {
      const level = parseLevel(raw)
      return level === undefined
        ? Either.left(ConfigError.InvalidData([], `expected ${levelExpected}, got ${JSON.stringify(raw)}`))
        : Either.right(level.label as LogLevel.Literal)
    }),
    Config.withDefault<LogLevel.Literal>("Info")
  ),
  // true/false, yes/no, on/off, 1/0.
  includeContent: Config.boolean("CALLBACK_LOG_CONTENT").pipe(Config.withDefault(false))
})

const textOf = (content: Message["content"]): string => {
  if (typeof content === "string") return content
  let text = ""
  for (const part of content) {
    if (typeof part.text === "string") text += part.text
  }
  return text
}

/** The HTTP status of a failure, where the error carries one (`status`, `statusCode`, `response.status`). */
const statusOf = (error: unknown): number | undefined => {
  if (typeof error !== "object" || error === null) return undefined
  const e = error as { readonly status?: unknown; readonly statusCode?: unknown; readonly response?: { readonly status?: unknown } }
  const status = e.status ?? e.statusCode ?? (typeof e.response === "object" && e.response !== null ? e.response.status : undefined)
  return typeof status === "number" && Number.isInteger(status) && status >= 100 && status <= 599 ? status : undefined
}

/**
 * Cuts text to `max` characters, saying how many were left out.
 *
 * @since 0.1.0
 * @category utils
 */
export const truncate = (text: string, max: number): string =>
  text.length <= max ? text : `${text.slice(0, max)}…[+${text.length - max} chars]`

const callAnnotations = (event: CallbackEvent): Record<string, unknown> => {
  const call = event.call
  const annotations: Record<string, unknown> = {
    call_id: call.callId,
    provider: call.provider,
    model: call.model
  }
  if (call.parentCallId !== undefined) annotations.parent_call_id = call.parentCallId
  if (call.operationId !== undefined) annotations.operation_id = call.operationId
  if (call.attempt !== undefined) annotations.attempt = call.attempt
  if (call.userId !== undefined) annotations.user_id = call.userId
  return annotations
}

const usageAnnotations = (usage: Usage, annotations: Record<string, unknown>): void => {
  annotations.prompt_tokens = usage.promptTokens
  annotations.completion_tokens = usage.completionTokens
  annotations.total_tokens = usage.totalTokens
  if (usage.cachedTokens !== undefined) annotations.cached_tokens = usage.cachedTokens
  if (usage.cacheWriteTokens !== undefined) annotations.cache_write_tokens = usage.cacheWriteTokens
  if (usage.reasoningTokens !== undefined) annotations.reasoning_tokens = usage.reasoningTokens
  if (usage.estimated === true) annotations.tokens_estimated = true
}

/** The length of a value's JSON text (what `includeContent` would log). */
const jsonLength = (u: unknown): number => {
  try {
    return JSON.stringify(u)?.length ?? 0
  } catch {
    return 0
  }
}

const jsonText = (u: unknown): string => {
  try {
    return JSON.stringify(u) ?? String(u)
  } catch {
    return String(u)
  }
}

/**
 * The logging handler.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeHandler = (options: Resolved): Handler.Handler => {
  const enabled = (level: LogLevel.LogLevel) => LogLevel.greaterThanEqual(level, options.level)
  const messagesOf = (messages: ReadonlyArray<Message>, annotations: Record<string, unknown>) => {
    let chars = 0
    for (const message of messages) chars += textOf(message.content).length
    annotations.message_count = messages.length
    annotations.input_chars = chars
    if (options.includeContent) {
      annotations.messages = messages.map((message) => ({
        role: message.role,
        content: truncate(textOf(message.content), options.maxContentLength)
      }))
    }
  }
  // Every line names the handler and, with a tracer installed, the trace and span it belongs to.
  const log = (level: LogLevel.LogLevel, message: string, annotations: Record<string, unknown>) =>
    Effect.withFiberRuntime<void>((fiber) => {
      annotations.handler = options.name
      const span = fiber.currentSpan
      if (span !== undefined) {
        annotations.trace_id = span.traceId
        annotations.span_id = span.spanId
      }
      return Effect.annotateLogs(Effect.logWithLevel(level, message), annotations)
    })

  const onLlmStart = (event: StartEvent): Effect.Effect<void> => {
    if (!enabled(LogLevel.Info)) return Effect.void
    const annotations = callAnnotations(event)
    annotations.phase = "start"
    messagesOf(event.messages, annotations)
    return log(LogLevel.Info, `llm start ${event.call.provider}/${event.call.model}`, annotations)
  }

  const onLlmEnd = (event: EndEvent): Effect.Effect<void> => {
    if (!enabled(LogLevel.Info)) return Effect.void
    const annotations = callAnnotations(event)
    const response = event.response
    annotations.phase = "end"
    annotations.duration_ms = event.durationMs
    if (event.timeToFirstTokenMs !== undefined) annotations.time_to_first_token_ms = event.timeToFirstTokenMs
    if (response.usage !== undefined) usageAnnotations(response.usage, annotations)
    if (response.finishReason !== undefined) annotations.finish_reason = response.finishReason
    if (response.model !== undefined) annotations.response_model = response.model
    if (response.costEstimate !== undefined) annotations.cost_estimate = response.costEstimate
    annotations.output_chars = response.content.length
    if (options.includeContent) annotations.response = truncate(response.content, options.maxContentLength)
    if (event.outputIssues !== undefined) annotations.output_issues = event.outputIssues.length
    return log(LogLevel.Info, `llm end ${event.call.provider}/${event.call.model}`, annotations)
  }

  const onLlmError = (event: ErrorEvent): Effect.Effect<void> => {
    const level = event.interrupted ? LogLevel.Warning : LogLevel.Error
    if (!enabled(level)) return Effect.void
    const annotations = callAnnotations(event)
    annotations.phase = "error"
    annotations.duration_ms = event.durationMs
    annotations.error_kind = event.failure.kind
    annotations.error_type = event.failure.errorType
    // Error text is content: a provider error often quotes the prompt. Without
    // `includeContent` only its length is logged; the type, kind and status stay.
    if (options.includeContent) annotations.error_message = truncate(event.failure.message, options.maxContentLength)
    else annotations.error_message_length = event.failure.message.length
    const status = statusOf(event.failure.error)
    if (status !== undefined) annotations.error_status = status
    annotations.interrupted = event.interrupted
    // What a cut-off call consumed (billed).
    if (event.response?.usage !== undefined) usageAnnotations(event.response.usage, annotations)
    if (event.response?.costEstimate !== undefined) annotations.cost_estimate = event.response.costEstimate
    return log(level, `llm error ${event.call.provider}/${event.call.model}: ${event.failure.errorType}`, annotations)
  }

  const toolAnnotations = (event: ToolStartEvent | ToolEndEvent | ToolErrorEvent, phase: string) => {
    const annotations = callAnnotations(event)
    annotations.phase = phase
    annotations.tool_name = event.tool.name
    if (event.tool.id !== undefined) annotations.tool_call_id = event.tool.id
    if (options.includeContent) annotations.tool_params = truncate(jsonText(event.params), options.maxContentLength)
    else annotations.tool_params_chars = jsonLength(event.params)
    return annotations
  }

  const onToolStart = (event: ToolStartEvent): Effect.Effect<void> =>
    enabled(LogLevel.Info)
      ? log(LogLevel.Info, `tool start ${event.tool.name}`, toolAnnotations(event, "tool_start"))
      : Effect.void

  const onToolEnd = (event: ToolEndEvent): Effect.Effect<void> => {
    if (!enabled(LogLevel.Info)) return Effect.void
    const annotations = toolAnnotations(event, "tool_end")
    annotations.duration_ms = event.durationMs
    if (options.includeContent) annotations.tool_result = truncate(jsonText(event.result), options.maxContentLength)
    else annotations.tool_result_chars = jsonLength(event.result)
    return log(LogLevel.Info, `tool end ${event.tool.name}`, annotations)
  }

  const onToolError = (event: ToolErrorEvent): Effect.Effect<void> => {
    const level = event.interrupted ? LogLevel.Warning : LogLevel.Error
    if (!enabled(level)) return Effect.void
    const annotations = toolAnnotations(event, "tool_error")
    annotations.duration_ms = event.durationMs
    annotations.error_kind = event.failure.kind
    annotations.error_type = event.failure.errorType
    if (options.includeContent) annotations.error_message = truncate(event.failure.message, options.maxContentLength)
    else annotations.error_message_length = event.failure.message.length
    annotations.interrupted = event.interrupted
    return log(level, `tool error ${event.tool.name}: ${event.failure.errorType}`, annotations)
  }

  return Handler.make({
    name: options.name,
    onLlmStart,
    onLlmEnd,
    onLlmError,
    onToolStart,
    onToolEnd,
    onToolError,
    mode: options.mode
  })
}

/**
 * Registers the logging handler for the layer's lifetime. A bad option fails
 * the layer with a `ConfigError` naming it.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<never, ConfigError.ConfigError | HandlerRegistrationError, Dispatcher.Dispatcher> =>
  Layer.unwrapEffect(Effect.map(resolve(options), (resolved) => Dispatcher.toLayer(makeHandler(resolved))))

/**
 * The logging handler configured from the environment (`CALLBACK_LOG_LEVEL`,
 * `CALLBACK_LOG_CONTENT`), or the given config.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (
  options: Config.Config<Options> = config
): Layer.Layer<never, ConfigError.ConfigError | HandlerRegistrationError, Dispatcher.Dispatcher> =>
  Layer.unwrapEffect(
    Effect.flatMap(options, (o) => Effect.map(resolve(o), (resolved) => Dispatcher.toLayer(makeHandler(resolved))))
  )
