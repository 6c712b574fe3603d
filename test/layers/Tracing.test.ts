/**
 * Spans of `@effect/ai` calls over real HTTP (the mock OpenAI server) with a real tracer (OpenTelemetry
 * SDK, in-memory exporter): one trace per call, whose root is the call's span, with the model's and the
 * HTTP client's spans below it; the documented attributes; no secret anywhere unless content is on.
 */
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as OpenAiLanguageModel from "@effect/ai-openai/OpenAiLanguageModel"
import * as OtelResource from "@effect/opentelemetry/Resource"
import * as OtelTracer from "@effect/opentelemetry/Tracer"
import { assert, describe, it } from "@effect/vitest"
import { SpanKind, SpanStatusCode } from "@opentelemetry/api"
import { BasicTracerProvider, InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Effect, HashMap, Layer, Logger, Metric, Stream } from "effect"
import * as AiLanguageModel from "../../layers/AiLanguageModel.js"
import * as GenAiMetrics from "../../layers/GenAiMetrics.js"
import * as Logging from "../../layers/Logging.js"
import { BillingCycle, Budget, Callbacks, Dispatcher, Testing, TokenStore } from "../../src/index.js"
import * as MockOpenAiServer from "../support/MockOpenAiServer.js"

const { MockReply } = MockOpenAiServer

const secret = "my card number is 4111-1111"
// What must appear nowhere. Not "4111" alone: call, trace and span ids are hex, and one in a few hundred
// runs has those four digits in a row somewhere in the lines and spans checked.
const leaked = "4111-1111"

const tracing = () => {
  const exporter = new InMemorySpanExporter()
  const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
  const layer = OtelTracer.layer.pipe(
    Layer.provide(Layer.succeed(OtelTracer.OtelTracerProvider, provider)),
    Layer.provide(OtelResource.layer({ serviceName: "tracing-test" }))
  )
  return { exporter, layer }
}

const model = (server: MockOpenAiServer.Service) =>
  OpenAiLanguageModel.model("gpt-4o-mini").pipe(
    AiLanguageModel.withCallbacks({ model: "gpt-4o-mini" }),
    Layer.provide(MockOpenAiServer.layerOpenAiClient),
    Layer.provide(Layer.succeed(MockOpenAiServer.MockOpenAiServer, server))
  )

/** The spans of one trace, and whether each one's parent is in it (the root's is not). */
const traceOf = (spans: ReadonlyArray<ReadableSpan>, root: ReadableSpan) => {
  const trace = spans.filter((span) => span.spanContext().traceId === root.spanContext().traceId)
  const ids = new Set(trace.map((span) => span.spanContext().spanId))
  const orphans = trace.filter((span) => span !== root && !ids.has(span.parentSpanContext?.spanId ?? ""))
  return { trace, orphans }
}

/** Rita's limit for this cycle: 10 tokens. */
const limitRita = Effect.flatMap(
  Effect.zip(TokenStore.TokenStore, BillingCycle.current()),
  ([store, cycle]) => store.setLimit("rita", cycle, 10)
)

/** A call of Rita's that asks for 50 tokens under `Budget.guard`: refused once her limit is set. */
const refusedCall = Effect.succeed({ content: "never" }).pipe(
  Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", userId: "rita", params: { maxTokens: 50 } }),
  Budget.guard()
)

const capture = () => {
  const lines: Array<string> = []
  const logger = Logger.make(({ annotations, message }) => {
    lines.push(JSON.stringify({ message, annotations: Object.fromEntries(HashMap.toEntries(annotations)) }))
  })
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
}

