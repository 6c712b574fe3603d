/**
 * Callbacks for `@effect/ai`: a layer over an existing `LanguageModel` layer that instruments every
 * `generateText`, `generateObject` and `streamText` call, without changing the `LanguageModel` API.
 *
 * - `start` carries the prompt as `{ role, content }` messages (text parts joined, other parts such as
 *   images, files and tool calls summarised), the provider, the model and the request options.
 * - `end` carries the text and reasoning, the usage of the finish part (input → prompt, output →
 *   completion, total, cached input, reasoning), the finish reason, the response id and the model id the
 *   provider answered with.
 * - `error` carries the `AiError` (or the defect); an interrupted call is marked interrupted.
 * - Streams: `start` is dispatched when the stream starts, before its first part is requested; a `chunk`
 *   per text and reasoning delta (for handlers with a chunk hook); `end` (with the time to the first
 *   token and between chunks) once the stream completes; `error` when it fails; `error` marked
 *   interrupted when the consumer stops early or is interrupted, carrying what the stream had consumed.
 *   Exactly one terminal event per stream; its span is the parent of the model's and HTTP spans.
 * - Tools: every toolkit handler the model's tool calls run is a tool run (`tool_start`, then `tool_end`
 *   or `tool_error`), a child of the model call.
 *
 * Per-call user id, tags, metadata and parent call id come from {@link withCallContext}.
 *
 * @since 0.1.0
 */
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as Model from "@effect/ai/Model"
import * as Prompt from "@effect/ai/Prompt"
import type * as Response from "@effect/ai/Response"
import type * as Toolkit from "@effect/ai/Toolkit"
import type * as Cause from "effect/Cause"
import * as Channel from "effect/Channel"
import type * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { dual } from "effect/Function"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as Tracer from "effect/Tracer"
import * as Callbacks from "../src/Callbacks.js"
import * as Dispatcher from "../src/Dispatcher.js"
import { type LlmResponse, type Message, type Usage, usageFromUnknown } from "../src/Events.js"

// =============================================================================
// Models
// =============================================================================

/**
 * Options of {@link layer}, {@link withCallbacks} and {@link make}.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /**
   * The provider name reported in `CallInfo.provider`. Default: the `Model.ProviderName` of the wrapped
   * layer (`"openai"` for `OpenAiLanguageModel.model(...)`), else {@link unknown}.
   */
  readonly provider?: string | undefined
  /**
   * The model name reported in `CallInfo.model`. The `LanguageModel` service does not expose the model
   * it was built for, so name it here; default {@link unknown}. Whatever it is, `response.model` of the
   * end event is the model id the provider reported in its `response-metadata` part.
   */
  readonly model?: string | undefined
  /** Request parameters added to every start event (e.g. the `temperature` the model layer was built with). */
  readonly params?: Readonly<Record<string, unknown>> | undefined
  /**
   * The provider's server (`server.address`, `server.port` of the GenAI conventions), added to every
   * call's metadata: spans and the GenAI metrics carry it.
   */
  readonly server?: { readonly address: string; readonly port?: number | undefined } | undefined
}

/**
 * The provider or model name reported when it is not known.
 *
 * @since 0.1.0
 * @category constants
 */
export const unknown = "unknown"

/**
 * Which `LanguageModel` method a call went through, reported in the start event's `params.operation`.
 *
 * @since 0.1.0
 * @category models
 */
export type Operation = "generateText" | "generateObject" | "streamText"

// =============================================================================
// Conversions
// =============================================================================

