import * as AiError from "@effect/ai/AiError"
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as Tool from "@effect/ai/Tool"
import * as Toolkit from "@effect/ai/Toolkit"
import { assert, describe, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Fiber, Layer, Metric, MetricLabel, Option, Schedule, Schema, Stream, TestClock } from "effect"
import * as AiLanguageModel from "../../layers/AiLanguageModel.js"
import * as AiTesting from "../../layers/AiTesting.js"
import * as GenAiMetrics from "../../layers/GenAiMetrics.js"
import * as TokenUsage from "../../layers/TokenUsage.js"
import { Callbacks, Dispatcher, type Events, Handler, Testing, TokenStore } from "../../src/index.js"

const { FakeReply } = AiTesting

const Weather = Tool.make("Weather", {
  parameters: { city: Schema.String },
  success: Schema.Number,
  failure: Schema.String,
  failureMode: "return"
})
const Tools = Toolkit.make(Weather)
const ToolHandlers = Tools.toLayer({
  Weather: ({ city }) => city === "Atlantis" ? Effect.fail("no such city") : Effect.succeed(21)
})

const model = (script: AiTesting.FakeScript) =>
  Layer.mergeAll(
    AiTesting.layerFakeModel(script, { model: "fake-1", provider: "fake" }).pipe(
      AiLanguageModel.withCallbacks({ model: "fake-1" })
    ),
    ToolHandlers,
    Testing.layer()
  )

const tags = (events: ReadonlyArray<Events.CallbackEvent>) => events.map((event) => event._tag)

describe("@effect/ai: tools, reasoning, cached tokens", () => {
  it.effect("generateText with a toolkit: the model's tool calls are tool runs, children of the model call", () =>
    Effect.gen(function*() {
      const response = yield* LanguageModel.generateText({ prompt: "weather?", toolkit: Tools })
      assert.deepStrictEqual(response.toolResults.map((part) => part.result), [21, "no such city"])
      const events = yield* Testing.events
      assert.deepStrictEqual(tags(events), ["Start", "ToolStart", "ToolEnd", "ToolStart", "ToolError", "End"])
      const llm = events[0]!
      const [okStart, ok, failedStart, failed] = events.slice(1, 5) as [
        Events.ToolStartEvent,
        Events.ToolEndEvent,
        Events.ToolStartEvent,
        Events.ToolErrorEvent
      ]
      for (const event of [okStart, failedStart]) {
        assert.strictEqual(event.call.parentCallId, llm.call.callId)
        assert.strictEqual(event.call.provider, "fake")
        assert.strictEqual(event.call.model, "fake-1")
        assert.strictEqual(event.tool.name, "Weather")
      }
      assert.deepStrictEqual(okStart.params, { city: "Paris" })
      assert.strictEqual((ok.result as { readonly result: unknown }).result, 21)
      // The tool's failure is returned to the model (failure mode "return"): heard as a failure of the tool.
      assert.deepStrictEqual(failedStart.params, { city: "Atlantis" })
      assert.strictEqual(failed.failure.error, "no such city")
      const end = events[5] as Events.EndEvent
      assert.deepStrictEqual(end.response.usage, {
        promptTokens: 50,
        completionTokens: 10,
        totalTokens: 60,
        cachedTokens: 30,
        reasoningTokens: 4
      })
      assert.strictEqual(end.response.reasoning, "compare the cities")
      assert.strictEqual(end.response.finishReason, "tool-calls")
    }).pipe(Effect.provide(model([
      FakeReply.Text({
        text: "Let me look.",
        reasoning: "compare the cities",
        toolCalls: [{ name: "Weather", params: { city: "Paris" } }, { name: "Weather", params: { city: "Atlantis" } }],
        usage: { inputTokens: 50, outputTokens: 10, cachedInputTokens: 30, reasoningTokens: 4 }
      })
    ]))))

  it.effect("streamText: reasoning and text deltas are chunks of their kind, in order; tool runs between start and end", () =>
    Effect.gen(function*() {
      const parts = yield* LanguageModel.streamText({ prompt: "weather?", toolkit: Tools }).pipe(
        Stream.runCollect,
        Effect.map(Chunk.toReadonlyArray)
      )
      assert.isTrue(parts.some((part) => part.type === "tool-result"))
      const events = yield* Testing.events
      const chunks = events.filter((event): event is Events.ChunkEvent => event._tag === "Chunk")
      assert.deepStrictEqual(chunks.map((chunk) => [chunk.index, chunk.kind, chunk.delta]), [
        [0, "reasoning", "think "],
        [1, "reasoning", "first"],
        [2, "text", "It "],
        [3, "text", "is "],
        [4, "text", "21"]
      ])
      assert.deepStrictEqual(tags(events.filter((event) => event._tag !== "Chunk")), ["Start", "ToolStart", "ToolEnd", "End"])
      const start = events[0]!
      const toolStart = events.find((event) => event._tag === "ToolStart")!
      assert.strictEqual(toolStart.call.parentCallId, start.call.callId)
      assert.strictEqual(events[events.length - 1]!._tag, "End")
    }).pipe(Effect.provide(model([
      FakeReply.Text({
        text: "It is 21",
        reasoning: "think first",
        toolCalls: [{ name: "Weather", params: { city: "Paris" } }],
        usage: { inputTokens: 5, outputTokens: 3 }
      })
    ]))))
})