describe("spans of @effect/ai calls over HTTP", () => {
  it.scopedLive("generateText and streamText: one trace each, rooted at the call's client span, the model's and HTTP spans below", () =>
    Effect.gen(function*() {
      const { exporter, layer } = tracing()
      const server = yield* MockOpenAiServer.make({
        script: () =>
          MockReply.Text({
            text: "Paris is the capital.",
            usage: { inputTokens: 11, outputTokens: 5, cachedTokens: 4, reasoningTokens: 2 }
          })
      })
      yield* Effect.gen(function*() {
        yield* LanguageModel.generateText({ prompt: "Capital of France?" })
        yield* LanguageModel.streamText({ prompt: "Capital of France?" }).pipe(Stream.runDrain)
      }).pipe(Effect.provide(Layer.mergeAll(model(server), Dispatcher.layer(), layer)))
      const spans = exporter.getFinishedSpans()
      const calls = spans.filter((span) => span.name === "chat gpt-4o-mini")
      assert.strictEqual(calls.length, 2)
      for (const call of calls) {
        assert.strictEqual(call.kind, SpanKind.CLIENT)
        assert.isUndefined(call.parentSpanContext, "the call's span is the root of its trace")
        const { orphans, trace } = traceOf(spans, call)
        assert.deepStrictEqual(orphans.map((span) => span.name), [])
        const names = trace.map((span) => span.name)
        assert.isTrue(names.some((name) => name.startsWith("LanguageModel.")), names.join(", "))
        assert.isTrue(names.some((name) => name.startsWith("http.client")), names.join(", "))
        assert.deepInclude(call.attributes, {
          "gen_ai.operation.name": "chat",
          "gen_ai.provider.name": "openai",
          "gen_ai.request.model": "gpt-4o-mini",
          "gen_ai.response.model": "gpt-4o-mini",
          "gen_ai.response.id": call.attributes["gen_ai.response.id"],
          "gen_ai.usage.input_tokens": 11,
          "gen_ai.usage.output_tokens": 5,
          "gen_ai.usage.cache_read.input_tokens": 4,
          "gen_ai.usage.reasoning.output_tokens": 2
        })
        assert.match(String(call.attributes["gen_ai.response.id"]), /^resp_mock_\d$/)
        assert.deepStrictEqual(call.attributes["gen_ai.response.finish_reasons"], ["stop"])
      }
      const streamed = calls.find((span) => span.attributes["gen_ai.response.time_to_first_chunk"] !== undefined)
      assert.isDefined(streamed, "the stream's span has its time to first chunk")
      assert.isAtLeast(Number(streamed!.attributes["gen_ai.response.time_to_first_chunk"]), 0)
    }))

  it.scopedLive("an HTTP error: error.type is the status; a secret in the prompt and in the error is in no log, span or metric", () =>
    Effect.gen(function*() {
      const { exporter, layer } = tracing()
      const logs = capture()
      const server = yield* MockOpenAiServer.make({
        script: () =>
          MockReply.HttpError({ status: 429, body: { error: { message: `rate limited while reading: ${secret}` } } })
      })
      const exit = yield* LanguageModel.generateText({ prompt: `Remember: ${secret}` }).pipe(
        Effect.exit,
        Effect.provide(
          Layer.mergeAll(
            model(server),
            Logging.layer(),
            GenAiMetrics.layer({ name: "gen-ai-tracing-test" }),
            layer,
            logs.layer
          ).pipe(Layer.provideMerge(Dispatcher.layer()))
        )
      )
      assert.strictEqual(exit._tag, "Failure")
      const call = exporter.getFinishedSpans().find((span) => span.name === "chat gpt-4o-mini")!
      assert.strictEqual(call.attributes["error.type"], "429")
      const spanText = JSON.stringify(exporter.getFinishedSpans().filter((span) => span === call || span.name.startsWith("callback")).map((span) => span.attributes))
      assert.notInclude(spanText, leaked)
      assert.notInclude(logs.lines.join("\n"), leaked)
      // Each line names its handler and the trace it belongs to: the call's.
      const line = logs.lines.map((text) => JSON.parse(text) as { readonly annotations: Record<string, unknown> })
        .find((parsed) => parsed.annotations["phase"] === "error")!
      assert.strictEqual(line.annotations["handler"], "logging")
      assert.strictEqual(line.annotations["trace_id"], call.spanContext().traceId)
      assert.isString(line.annotations["span_id"])
      const metrics = JSON.stringify((yield* Metric.snapshot).map((pair) => pair.metricKey.tags))
      assert.notInclude(metrics, leaked)
    }))
  it.scopedLive("a call the budget refuses: its span ends, an error with the refusal's type, and nothing below it", () =>
    Effect.gen(function*() {
      const { exporter, layer } = tracing()
      const run = Effect.gen(function*() {
        yield* limitRita
        const begun = Callbacks.begin({ provider: "openai", model: "gpt-4o-mini", userId: "rita", params: { maxTokens: 50 } }).pipe(
          Budget.guard()
        )
        const refusals = [yield* Effect.flip(refusedCall), yield* Effect.flip(begun)]
        // No handler heard of either call.
        assert.deepStrictEqual(yield* Testing.events, [])
        return refusals
      })
      const refusals = yield* run.pipe(
        Effect.provide(Layer.mergeAll(layer, TokenStore.layerMemory, Testing.layer()))
      )
      assert.deepStrictEqual(refusals.map((refusal) => refusal._tag), ["UsageLimitExceeded", "UsageLimitExceeded"])
      const spans = exporter.getFinishedSpans()
      assert.deepStrictEqual(spans.map((span) => [span.name, span.kind, span.status.code, span.attributes["error.type"]]), [
        ["chat gpt-4o-mini", SpanKind.CLIENT, SpanStatusCode.ERROR, "UsageLimitExceeded"],
        ["chat gpt-4o-mini", SpanKind.CLIENT, SpanStatusCode.ERROR, "UsageLimitExceeded"]
      ])
    }))

  it.scopedLive("a call the budget refuses leaves the caller's span in place: what follows nests under the caller", () =>
    Effect.gen(function*() {
      const { exporter, layer } = tracing()
      const run = Effect.gen(function*() {
        yield* limitRita
        const tool = Effect.succeed("never").pipe(Callbacks.instrumentTool({ name: "lookup" }), Budget.guard())
        yield* Effect.flip(refusedCall)
        yield* tool
        yield* Effect.void.pipe(Effect.withSpan("after"))
        return (yield* Effect.currentSpan).name
      }).pipe(Effect.withSpan("caller"))
      const current = yield* run.pipe(Effect.provide(Layer.mergeAll(layer, TokenStore.layerMemory, Testing.layer())))
      assert.strictEqual(current, "caller")
      const spans = exporter.getFinishedSpans()
      const caller = spans.find((span) => span.name === "caller")!
      const after = spans.find((span) => span.name === "after")!
      assert.strictEqual(after.parentSpanContext?.spanId, caller.spanContext().spanId)
    }))
})