const partSummary = (part: unknown): string | undefined => {
  if (typeof part === "string") return part
  if (typeof part !== "object" || part === null) return "[part]"
  const p = part as Record<string, unknown>
  switch (p["type"]) {
    case "text":
      return typeof p["text"] === "string" ? p["text"] : "[text]"
    case "reasoning":
      return `[reasoning${typeof p["text"] === "string" ? `: ${p["text"].length} chars` : ""}]`
    case "file": {
      const mediaType = typeof p["mediaType"] === "string" ? p["mediaType"] : "unknown type"
      const kind = mediaType.startsWith("image/") ? "image" : "file"
      return `[${kind} ${mediaType}${typeof p["fileName"] === "string" ? ` ${p["fileName"]}` : ""}]`
    }
    case "tool-call":
      return `[tool-call ${typeof p["name"] === "string" ? p["name"] : "?"}]`
    case "tool-result":
      return `[tool-result ${typeof p["name"] === "string" ? p["name"] : "?"}${p["isFailure"] === true ? " failed" : ""}]`
    default:
      return `[${typeof p["type"] === "string" ? p["type"] : "part"}]`
  }
}

const contentSummary = (content: unknown): string => {
  if (typeof content === "string") return content
  if (!Array.isArray(content)) return content === undefined || content === null ? "" : "[content]"
  const out: Array<string> = []
  for (const part of content) {
    const summary = partSummary(part)
    if (summary !== undefined) out.push(summary)
  }
  return out.join("\n")
}

const messageSummary = (message: unknown): Message => {
  if (typeof message !== "object" || message === null) return { role: unknown, content: contentSummary(message) }
  const m = message as Record<string, unknown>
  return { role: typeof m["role"] === "string" ? m["role"] : unknown, content: contentSummary(m["content"]) }
}

/**
 * The `{ role, content }` messages of a prompt as handlers see them: text parts joined by a newline,
 * other parts summarised (`[image image/png cat.png]`, `[file application/pdf]`, `[tool-call get_weather]`,
 * `[tool-result get_weather]`, `[reasoning: 120 chars]`). Accepts every `Prompt.RawInput` (a string, a
 * `Prompt`, encoded or decoded messages) and anything else without throwing.
 *
 * @since 0.1.0
 * @category conversions
 */
export const messagesOf = (prompt: unknown): ReadonlyArray<Message> => {
  try {
    if (typeof prompt === "string") return [{ role: "user", content: prompt }]
    if (Prompt.isPrompt(prompt)) return prompt.content.map(messageSummary)
    if (Array.isArray(prompt)) return prompt.map(messageSummary)
    if (typeof prompt === "object" && prompt !== null && Symbol.iterator in prompt) {
      return Array.from(prompt as Iterable<unknown>, messageSummary)
    }
    return prompt === undefined ? [] : [messageSummary(prompt)]
  } catch {
    // A hostile prompt (a throwing getter or iterator) must not break the call: the model sees it as is.
    return []
  }
}

/**
 * Maps `@effect/ai` usage to the events' one normalized usage (`Events.usageFromUnknown`): input →
 * prompt, output → completion, total, cached input, reasoning. Returns `undefined` when the provider
 * reported none (input and output both unknown), so the detailed token handler estimates it; fields that
 * are not non-negative integers count as unknown.
 *
 * @since 0.1.0
 * @category conversions
 */
export const usageOf = (usage: Partial<Response.Usage> | undefined): Usage | undefined => usageFromUnknown(usage)

/**
 * Accumulates the parts of a response (all at once or streamed) into an {@link LlmResponse}: text parts
 * and text deltas concatenated, the usage and reason of the finish part, the model id of the
 * `response-metadata` part.
 *
 * @since 0.1.0
 * @category models
 */
export interface ResponseAccumulator {
  readonly add: (part: Response.AnyPart) => void
  /** Whether the finish part has been seen. */
  readonly finished: () => boolean
  readonly response: () => LlmResponse
}

