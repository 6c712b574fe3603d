/**
 * A scripted fake `LanguageModel` (from `@effect/ai`) for testing applications and handlers without a
 * provider.
 *
 * Each call (`generateText`, `generateObject`, `streamText`) takes the next reply of a script: text with
 * or without usage, an `AiError` of the caller's choice, a defect, a failure in the middle of a stream,
 * each after an optional delay. Delays use `Effect.sleep`, so under `it.effect` the `TestClock` drives
 * them. The fake reports its model and provider the way providers do: a `response-metadata` part with the
 * model id, GenAI span attributes, and `Model.ProviderName` in the layer.
 *
 * @since 0.1.0
 */
import type * as AiError from "@effect/ai/AiError"
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as Model from "@effect/ai/Model"
import type * as Prompt from "@effect/ai/Prompt"
import type * as Response from "@effect/ai/Response"
import * as Telemetry from "@effect/ai/Telemetry"
import * as Data from "effect/Data"
import * as DateTime from "effect/DateTime"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import * as Stream from "effect/Stream"

// =============================================================================
// Models
// =============================================================================

/**
 * Usage the fake reports in the finish part. `totalTokens` defaults to `inputTokens + outputTokens`.
 *
 * @since 0.1.0
 * @category models
 */
export interface FakeUsage {
  readonly inputTokens: number
  readonly outputTokens: number
  readonly totalTokens?: number | undefined
  readonly reasoningTokens?: number | undefined
  readonly cachedInputTokens?: number | undefined
}

/**
 * A tool call the fake model makes: the tool's name and parameters (as the toolkit's schema expects them),
 * and its id (default `fake_tool_<call>_<n>`).
 *
 * @since 0.3.0
 * @category models
 */
export interface FakeToolCall {
  readonly name: string
  readonly params: unknown
  readonly id?: string | undefined
}

/**
 * What the fake does with one call. Every reply may wait a `delay` first.
 *
 * - `Text`: succeeds with `text`. `usage` omitted means the finish part reports no usage (all fields
 *   `undefined`). A stream sends `text` as word deltas, `deltaDelay` apart. `reasoning` comes first, as
 *   a reasoning part (streamed as word deltas too); `toolCalls` come after the text, as tool-call parts,
 *   which `@effect/ai` resolves with the call's toolkit.
 * - `Fail`: fails with the given `AiError`.
 * - `FailMidStream`: a stream sends `afterDeltas` deltas of `text` and then fails with `error`;
 *   `generateText` / `generateObject` fail with `error`.
 * - `Die`: dies with `defect`.
 *
 * @since 0.1.0
 * @category models
 */
export type FakeReply = Data.TaggedEnum<{
  Text: {
    readonly text: string
    readonly reasoning?: string | undefined
    readonly toolCalls?: ReadonlyArray<FakeToolCall> | undefined
    readonly usage?: FakeUsage | undefined
    readonly finishReason?: Response.FinishReason | undefined
    readonly delay?: Duration.DurationInput | undefined
    readonly deltaDelay?: Duration.DurationInput | undefined
  }
  Fail: {
    readonly error: AiError.AiError
    readonly delay?: Duration.DurationInput | undefined
  }
  FailMidStream: {
    readonly text: string
    readonly afterDeltas: number
    readonly error: AiError.AiError
    readonly delay?: Duration.DurationInput | undefined
    readonly deltaDelay?: Duration.DurationInput | undefined
  }
  Die: {
    readonly defect: unknown
    readonly delay?: Duration.DurationInput | undefined
  }
}>

/**
 * Constructors and matchers for {@link FakeReply}: `FakeReply.Text({ text, usage })`,
 * `FakeReply.Fail({ error })`, `FakeReply.FailMidStream({ text, afterDeltas, error })`,
 * `FakeReply.Die({ defect })`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const FakeReply = Data.taggedEnum<FakeReply>()

/**
 * A call as the script sees it. `generateObject` arrives as `"generateText"` with a JSON
 * `options.responseFormat`, the way `LanguageModel.make` hands it to providers.
 *
 * @since 0.1.0
 * @category models
 */
export interface FakeRequest {
  /** Position of the call among all calls to this fake, from 0. */
  readonly index: number
  readonly method: "generateText" | "streamText"
  readonly prompt: Prompt.Prompt
  /** The text of every message of the prompt, joined by a newline. */
  readonly text: string
  readonly options: LanguageModel.ProviderOptions
}

/**
 * The replies of a fake, in call order, or a function choosing the reply of each call (it may be
 * effectful, e.g. to wait on a `Deferred`). Calls beyond the end of an array die: the test script is
 * shorter than the test.
 *
 * @since 0.1.0
 * @category models
 */
export type FakeScript =
  | ReadonlyArray<FakeReply>
  | ((request: FakeRequest) => FakeReply | Effect.Effect<FakeReply>)

/**
 * Options of {@link makeFakeModel} and {@link layerFakeModel}.
 *
 * @since 0.1.0
 * @category models
 */