describe("@effect/ai: aborted streams are accounted", () => {
  const accounted = (script: AiTesting.FakeScript) =>
    Layer.mergeAll(
      AiTesting.layerFakeModel(script, { model: "gpt-4o-mini", provider: "openai" }).pipe(
        AiLanguageModel.withCallbacks({ model: "gpt-4o-mini" })
      ),
      TokenUsage.layer({ cycleStartDate: "2026-12-01" }).pipe(
        Layer.provideMerge(Layer.merge(Testing.layer(), TokenStore.layerMemory))
      ),
      TokenUsage.layerTokenCounter
    )

  const stats = Effect.flatMap(TokenStore.TokenStore, (store) => store.stats("alice", "2026-12-01"))

  it.effect("a consumer that stops early: the prompt and the output received, counted and flagged, in the error event and the store", () =>
    Effect.gen(function*() {
      const parts = yield* LanguageModel.streamText({ prompt: "Tell me a story" }).pipe(
        Stream.filter((part) => part.type === "text-delta"),
        Stream.take(2),
        Stream.runCollect,
        Callbacks.withCallContext({ userId: "alice" })
      )
      assert.strictEqual(Chunk.size(parts), 2)
      const error = (yield* Testing.events).find((event): event is Events.ErrorEvent => event._tag === "Error")!
      assert.isTrue(error.interrupted)
      assert.strictEqual(error.response?.content, "Once upon ")
      const usage = error.response!.usage!
      assert.isTrue(usage.estimated)
      assert.isAbove(usage.promptTokens, 3)
      assert.strictEqual(usage.completionTokens, 3) // "Once upon " in o200k_base
      const stored = yield* stats
      assert.strictEqual(stored.totalTokens, usage.totalTokens)
      assert.strictEqual(stored.estimatedTokens, usage.totalTokens)
    }).pipe(Effect.provide(accounted([
      FakeReply.Text({ text: "Once upon a time there was a cat", usage: { inputTokens: 12, outputTokens: 8 } })
    ]))))

  it.effect("a stream failing midway: what was received is billed; a stream failing before any part bills nothing", () =>
    Effect.gen(function*() {
      const run = LanguageModel.streamText({ prompt: "Tell me a story" }).pipe(
        Stream.runDrain,
        Effect.either,
        Callbacks.withCallContext({ userId: "alice" })
      )
      yield* run
      const afterMidway = yield* stats
      const error = (yield* Testing.events).find((event): event is Events.ErrorEvent => event._tag === "Error")!
      assert.strictEqual(error.response?.content, "Once upon a ")
      assert.isTrue(error.response?.usage?.estimated)
      assert.strictEqual(afterMidway.totalTokens, error.response!.usage!.totalTokens)
      yield* run
      assert.deepStrictEqual(yield* stats, afterMidway)
      const errors = (yield* Testing.events).filter((event): event is Events.ErrorEvent => event._tag === "Error")
      assert.strictEqual(errors.length, 2)
      assert.strictEqual(errors[1]!.response, undefined)
    }).pipe(Effect.provide(accounted([
      FakeReply.FailMidStream({
        text: "Once upon a time",
        afterDeltas: 3,
        error: new AiError.UnknownError({ module: "Test", method: "stream", description: "reset" })
      }),
      FakeReply.Fail({ error: new AiError.UnknownError({ module: "Test", method: "stream", description: "429" }) })
    ]))))

  it.effect("several streams cut at once: each billed once, the store's total the sum of the error events'", () =>
    Effect.gen(function*() {
      const fibers = yield* Effect.forEach(Array.from({ length: 8 }, (_, i) => i), (i) =>
        LanguageModel.streamText({ prompt: `story ${i}` }).pipe(
          Stream.filter((part) => part.type === "text-delta"),
          Stream.take(1 + (i % 3)),
          Stream.runDrain,
          Callbacks.withCallContext({ userId: "alice" }),
          Effect.fork
        ))
      yield* TestClock.adjust("10 seconds")
      yield* Fiber.joinAll(fibers)
      const errors = (yield* Testing.events).filter((event): event is Events.ErrorEvent => event._tag === "Error")
      assert.strictEqual(errors.length, 8)
      const sum = errors.reduce((n, event) => n + event.response!.usage!.totalTokens, 0)
      assert.strictEqual((yield* stats).totalTokens, sum)
    }).pipe(Effect.provide(accounted(() =>
      FakeReply.Text({ text: "one two three four five", deltaDelay: "100 millis", usage: { inputTokens: 3, outputTokens: 5 } })
    ))))
})