/**
 * A new {@link ResponseAccumulator}.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeAccumulator = (): ResponseAccumulator => {
  const text: Array<string> = []
  const reasoning: Array<string> = []
  let usage: Usage | undefined
  let finishReason: string | undefined
  let model: string | undefined
  let id: string | undefined
  let finished = false
  return {
    add: (part) => {
      switch (part.type) {
        case "text":
          text.push(part.text)
          break
        case "text-delta":
          text.push(part.delta)
          break
        case "reasoning":
          reasoning.push(part.text)
          break
        case "reasoning-delta":
          reasoning.push(part.delta)
          break
        case "finish":
          finished = true
          finishReason = part.reason
          usage = usageOf(part.usage)
          break
        case "response-metadata":
          if (Option.isSome(part.modelId)) model = part.modelId.value
          if (Option.isSome(part.id)) id = part.id.value
          break
      }
    },
    finished: () => finished,
    response: () => ({
      content: text.join(""),
      ...(reasoning.length > 0 ? { reasoning: reasoning.join("") } : {}),
      ...(usage !== undefined ? { usage } : {}),
      ...(finishReason !== undefined ? { finishReason } : {}),
      ...(model !== undefined ? { model } : {}),
      ...(id !== undefined ? { id } : {})
    })
  }
}

/**
 * The {@link LlmResponse} of a `generateText` / `generateObject` response.
 *
 * @since 0.1.0
 * @category conversions
 */
export const responseOf = (response: { readonly content: ReadonlyArray<Response.AnyPart> }): LlmResponse => {
  const accumulator = makeAccumulator()
  for (const part of response.content) accumulator.add(part)
  return accumulator.response()
}

const isFirstToken = (part: Response.AnyPart): boolean =>
  part.type === "text-delta" || part.type === "reasoning-delta" || part.type === "tool-params-delta" ||
  part.type === "text" || part.type === "tool-call"

const paramsOf = (
  operation: Operation,
  options: Readonly<Record<string, unknown>>,
  extra: Readonly<Record<string, unknown>> | undefined
): Record<string, unknown> => {
  const params: Record<string, unknown> = { ...extra, operation }
  if (options["toolChoice"] !== undefined) params["toolChoice"] = options["toolChoice"]
  if (options["concurrency"] !== undefined) params["concurrency"] = options["concurrency"]
  if (options["disableToolCallResolution"] !== undefined) {
    params["disableToolCallResolution"] = options["disableToolCallResolution"]
  }
  if (options["objectName"] !== undefined) params["objectName"] = options["objectName"]
  const toolkit = options["toolkit"]
  // A `Toolkit` (a function object, and an effect) and a `Toolkit.WithHandler` both name their tools.
  if ((typeof toolkit === "object" || typeof toolkit === "function") && toolkit !== null && "tools" in toolkit) {
    const tools = toolkit.tools
    if (typeof tools === "object" && tools !== null) params["tools"] = Object.keys(tools)
  }
  return params
}

// =============================================================================
// Constructors
// =============================================================================

interface Resolved {
  readonly provider: string
  readonly model: string
  readonly params: Readonly<Record<string, unknown>> | undefined
  readonly metadata: Readonly<Record<string, unknown>> | undefined
  readonly dispatcher: Dispatcher.Dispatcher.Service | undefined
}

/**
 * The wrapped model may be built without a dispatcher in the calling fiber (e.g. the layer was given its
 * dispatcher with `Layer.provide`): then the dispatcher seen when the layer was built is used.
 */