export interface FakeModelOptions {
  /** The model id reported in `response-metadata` and span attributes. Default: {@link defaultModel}. */
  readonly model?: string | undefined
  /** The provider name reported as `Model.ProviderName` and `gen_ai.system`. Default: {@link defaultProvider}. */
  readonly provider?: string | undefined
}

/**
 * The model id the fake reports unless told otherwise.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultModel = "fake-model"

/**
 * The provider name the fake reports unless told otherwise.
 *
 * @since 0.1.0
 * @category constants
 */
export const defaultProvider = "fake"

// =============================================================================
// Scripts
// =============================================================================

/**
 * Counts whitespace-separated words: the token count of {@link echo}, so tests can predict usage.
 *
 * @since 0.1.0
 * @category utils
 */
export const countWords = (text: string): number => text.split(/\s+/).filter((word) => word.length > 0).length

/**
 * Splits a text into the deltas a stream sends: one word with its surrounding whitespace each. The
 * deltas concatenate to the text.
 *
 * @since 0.1.0
 * @category utils
 */
export const splitDeltas = (text: string): ReadonlyArray<string> => text.match(/\s*\S+\s*|\s+/g) ?? []

/**
 * A script answering every call with `Echo: <prompt text>`, `inputTokens` the words of the prompt text
 * and `outputTokens` the words of the reply.
 *
 * @since 0.1.0
 * @category scripts
 */
export const echo: FakeScript = (request) => {
  const text = `Echo: ${request.text}`
  return FakeReply.Text({ text, usage: { inputTokens: countWords(request.text), outputTokens: countWords(text) } })
}

// =============================================================================
// Constructors
// =============================================================================

const textOfPrompt = (prompt: Prompt.Prompt): string =>
  prompt.content.flatMap((message) => {
    if (message.role === "system") return [message.content]
    return message.content.flatMap((part) => part.type === "text" ? [part.text] : [])
  }).join("\n")

const encodeUsage = (usage: FakeUsage | undefined): typeof Response.Usage.Encoded =>
  usage === undefined
    ? { inputTokens: undefined, outputTokens: undefined, totalTokens: undefined }
    : {
      inputTokens: usage.inputTokens,
      outputTokens: usage.outputTokens,
      totalTokens: usage.totalTokens ?? usage.inputTokens + usage.outputTokens,
      ...(usage.reasoningTokens === undefined ? {} : { reasoningTokens: usage.reasoningTokens }),
      ...(usage.cachedInputTokens === undefined ? {} : { cachedInputTokens: usage.cachedInputTokens })
    }

const toolCallParts = (
  index: number,
  toolCalls: ReadonlyArray<FakeToolCall> | undefined
): Array<Response.ToolCallPartEncoded> =>
  (toolCalls ?? []).map((call, n) => ({
    type: "tool-call",
    id: call.id ?? `fake_tool_${index}_${n}`,
    name: call.name,
    params: call.params
  }))

const finishReasonOf = (reply: { readonly finishReason?: Response.FinishReason | undefined; readonly toolCalls?: ReadonlyArray<FakeToolCall> | undefined }): Response.FinishReason =>
  reply.finishReason ?? ((reply.toolCalls?.length ?? 0) > 0 ? "tool-calls" : "stop")

const sleep = (delay: Duration.DurationInput | undefined): Effect.Effect<void> =>
  delay === undefined ? Effect.void : Effect.sleep(delay)