describe("@effect/ai: a stream's consumer gone while its start is dispatched", () => {
  /** Interrupts `fiber`, then counts the virtual seconds until the interruption is through. */
  const secondsToInterrupt = (fiber: Fiber.RuntimeFiber<unknown, unknown>) =>
    Effect.gen(function*() {
      const interrupting = yield* Effect.fork(Fiber.interrupt(fiber))
      // Lets every fiber run as far as it can without the clock moving.
      yield* TestClock.adjust("0 millis")
      let waited = 0
      while (Option.isNone(yield* Fiber.poll(interrupting))) {
        yield* TestClock.adjust("1 second")
        waited++
      }
      return waited
    })

  it.effect("stops at once, as an instrumented call's caller does: the model is not called, and who heard start hears the error", () =>
    Effect.gen(function*() {
      const calls = { n: 0 }
      const heard: Array<string> = []
      const push = (tag: string) => Effect.sync(() => void heard.push(tag))
      yield* Dispatcher.register(Handler.make({ name: "quick", priority: 1, onLlmStart: () => push("start"), onLlmError: () => push("error") }))
      yield* Dispatcher.register(Handler.make({ name: "slow", onLlmStart: () => Effect.sleep("10 seconds"), timeout: "30 seconds" }))
      const fiber = yield* LanguageModel.streamText({ prompt: "hi" }).pipe(
        Stream.runDrain,
        Effect.provide(AiTesting.layerFakeModel(() => (calls.n++, FakeReply.Text({ text: "never" }))).pipe(AiLanguageModel.withCallbacks())),
        Effect.fork
      )
      yield* TestClock.adjust("1 second")
      // The consumer is interrupted while the slow start handler runs: no wait for it (it had 29 s left).
      assert.strictEqual(yield* secondsToInterrupt(fiber), 0)
      assert.isTrue(Exit.isInterrupted(yield* Fiber.await(fiber)))
      assert.strictEqual(calls.n, 0)
      assert.deepStrictEqual(heard, ["start", "error"])
      const health = yield* Dispatcher.health
      assert.deepStrictEqual(health.handlers.map((h) => [h.name, h.interruptions, h.inFlight]).sort(), [
        ["quick", 0, 0],
        ["slow", 1, 0]
      ])
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer())))

  it.effect("Callbacks.begin with interruptible: true in a stream of one's own (Stream.acquireRelease): the same", () =>
    Effect.gen(function*() {
      const heard: Array<string> = []
      const push = (tag: string) => Effect.sync(() => void heard.push(tag))
      yield* Dispatcher.register(Handler.make({ name: "quick", priority: 1, onLlmStart: () => push("start"), onLlmEnd: () => push("end"), onLlmError: () => push("error") }))
      yield* Dispatcher.register(Handler.make({ name: "slow", onLlmStart: () => Effect.sleep("10 seconds"), timeout: "30 seconds" }))
      const mine = (interruptible: boolean) =>
        Stream.acquireRelease(
          Callbacks.begin({ provider: "acme", model: "m1" }, { interruptible }),
          (active, exit) => Option.isSome(active) ? active.value.finish(exit) : Effect.void
        ).pipe(Stream.flatMap(() => Stream.make("Hel", "lo")))
      const elapsed = (interruptible: boolean) =>
        Effect.gen(function*() {
          const fiber = yield* Effect.fork(Stream.runDrain(mine(interruptible)))
          yield* TestClock.adjust("1 second")
          return yield* secondsToInterrupt(fiber)
        })
      // Acquired uninterruptibly, the start handlers hold the consumer (9 s more); with interruptible: true, nothing.
      assert.strictEqual(yield* elapsed(false), 9)
      assert.deepStrictEqual(heard, ["start", "error"])
      heard.length = 0
      assert.strictEqual(yield* elapsed(true), 0)
      assert.deepStrictEqual(heard, ["start", "error"])
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer())))
})

