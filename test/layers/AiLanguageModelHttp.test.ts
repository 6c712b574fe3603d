/**
 * The integration over real HTTP: `@effect/ai-openai`'s `OpenAiLanguageModel` on `@effect/platform-node`'s
 * HTTP client, against the mock OpenAI server on a loopback port.
 */
import * as AiError from "@effect/ai/AiError"
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as Tool from "@effect/ai/Tool"
import * as Toolkit from "@effect/ai/Toolkit"
import * as OpenAiLanguageModel from "@effect/ai-openai/OpenAiLanguageModel"
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Equal from "effect/Equal"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as AiLanguageModel from "../../layers/AiLanguageModel.js"
import * as TokenUsage from "../../layers/TokenUsage.js"
import * as Dispatcher from "../../src/Dispatcher.js"
import type { EndEvent, ErrorEvent } from "../../src/Events.js"
import * as Testing from "../../src/Testing.js"
import * as TokenStore from "../../src/TokenStore.js"
import * as MockOpenAiServer from "../support/MockOpenAiServer.js"

const { MockReply } = MockOpenAiServer

const Weather = Tool.make("Weather", { parameters: { city: Schema.String }, success: Schema.Number })
const Tools = Toolkit.make(Weather)
const ToolHandlers = Tools.toLayer({ Weather: () => Effect.succeed(21) })

const cycle = "2026-11-01"

/** The bare OpenAI provider stack pointed at a running mock server. */
const openAi = (server: MockOpenAiServer.Service) =>
  OpenAiLanguageModel.model("gpt-4o-mini").pipe(
    Layer.provide(MockOpenAiServer.layerOpenAiClient),
    Layer.provide(Layer.succeed(MockOpenAiServer.MockOpenAiServer, server))
  )

/** The same stack instrumented, with the token usage handlers over an in-memory store and a recorder. */
const instrumented = (server: MockOpenAiServer.Service, tokens: "total" | "detailed" = "total") =>
  Layer.mergeAll(
    OpenAiLanguageModel.model("gpt-4o-mini").pipe(
      AiLanguageModel.withCallbacks({ model: "gpt-4o-mini" }),
      Layer.provide(MockOpenAiServer.layerOpenAiClient),
      Layer.provide(Layer.succeed(MockOpenAiServer.MockOpenAiServer, server))
    ),
    (tokens === "total" ? TokenUsage.layer : TokenUsage.layerDetailed)({ cycleStartDate: cycle }),
    Testing.layerRecorder()
  ).pipe(Layer.provideMerge(Layer.merge(Dispatcher.layer(), TokenStore.layerMemory)))

const stats = (userId: string) => Effect.flatMap(TokenStore.TokenStore, (store) => store.stats(userId, cycle))

const asAlice = AiLanguageModel.withCallContext({ userId: "alice" })

/** The tags of the events heard, stream chunks left out (tested on their own). */
const tags = Effect.map(
  Testing.events,
  (events) => events.flatMap((event) => event._tag === "Chunk" ? [] : [event._tag])
)

const lastEnd = Effect.map(Testing.events, (events) => events[events.length - 1] as EndEvent)
const lastError = Effect.map(Testing.events, (events) => events[events.length - 1] as ErrorEvent)

const failure = <A, E>(exit: Exit.Exit<A, E>): E => {
  assert.isTrue(Exit.isFailure(exit))
  const error = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()
  assert.isTrue(Option.isSome(error))
  return Option.getOrThrow(error)
}

