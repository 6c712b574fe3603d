import * as AiError from "@effect/ai/AiError"
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as Model from "@effect/ai/Model"
import type * as Response from "@effect/ai/Response"
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Equal from "effect/Equal"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as Tracer from "effect/Tracer"
import * as AiTesting from "../../layers/AiTesting.js"

const { FakeReply } = AiTesting

const rateLimited = new AiError.HttpResponseError({
  module: "Test",
  method: "generateText",
  reason: "StatusCode",
  request: { method: "POST", url: "http://fake/v1/responses", urlParams: [], hash: Option.none(), headers: {} },
  response: { status: 429, headers: {} }
})

const collect = <E, R>(stream: Stream.Stream<Response.AnyPart, E, R>) =>
  Stream.runCollect(stream).pipe(Effect.map(Chunk.toReadonlyArray))

const deltas = (parts: ReadonlyArray<Response.AnyPart>) =>
  parts.flatMap((part) => part.type === "text-delta" ? [part.delta] : [])

/** A tracer that keeps the attributes of every span, to see what instrumentation would see. */
const recordingTracer = () => {
  const spans: Array<{ readonly name: string; readonly attributes: Map<string, unknown> }> = []
  const tracer = Tracer.make({
    span: (name, parent, context, links, _startTime, kind) => {
      const attributes = new Map<string, unknown>()
      spans.push({ name, attributes })
      return {
        _tag: "Span",
        name,
        spanId: `span${spans.length}`,
        traceId: "trace",
        parent,
        context,
        status: { _tag: "Started", startTime: 0n },
        attributes,
        links,
        sampled: true,
        kind,
        end: () => {},
        attribute: (key, value) => {
          attributes.set(key, value)
        },
        event: () => {},
        addLinks: () => {}
      }
    },
    context: (f) => f()
  })
  return { spans, tracer }
}

