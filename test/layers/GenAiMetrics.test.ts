import * as OtelResource from "@effect/opentelemetry/Resource"
import * as OtelTracer from "@effect/opentelemetry/Tracer"
import { assert, describe, it } from "@effect/vitest"
import { SpanKind, SpanStatusCode } from "@opentelemetry/api"
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Effect, Either, Exit, Fiber, Layer, Metric, MetricLabel, Option, TestClock } from "effect"
import * as GenAiMetrics from "../../layers/GenAiMetrics.js"
import { Callbacks, Cost, Dispatcher, Handler, Testing } from "../../src/index.js"

// Effect metrics are global to the process: every test uses its own model name.
let counter = 0
const uniqueModel = (name: string) => `${name}-${process.pid}-${counter++}`

const labels = (model: string, extra: Record<string, string> = {}) =>
  [
    MetricLabel.make("gen_ai.operation.name", "chat"),
    MetricLabel.make("gen_ai.provider.name", "openai"),
    MetricLabel.make("gen_ai.request.model", model),
    ...Object.entries(extra).map(([k, v]) => MetricLabel.make(k, v))
  ] as const

const tokens = (model: string, type: "input" | "output") =>
  Metric.value(Metric.taggedWithLabels(GenAiMetrics.tokenUsage, labels(model, { "gen_ai.token.type": type })))

const duration = (model: string, extra: Record<string, string> = {}) =>
  Metric.value(Metric.taggedWithLabels(GenAiMetrics.operationDuration, labels(model, extra)))

const usage = { promptTokens: 120, completionTokens: 30, totalTokens: 150 }

const MetricsLive = GenAiMetrics.layer().pipe(Layer.provideMerge(Dispatcher.layer()))

