/**
 * Overhead of the @effect/ai integration (`layers/AiLanguageModel.ts`) with the token-usage and GenAI
 * metrics handlers on:
 *
 * - mean time of `generateText` over HTTP against the mock OpenAI server on loopback
 *   (`@effect/ai-openai` on undici), bare and instrumented;
 * - mean time of `generateText` against the scripted fake model in process (no network), bare and
 *   instrumented: the difference is the layer's overhead, free of network noise;
 * - that overhead as a share of the HTTP round trip (target: under 5%).
 *
 * Bare and instrumented runs alternate over several rounds (which runs first alternates too) and the
 * median of each is kept.
 *
 * Run alone: `npx tsx bench/ai.ts`.
 */
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as OpenAiLanguageModel from "@effect/ai-openai/OpenAiLanguageModel"
import { Effect, Layer, ManagedRuntime } from "effect"
import { pathToFileURL } from "node:url"
import * as AiLanguageModel from "../layers/AiLanguageModel.js"
import * as AiTesting from "../layers/AiTesting.js"
import * as GenAiMetrics from "../layers/GenAiMetrics.js"
import * as TokenUsage from "../layers/TokenUsage.js"
import { Dispatcher, TokenStore } from "../src/index.js"
import * as MockOpenAiServer from "../test/support/MockOpenAiServer.js"
import { gc, median, type Row } from "./common.js"

const handlers = Layer.mergeAll(TokenUsage.layer({ cycleStartDate: "2026-01-01" }), GenAiMetrics.layer()).pipe(
  Layer.provideMerge(Layer.merge(Dispatcher.layer(), TokenStore.layerMemory))
)

const fakeModel = AiTesting.layerFakeModel(
  () => AiTesting.FakeReply.Text({ text: "Hello there", usage: { inputTokens: 3, outputTokens: 2 } }),
  { model: "gpt-4o-mini", provider: "openai" }
)

const httpModel = OpenAiLanguageModel.model("gpt-4o-mini").pipe(
  Layer.provide(MockOpenAiServer.layerOpenAiClient),
  Layer.provide(MockOpenAiServer.layer())
)

type Model = Layer.Layer<LanguageModel.LanguageModel, unknown>

const runtimeOf = (model: Model, instrumented: boolean) =>
  ManagedRuntime.make(
    Layer.merge(instrumented ? AiLanguageModel.withCallbacks(model, { model: "gpt-4o-mini" }) : model, handlers)
  )

const call = LanguageModel.generateText({ prompt: "hello mock world" }).pipe(
  AiLanguageModel.withCallContext({ userId: "bench-user" })
)

interface Timing {
  /** Mean wall-clock µs per call. */
  readonly wall: number
  /** Mean CPU µs (user + system) of this process per call: what the call costs, whatever else the machine runs. */
  readonly cpu: number
}

/** Mean µs per sequential `generateText` call. */
const timeIt = async (
  runtime: ManagedRuntime.ManagedRuntime<LanguageModel.LanguageModel, unknown>,
  iterations: number
): Promise<Timing> => {
  gc()
  const cpu = process.cpuUsage()
  const start = process.hrtime.bigint()
  await runtime.runPromise(Effect.repeatN(call, iterations - 1))
  const wall = Number(process.hrtime.bigint() - start) / 1000 / iterations
  const used = process.cpuUsage(cpu)
  return { wall, cpu: (used.user + used.system) / iterations }
}


const compare = async (model: Model, iterations: number, rounds: number) => {
  const bare = runtimeOf(model, false)
  const wrapped = runtimeOf(model, true)
  try {
    await timeIt(bare, Math.ceil(iterations / 4)) // warm-up
    await timeIt(wrapped, Math.ceil(iterations / 4))
    const bareTimes: Array<Timing> = []
    const wrappedTimes: Array<Timing> = []
    const variants = [[bare, bareTimes], [wrapped, wrappedTimes]] as const
    for (let round = 0; round < rounds; round++) {
      // The order alternates from round to round: neither variant always runs after the other.
      for (let i = 0; i < variants.length; i++) {
        const [runtime, times] = variants[(i + round) % variants.length]!
        times.push(await timeIt(runtime, iterations))
      }
    }
    const summary = (times: ReadonlyArray<Timing>): Timing => ({
      wall: median(times.map((t) => t.wall)),
      cpu: median(times.map((t) => t.cpu))
    })
    return { bare: summary(bareTimes), wrapped: summary(wrappedTimes) }
  } finally {
    await bare.dispose()
    await wrapped.dispose()
  }
}

/**
 * @since 0.1.0
 */
export const run = async (): Promise<Array<Row>> => {
  const http = await compare(httpModel, 300, 7)
  const fake = await compare(fakeModel, 2_000, 7)
  const us = (value: number) => Number(value.toFixed(1))
  const row = (measure: string, timing: { readonly bare: Timing; readonly wrapped: Timing }): Row => ({
    measure,
    "bare µs": us(timing.bare.wall),
    "with layer µs": us(timing.wrapped.wall),
    "difference µs": us(timing.wrapped.wall - timing.bare.wall),
    "bare CPU µs": us(timing.bare.cpu),
    "with layer CPU µs": us(timing.wrapped.cpu),
    "difference CPU µs": us(timing.wrapped.cpu - timing.bare.cpu)
  })
  // The overhead is measured on the fake model, where nothing but the layer and its handlers differs; CPU
  // time is the figure that stays put on a busy machine.
  const overhead = fake.wrapped.cpu - fake.bare.cpu
  return [
    row("generateText over HTTP (mock OpenAI, loopback)", http),
    row("generateText on the fake model (in process)", fake),
    {
      measure: "layer overhead (fake, CPU) / HTTP round trip (wall); target < 5%",
      "bare µs": us(http.bare.wall),
      "with layer µs": "",
      "difference µs": us(overhead),
      "bare CPU µs": "",
      "with layer CPU µs": "",
      "difference CPU µs": `${((overhead / http.bare.wall) * 100).toFixed(2)}%`
    }
  ]
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  run().then((rows) => console.table(rows), (error) => {
    console.error(error)
    process.exitCode = 1
  })
}
