import * as AiError from "@effect/ai/AiError"
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as Model from "@effect/ai/Model"
import * as Prompt from "@effect/ai/Prompt"
import * as Tool from "@effect/ai/Tool"
import * as Toolkit from "@effect/ai/Toolkit"
import type * as Response from "@effect/ai/Response"
import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Equal from "effect/Equal"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import * as fc from "fast-check"
import * as AiLanguageModel from "../../layers/AiLanguageModel.js"
import * as AiTesting from "../../layers/AiTesting.js"
import * as Callbacks from "../../src/Callbacks.js"
import * as Dispatcher from "../../src/Dispatcher.js"
import { type CallbackEvent, type EndEvent, type ErrorEvent, Message, type StartEvent } from "../../src/Events.js"
import * as Handler from "../../src/Handler.js"
import * as Testing from "../../src/Testing.js"

const { FakeReply } = AiTesting

const unknownError = (method: string) => new AiError.UnknownError({ module: "Test", method, description: "boom" })

/** The fake model, instrumented, with a dispatcher and a recorder. */
const instrumented = (script: AiTesting.FakeScript, options: AiLanguageModel.Options = {}) =>
  Layer.merge(
    AiTesting.layerFakeModel(script, { model: "fake-1", provider: "fake" }).pipe(
      AiLanguageModel.withCallbacks(options)
    ),
    Testing.layer()
  )

const Lookup = Tool.make("Lookup", { parameters: { q: Schema.String }, success: Schema.String })
const Tools = Toolkit.make(Lookup)

/**
 * A model that asks for the `Lookup` tool when it has tools, and answers with text otherwise; the tool
 * handler calls the (instrumented) model again, as agents do.
 */
const toolLoop = Layer.unwrapEffect(Effect.gen(function*() {
  const model = yield* LanguageModel.make({
    generateText: (options) =>
      Effect.succeed<Array<Response.PartEncoded>>(
        options.tools.length > 0
          ? [{ type: "tool-call", id: "call_1", name: "Lookup", params: { q: "x" } }, {
            type: "finish",
            reason: "tool-calls",
            usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 }
          }]
          : [{ type: "text", text: "inner answer" }, {
            type: "finish",
            reason: "stop",
            usage: { inputTokens: 1, outputTokens: 2, totalTokens: 3 }
          }]
      ),
    streamText: () => Stream.empty
  })
  const instrumentedModel = Layer.succeed(LanguageModel.LanguageModel, AiLanguageModel.wrap(model, { provider: "loop" }))
  const handlers = Tools.toLayer({
    Lookup: () =>
      LanguageModel.generateText({ prompt: "inner" }).pipe(
        Effect.map((response) => response.text),
        Effect.orDie,
        Effect.provide(instrumentedModel)
      )
  })
  return Layer.mergeAll(instrumentedModel, handlers, Testing.layer())
}))

/** The events heard, less stream chunks (tested on their own). */
const lifecycle = Effect.map(Testing.events, (events) => events.filter((event) => event._tag !== "Chunk"))

const collect = <E, R>(stream: Stream.Stream<Response.AnyPart, E, R>) =>
  Stream.runCollect(stream).pipe(Effect.map(Chunk.toReadonlyArray))

const start = (event: CallbackEvent | undefined): StartEvent => {
  assert.strictEqual(event?._tag, "Start")
  return event as StartEvent
}
const end = (event: CallbackEvent | undefined): EndEvent => {
  assert.strictEqual(event?._tag, "End")
  return event as EndEvent
}
const error = (event: CallbackEvent | undefined): ErrorEvent => {
  assert.strictEqual(event?._tag, "Error")
  return event as ErrorEvent
}

/** A prompt with every kind of part: text, image and file, reasoning, a tool call and its result. */
const mixedPrompt: ReadonlyArray<Prompt.MessageEncoded> = [
  { role: "system", content: "Be brief." },
  {
    role: "user",
    content: [
      { type: "text", text: "What is in" },
      { type: "text", text: "this picture?" },
      { type: "file", mediaType: "image/png", fileName: "cat.png", data: new Uint8Array([1, 2, 3]) },
      { type: "file", mediaType: "application/pdf", data: "https://example.com/a.pdf" }
    ]
  },
  {
    role: "assistant",
    content: [
      { type: "reasoning", text: "thinking" },
      { type: "tool-call", id: "c1", name: "lookup", params: { q: 1 } }
    ]
  },
  {
    role: "tool",
    content: [{
      type: "tool-result",
      id: "c1",
      name: "lookup",
      isFailure: true,
      result: "no",
      providerExecuted: false
    }]
  }
]