/**
 * Builds a fake `LanguageModel.Service` that answers from `script`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeFakeModel = (
  script: FakeScript,
  options: FakeModelOptions = {}
): Effect.Effect<LanguageModel.Service> =>
  Effect.gen(function*() {
    const model = options.model ?? defaultModel
    const provider = options.provider ?? defaultProvider
    const calls = yield* Ref.make(0)

    const next = (method: FakeRequest["method"], providerOptions: LanguageModel.ProviderOptions) =>
      Effect.gen(function*() {
        const index = yield* Ref.getAndUpdate(calls, (n) => n + 1)
        const request: FakeRequest = {
          index,
          method,
          prompt: providerOptions.prompt,
          text: textOfPrompt(providerOptions.prompt),
          options: providerOptions
        }
        Telemetry.addGenAIAnnotations(providerOptions.span, {
          system: provider,
          operation: { name: "chat" },
          request: { model }
        })
        if (typeof script !== "function") {
          const reply: FakeReply | undefined = script[index]
          return reply === undefined
            ? yield* Effect.dieMessage(`AiTesting: the script has ${script.length} replies, call ${index + 1} has none`)
            : { index, reply }
        }
        const scripted = script(request)
        return { index, reply: Effect.isEffect(scripted) ? yield* scripted : scripted }
      })

    const metadata = (index: number) =>
      Effect.map(DateTime.now, (now): Response.ResponseMetadataPartEncoded => ({
        type: "response-metadata",
        id: `fake_${index}`,
        modelId: model,
        timestamp: DateTime.formatIso(now)
      }))

    const finish = (
      span: LanguageModel.ProviderOptions["span"],
      index: number,
      reason: Response.FinishReason,
      usage: FakeUsage | undefined
    ): Response.FinishPartEncoded => {
      const encoded = encodeUsage(usage)
      Telemetry.addGenAIAnnotations(span, {
        response: { id: `fake_${index}`, model, finishReasons: [reason] },
        usage: { inputTokens: encoded.inputTokens, outputTokens: encoded.outputTokens }
      })
      return { type: "finish", reason, usage: encoded }
    }

    const deltas = (
      id: string,
      text: string,
      count: number,
      deltaDelay: Duration.DurationInput | undefined
    ): Stream.Stream<{ readonly type: "text-delta"; readonly id: string; readonly delta: string }> =>
      Stream.fromIterable(splitDeltas(text).slice(0, count)).pipe(
        Stream.zipWithIndex,
        Stream.mapEffect(([delta, n]) =>
          Effect.as(n > 0 ? sleep(deltaDelay) : Effect.void, { type: "text-delta", id, delta } as const)
        )
      )

    return yield* LanguageModel.make({
      generateText: (providerOptions) =>
        Effect.gen(function*() {
          const { index, reply } = yield* next("generateText", providerOptions)
          yield* sleep(reply.delay)
          switch (reply._tag) {
            case "Text": {
              const parts: Array<Response.PartEncoded> = [yield* metadata(index)]
              if (reply.reasoning !== undefined) parts.push({ type: "reasoning", text: reply.reasoning })
              parts.push({ type: "text", text: reply.text }, ...toolCallParts(index, reply.toolCalls))
              parts.push(finish(providerOptions.span, index, finishReasonOf(reply), reply.usage))
              return parts
            }
            case "Fail":
            case "FailMidStream":
              return yield* Effect.fail(reply.error)
            case "Die":
              return yield* Effect.die(reply.defect)
          }
        }),
      streamText: (providerOptions) =>
        Stream.unwrap(Effect.gen(function*() {
          const { index, reply } = yield* next("streamText", providerOptions)
          yield* sleep(reply.delay)
          switch (reply._tag) {
            case "Fail":
              return Stream.fail(reply.error)
            case "Die":
              return Stream.die(reply.defect)
            case "Text":
            case "FailMidStream": {
              const id = `fake_text_${index}`
              const meta = Stream.fromEffect(metadata(index))
              const textStart = Stream.make<Array<Response.StreamPartEncoded>>({ type: "text-start", id })
              const head = Stream.concat(meta, textStart)
              if (reply._tag === "FailMidStream") {
                return head.pipe(
                  Stream.concat(deltas(id, reply.text, Math.max(0, reply.afterDeltas), reply.deltaDelay)),
                  Stream.concat(Stream.fail(reply.error))
                )
              }
              const reasoningId = `fake_reasoning_${index}`
              const reasoning = reply.reasoning === undefined ? Stream.empty : Stream.concat(
                Stream.make<Array<Response.StreamPartEncoded>>({ type: "reasoning-start", id: reasoningId }),
                Stream.concat(
                  Stream.map(
                    deltas(reasoningId, reply.reasoning, Number.POSITIVE_INFINITY, reply.deltaDelay),
                    (part): Response.StreamPartEncoded => ({ type: "reasoning-delta", id: reasoningId, delta: part.delta })
                  ),
                  Stream.make<Array<Response.StreamPartEncoded>>({ type: "reasoning-end", id: reasoningId })
                )
              )
              return meta.pipe(
                Stream.concat(reasoning),
                Stream.concat(textStart),
                Stream.concat(deltas(id, reply.text, Number.POSITIVE_INFINITY, reply.deltaDelay)),
                Stream.concat(Stream.suspend(() =>
                  Stream.make<Array<Response.StreamPartEncoded>>(
                    { type: "text-end", id },
                    ...toolCallParts(index, reply.toolCalls),
                    finish(providerOptions.span, index, finishReasonOf(reply), reply.usage)
                  )
                ))
              )
            }
          }
        }))
    })
  })

/**
 * A layer providing a fake `LanguageModel` answering from `script`, and its `Model.ProviderName`.
 *
 * @example
 * ```ts
 * import { AiError, LanguageModel } from "@effect/ai"
 * import * as AiTesting from "effect-llm-callbacks/layers/AiTesting"
 *
 * const FakeModel = AiTesting.layerFakeModel([
 *   AiTesting.FakeReply.Text({ text: "Hello", usage: { inputTokens: 3, outputTokens: 1 } }),
 *   AiTesting.FakeReply.Fail({ error: new AiError.UnknownError({ module: "Test", method: "call" }) })
 * ])
 * ```
 *
 * @since 0.1.0
 * @category layers
 */
export const layerFakeModel = (
  script: FakeScript,
  options: FakeModelOptions = {}
): Layer.Layer<LanguageModel.LanguageModel | Model.ProviderName> =>
  Layer.merge(
    Layer.effect(LanguageModel.LanguageModel, makeFakeModel(script, options)),
    Layer.succeed(Model.ProviderName, options.provider ?? defaultProvider)
  )