describe("GenAiMetrics", () => {
  it("bucket boundaries are the ones the GenAI conventions advise", () => {
    assert.deepStrictEqual(
      GenAiMetrics.tokenUsageBoundaries.values.slice(0, -1),
      [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
    )
    assert.deepStrictEqual(
      GenAiMetrics.operationDurationBoundaries.values.slice(0, -1),
      [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]
    )
  })

  it.effect("token usage: input and output tokens per call, durations in seconds", () =>
    Effect.gen(function*() {
      const model = uniqueModel("usage")
      const call = Effect.sleep("1500 millis").pipe(
        Effect.as({ content: "ok", usage }),
        Callbacks.instrument({ provider: "openai", model, userId: "alice" })
      )
      const fiber = yield* Effect.fork(Effect.zip(call, call))
      yield* TestClock.adjust("3 seconds")
      yield* Fiber.join(fiber)
      const input = yield* tokens(model, "input")
      const output = yield* tokens(model, "output")
      assert.strictEqual(input.count, 2)
      assert.strictEqual(input.sum, 240)
      assert.strictEqual(output.count, 2)
      assert.strictEqual(output.sum, 60)
      // 120 tokens fall in the (64, 256] bucket
      assert.deepStrictEqual(input.buckets.find(([b]) => b === 64)?.[1], 0)
      assert.deepStrictEqual(input.buckets.find(([b]) => b === 256)?.[1], 2)
      const seconds = yield* duration(model)
      assert.strictEqual(seconds.count, 2)
      assert.strictEqual(seconds.sum, 3)
    }).pipe(Effect.provide(MetricsLive)))

  it.effect("no token usage is reported when the usage is unknown; the duration is", () =>
    Effect.gen(function*() {
      const model = uniqueModel("nousage")
      yield* Effect.succeed({ content: "ok" }).pipe(Callbacks.instrument({ provider: "openai", model }))
      assert.strictEqual((yield* tokens(model, "input")).count, 0)
      assert.strictEqual((yield* tokens(model, "output")).count, 0)
      assert.strictEqual((yield* duration(model)).count, 1)
    }).pipe(Effect.provide(MetricsLive)))

  it.effect("estimated usage is left out when includeEstimated is false", () =>
    Effect.gen(function*() {
      const model = uniqueModel("estimated")
      yield* Effect.succeed({ content: "ok", usage: { ...usage, estimated: true } }).pipe(
        Callbacks.instrument({ provider: "openai", model })
      )
      assert.strictEqual((yield* tokens(model, "input")).count, 0)
    }).pipe(Effect.provide(GenAiMetrics.layer({ includeEstimated: false }).pipe(Layer.provideMerge(Dispatcher.layer())))))

  it.effect("failures: duration with error.type; the operation name comes from metadata", () =>
    Effect.gen(function*() {
      const model = uniqueModel("failing")
      class RateLimited {
        readonly _tag = "RateLimited"
      }
      const exit = yield* Effect.exit(
        Effect.fail(new RateLimited()).pipe(Callbacks.instrument({ provider: "openai", model }))
      )
      assert.isTrue(Exit.isFailure(exit))
      assert.strictEqual((yield* duration(model, { "error.type": "RateLimited" })).count, 1)
      assert.strictEqual((yield* duration(model)).count, 0)
      yield* Effect.succeed({ content: "", usage }).pipe(
        Callbacks.instrument({ provider: "openai", model, metadata: { "gen_ai.operation.name": "embeddings" } })
      )
      const embeddings = yield* Metric.value(
        Metric.taggedWithLabels(GenAiMetrics.operationDuration, [
          MetricLabel.make("gen_ai.operation.name", "embeddings"),
          MetricLabel.make("gen_ai.provider.name", "openai"),
          MetricLabel.make("gen_ai.request.model", model)
        ])
      )
      assert.strictEqual(embeddings.count, 1)
    }).pipe(Effect.provide(MetricsLive)))

  it.effect("labels carry no user ids or call ids", () =>
    Effect.gen(function*() {
      const model = uniqueModel("labels")
      yield* Effect.succeed({ content: "", usage }).pipe(
        Callbacks.instrument({ provider: "openai", model, userId: "user-123", callId: "call-456" })
      )
      const keys = (yield* Metric.snapshot).filter((pair) =>
        pair.metricKey.name.startsWith("gen_ai.") &&
        pair.metricKey.tags.some((tag) => tag.key === "gen_ai.request.model" && tag.value === model)
      )
      assert.strictEqual(keys.length, 3)
      for (const pair of keys) {
        for (const tag of pair.metricKey.tags) {
          assert.notInclude(["user-123", "call-456"], tag.value)
          assert.include(
            ["gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.token.type"],
            tag.key
          )
        }
      }
    }).pipe(Effect.provide(MetricsLive)))

  const counter = (metric: Metric.Metric.Counter<number>, model: string, extra: Record<string, string> = {}) =>
    Effect.map(Metric.value(Metric.taggedWithLabels(metric, labels(model, extra))), (state) => state.count)

  it.effect("streams: time to first chunk per call, time per output chunk for every chunk after the first", () =>
    Effect.gen(function*() {
      const model = uniqueModel("stream")
      const fiber = yield* Effect.fork(Effect.gen(function*() {
        const active = Option.getOrThrow(yield* Callbacks.begin({ provider: "openai", model }))
        yield* Effect.sleep("400 millis")
        active.chunk("text", "a")
        yield* Effect.sleep("100 millis")
        active.chunk("text", "b")
        yield* Effect.sleep("300 millis")
        active.chunk("reasoning", "c")
        yield* active.finish(Exit.succeed(undefined), { response: { content: "abc", usage }, timeToFirstTokenMs: 400 })
      }))
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      const first = yield* Metric.value(Metric.taggedWithLabels(GenAiMetrics.timeToFirstChunk, labels(model)))
      assert.deepStrictEqual([first.count, first.sum], [1, 0.4])
      const perChunk = yield* Metric.value(Metric.taggedWithLabels(GenAiMetrics.timePerOutputChunk, labels(model)))
      assert.strictEqual(perChunk.count, 2)
      assert.closeTo(perChunk.sum, 0.4, 1e-9)
    }).pipe(Effect.provide(MetricsLive)))

  it.effect("error.type is the HTTP status of an HTTP error; a cut-off call's tokens are recorded with it", () =>
    Effect.gen(function*() {
      const model = uniqueModel("http")
      const rateLimited = { _tag: "HttpResponseError", message: "quota", response: { status: 429 } }
      yield* Effect.exit(Effect.fail(rateLimited).pipe(Callbacks.instrument({ provider: "openai", model })))
      assert.strictEqual((yield* duration(model, { "error.type": "429" })).count, 1)
      const active = Option.getOrThrow(yield* Callbacks.begin({ provider: "openai", model }))
      yield* active.finish(Exit.fail({ _tag: "Reset", status: 500 }), {
        response: { content: "partial", usage: { promptTokens: 7, completionTokens: 3, totalTokens: 10, estimated: true } }
      })
      const input = yield* Metric.value(
        Metric.taggedWithLabels(GenAiMetrics.tokenUsage, labels(model, { "gen_ai.token.type": "input", "error.type": "500" }))
      )
      assert.deepStrictEqual([input.count, input.sum], [1, 7])
      assert.strictEqual(yield* counter(GenAiMetrics.estimatedTokens, model, { "gen_ai.token.type": "output" }), 3)
    }).pipe(Effect.provide(MetricsLive)))

  it.effect("cost, estimated tokens and calls without usage: counters that reconcile with the token store", () =>
    Effect.gen(function*() {
      const model = uniqueModel("cost")
      const table = Cost.decode({ [model]: { input: 2.5, output: 10 } }).pipe(Either.getOrThrow)
      yield* Effect.succeed({ content: "", usage }).pipe(
        Callbacks.instrument({ provider: "openai", model }),
        Cost.withPriceTable(table)
      )
      // 120 × 2.5 + 30 × 10 = 600 micro-units
      assert.strictEqual(yield* counter(GenAiMetrics.costMicros, model), 600)
      yield* Effect.succeed({ content: "", usage: { ...usage, estimated: true } }).pipe(
        Callbacks.instrument({ provider: "openai", model })
      )
      assert.strictEqual(yield* counter(GenAiMetrics.estimatedTokens, model, { "gen_ai.token.type": "input" }), 120)
      assert.strictEqual(yield* counter(GenAiMetrics.estimatedTokens, model, { "gen_ai.token.type": "output" }), 30)
      yield* Effect.succeed({ content: "" }).pipe(Callbacks.instrument({ provider: "openai", model }))
      assert.strictEqual(yield* counter(GenAiMetrics.callsWithoutUsage, model), 1)
    }).pipe(Effect.provide(MetricsLive)))

  it.effect("tool runs: gen_ai.execute_tool.duration by tool name, with error.type when the tool failed", () =>
    Effect.gen(function*() {
      const tool = uniqueModel("tool")
      const fiber = yield* Effect.fork(Effect.gen(function*() {
        yield* Effect.sleep("250 millis").pipe(Callbacks.instrumentTool({ name: tool }))
        yield* Effect.exit(Effect.fail({ _tag: "Quota", status: 429 }).pipe(Callbacks.instrumentTool({ name: tool })))
      }))
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      const toolLabels = [MetricLabel.make("gen_ai.operation.name", "execute_tool"), MetricLabel.make("gen_ai.tool.name", tool)]
      const ok = yield* Metric.value(Metric.taggedWithLabels(GenAiMetrics.toolDuration, toolLabels))
      assert.deepStrictEqual([ok.count, ok.sum], [1, 0.25])
      const failed = yield* Metric.value(
        Metric.taggedWithLabels(GenAiMetrics.toolDuration, [...toolLabels, MetricLabel.make("error.type", "429")])
      )
      assert.strictEqual(failed.count, 1)
    }).pipe(Effect.provide(MetricsLive)))

  const allowed = uniqueModel("allowed")
  it.effect("labels from callers are bounded: past the allow-list and the first values seen, 'other', counted", () =>
    Effect.gen(function*() {
      const seen = [uniqueModel("seen"), uniqueModel("seen")]
      const rest = Array.from({ length: 20 }, () => uniqueModel("rest"))
      const folded = Metric.value(Metric.taggedWithLabels(GenAiMetrics.foldedLabels, [MetricLabel.make("label", "model")]))
      const before = (yield* folded).count
      for (const model of [allowed, ...seen, ...rest, allowed]) {
        yield* Effect.succeed({ content: "", usage }).pipe(Callbacks.instrument({ provider: "openai", model }))
      }
      assert.strictEqual((yield* duration(allowed)).count, 2)
      for (const model of seen) assert.strictEqual((yield* duration(model)).count, 1)
      for (const model of rest) assert.strictEqual((yield* duration(model)).count, 0)
      assert.isAtLeast((yield* duration(GenAiMetrics.other)).count, 20)
      assert.strictEqual((yield* folded).count - before, 20)
    }).pipe(Effect.provide(
      GenAiMetrics.layer({ models: [allowed], maxValues: 2 }).pipe(Layer.provideMerge(Dispatcher.layer()))
    )), { timeout: 30_000 })

  it.effect("the response model and the server are labels; the legacy conventions name the provider gen_ai.system", () =>
    Effect.gen(function*() {
      const model = uniqueModel("legacy")
      yield* Effect.succeed({ content: "", usage, model: `${model}-2024` }).pipe(
        Callbacks.instrument({
          provider: "openai",
          model,
          metadata: { "server.address": "api.openai.com", "server.port": 443 }
        })
      )
      const legacy = yield* Metric.value(Metric.taggedWithLabels(GenAiMetrics.operationDuration, [
        MetricLabel.make("gen_ai.operation.name", "chat"),
        MetricLabel.make("gen_ai.system", "openai"),
        MetricLabel.make("gen_ai.request.model", model),
        MetricLabel.make("gen_ai.response.model", `${model}-2024`),
        MetricLabel.make("server.address", "api.openai.com"),
        MetricLabel.make("server.port", "443")
      ]))
      assert.strictEqual(legacy.count, 1)
    }).pipe(Effect.provide(
      GenAiMetrics.layer({ semanticConventions: "legacy" }).pipe(Layer.provideMerge(Dispatcher.layer()))
    )))
})

// -- spans ---------------------------------------------------------------------

const makeTracing = () => {
  const exporter = new InMemorySpanExporter()
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
  const layer = OtelTracer.layer.pipe(
    Layer.provide(Layer.succeed(OtelTracer.OtelTracerProvider, provider)),
    Layer.provide(OtelResource.layer({ serviceName: "test" }))
  )
  return { exporter, layer }
}

describe("the span of an instrumented call", () => {
  it.effect("one client span per call with the GenAI attributes; the call's own spans are its children", () => {
    const { exporter, layer } = makeTracing()
    return Effect.gen(function*() {
      yield* Effect.succeed({ content: "ok", usage, model: "gpt-4o-mini-2024-07-18", finishReason: "stop" }).pipe(
        Effect.withSpan("http request"),
        Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", callId: "call-1" }),
        Effect.withSpan("app")
      )
      const spans = exporter.getFinishedSpans()
      const call = spans.find((span) => span.name === "chat gpt-4o-mini")
      const inner = spans.find((span) => span.name === "http request")
      const app = spans.find((span) => span.name === "app")
      assert.isDefined(call)
      assert.isDefined(inner)
      assert.isDefined(app)
      assert.strictEqual(spans.filter((span) => span.name === "chat gpt-4o-mini").length, 1)
      assert.strictEqual(call!.kind, SpanKind.CLIENT)
      assert.strictEqual(call!.parentSpanContext?.spanId, app!.spanContext().spanId)
      assert.strictEqual(inner!.parentSpanContext?.spanId, call!.spanContext().spanId)
      assert.deepInclude(call!.attributes, {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30,
        "llm.call_id": "call-1"
      })
      // A string array, as the conventions say (not the JSON text Effect's bridge would make of it).
      assert.deepStrictEqual(call!.attributes["gen_ai.response.finish_reasons"], ["stop"])
      assert.notStrictEqual(call!.status.code, SpanStatusCode.ERROR)
    }).pipe(Effect.provide(Layer.merge(Testing.layer(), layer)))
  })

  it.effect("handlers run under the call's span; the caller's span is current again afterwards", () => {
    const { exporter, layer } = makeTracing()
    return Effect.gen(function*() {
      const seen: Array<string | undefined> = []
      const spanName = Effect.map(Effect.option(Effect.currentSpan), (span) => Option.getOrUndefined(span)?.name)
      yield* Dispatcher.register(Handler.make({
        name: "span-reader",
        onLlmStart: () => Effect.map(spanName, (name) => void seen.push(name)),
        onLlmEnd: () => Effect.map(spanName, (name) => void seen.push(name))
      }))
      const after = yield* Effect.succeed({ content: "ok" }).pipe(
        Callbacks.instrument({ provider: "openai", model: "m" }),
        Effect.zipRight(spanName),
        Effect.withSpan("app")
      )
      // Each handler invocation has a span of its own, a child of the call's span.
      assert.deepStrictEqual(seen, ["callback span-reader start", "callback span-reader end"])
      assert.strictEqual(after, "app")
      const finished = exporter.getFinishedSpans()
      const call = finished.filter((s) => s.name === "chat m")
      assert.strictEqual(call.length, 1)
      for (const phase of ["start", "end"]) {
        const handler = finished.find((s) => s.name === `callback span-reader ${phase}`)!
        assert.strictEqual(handler.parentSpanContext?.spanId, call[0]!.spanContext().spanId)
        assert.strictEqual(handler.attributes["callback.status"], "success")
        assert.strictEqual(handler.attributes["callback.handler"], "span-reader")
      }
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(Testing.layer(), layer)))
  })

  it.effect("a failed call: error status and error.type; the error is exactly the bare call's", () => {
    const { exporter, layer } = makeTracing()
    return Effect.gen(function*() {
      class RateLimited extends Error {
        readonly _tag = "RateLimited"
      }
      const error = new RateLimited("slow down")
      const defect = new Error("bug")
      const failed = yield* Effect.exit(Effect.fail(error).pipe(Callbacks.instrument({ provider: "openai", model: "m" })))
      const died = yield* Effect.exit(Effect.die(defect).pipe(Callbacks.instrument({ provider: "openai", model: "d" })))
      assert.deepStrictEqual(failed, Exit.fail(error))
      assert.isTrue(Exit.isFailure(died) && Option.getOrUndefined(Exit.causeOption(died).pipe(
        Option.flatMap((cause) => Option.fromNullable(cause._tag === "Die" ? cause.defect : undefined))
      )) === defect)
      const span = exporter.getFinishedSpans().find((s) => s.name === "chat m")!
      assert.strictEqual(span.status.code, SpanStatusCode.ERROR)
      assert.strictEqual(span.attributes["error.type"], "RateLimited")
      const events = yield* Testing.events
      const errorEvent = events.find((e) => e._tag === "Error")
      assert.strictEqual(errorEvent?._tag === "Error" ? errorEvent.failure.error : undefined, error)
    }).pipe(Effect.provide(Layer.merge(Testing.layer(), layer)))
  })

  it.effect("begin/finish (streams): one span, ended by finish with the usage; handlers run under it", () => {
    const { exporter, layer } = makeTracing()
    return Effect.gen(function*() {
      const seen: Array<string | undefined> = []
      const spanName = Effect.map(Effect.option(Effect.currentSpan), (span) => Option.getOrUndefined(span)?.name)
      yield* Dispatcher.register(Handler.make({
        name: "span-reader",
        onLlmStart: () => Effect.map(spanName, (name) => void seen.push(name)),
        onLlmEnd: () => Effect.map(spanName, (name) => void seen.push(name))
      }))
      const active = yield* Callbacks.begin({ provider: "openai", model: "streamer" })
      assert.isTrue(Option.isSome(active))
      if (Option.isNone(active)) return
      assert.isDefined(active.value.span)
      yield* Effect.withSpan(Effect.void, "chunk").pipe(Effect.withParentSpan(active.value.span!))
      assert.strictEqual(exporter.getFinishedSpans().filter((s) => s.name === "chat streamer").length, 0)
      yield* active.value.finish(Exit.void, { response: { content: "done", usage } })
      const call = exporter.getFinishedSpans().find((s) => s.name === "chat streamer")!
      const chunk = exporter.getFinishedSpans().find((s) => s.name === "chunk")!
      assert.strictEqual(chunk.parentSpanContext?.spanId, call.spanContext().spanId)
      assert.strictEqual(call.attributes["gen_ai.usage.output_tokens"], 30)
      assert.deepStrictEqual(seen, ["callback span-reader start", "callback span-reader end"])
      const handlerSpans = exporter.getFinishedSpans().filter((s) => s.name.startsWith("callback span-reader"))
      assert.strictEqual(handlerSpans.length, 2)
      for (const span of handlerSpans) assert.strictEqual(span.parentSpanContext?.spanId, call.spanContext().spanId)
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(Testing.layer(), layer)))
  })

  it.effect("a tool run: an execute_tool span below the call's, parent of the tool's own spans and its handlers'", () => {
    const { exporter, layer } = makeTracing()
    return Effect.gen(function*() {
      yield* Dispatcher.register(Handler.make({ name: "tool-reader", onToolStart: () => Effect.void }))
      yield* Effect.gen(function*() {
        yield* Effect.withSpan(Effect.succeed(21), "weather api").pipe(
          Callbacks.instrumentTool({ name: "get_weather", toolCallId: "tc_9", params: { city: "Paris" } })
        )
        return { content: "21" }
      }).pipe(Callbacks.instrument({ provider: "openai", model: "tools" }))
      const spans = exporter.getFinishedSpans()
      const call = spans.find((s) => s.name === "chat tools")!
      const tool = spans.find((s) => s.name === "execute_tool get_weather")!
      const api = spans.find((s) => s.name === "weather api")!
      const handler = spans.find((s) => s.name === "callback tool-reader tool_start")!
      assert.strictEqual(tool.parentSpanContext?.spanId, call.spanContext().spanId)
      assert.strictEqual(api.parentSpanContext?.spanId, tool.spanContext().spanId)
      assert.strictEqual(handler.parentSpanContext?.spanId, tool.spanContext().spanId)
      assert.deepInclude(tool.attributes, {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "get_weather",
        "gen_ai.tool.call.id": "tc_9"
      })
    }).pipe(Effect.scoped, Effect.provide(Layer.merge(Testing.layer(), layer)))
  })

  it.effect("no span when tracing is disabled", () => {
    const { exporter, layer } = makeTracing()
    return Effect.gen(function*() {
      yield* Effect.succeed({ content: "ok" }).pipe(
        Callbacks.instrument({ provider: "openai", model: "m" }),
        Effect.withTracerEnabled(false)
      )
      assert.strictEqual(exporter.getFinishedSpans().length, 0)
      assert.strictEqual((yield* Testing.events).length, 2)
    }).pipe(Effect.provide(Layer.merge(Testing.layer(), layer)))
  })
})