describe("@effect/ai: retried streams", () => {
  const overloaded = new AiError.UnknownError({ module: "Test", method: "stream", description: "529" })
  // Two runs of a stream that fails twice before any output, then answers.
  const replies = [1, 2].flatMap(() => [
    FakeReply.Fail({ error: overloaded }),
    FakeReply.Fail({ error: overloaded }),
    FakeReply.Text({ text: "at last", usage: { inputTokens: 5, outputTokens: 2 } })
  ])

  it.effect("Stream.retry inside withOperation on a stream run elsewhere: each attempt a call, numbered under one operation id", () =>
    Effect.gen(function*() {
      const stream = LanguageModel.streamText({ prompt: "hi" }).pipe(
        Stream.retry(Schedule.recurs(3)),
        Callbacks.withOperation({ operationId: "op-s" }),
        Callbacks.withCallContext({ userId: "alice" })
      )
      // Run twice, from elsewhere: each run is an operation of its own, numbered from 1 again.
      for (const _ of [1, 2]) yield* Stream.runDrain(stream)
      const events = (yield* Testing.events).filter((event) => event._tag !== "Chunk")
      assert.deepStrictEqual(
        events.map((event) => [event._tag, event.call.operationId, event.call.attempt, event.call.userId]),
        [1, 2].flatMap(() => [
          ["Start", "op-s", 1, "alice"],
          ["Error", "op-s", 1, "alice"],
          ["Start", "op-s", 2, "alice"],
          ["Error", "op-s", 2, "alice"],
          ["Start", "op-s", 3, "alice"],
          ["End", "op-s", 3, "alice"]
        ])
      )
      assert.strictEqual(new Set(events.map((event) => event.call.callId)).size, 6)
    }).pipe(Effect.provide(model(replies))))
})

