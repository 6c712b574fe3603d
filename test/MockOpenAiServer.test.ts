import * as AiError from "@effect/ai/AiError"
import * as LanguageModel from "@effect/ai/LanguageModel"
import type * as Response from "@effect/ai/Response"
import * as OpenAiLanguageModel from "@effect/ai-openai/OpenAiLanguageModel"
import * as HttpClient from "@effect/platform/HttpClient"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { assert, describe, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as MockOpenAiServer from "./support/MockOpenAiServer.js"

const { MockReply } = MockOpenAiServer

/** The real OpenAI provider stack (`OpenAiClient` over undici) pointed at a running mock server. */
const openAi = (server: MockOpenAiServer.Service, model = "gpt-4o-mini") =>
  OpenAiLanguageModel.layer({ model }).pipe(
    Layer.provide(MockOpenAiServer.layerOpenAiClient),
    Layer.provide(Layer.succeed(MockOpenAiServer.MockOpenAiServer, server))
  )

const generate = (server: MockOpenAiServer.Service, prompt: string, model?: string) =>
  LanguageModel.generateText({ prompt }).pipe(Effect.provide(openAi(server, model)))

const stream = (server: MockOpenAiServer.Service, prompt: string, model?: string) =>
  LanguageModel.streamText({ prompt }).pipe(Stream.provideLayer(openAi(server, model)))

const collect = (server: MockOpenAiServer.Service, prompt: string) =>
  Stream.runCollect(stream(server, prompt)).pipe(Effect.map(Chunk.toReadonlyArray))

const deltas = (parts: ReadonlyArray<Response.AnyPart>) =>
  parts.flatMap((part) => part.type === "text-delta" ? [part.delta] : [])

const httpResponseError = (error: unknown): AiError.HttpResponseError => {
  assert.isTrue(AiError.isAiError(error))
  assert.instanceOf(error, AiError.HttpResponseError)
  return error as AiError.HttpResponseError
}

describe("MockOpenAiServer", () => {
  describe("generateText", () => {
    it.scopedLive("returns the default echo reply with word-count usage", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make()
        const response = yield* generate(server, "hello mock world")

        assert.strictEqual(response.text, "Echo: hello mock world")
        assert.strictEqual(response.finishReason, "stop")
        assert.strictEqual(response.usage.inputTokens, 3)
        assert.strictEqual(response.usage.outputTokens, 4)
        assert.strictEqual(response.usage.totalTokens, 7)
        assert.strictEqual(response.usage.cachedInputTokens, 0)
        assert.strictEqual(response.usage.reasoningTokens, 0)
        const metadata = response.content.find((part) => part.type === "response-metadata")
        assert.deepStrictEqual(metadata?.modelId, Option.some("gpt-4o-mini"))
        assert.deepStrictEqual(metadata?.id, Option.some("resp_mock_0"))
      }))

    it.scopedLive("records what reached the server", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make()
        yield* generate(server, "first")
        yield* generate(server, "second")

        assert.strictEqual(yield* server.requests.count, 2)
        const last = Option.getOrThrow(yield* server.requests.last)
        assert.strictEqual(last.index, 1)
        assert.strictEqual(last.method, "POST")
        assert.strictEqual(last.path, "/v1/responses")
        assert.strictEqual(last.headers["authorization"], "Bearer test")
        const body = last.body as Record<string, unknown>
        assert.strictEqual(body["model"], "gpt-4o-mini")
        assert.isUndefined(body["stream"])
        assert.deepStrictEqual(body["input"], [{ role: "user", content: [{ type: "input_text", text: "second" }] }])
      }))

    it.scopedLive("reports scripted usage with cached and reasoning tokens", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make({
          script: () =>
            MockReply.Text({
              text: "scripted",
              usage: { inputTokens: 10, outputTokens: 20, cachedTokens: 4, reasoningTokens: 5 }
            })
        })
        const response = yield* generate(server, "anything")

        assert.strictEqual(response.text, "scripted")
        assert.deepStrictEqual(
          { ...response.usage },
          { inputTokens: 10, outputTokens: 20, totalTokens: 30, reasoningTokens: 5, cachedInputTokens: 4 }
        )
      }))

    it.scopedLive("reports no usage when the script gives none", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make({ script: () => MockReply.Text({ text: "no usage" }) })
        const response = yield* generate(server, "anything")

        assert.strictEqual(response.text, "no usage")
        assert.isUndefined(response.usage.inputTokens)
        assert.isUndefined(response.usage.outputTokens)
        // @effect/ai-openai computes the total as `(input ?? 0) + (output ?? 0)`.
        assert.strictEqual(response.usage.totalTokens, 0)
        assert.isUndefined(response.usage.cachedInputTokens)
        assert.isUndefined(response.usage.reasoningTokens)
      }))

    it.scopedLive("turns HTTP 429 and 500 into AiError.HttpResponseError", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make({
          script: MockOpenAiServer.sequence([
            MockReply.HttpError({ status: 429, headers: { "retry-after": "1" } }),
            MockReply.HttpError({ status: 500 })
          ])
        })
        const rateLimited = httpResponseError(yield* Effect.flip(generate(server, "a")))
        assert.strictEqual(rateLimited._tag, "HttpResponseError")
        assert.strictEqual(rateLimited.reason, "StatusCode")
        assert.strictEqual(rateLimited.module, "OpenAiClient")
        assert.strictEqual(rateLimited.method, "createResponse")
        assert.strictEqual(rateLimited.response.status, 429)
        assert.strictEqual(rateLimited.response.headers["retry-after"], "1")
        assert.include(rateLimited.description, "rate_limit_exceeded")

        const serverError = httpResponseError(yield* Effect.flip(generate(server, "b")))
        assert.strictEqual(serverError.reason, "StatusCode")
        assert.strictEqual(serverError.response.status, 500)
        assert.include(serverError.description, "server_error")

        const recovered = yield* generate(server, "c")
        assert.strictEqual(recovered.text, "Echo: c")
      }))

    it.scopedLive("fails when the connection drops mid-response", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make({ script: () => MockReply.DropMidStream({ afterDeltas: 0 }) })
        const error = yield* Effect.flip(generate(server, "anything"))
        assert.isTrue(AiError.isAiError(error))
        assert.strictEqual(error._tag, "HttpResponseError")
        assert.strictEqual((error as AiError.HttpResponseError).reason, "Decode")
      }))

    it.scopedLive("dispatches on the model", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make({
          script: MockOpenAiServer.byModel({
            "gpt-4o": () => MockReply.Text({ text: "big", usage: { inputTokens: 1, outputTokens: 1 } }),
            "o3-mini": () => MockReply.HttpError({ status: 429 })
          })
        })
        assert.strictEqual((yield* generate(server, "x", "gpt-4o")).text, "big")
        assert.strictEqual((yield* generate(server, "x", "gpt-4o-mini")).text, "Echo: x")
        const error = httpResponseError(yield* Effect.flip(generate(server, "x", "o3-mini")))
        assert.strictEqual(error.response.status, 429)
      }))

    it.scoped("waits the scripted delay on the Clock that started the server", () =>
      Effect.gen(function*() {
        const arrived = yield* Deferred.make<void>()
        const server = yield* MockOpenAiServer.make({
          script: (request) =>
            Deferred.succeed(arrived, undefined).pipe(
              Effect.as(MockReply.Text({ text: `late ${request.index}`, delay: "10 seconds" }))
            )
        })
        const fiber = yield* Effect.fork(generate(server, "x"))
        yield* Deferred.await(arrived)
        yield* TestClock.adjust("9 seconds")
        assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
        yield* TestClock.adjust("1 second")
        const response = yield* Fiber.join(fiber)
        assert.strictEqual(response.text, "late 0")
      }))

    it.scopedLive("keeps only the most recent requests", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make({ maxRecorded: 2 })
        yield* Effect.forEach(["a", "b", "c"], (prompt) => generate(server, prompt), { discard: true })
        assert.strictEqual(yield* server.requests.count, 3)
        const recent = yield* server.requests.recent
        assert.deepStrictEqual(recent.map((request) => request.index), [1, 2])
      }))

    it.scopedLive("answers an unknown route with 404", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make()
        const response = yield* HttpClient.get(`${server.url}/models`).pipe(Effect.provide(NodeHttpClient.layerUndici))
        assert.strictEqual(response.status, 404)
        assert.strictEqual(yield* server.requests.count, 1)
        assert.strictEqual(Option.getOrThrow(yield* server.requests.last).path, "/v1/models")
      }))
  })

  describe("streamText", () => {
    it.scopedLive("streams the reply as deltas and finishes with usage", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make()
        const parts = yield* collect(server, "stream me please")

        assert.deepStrictEqual(deltas(parts), ["Echo: ", "stream ", "me ", "please"])
        assert.deepStrictEqual(
          parts.map((part) => part.type),
          ["response-metadata", "text-start", "text-delta", "text-delta", "text-delta", "text-delta", "text-end", "finish"]
        )
        const finish = parts.find((part) => part.type === "finish")
        assert.strictEqual(finish?.reason, "stop")
        assert.deepStrictEqual(
          { ...finish?.usage },
          { inputTokens: 3, outputTokens: 4, totalTokens: 7, reasoningTokens: 0, cachedInputTokens: 0 }
        )
        const body = Option.getOrThrow(yield* server.requests.last).body as Record<string, unknown>
        assert.strictEqual(body["stream"], true)
      }))

    it.scopedLive("finishes without usage when the script gives none", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make({
          script: () => MockReply.Text({ text: "a b", deltaDelay: "1 millis" })
        })
        const parts = yield* collect(server, "x")
        assert.deepStrictEqual(deltas(parts), ["a ", "b"])
        const finish = parts.find((part) => part.type === "finish")
        assert.isUndefined(finish?.usage.inputTokens)
        assert.isUndefined(finish?.usage.outputTokens)
        assert.strictEqual(finish?.usage.totalTokens, 0)
      }))

    it.scopedLive("fails with AiError.HttpResponseError on HTTP 429", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make({ script: () => MockReply.HttpError({ status: 429 }) })
        const error = httpResponseError(yield* Effect.flip(collect(server, "x")))
        assert.strictEqual(error.reason, "StatusCode")
        assert.strictEqual(error.module, "OpenAiClient")
        assert.strictEqual(error.method, "streamRequest")
        assert.strictEqual(error.response.status, 429)
      }))

    it.scopedLive("fails after the delivered deltas when the connection drops", () =>
      Effect.gen(function*() {
        const server = yield* MockOpenAiServer.make({
          script: () => MockReply.DropMidStream({ afterDeltas: 2, text: "one two three four" })
        })
        const received: Array<string> = []
        const exit = yield* stream(server, "x").pipe(
          Stream.runForEach((part) => Effect.sync(() => part.type === "text-delta" && received.push(part.delta))),
          Effect.exit
        )
        assert.deepStrictEqual(received, ["one ", "two "])
        assert.isTrue(Exit.isFailure(exit))
        const error = yield* Effect.flip(exit)
        assert.isTrue(AiError.isAiError(error))
        assert.strictEqual(error._tag, "HttpResponseError")
        assert.strictEqual((error as AiError.HttpResponseError).reason, "Decode")
      }))
  })

  describe("lifecycle", () => {
    it.live("closing the scope ends in-flight requests and frees the port", () =>
      Effect.gen(function*() {
        const scope = yield* Scope.make()
        const arrived = yield* Deferred.make<void>()
        const server = yield* MockOpenAiServer.make({
          script: () =>
            Deferred.succeed(arrived, undefined).pipe(Effect.as(MockReply.Text({ text: "never", delay: "1 hour" })))
        }).pipe(Scope.extend(scope))
        const fiber = yield* Effect.fork(generate(server, "x"))
        yield* Deferred.await(arrived)
        yield* Scope.close(scope, Exit.void)

        const error = yield* Effect.flip(Fiber.join(fiber))
        assert.isTrue(AiError.isAiError(error))
        const refused = yield* Effect.flip(generate(server, "x"))
        assert.strictEqual(refused._tag, "HttpRequestError")
      }))
  })
})