describe("AiTesting", () => {
  describe("generateText", () => {
    it.effect("answers with the scripted text and usage", () =>
      Effect.gen(function*() {
        const response = yield* LanguageModel.generateText({ prompt: "hi" }).pipe(
          Effect.provide(AiTesting.layerFakeModel([
            FakeReply.Text({
              text: "Hello there",
              usage: { inputTokens: 3, outputTokens: 2, reasoningTokens: 1, cachedInputTokens: 2 }
            })
          ]))
        )
        assert.strictEqual(response.text, "Hello there")
        assert.strictEqual(response.finishReason, "stop")
        assert.deepStrictEqual(
          { ...response.usage },
          { inputTokens: 3, outputTokens: 2, totalTokens: 5, reasoningTokens: 1, cachedInputTokens: 2 }
        )
      }))

    it.effect("reports no usage when the reply has none", () =>
      Effect.gen(function*() {
        const response = yield* LanguageModel.generateText({ prompt: "hi" }).pipe(
          Effect.provide(AiTesting.layerFakeModel([FakeReply.Text({ text: "no usage" })]))
        )
        assert.deepStrictEqual(
          { ...response.usage },
          { inputTokens: undefined, outputTokens: undefined, totalTokens: undefined }
        )
      }))

    it.effect("echoes the prompt with word-count usage", () =>
      Effect.gen(function*() {
        const response = yield* LanguageModel.generateText({
          prompt: [
            { role: "system", content: "be brief" },
            { role: "user", content: "count these words" }
          ]
        }).pipe(Effect.provide(AiTesting.layerFakeModel(AiTesting.echo)))
        assert.strictEqual(response.text, "Echo: be brief\ncount these words")
        assert.strictEqual(response.usage.inputTokens, 5)
        assert.strictEqual(response.usage.outputTokens, 6)
        assert.strictEqual(response.usage.totalTokens, 11)
      }))

    it.effect("reports its model and provider", () =>
      Effect.gen(function*() {
        const { spans, tracer } = recordingTracer()
        const layer = AiTesting.layerFakeModel(AiTesting.echo, { model: "fake-large", provider: "acme" })
        const [response, provider] = yield* Effect.all([
          LanguageModel.generateText({ prompt: "hi" }),
          Model.ProviderName
        ]).pipe(Effect.provide(layer), Effect.withTracer(tracer))

        assert.strictEqual(provider, "acme")
        const metadata = response.content.find((part) => part.type === "response-metadata")
        assert.deepStrictEqual(metadata?.modelId, Option.some("fake-large"))
        assert.deepStrictEqual(metadata?.id, Option.some("fake_0"))
        const span = spans.find((span) => span.name === "LanguageModel.generateText")
        assert.strictEqual(span?.attributes.get("gen_ai.system"), "acme")
        assert.strictEqual(span?.attributes.get("gen_ai.request.model"), "fake-large")
        assert.strictEqual(span?.attributes.get("gen_ai.response.model"), "fake-large")
        assert.strictEqual(span?.attributes.get("gen_ai.usage.input_tokens"), 1)
        assert.strictEqual(span?.attributes.get("gen_ai.usage.output_tokens"), 2)
      }))

    it.effect("fails with exactly the scripted AiError", () =>
      Effect.gen(function*() {
        const error = yield* LanguageModel.generateText({ prompt: "hi" }).pipe(
          Effect.provide(AiTesting.layerFakeModel([FakeReply.Fail({ error: rateLimited })])),
          Effect.flip
        )
        // Failing inside the `LanguageModel.generateText` span wraps the error in Effect's span-annotating
        // proxy: the instance underneath is the scripted one, and the proxy is equal to it.
        assert.strictEqual(Cause.originalError(error), rateLimited)
        assert.isTrue(Equal.equals(error, rateLimited))
      }))

    it.effect("dies with the scripted defect", () =>
      Effect.gen(function*() {
        const defect = new Error("boom")
        const exit = yield* LanguageModel.generateText({ prompt: "hi" }).pipe(
          Effect.provide(AiTesting.layerFakeModel([FakeReply.Die({ defect })])),
          Effect.exit
        )
        assert.isTrue(Exit.isFailure(exit))
        const died = Exit.isFailure(exit) ? Cause.dieOption(exit.cause) : Option.none()
        assert.strictEqual(Cause.originalError(Option.getOrUndefined(died)), defect)
      }))

    it.effect("plays an array script in call order and dies past its end", () =>
      Effect.gen(function*() {
        const program = Effect.gen(function*() {
          const first = yield* LanguageModel.generateText({ prompt: "a" })
          const second = yield* Effect.flip(LanguageModel.generateText({ prompt: "b" }))
          const third = yield* Effect.exit(LanguageModel.generateText({ prompt: "c" }))
          return { first: first.text, second, third }
        })
        const { first, second, third } = yield* program.pipe(
          Effect.provide(AiTesting.layerFakeModel([
            FakeReply.Text({ text: "one" }),
            FakeReply.Fail({ error: rateLimited })
          ]))
        )
        assert.strictEqual(first, "one")
        assert.strictEqual(Cause.originalError(second), rateLimited)
        assert.isTrue(Exit.isFailure(third) && Cause.isDie(third.cause))
        assert.include(Cause.pretty(Exit.isFailure(third) ? third.cause : Cause.empty), "call 3 has none")
      }))

    it.effect("gives the script the call index, method and prompt text", () =>
      Effect.gen(function*() {
        const seen: Array<string> = []
        const layer = AiTesting.layerFakeModel((request) => {
          seen.push(`${request.index} ${request.method} ${request.options.responseFormat.type} ${request.text}`)
          return FakeReply.Text({ text: "{\"n\":1}" })
        })
        yield* Effect.gen(function*() {
          yield* LanguageModel.generateText({ prompt: "first" })
          yield* Stream.runDrain(LanguageModel.streamText({ prompt: "second" }))
          yield* LanguageModel.generateObject({ prompt: "third", schema: Schema.Struct({ n: Schema.Number }) })
        }).pipe(Effect.provide(layer))
        assert.deepStrictEqual(seen, ["0 generateText text first", "1 streamText text second", "2 generateText json third"])
      }))

    it.effect("waits the scripted delay on the TestClock", () =>
      Effect.gen(function*() {
        const fiber = yield* LanguageModel.generateText({ prompt: "hi" }).pipe(
          Effect.provide(AiTesting.layerFakeModel([FakeReply.Text({ text: "late", delay: "10 seconds" })])),
          Effect.fork
        )
        yield* TestClock.adjust("9 seconds")
        assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
        yield* TestClock.adjust("1 second")
        assert.strictEqual((yield* Fiber.join(fiber)).text, "late")
      }))

    it.effect("lets an effectful script hold a call until the test releases it", () =>
      Effect.gen(function*() {
        const release = yield* Deferred.make<void>()
        const fiber = yield* LanguageModel.generateText({ prompt: "hi" }).pipe(
          Effect.provide(AiTesting.layerFakeModel(() =>
            Effect.as(Deferred.await(release), FakeReply.Text({ text: "released" }))
          )),
          Effect.fork
        )
        yield* Effect.yieldNow()
        assert.isTrue(Option.isNone(yield* Fiber.poll(fiber)))
        yield* Deferred.succeed(release, undefined)
        assert.strictEqual((yield* Fiber.join(fiber)).text, "released")
      }))
  })

  describe("generateObject", () => {
    const Contact = Schema.Struct({ name: Schema.String, email: Schema.String })

    it.effect("decodes the scripted JSON text", () =>
      Effect.gen(function*() {
        const response = yield* LanguageModel.generateObject({ prompt: "extract", schema: Contact }).pipe(
          Effect.provide(AiTesting.layerFakeModel([
            FakeReply.Text({
              text: JSON.stringify({ name: "Ada", email: "ada@example.com" }),
              usage: { inputTokens: 1, outputTokens: 9 }
            })
          ]))
        )
        assert.deepStrictEqual(response.value, { name: "Ada", email: "ada@example.com" })
        assert.strictEqual(response.usage.outputTokens, 9)
      }))

    it.effect("fails with MalformedOutput when the text does not match the schema", () =>
      Effect.gen(function*() {
        const error = yield* LanguageModel.generateObject({ prompt: "extract", schema: Contact }).pipe(
          Effect.provide(AiTesting.layerFakeModel([FakeReply.Text({ text: "{\"name\":\"Ada\"}" })])),
          Effect.flip
        )
        assert.strictEqual(error._tag, "MalformedOutput")
      }))
  })

  describe("streamText", () => {
    it.effect("streams word deltas and a finish part with usage", () =>
      Effect.gen(function*() {
        const parts = yield* collect(LanguageModel.streamText({ prompt: "hi" })).pipe(
          Effect.provide(AiTesting.layerFakeModel([
            FakeReply.Text({ text: "one two three", usage: { inputTokens: 1, outputTokens: 3 } })
          ]))
        )
        assert.deepStrictEqual(
          parts.map((part) => part.type),
          ["response-metadata", "text-start", "text-delta", "text-delta", "text-delta", "text-end", "finish"]
        )
        assert.deepStrictEqual(deltas(parts), ["one ", "two ", "three"])
        const finish = parts.find((part) => part.type === "finish")
        assert.strictEqual(finish?.reason, "stop")
        assert.deepStrictEqual({ ...finish?.usage }, { inputTokens: 1, outputTokens: 3, totalTokens: 4 })
      }))

    it.effect("fails with the scripted error after the given number of deltas", () =>
      Effect.gen(function*() {
        const received: Array<string> = []
        const error = yield* LanguageModel.streamText({ prompt: "hi" }).pipe(
          Stream.runForEach((part) => Effect.sync(() => part.type === "text-delta" && received.push(part.delta))),
          Effect.provide(AiTesting.layerFakeModel([
            FakeReply.FailMidStream({ text: "one two three", afterDeltas: 2, error: rateLimited })
          ])),
          Effect.flip
        )
        assert.deepStrictEqual(received, ["one ", "two "])
        assert.strictEqual(Cause.originalError(error), rateLimited)
      }))

    it.effect("fails before any part on Fail", () =>
      Effect.gen(function*() {
        const parts: Array<string> = []
        const error = yield* LanguageModel.streamText({ prompt: "hi" }).pipe(
          Stream.runForEach((part) => Effect.sync(() => parts.push(part.type))),
          Effect.provide(AiTesting.layerFakeModel([FakeReply.Fail({ error: rateLimited })])),
          Effect.flip
        )
        assert.deepStrictEqual(parts, [])
        assert.strictEqual(Cause.originalError(error), rateLimited)
      }))

    it.effect("spaces deltas by the scripted delay on the TestClock", () =>
      Effect.gen(function*() {
        const received: Array<string> = []
        const fiber = yield* LanguageModel.streamText({ prompt: "hi" }).pipe(
          Stream.runForEach((part) => Effect.sync(() => part.type === "text-delta" && received.push(part.delta))),
          Effect.provide(AiTesting.layerFakeModel([
            FakeReply.Text({ text: "a b c", delay: "1 second", deltaDelay: "100 millis" })
          ])),
          Effect.fork
        )
        yield* TestClock.adjust("1 second")
        assert.deepStrictEqual(received, ["a "])
        yield* TestClock.adjust("100 millis")
        assert.deepStrictEqual(received, ["a ", "b "])
        yield* TestClock.adjust("100 millis")
        yield* Fiber.join(fiber)
        assert.deepStrictEqual(received, ["a ", "b ", "c"])
      }))
  })
})