describe("AiLanguageModel", () => {
  describe("generateText", () => {
    it.effect("start has messages, provider, model and options; end has text, mapped usage, reason, duration", () =>
      Effect.gen(function*() {
        const fiber = yield* Effect.fork(LanguageModel.generateText({ prompt: "hello there", toolChoice: "none" }))
        yield* TestClock.adjust("1500 millis")
        const response = yield* Fiber.join(fiber)
        assert.strictEqual(response.text, "Hi")
        const events = yield* lifecycle
        assert.strictEqual(events.length, 2)
        const s = start(events[0])
        assert.deepStrictEqual(s.messages, [{ role: "user", content: "hello there" }])
        assert.strictEqual(s.call.provider, "fake")
        assert.strictEqual(s.call.model, "gpt-fake")
        assert.deepStrictEqual(s.params, { temperature: 0.2, operation: "generateText", toolChoice: "none" })
        const e = end(events[1])
        assert.strictEqual(e.call.callId, s.call.callId)
        assert.deepStrictEqual(e.response, {
          content: "Hi",
          usage: { promptTokens: 5, completionTokens: 7, totalTokens: 12, cachedTokens: 2, reasoningTokens: 3 },
          finishReason: "stop",
          model: "fake-1",
          id: "fake_0"
        })
        assert.strictEqual(e.durationMs, 1500)
        assert.isUndefined(e.outputIssues)
      }).pipe(
        Effect.provide(instrumented([
          FakeReply.Text({
            text: "Hi",
            delay: "1500 millis",
            usage: { inputTokens: 5, outputTokens: 7, cachedInputTokens: 2, reasoningTokens: 3 }
          })
        ], { model: "gpt-fake", params: { temperature: 0.2 } }))
      ))

    it.effect("without usage from the provider the end event has none (the token handler estimates it)", () =>
      Effect.gen(function*() {
        const response = yield* LanguageModel.generateText({ prompt: "hello" })
        assert.strictEqual(response.usage.totalTokens, undefined)
        const e = end((yield* lifecycle)[1])
        assert.isUndefined(e.response.usage)
        assert.strictEqual(e.response.content, "no usage")
        assert.isUndefined(e.outputIssues)
      }).pipe(Effect.provide(instrumented([FakeReply.Text({ text: "no usage" })]))))

    it.effect("returns exactly the bare response", () =>
      Effect.gen(function*() {
        const script = [FakeReply.Text({ text: "same", usage: { inputTokens: 1, outputTokens: 1 } })]
        const bare = yield* LanguageModel.generateText({ prompt: "x" }).pipe(
          Effect.provide(AiTesting.layerFakeModel(script, { model: "fake-1", provider: "fake" }))
        )
        const wrapped = yield* LanguageModel.generateText({ prompt: "x" }).pipe(Effect.provide(instrumented(script)))
        assert.deepStrictEqual(wrapped.content, bare.content)
      }))

    it.effect("an AiError reaches the caller unchanged and handlers hear it with the duration", () =>
      Effect.gen(function*() {
        const fiber = yield* Effect.fork(Effect.exit(LanguageModel.generateText({ prompt: "x" })))
        yield* TestClock.adjust("300 millis")
        const exit = yield* Fiber.join(fiber)
        assert.isTrue(Exit.isFailure(exit))
        const failure = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : undefined
        assert.isTrue(failure !== undefined && failure._tag === "Some" && Equal.equals(failure.value, expected))
        const events = yield* lifecycle
        assert.strictEqual(events.length, 2)
        const e = error(events[1])
        assert.strictEqual(e.failure.kind, "failure")
        assert.strictEqual(e.failure.errorType, "UnknownError")
        assert.isTrue(Equal.equals(e.failure.error, expected))
        assert.isFalse(e.interrupted)
        assert.strictEqual(e.durationMs, 300)
      }).pipe(Effect.provide(instrumented([FakeReply.Fail({ error: expected, delay: "300 millis" })]))))
    const expected = unknownError("generateText")

    it.effect("a defect: the caller dies with it; the error event is marked as a defect", () =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(LanguageModel.generateText({ prompt: "x" }))
        assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause))
        const e = error((yield* lifecycle)[1])
        assert.strictEqual(e.failure.kind, "defect")
        assert.strictEqual(e.failure.message, "kaput")
      }).pipe(Effect.provide(instrumented([FakeReply.Die({ defect: new Error("kaput") })]))))

    it.effect("an interrupted call yields exactly one error event, marked interrupted", () =>
      Effect.gen(function*() {
        const fiber = yield* Effect.fork(LanguageModel.generateText({ prompt: "x" }))
        yield* TestClock.adjust("1 second")
        yield* Fiber.interrupt(fiber)
        const events = yield* lifecycle
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "Error"])
        const e = error(events[1])
        assert.isTrue(e.interrupted)
        assert.strictEqual(e.failure.kind, "interrupted")
        assert.strictEqual(e.durationMs, 1000)
      }).pipe(Effect.provide(instrumented([FakeReply.Text({ text: "late", delay: "10 seconds" })]))))
  })

  describe("generateObject", () => {
    it.effect("is instrumented: JSON content, objectName and operation in the params", () =>
      Effect.gen(function*() {
        const Person = Schema.Struct({ name: Schema.String })
        const response = yield* LanguageModel.generateObject({ prompt: "who", schema: Person, objectName: "person" })
        assert.deepStrictEqual(response.value, { name: "Ada" })
        const events = yield* lifecycle
        const s = start(events[0])
        assert.deepStrictEqual(s.params, { operation: "generateObject", objectName: "person" })
        const e = end(events[1])
        assert.strictEqual(e.response.content, "{\"name\":\"Ada\"}")
        assert.deepStrictEqual(e.response.usage, { promptTokens: 2, completionTokens: 4, totalTokens: 6 })
      }).pipe(
        Effect.provide(instrumented([
          FakeReply.Text({ text: "{\"name\":\"Ada\"}", usage: { inputTokens: 2, outputTokens: 4 } })
        ]))
      ))

    it.effect("output that fails the schema is an error event with the MalformedOutput", () =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(LanguageModel.generateObject({ prompt: "who", schema: Schema.Struct({ n: Schema.Number }) }))
        assert.isTrue(Exit.isFailure(exit))
        const e = error((yield* lifecycle)[1])
        assert.strictEqual(e.failure.errorType, "MalformedOutput")
      }).pipe(Effect.provide(instrumented([FakeReply.Text({ text: "not json" })]))))
  })

  describe("prompts", () => {
    it.effect("text parts are joined and other parts summarised; the model gets the prompt unchanged", () =>
      Effect.gen(function*() {
        const seen: Array<string> = []
        yield* LanguageModel.generateText({ prompt: mixedPrompt }).pipe(
          Effect.provide(instrumented((request) => {
            seen.push(request.text)
            return FakeReply.Text({ text: "ok" })
          }))
        )
        assert.deepStrictEqual(seen, ["Be brief.\nWhat is in\nthis picture?"])
      }))

    it.effect("summaries reach the handlers", () =>
      Effect.gen(function*() {
        yield* LanguageModel.generateText({ prompt: Prompt.make(mixedPrompt) })
        const s = start((yield* lifecycle)[0])
        assert.deepStrictEqual(s.messages, [
          { role: "system", content: "Be brief." },
          {
            role: "user",
            content: "What is in\nthis picture?\n[image image/png cat.png]\n[file application/pdf]"
          },
          { role: "assistant", content: "[reasoning: 8 chars]\n[tool-call lookup]" },
          { role: "tool", content: "[tool-result lookup failed]" }
        ])
        assert.isUndefined(s.inputIssues)
      }).pipe(Effect.provide(instrumented([FakeReply.Text({ text: "ok" })]))))

    it.effect("a one-shot iterable prompt is read by the handlers and by the model alike", () =>
      Effect.gen(function*() {
        const seen: Array<string> = []
        function* messages(): Generator<Prompt.MessageEncoded> {
          yield { role: "user", content: "first" }
          yield { role: "user", content: "second" }
        }
        yield* LanguageModel.generateText({ prompt: messages() }).pipe(
          Effect.provide(instrumented((request) => {
            seen.push(request.text)
            return FakeReply.Text({ text: "ok" })
          }))
        )
        assert.deepStrictEqual(seen, ["first\nsecond"])
      }))

    it.effect("a prompt that cannot be read: the call dies as it would bare, handlers hear start and the defect", () =>
      Effect.gen(function*() {
        const hostile = {
          [Symbol.iterator]() {
            throw new Error("unreadable prompt")
          }
        } as unknown as Prompt.RawInput
        const bare = yield* Effect.exit(
          LanguageModel.generateText({ prompt: hostile }).pipe(Effect.provide(AiTesting.layerFakeModel([])))
        )
        const exit = yield* Effect.exit(LanguageModel.generateText({ prompt: hostile }))
        assert.isTrue(Exit.isFailure(bare) && Cause.isDie(bare.cause))
        assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause))
        const events = yield* lifecycle
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "Error"])
        assert.deepStrictEqual(start(events[0]).messages, [])
        assert.strictEqual(error(events[1]).failure.kind, "defect")
        assert.strictEqual(error(events[1]).failure.message, "unreadable prompt")
      }).pipe(Effect.provide(instrumented([]))))

    it("messagesOf never throws and always yields valid messages", () =>
      fc.assert(fc.property(fc.anything(), (input) => {
        const messages = AiLanguageModel.messagesOf(input)
        return Either.isRight(Schema.decodeUnknownEither(Schema.Array(Message))(messages))
      })))

    it("messagesOf survives a throwing iterator", () => {
      const hostile = {
        [Symbol.iterator]() {
          throw new Error("no")
        }
      }
      assert.deepStrictEqual(AiLanguageModel.messagesOf(hostile), [])
    })
  })

  describe("usageOf", () => {
    it("maps input/output/total/cached/reasoning and treats missing input and output as no usage", () => {
      assert.isUndefined(AiLanguageModel.usageOf({ inputTokens: undefined, outputTokens: undefined, totalTokens: 0 }))
      assert.deepStrictEqual(AiLanguageModel.usageOf({ inputTokens: 3, outputTokens: undefined, totalTokens: 0 }), {
        promptTokens: 3,
        completionTokens: 0,
        totalTokens: 3
      })
      assert.deepStrictEqual(
        AiLanguageModel.usageOf({
          inputTokens: 3,
          outputTokens: 4,
          totalTokens: 9,
          cachedInputTokens: 1,
          reasoningTokens: 2
        }),
        { promptTokens: 3, completionTokens: 4, totalTokens: 9, cachedTokens: 1, reasoningTokens: 2 }
      )
      // Values our events cannot hold are treated as unknown rather than breaking the end event.
      assert.deepStrictEqual(AiLanguageModel.usageOf({ inputTokens: -1, outputTokens: 2.5, totalTokens: 4 }), undefined)
    })
  })

  describe("call context", () => {
    it.effect("user id, tags, metadata and parent call id come from withCallContext", () =>
      Effect.gen(function*() {
        yield* LanguageModel.generateText({ prompt: "x" }).pipe(
          AiLanguageModel.withCallContext({
            userId: "alice",
            tags: ["chat"],
            metadata: { session: "s1" },
            parentCallId: "agent-step-1"
          })
        )
        const s = start((yield* lifecycle)[0])
        assert.strictEqual(s.call.userId, "alice")
        assert.deepStrictEqual(s.call.tags, ["chat"])
        assert.deepStrictEqual(s.call.metadata, { session: "s1" })
        assert.strictEqual(s.call.parentCallId, "agent-step-1")
      }).pipe(Effect.provide(instrumented([FakeReply.Text({ text: "ok" })]))))

    it.effect("model calls nested in an instrumented step inherit it as their parent, and its user", () =>
      Effect.gen(function*() {
        yield* Effect.all([
          LanguageModel.generateText({ prompt: "a" }),
          Stream.runDrain(LanguageModel.streamText({ prompt: "b" }))
        ]).pipe(
          Effect.as({ content: "done" }),
          Callbacks.instrument({ provider: "agent", model: "loop" }),
          AiLanguageModel.withCallContext({ userId: "bob" })
        )
        const events = yield* lifecycle
        const parent = start(events[0])
        const children = events.filter((event) => event._tag === "Start" && event.call.provider === "fake")
        assert.strictEqual(children.length, 2)
        for (const child of children) {
          assert.strictEqual(child.call.parentCallId, parent.call.callId)
          assert.strictEqual(child.call.userId, "bob")
        }
      }).pipe(Effect.provide(instrumented([FakeReply.Text({ text: "one" }), FakeReply.Text({ text: "two" })]))))
    it.effect("a tool loop: the tool run's parent is the model call that asked for it, the tool's own model call's is the tool run", () =>
      Effect.gen(function*() {
        const response = yield* LanguageModel.generateText({ prompt: "outer", toolkit: Tools })
        assert.deepStrictEqual(response.toolResults.map((part) => part.result), ["inner answer"])
        const events = yield* lifecycle
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "ToolStart", "Start", "End", "ToolEnd", "End"])
        const outer = start(events[0])
        const tool = events[1]!
        const inner = start(events[2])
        assert.deepStrictEqual(outer.params, { operation: "generateText", tools: ["Lookup"] })
        assert.strictEqual(tool._tag === "ToolStart" && tool.tool.name, "Lookup")
        assert.strictEqual(tool.call.parentCallId, outer.call.callId)
        assert.strictEqual(tool.call.metadata["gen_ai.operation.name"], "execute_tool")
        assert.strictEqual(inner.call.parentCallId, tool.call.callId)
        const toolEnd = events[4]!
        assert.strictEqual(toolEnd._tag === "ToolEnd" && toolEnd.call.callId, tool.call.callId)
        assert.strictEqual(end(events[5]).call.callId, outer.call.callId)
      }).pipe(Effect.provide(toolLoop)))
  })

  describe("layers", () => {
    it.effect("the provider comes from Model.ProviderName of the wrapped layer, or the option", () =>
      Effect.gen(function*() {
        yield* LanguageModel.generateText({ prompt: "x" }).pipe(
          Effect.provide(AiTesting.layerFakeModel([FakeReply.Text({ text: "a" })], { provider: "acme" }).pipe(
            AiLanguageModel.withCallbacks()
          ))
        )
        yield* LanguageModel.generateText({ prompt: "x" }).pipe(
          Effect.provide(AiTesting.layerFakeModel([FakeReply.Text({ text: "a" })], { provider: "acme" }).pipe(
            AiLanguageModel.withCallbacks({ provider: "override" })
          ))
        )
        yield* LanguageModel.generateText({ prompt: "x" }).pipe(
          Effect.provide(AiLanguageModel.layer().pipe(
            Layer.provide(Layer.effect(LanguageModel.LanguageModel, AiTesting.makeFakeModel([FakeReply.Text({ text: "a" })])))
          ))
        )
        const starts = (yield* lifecycle).filter((event) => event._tag === "Start")
        assert.deepStrictEqual(starts.map((event) => [event.call.provider, event.call.model]), [
          ["acme", "unknown"],
          ["override", "unknown"],
          ["unknown", "unknown"]
        ])
      }).pipe(Effect.provide(Testing.layer())))

    it.effect("withCallbacks keeps what the model layer provides besides the LanguageModel", () =>
      Effect.gen(function*() {
        assert.strictEqual(yield* Model.ProviderName, "fake")
        yield* LanguageModel.generateText({ prompt: "x" })
        assert.strictEqual((yield* lifecycle).length, 2)
      }).pipe(Effect.provide(instrumented([FakeReply.Text({ text: "a" })]))))

    it.scoped("the dispatcher the layer was built with serves calls made where there is none", () =>
      Effect.gen(function*() {
        const testing = yield* Layer.build(Testing.layer())
        const model = yield* AiLanguageModel.make().pipe(
          Effect.provide(AiTesting.layerFakeModel([FakeReply.Text({ text: "a" }), FakeReply.Text({ text: "b" })])),
          Effect.provide(testing)
        )
        yield* model.generateText({ prompt: "x" })
        yield* Stream.runDrain(model.streamText({ prompt: "y" }))
        const events = yield* lifecycle.pipe(Effect.provide(testing))
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "End", "Start", "End"])
      }))

    it.effect("without a dispatcher anywhere calls run bare", () =>
      Effect.gen(function*() {
        const response = yield* LanguageModel.generateText({ prompt: "x" })
        assert.strictEqual(response.text, "a")
        const parts = yield* collect(LanguageModel.streamText({ prompt: "y" }))
        assert.strictEqual(parts.filter((part) => part.type === "text-delta").length, 1)
      }).pipe(
        Effect.provide(AiTesting.layerFakeModel([FakeReply.Text({ text: "a" }), FakeReply.Text({ text: "b" })]).pipe(
          AiLanguageModel.withCallbacks()
        ))
      ))
  })

  describe("streamText", () => {
    it.effect("start, then end with the finish part's usage, the text, the time to first token", () =>
      Effect.gen(function*() {
        const fiber = yield* Effect.fork(collect(LanguageModel.streamText({ prompt: "hi" })))
        yield* TestClock.adjust("10 seconds")
        const parts = yield* Fiber.join(fiber)
        const text = parts.flatMap((part) => part.type === "text-delta" ? [part.delta] : []).join("")
        assert.strictEqual(text, "one two three")
        const all = yield* Testing.events
        // Every text delta is a chunk event, numbered, timed from the call's start.
        assert.deepStrictEqual(
          all.flatMap((event) => event._tag === "Chunk" ? [[event.index, event.kind, event.delta, event.elapsedMs]] : []),
          [[0, "text", "one ", 200], [1, "text", "two ", 250], [2, "text", "three", 300]]
        )
        assert.deepStrictEqual(all.map((event) => event._tag), ["Start", "Chunk", "Chunk", "Chunk", "End"])
        const events = all.filter((event) => event._tag !== "Chunk")
        const s = start(events[0])
        assert.deepStrictEqual(s.params, { operation: "streamText" })
        assert.deepStrictEqual(s.messages, [{ role: "user", content: "hi" }])
        const e = end(events[1])
        assert.deepStrictEqual(e.response, {
          content: "one two three",
          usage: { promptTokens: 1, completionTokens: 3, totalTokens: 4 },
          finishReason: "stop",
          model: "fake-1",
          id: "fake_0"
        })
        assert.strictEqual(e.timeToFirstTokenMs, 200)
        assert.strictEqual(e.durationMs, 200 + 2 * 50)
      }).pipe(
        Effect.provide(instrumented([
          FakeReply.Text({
            text: "one two three",
            delay: "200 millis",
            deltaDelay: "50 millis",
            usage: { inputTokens: 1, outputTokens: 3 }
          })
        ]))
      ))

    it.effect("start is heard before the first part is requested; await end handlers after the last part", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        yield* Effect.gen(function*() {
          yield* Dispatcher.register(Handler.make({
            name: "log",
            onLlmStart: () => Effect.sync(() => log.push("start")),
            onLlmEnd: () => Effect.sync(() => log.push("end"))
          }))
          yield* LanguageModel.streamText({ prompt: "hi" }).pipe(
            Stream.runForEach((part) => Effect.sync(() => log.push(part.type)))
          )
        }).pipe(
          Effect.scoped,
          Effect.provide(
            AiTesting.layerFakeModel((_) => {
              log.push("request")
              return FakeReply.Text({ text: "a b" })
            }).pipe(AiLanguageModel.withCallbacks())
          )
        )
        assert.deepStrictEqual(log, [
          "start",
          "request",
          "response-metadata",
          "text-start",
          "text-delta",
          "text-delta",
          "text-end",
          "finish",
          "end"
        ])
      }).pipe(Effect.provide(Dispatcher.layer())))

    it.effect("a stream failing mid-way: one error event with the AiError; the consumer gets the same error", () =>
      Effect.gen(function*() {
        const failure = unknownError("streamText")
        const exit = yield* Effect.exit(collect(LanguageModel.streamText({ prompt: "hi" }))).pipe(
          Effect.provide(instrumented([FakeReply.FailMidStream({ text: "a b c", afterDeltas: 2, error: failure })]))
        )
        assert.isTrue(Exit.isFailure(exit))
        if (Exit.isFailure(exit)) {
          const caught = Cause.failureOption(exit.cause)
          assert.isTrue(caught._tag === "Some" && Equal.equals(caught.value, failure))
        }
      }))

    it.effect("a stream failing mid-way: handlers hear one error with the time to first token", () =>
      Effect.gen(function*() {
        yield* Effect.exit(collect(LanguageModel.streamText({ prompt: "hi" })))
        const events = yield* lifecycle
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "Error"])
        const e = error(events[1])
        assert.strictEqual(e.failure.kind, "failure")
        assert.isTrue(Equal.equals(e.failure.error, unknownError("streamText")))
        assert.isFalse(e.interrupted)
        assert.strictEqual(e.timeToFirstTokenMs, 0)
      }).pipe(
        Effect.provide(instrumented([
          FakeReply.FailMidStream({ text: "a b c", afterDeltas: 2, error: unknownError("streamText") })
        ]))
      ))

    it.effect("a stream failing before any part: one error event", () =>
      Effect.gen(function*() {
        yield* Effect.exit(collect(LanguageModel.streamText({ prompt: "hi" })))
        const events = yield* lifecycle
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "Error"])
        assert.isUndefined(error(events[1]).timeToFirstTokenMs)
      }).pipe(Effect.provide(instrumented([FakeReply.Fail({ error: unknownError("streamText") })]))))

    it.effect("a stream that dies: one error event marked as a defect", () =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(collect(LanguageModel.streamText({ prompt: "hi" })))
        assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause))
        const events = yield* lifecycle
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "Error"])
        assert.strictEqual(error(events[1]).failure.kind, "defect")
      }).pipe(Effect.provide(instrumented([FakeReply.Die({ defect: "gone" })]))))

    it.effect("a consumer that stops early (Stream.take): exactly one error event, marked interrupted", () =>
      Effect.gen(function*() {
        const parts = yield* collect(LanguageModel.streamText({ prompt: "hi" }).pipe(Stream.take(3)))
        assert.strictEqual(parts.length, 3)
        const events = yield* lifecycle
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "Error"])
        const e = error(events[1])
        assert.isTrue(e.interrupted)
        assert.strictEqual(e.failure.kind, "interrupted")
        assert.strictEqual(e.timeToFirstTokenMs, 0)
      }).pipe(Effect.provide(instrumented([FakeReply.Text({ text: "a b c d e f" })]))))

    it.effect("a consumer that stops right after the finish part: the stream completed, end event", () =>
      Effect.gen(function*() {
        yield* collect(
          LanguageModel.streamText({ prompt: "hi" }).pipe(Stream.takeUntil((part) => part.type === "finish"))
        )
        const events = yield* lifecycle
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "End"])
      }).pipe(Effect.provide(instrumented([FakeReply.Text({ text: "a b" })]))))

    it.effect("a consumer that fails: the model's stream is stopped, one error event marked interrupted", () =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(
          LanguageModel.streamText({ prompt: "hi" }).pipe(
            Stream.runForEach((part) => part.type === "text-delta" ? Effect.fail("consumer" as const) : Effect.void)
          )
        )
        assert.isTrue(Exit.isFailure(exit))
        const events = yield* lifecycle
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "Error"])
        assert.isTrue(error(events[1]).interrupted)
      }).pipe(Effect.provide(instrumented([FakeReply.Text({ text: "a b" })]))))

    it.effect("an interrupted consumer fiber: exactly one error event, marked interrupted", () =>
      Effect.gen(function*() {
        const fiber = yield* Effect.fork(collect(LanguageModel.streamText({ prompt: "hi" })))
        yield* TestClock.adjust("150 millis")
        yield* Fiber.interrupt(fiber)
        const events = yield* lifecycle
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "Error"])
        const e = error(events[1])
        assert.isTrue(e.interrupted)
        assert.strictEqual(e.durationMs, 150)
        assert.strictEqual(e.timeToFirstTokenMs, 0)
      }).pipe(
        Effect.provide(instrumented([FakeReply.Text({ text: "a b c d e f", deltaDelay: "100 millis" })]))
      ))

    it.effect("a stream that ends without a finish part completed: end event without usage", () =>
      Effect.gen(function*() {
        const model = yield* LanguageModel.make({
          generateText: () => Effect.succeed([]),
          streamText: () =>
            Stream.make<Array<Response.StreamPartEncoded>>(
              { type: "text-start", id: "t" },
              { type: "text-delta", id: "t", delta: "bare " },
              { type: "text-delta", id: "t", delta: "text" },
              { type: "text-end", id: "t" }
            )
        })
        yield* Stream.runDrain(AiLanguageModel.wrap(model).streamText({ prompt: "hi" }))
        const events = yield* lifecycle
        assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "End"])
        assert.deepStrictEqual(end(events[1]).response, { content: "bare text" })
      }).pipe(Effect.provide(Testing.layer())))

    it.effect("every stream is started lazily: a stream built but never run is not heard", () =>
      Effect.gen(function*() {
        const stream = LanguageModel.streamText({ prompt: "hi" })
        assert.deepStrictEqual(yield* lifecycle, [])
        yield* Stream.runDrain(stream)
        assert.strictEqual((yield* lifecycle).length, 2)
      }).pipe(Effect.provide(instrumented([FakeReply.Text({ text: "a" })]))))
  })
})