describe("AiLanguageModel over HTTP", () => {
  it.scopedLive("generateText: the usage recorded in the TokenStore is what the server sent", () =>
    Effect.gen(function*() {
      const server = yield* MockOpenAiServer.make({
        script: () =>
          MockReply.Text({
            text: "Paris.",
            usage: { inputTokens: 11, outputTokens: 7, cachedTokens: 3, reasoningTokens: 2 }
          })
      })
      yield* Effect.gen(function*() {
        const response = yield* LanguageModel.generateText({ prompt: "Capital of France?" }).pipe(asAlice)
        assert.strictEqual(response.text, "Paris.")
        assert.deepStrictEqual(yield* tags, ["Start", "End"])
        const end = yield* lastEnd
        assert.strictEqual(end.call.provider, "openai")
        assert.strictEqual(end.call.model, "gpt-4o-mini")
        assert.deepStrictEqual(end.response, {
          content: "Paris.",
          usage: { promptTokens: 11, completionTokens: 7, totalTokens: 18, cachedTokens: 3, reasoningTokens: 2 },
          finishReason: "stop",
          model: "gpt-4o-mini",
          id: "resp_mock_0"
        })
        const recorded = yield* stats("alice")
        assert.deepStrictEqual(
          [recorded.promptTokens, recorded.completionTokens, recorded.totalTokens],
          [11, 7, 18]
        )
      }).pipe(Effect.provide(instrumented(server)))
    }))

  it.scopedLive("streamText: the usage of the stream's finish part is recorded once the stream completes", () =>
    Effect.gen(function*() {
      const server = yield* MockOpenAiServer.make({
        script: () => MockReply.Text({ text: "one two three", usage: { inputTokens: 4, outputTokens: 3 } })
      })
      yield* Effect.gen(function*() {
        const parts = yield* Stream.runCollect(LanguageModel.streamText({ prompt: "count" })).pipe(asAlice)
        const text = Chunk.toReadonlyArray(parts).flatMap((part) => part.type === "text-delta" ? [part.delta] : [])
        assert.strictEqual(text.join(""), "one two three")
        assert.deepStrictEqual(yield* tags, ["Start", "End"])
        const end = yield* lastEnd
        assert.strictEqual(end.response.content, "one two three")
        assert.deepStrictEqual(end.response.usage, {
          promptTokens: 4,
          completionTokens: 3,
          totalTokens: 7,
          cachedTokens: 0,
          reasoningTokens: 0
        })
        assert.isNumber(end.timeToFirstTokenMs)
        assert.isAtMost(end.timeToFirstTokenMs!, end.durationMs)
        const recorded = yield* stats("alice")
        assert.deepStrictEqual(
          [recorded.promptTokens, recorded.completionTokens, recorded.totalTokens],
          [4, 3, 7]
        )
      }).pipe(Effect.provide(instrumented(server)))
    }))

  it.scopedLive("a response without usage: the end event has none, the detailed handler records an estimate", () =>
    Effect.gen(function*() {
      const server = yield* MockOpenAiServer.make({ script: () => MockReply.Text({ text: "Hello from the model" }) })
      yield* Effect.gen(function*() {
        // Services are taken before the call: the detailed handler suspends (it loads its encoding) and
        // the dispatcher currently joins suspended handler fibers, which replaces the caller's context.
        const recorder = yield* Testing.Recorder
        const store = yield* TokenStore.TokenStore
        yield* LanguageModel.generateText({ prompt: "Say hello to everyone in the room" }).pipe(asAlice)
        const events = yield* recorder.events
        const end = events[events.length - 1] as EndEvent
        assert.strictEqual(end._tag, "End")
        assert.isUndefined(end.response.usage)
        const recorded = yield* store.stats("alice", cycle)
        assert.isAbove(recorded.promptTokens, 0)
        assert.isAbove(recorded.completionTokens, 0)
        assert.strictEqual(recorded.totalTokens, recorded.promptTokens + recorded.completionTokens)
      }).pipe(Effect.provide(instrumented(server, "detailed")))
    }))

  it.scopedLive("a 429 and a 500 reach the caller as the same AiError as without callbacks; handlers hear them", () =>
    Effect.gen(function*() {
      const replies = [
        MockReply.HttpError({ status: 429, headers: { "retry-after": "1" } }),
        MockReply.HttpError({ status: 500 })
      ]
      // Two servers with the same script: one answers the bare stack, the other the instrumented one.
      const bareServer = yield* MockOpenAiServer.make({ script: MockOpenAiServer.sequence(replies) })
      const server = yield* MockOpenAiServer.make({ script: MockOpenAiServer.sequence(replies) })
      for (const status of [429, 500]) {
        const bare = failure(
          yield* Effect.exit(LanguageModel.generateText({ prompt: "x" }).pipe(Effect.provide(openAi(bareServer))))
        )
        yield* Effect.gen(function*() {
          const caught = failure(yield* Effect.exit(LanguageModel.generateText({ prompt: "x" }).pipe(asAlice)))
          assert.instanceOf(caught, AiError.HttpResponseError)
          assert.instanceOf(bare, AiError.HttpResponseError)
          const wrapped = caught as AiError.HttpResponseError
          const expected = bare as AiError.HttpResponseError
          assert.strictEqual(wrapped.response.status, status)
          assert.deepStrictEqual(
            [wrapped._tag, wrapped.reason, wrapped.module, wrapped.method, wrapped.response.status],
            [expected._tag, expected.reason, expected.module, expected.method, expected.response.status]
          )
          assert.strictEqual(wrapped.description, expected.description)
          assert.strictEqual(wrapped.message.replace(/127\.0\.0\.1:\d+/g, ""), expected.message.replace(/127\.0\.0\.1:\d+/g, ""))

          assert.deepStrictEqual(yield* tags, ["Start", "Error"])
          const error = yield* lastError
          assert.strictEqual(error.failure.kind, "failure")
          assert.strictEqual(error.failure.errorType, "HttpResponseError")
          assert.isTrue(Equal.equals(error.failure.error, caught))
          assert.isFalse(error.interrupted)
          // Nothing was recorded for a failed call.
          assert.strictEqual((yield* stats("alice")).totalTokens, 0)
        }).pipe(Effect.provide(instrumented(server)))
      }
    }))

  it.scopedLive("a stream the consumer stops early yields exactly one terminal event, marked interrupted", () =>
    Effect.gen(function*() {
      const server = yield* MockOpenAiServer.make({
        script: () => MockReply.Text({ text: "a b c d e f g h", usage: { inputTokens: 1, outputTokens: 8 } })
      })
      yield* Effect.gen(function*() {
        const parts = yield* Stream.runCollect(
          LanguageModel.streamText({ prompt: "letters" }).pipe(
            Stream.filter((part) => part.type === "text-delta"),
            Stream.take(2)
          )
        ).pipe(asAlice)
        assert.strictEqual(parts.length, 2)
        yield* Dispatcher.flush
        assert.deepStrictEqual(yield* tags, ["Start", "Error"])
        const error = yield* lastError
        assert.isTrue(error.interrupted)
        assert.isNumber(error.timeToFirstTokenMs)
        assert.strictEqual((yield* stats("alice")).totalTokens, 0)
      }).pipe(Effect.provide(instrumented(server)))
    }))

  it.scopedLive("a stream whose consumer fiber is interrupted yields exactly one terminal event", () =>
    Effect.gen(function*() {
      const server = yield* MockOpenAiServer.make({
        script: () => MockReply.Text({ text: "a b c d e f g h", deltaDelay: "1 second" })
      })
      yield* Effect.gen(function*() {
        const firstDelta = yield* Deferred.make<void>()
        const fiber = yield* LanguageModel.streamText({ prompt: "slow" }).pipe(
          Stream.tap((part) => part.type === "text-delta" ? Deferred.succeed(firstDelta, void 0) : Effect.void),
          Stream.runDrain,
          Effect.fork
        )
        yield* Deferred.await(firstDelta)
        yield* Fiber.interrupt(fiber)
        yield* Dispatcher.flush
        assert.deepStrictEqual(yield* tags, ["Start", "Error"])
        const error = yield* lastError
        assert.isTrue(error.interrupted)
        assert.strictEqual(error.failure.kind, "interrupted")
      }).pipe(Effect.provide(instrumented(server)))
    }))

  it.scopedLive("a connection dropped mid-stream: one error event with the AiError the consumer got", () =>
    Effect.gen(function*() {
      const server = yield* MockOpenAiServer.make({ script: () => MockReply.DropMidStream({ afterDeltas: 2 }) })
      yield* Effect.gen(function*() {
        const caught = failure(yield* Effect.exit(Stream.runDrain(LanguageModel.streamText({ prompt: "drop" }))))
        assert.isTrue(AiError.isAiError(caught))
        assert.deepStrictEqual(yield* tags, ["Start", "Error"])
        const error = yield* lastError
        assert.isFalse(error.interrupted)
        assert.strictEqual(error.failure.kind, "failure")
        assert.isTrue(Equal.equals(error.failure.error, caught))
      }).pipe(Effect.provide(instrumented(server)))
    }))

  it.scopedLive("tools, reasoning and cached tokens over HTTP: tool runs under the model call, reasoning chunks, kinds kept apart in the store", () =>
    Effect.gen(function*() {
      const server = yield* MockOpenAiServer.make({
        script: () =>
          MockReply.Text({
            text: "Checking the weather.",
            reasoning: "the user wants weather",
            toolCalls: [{ name: "Weather", arguments: { city: "Paris" } }],
            usage: { inputTokens: 120, outputTokens: 30, cachedTokens: 100, reasoningTokens: 12 }
          })
      })
      yield* Effect.gen(function*() {
        const response = yield* LanguageModel.generateText({ prompt: "Weather in Paris?", toolkit: Tools }).pipe(asAlice)
        assert.deepStrictEqual(response.toolResults.map((part) => part.result), [21])
        assert.deepStrictEqual(yield* tags, ["Start", "ToolStart", "ToolEnd", "End"])
        const end = yield* lastEnd
        assert.strictEqual(end.response.reasoning, "the user wants weather")
        assert.deepStrictEqual(end.response.usage, {
          promptTokens: 120,
          completionTokens: 30,
          totalTokens: 150,
          cachedTokens: 100,
          reasoningTokens: 12
        })
        const parts = yield* Stream.runCollect(LanguageModel.streamText({ prompt: "Weather in Paris?", toolkit: Tools })).pipe(
          asAlice
        )
        assert.isTrue(Chunk.toReadonlyArray(parts).some((part) => part.type === "tool-result"))
        const events = yield* Testing.events
        const streamed = events.slice(4)
        const chunks = streamed.flatMap((event) => event._tag === "Chunk" ? [`${event.kind}:${event.delta}`] : [])
        assert.deepStrictEqual(chunks, [
          "reasoning:the ",
          "reasoning:user ",
          "reasoning:wants ",
          "reasoning:weather",
          "text:Checking ",
          "text:the ",
          "text:weather."
        ])
        assert.deepStrictEqual(
          streamed.flatMap((event) => event._tag === "Chunk" ? [] : [event._tag]),
          ["Start", "ToolStart", "ToolEnd", "End"]
        )
        const recorded = yield* stats("alice")
        assert.deepStrictEqual(
          [recorded.totalTokens, recorded.cachedTokens, recorded.reasoningTokens],
          [300, 200, 24]
        )
      }).pipe(Effect.provide(Layer.merge(instrumented(server), ToolHandlers)))
    }))
})