const withDispatcher = <A, E, R>(resolved: Resolved, self: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  resolved.dispatcher === undefined
    ? self
    : Effect.withFiberRuntime((fiber) =>
      fiber.currentContext.unsafeMap.has(Dispatcher.Dispatcher.key)
        ? self
        : Effect.provideService(self, Dispatcher.Dispatcher, resolved.dispatcher!)
    )

/**
 * Normalises the prompt once: a one-shot iterable (a generator) must be read by the handlers and by the
 * model alike, so it is materialised into an array handed on to the model.
 */
const normalise = <O extends { readonly prompt: Prompt.RawInput }>(options: O): O => {
  const prompt: unknown = options.prompt
  if (
    typeof prompt !== "object" || prompt === null || Array.isArray(prompt) || Prompt.isPrompt(prompt) ||
    !(Symbol.iterator in prompt)
  ) return options
  try {
    return { ...options, prompt: Array.from(prompt as Iterable<Prompt.MessageEncoded>) }
  } catch {
    // The model reports a broken prompt its own way (a defect when the call runs), not us, and not now.
    return options
  }
}

/**
 * The toolkit of a call with each tool run instrumented (`Callbacks.instrumentTool`): its handlers hear
 * `tool_start` and `tool_end` / `tool_error` with the tool's name, parameters and result, as runs whose
 * parent is the model call. A tool whose failure is returned to the model (failure mode `"return"`) is
 * heard as `tool_error`.
 */
const withInstrumentedToolkit = <O extends Readonly<Record<string, unknown>>>(resolved: Resolved, options: O): O => {
  const toolkit = options["toolkit"]
  if (toolkit === undefined || toolkit === null) return options
  const wrapHandler = (withHandler: Toolkit.WithHandler<any>): Toolkit.WithHandler<any> => ({
    tools: withHandler.tools,
    handle: (name: any, params: any) =>
      Callbacks.instrumentTool(withHandler.handle(name, params), {
        name: String(name),
        params,
        provider: resolved.provider,
        model: resolved.model,
        failureOf: (result: { readonly isFailure: boolean; readonly result: unknown }) =>
          result.isFailure ? result.result : undefined
      })
  })
  return {
    ...options,
    toolkit: Effect.isEffect(toolkit)
      ? Effect.map(toolkit as Effect.Effect<Toolkit.WithHandler<any>>, wrapHandler)
      : wrapHandler(toolkit as Toolkit.WithHandler<any>)
  }
}

const instrumentEffect = <A extends { readonly content: ReadonlyArray<Response.AnyPart> }, E, R>(
  resolved: Resolved,
  operation: Operation,
  options: Readonly<Record<string, unknown>> & { readonly prompt: Prompt.RawInput },
  call: (options: any) => Effect.Effect<A, E, R>
): Effect.Effect<A, E, R> => {
  const normalised = normalise(options)
  return withDispatcher(
    resolved,
    Callbacks.instrument(call(withInstrumentedToolkit(resolved, normalised)), {
      provider: resolved.provider,
      model: resolved.model,
      messages: messagesOf(normalised.prompt),
      params: paramsOf(operation, normalised, resolved.params),
      metadata: resolved.metadata,
      response: responseOf
    })
  )
}

/**
 * One channel stage that watches the model's stream: the parts (for the response and the time to the first
 * token), its failure and its end. One stage rather than `mapChunks` + `tapErrorCause` + `onEnd`: each stage
 * costs a channel hop per chunk, and streams come in many small chunks.
 */
const observe = <E>(
  onChunk: (chunk: Chunk.Chunk<Response.AnyPart>) => void,
  onFailure: (cause: Cause.Cause<E>) => void,
  onEnd: () => void
): Channel.Channel<
  Chunk.Chunk<Response.AnyPart>,
  Chunk.Chunk<Response.AnyPart>,
  E,
  E,
  unknown,
  unknown
> => {
  const loop: Channel.Channel<
    Chunk.Chunk<Response.AnyPart>,
    Chunk.Chunk<Response.AnyPart>,
    E,
    E,
    unknown,
    unknown
  > = Channel.readWithCause({
    onInput: (chunk: Chunk.Chunk<Response.AnyPart>) => {
      onChunk(chunk)
      return Channel.flatMap(Channel.write(chunk), () => loop)
    },
    onFailure: (cause: Cause.Cause<E>) => {
      onFailure(cause)
      return Channel.failCause(cause)
    },
    onDone: (done: unknown) => {
      onEnd()
      return Channel.succeed(done)
    }
  })
  return loop
}

const instrumentStream = <E, R>(
  resolved: Resolved,
  options: Readonly<Record<string, unknown>> & { readonly prompt: Prompt.RawInput },
  call: (options: any) => Stream.Stream<Response.AnyPart, E, R>
): Stream.Stream<Response.AnyPart, E, R> =>
  Stream.suspend(() => {
    const normalised = normalise(options)
    const accumulator = makeAccumulator()
    let timeToFirstTokenMs: number | undefined
    // Something came from the provider: the prompt was consumed, whatever happens next.
    let received = false
    let ended = false
    let failure: Cause.Cause<E> | undefined
    // Acquired uninterruptibly with its release (one channel, no scope of its own): a stream whose start
    // was dispatched always gets its terminal event, whether it completes, fails, is cut short by its
    // consumer or is interrupted.
    const acquire: Effect.Effect<Option.Option<Callbacks.ActiveCall>> = Effect.flatMap(
      withDispatcher(
        resolved,
        // Interruptible although acquired uninterruptibly: a consumer gone while `start` is dispatched (or
        // the call admitted) stops at once; `begin` has then finished what it started.
        Callbacks.begin({
          provider: resolved.provider,
          model: resolved.model,
          messages: messagesOf(normalised.prompt),
          params: paramsOf("streamText", normalised, resolved.params),
          metadata: resolved.metadata
        }, { interruptible: true })
      ),
      (active): Effect.Effect<Option.Option<Callbacks.ActiveCall>> =>
        Option.isNone(active)
          ? Effect.succeed(active)
          // Nested instrumented calls (tool handlers resolved while streaming) see this call as their parent.
          : Effect.as(Callbacks.pushParent(active.value.call.callId), active)
    )
    const release = (active: Option.Option<Callbacks.ActiveCall>) =>
      Option.isNone(active) ? Effect.void : Callbacks.popParent(active.value.call.callId).pipe(
        Effect.zipRight(Effect.fiberId),
        Effect.flatMap((fiberId) => {
          const exit = failure !== undefined
            ? Exit.failCause(failure)
            : ended || accumulator.finished()
            ? Exit.void
            // The consumer stopped early (`Stream.take`, its own failure) or was interrupted: the model's
            // stream did not finish, and what the consumer did is no failure of the model.
            : Exit.interrupt(fiberId)
          // A stream cut off after it began streaming consumed its prompt and the output received: the
          // error event carries them (counted by the token counter in force when not reported).
          return active.value.finish(
            exit,
            Exit.isSuccess(exit) || received
              ? { response: accumulator.response(), timeToFirstTokenMs }
              : { timeToFirstTokenMs }
          )
        })
      )
    const use = (active: Option.Option<Callbacks.ActiveCall>) => {
      const bare = call(withInstrumentedToolkit(resolved, normalised))
      if (Option.isNone(active)) return Stream.toChannel(bare)
      // The model's own spans (and its HTTP client's) are children of the call's span: one trace.
      const span = active.value.span
      const stream = span === undefined ? bare : Stream.provideService(bare, Tracer.ParentSpan, span)
      const { chunk: emit, elapsedMillis } = active.value
      return Stream.toChannel(Stream.pipeThroughChannel(
        stream,
        observe<E>(
          (chunk) => {
            received = true
            for (const part of chunk) {
              if (timeToFirstTokenMs === undefined && isFirstToken(part)) timeToFirstTokenMs = elapsedMillis()
              accumulator.add(part)
              if (part.type === "text-delta") emit("text", part.delta)
              else if (part.type === "reasoning-delta") emit("reasoning", part.delta)
            }
          },
          (cause) => {
            failure = cause
          },
          () => {
            ended = true
          }
        )
      ))
    }
    return Stream.fromChannel(Channel.acquireUseRelease(acquire, use, release))
  })

/**
 * Wraps a `LanguageModel` service so that every call is instrumented.
 *
 * @since 0.1.0
 * @category constructors
 */
export const wrap = (
  service: LanguageModel.Service,
  options: Options & { readonly dispatcher?: Dispatcher.Dispatcher.Service | undefined } = {}
): LanguageModel.Service => {
  const resolved: Resolved = {
    provider: options.provider ?? unknown,
    model: options.model ?? unknown,
    params: options.params,
    metadata: options.server === undefined
      ? undefined
      : {
        "server.address": options.server.address,
        ...(options.server.port === undefined ? {} : { "server.port": options.server.port })
      },
    dispatcher: options.dispatcher
  }
  return {
    generateText: ((callOptions: any) =>
      instrumentEffect(resolved, "generateText", callOptions, service.generateText)) as LanguageModel.Service[
        "generateText"
      ],
    generateObject: ((callOptions: any) =>
      instrumentEffect(resolved, "generateObject", callOptions, service.generateObject)) as LanguageModel.Service[
        "generateObject"
      ],
    streamText: ((callOptions: any) =>
      instrumentStream(resolved, callOptions, service.streamText)) as LanguageModel.Service["streamText"]
  }
}

/**
 * Wraps the `LanguageModel` in context. The provider defaults to the `Model.ProviderName` in context; the
 * `Dispatcher` in context when the service is made (if any) is used for calls made where there is none.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options = {}): Effect.Effect<LanguageModel.Service, never, LanguageModel.LanguageModel> =>
  Effect.gen(function*() {
    const service = yield* LanguageModel.LanguageModel
    const providerName = yield* Effect.serviceOption(Model.ProviderName)
    const dispatcher = yield* Effect.serviceOption(Dispatcher.Dispatcher)
    return wrap(service, {
      ...options,
      provider: options.provider ?? Option.getOrElse(providerName, () => unknown),
      dispatcher: Option.getOrUndefined(dispatcher)
    })
  })

/**
 * A layer providing the instrumented `LanguageModel`, built over the `LanguageModel` it is given.
 *
 * @example
 * ```ts
 * import { OpenAiLanguageModel } from "@effect/ai-openai"
 * import { Layer } from "effect"
 * import * as AiLanguageModel from "effect-llm-callbacks/layers/AiLanguageModel"
 *
 * const Model = AiLanguageModel.layer({ model: "gpt-4o-mini" }).pipe(
 *   Layer.provide(OpenAiLanguageModel.model("gpt-4o-mini"))
 * )
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: Options = {}
): Layer.Layer<LanguageModel.LanguageModel, never, LanguageModel.LanguageModel> =>
  Layer.effect(LanguageModel.LanguageModel, make(options))

/**
 * Instruments a `LanguageModel` layer: the result provides everything `modelLayer` provides (its
 * `Model.ProviderName`, a `Tokenizer`...), with the `LanguageModel` instrumented.
 *
 * @example
 * ```ts
 * import { OpenAiLanguageModel } from "@effect/ai-openai"
 * import * as AiLanguageModel from "effect-llm-callbacks/layers/AiLanguageModel"
 *
 * const Model = OpenAiLanguageModel.model("gpt-4o-mini").pipe(
 *   AiLanguageModel.withCallbacks({ model: "gpt-4o-mini" })
 * )
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const withCallbacks: {
  (options?: Options): <ROut, E, RIn>(
    modelLayer: Layer.Layer<ROut, E, RIn>
  ) => Layer.Layer<ROut | LanguageModel.LanguageModel, E, RIn | Exclude<LanguageModel.LanguageModel, ROut>>
  <ROut, E, RIn>(
    modelLayer: Layer.Layer<ROut, E, RIn>,
    options?: Options
  ): Layer.Layer<ROut | LanguageModel.LanguageModel, E, RIn | Exclude<LanguageModel.LanguageModel, ROut>>
} = dual(
  (args) => Layer.isLayer(args[0]),
  <ROut, E, RIn>(
    modelLayer: Layer.Layer<ROut, E, RIn>,
    options?: Options
  ): Layer.Layer<ROut | LanguageModel.LanguageModel, E, RIn | Exclude<LanguageModel.LanguageModel, ROut>> =>
    Layer.provideMerge(layer(options), modelLayer)
)

/**
 * Runs an effect with a call context: the user id, tags, metadata and parent call id that the
 * instrumented model calls inside it report (nested calls inherit them). The same as
 * `Callbacks.withCallContext`, re-exported for discoverability.
 *
 * @since 0.1.0
 * @category combinators
 */
export const withCallContext = Callbacks.withCallContext