describe("@effect/ai: chunk and tool hooks never change what the caller gets", () => {
  const script = () =>
    FakeReply.Text({
      text: "It is warm in Paris",
      reasoning: "weather lookup",
      toolCalls: [{ name: "Weather", params: { city: "Paris" } }, { name: "Weather", params: { city: "Atlantis" } }],
      usage: { inputTokens: 5, outputTokens: 5 },
      deltaDelay: "10 millis"
    })

  const bare = Layer.merge(AiTesting.layerFakeModel(script, { model: "fake-1", provider: "fake" }), ToolHandlers)

  const behaviours = {
    fail: () => Effect.fail("hook failed"),
    die: () => Effect.die(new Error("hook died")),
    throw: () => {
      throw new Error("hook threw")
    },
    hang: () => Effect.never,
    slow: () => Effect.sleep("2 seconds")
  } as const

  const withHooks = (behaviour: keyof typeof behaviours) =>
    Layer.mergeAll(
      AiTesting.layerFakeModel(script, { model: "fake-1", provider: "fake" }).pipe(
        AiLanguageModel.withCallbacks({ model: "fake-1" })
      ),
      ToolHandlers,
      Dispatcher.toLayer(Handler.make({
        name: `broken-${behaviour}`,
        onLlmChunk: behaviours[behaviour],
        onToolStart: behaviours[behaviour],
        onToolEnd: behaviours[behaviour],
        onToolError: behaviours[behaviour],
        timeout: "1 second",
        retry: Schedule.recurs(1)
      }))
    ).pipe(Layer.provideMerge(Dispatcher.layer()))

  const both = Effect.gen(function*() {
    const streamed = yield* LanguageModel.streamText({ prompt: "weather?", toolkit: Tools }).pipe(
      Stream.runCollect,
      Effect.map((parts) =>
        Chunk.toReadonlyArray(parts).map((part) =>
          part.type === "tool-result"
            ? [part.type, part.name, part.result]
            : part.type === "text-delta" || part.type === "reasoning-delta"
            ? [part.type, part.delta]
            : [part.type]
        )
      )
    )
    const generated = yield* LanguageModel.generateText({ prompt: "weather?", toolkit: Tools })
    return { streamed, text: generated.text, toolResults: generated.toolResults.map((part) => part.result) }
  })

  const run = <E>(layer: Layer.Layer<LanguageModel.LanguageModel | Tool.Handler<"Weather">, E>) =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(Effect.provide(both, layer))
      yield* TestClock.adjust("1 minute")
      return yield* Fiber.join(fiber)
    })

  for (const behaviour of Object.keys(behaviours) as Array<keyof typeof behaviours>) {
    it.effect(`hooks that ${behaviour}: the same parts, text and tool results as without the layer`, () =>
      Effect.gen(function*() {
        const expected = yield* run(bare)
        assert.isAbove(expected.streamed.length, 5)
        assert.deepStrictEqual(yield* run(withHooks(behaviour)), expected)
      }))
  }
})

describe("metrics reconcile with the token store", () => {
  it.effect("with a token counter in force, the GenAI metrics' tokens equal the store's, estimated ones included", () =>
    Effect.gen(function*() {
      const model = `reconcile-${process.pid}-${Date.now()}`
      const replies = [
        FakeReply.Text({ text: "Reported usage here", usage: { inputTokens: 40, outputTokens: 12 } }),
        FakeReply.Text({ text: "No usage reported for this answer" }),
        FakeReply.Text({ text: "Another one without usage" }),
        FakeReply.Text({ text: "And one with", usage: { inputTokens: 9, outputTokens: 3 } })
      ]
      const layer = Layer.mergeAll(
        AiTesting.layerFakeModel(replies, { model, provider: "openai" }).pipe(AiLanguageModel.withCallbacks({ model })),
        TokenUsage.layer({ cycleStartDate: "2026-12-01" }),
        GenAiMetrics.layer({ name: `gen-ai-${model}`, models: [model] }),
        TokenUsage.layerTokenCounter
      ).pipe(Layer.provideMerge(Layer.merge(Dispatcher.layer(), TokenStore.layerMemory)))
      const stored = yield* Effect.gen(function*() {
        yield* Effect.forEach(replies, () => LanguageModel.generateText({ prompt: "Say something" }), { discard: true })
        const store = yield* TokenStore.TokenStore
        return yield* store.stats("alice", "2026-12-01")
      }).pipe(Callbacks.withCallContext({ userId: "alice" }), Effect.provide(layer))
      const labels = (type: string) => [
        MetricLabel.make("gen_ai.operation.name", "chat"),
        MetricLabel.make("gen_ai.provider.name", "openai"),
        MetricLabel.make("gen_ai.request.model", model),
        MetricLabel.make("gen_ai.response.model", model),
        MetricLabel.make("gen_ai.token.type", type)
      ]
      const tokens = (type: string) =>
        Effect.map(Metric.value(Metric.taggedWithLabels(GenAiMetrics.tokenUsage, labels(type))), (state) => state.sum)
      const estimated = (type: string) =>
        Effect.map(Metric.value(Metric.taggedWithLabels(GenAiMetrics.estimatedTokens, labels(type))), (state) => state.count)
      assert.strictEqual((yield* tokens("input")) + (yield* tokens("output")), stored.totalTokens)
      assert.strictEqual((yield* estimated("input")) + (yield* estimated("output")), stored.estimatedTokens)
      assert.isAbove(stored.estimatedTokens, 0)
      assert.strictEqual(stored.totalTokens - stored.estimatedTokens, 40 + 12 + 9 + 3)
    }))
})
