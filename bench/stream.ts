/**
 * The cost of instrumenting a stream (`layers/AiLanguageModel.ts`, `streamText`) on the scripted fake
 * model in process (no network): one `streamText` call of 60 text deltas, consumed whole, per
 * iteration. Variants, run side by side in interleaved rounds with the same loop (one
 * `Runtime.runPromise` of the whole batch, the calls one after the other):
 *
 * - bare: the fake model without the layer;
 * - with the token-usage and GenAI metrics handlers (no chunk hook: nothing is built per chunk);
 * - the same plus one chunk handler that does work on every delta (counts its words, synchronously).
 *
 * Reported: median (and min) CPU µs per stream of this process, and the overhead of each instrumented
 * variant over the bare stream (targets: <= 5% with the token and metrics handlers, <= 10% with the
 * chunk handler).
 *
 * Run alone: `npx tsx bench/stream.ts`.
 */
import * as LanguageModel from "@effect/ai/LanguageModel"
import { Effect, Layer, ManagedRuntime, Stream } from "effect"
import { pathToFileURL } from "node:url"
import * as AiLanguageModel from "../layers/AiLanguageModel.js"
import * as AiTesting from "../layers/AiTesting.js"
import * as GenAiMetrics from "../layers/GenAiMetrics.js"
import * as TokenUsage from "../layers/TokenUsage.js"
import { Dispatcher, Handler, TokenStore } from "../src/index.js"
import { gc, median, type Row } from "./common.js"

const text = Array.from({ length: 60 }, (_, i) => `word${i % 7}`).join(" ")

const fakeModel = AiTesting.layerFakeModel(
  () => AiTesting.FakeReply.Text({ text, usage: { inputTokens: 12, outputTokens: 60 } }),
  { model: "gpt-4o-mini", provider: "openai" }
)

const base = Layer.mergeAll(TokenUsage.layer({ cycleStartDate: "2026-01-01" }), GenAiMetrics.layer())

let words = 0
const chunkCounter = Dispatcher.toLayer(Handler.make({
  name: "chunk-counter",
  onLlmChunk: Handler.sync((event) => {
    words += AiTesting.countWords(event.delta)
  })
}))

type Variant = "bare" | "handlers" | "handlers + chunk hook"

const runtimeOf = (variant: Variant) => {
  const handlers = variant === "handlers + chunk hook" ? Layer.merge(base, chunkCounter) : base
  const model = variant === "bare" ? fakeModel : AiLanguageModel.withCallbacks(fakeModel, { model: "gpt-4o-mini" })
  return ManagedRuntime.make(
    Layer.merge(model, handlers).pipe(Layer.provideMerge(Layer.merge(Dispatcher.layer(), TokenStore.layerMemory)))
  )
}

const call = LanguageModel.streamText({ prompt: "hello stream" }).pipe(
  Stream.runDrain,
  AiLanguageModel.withCallContext({ userId: "bench-user" })
)

/** CPU µs of this process per stream, over `iterations` streams one after the other. */
const timeIt = async (runtime: ManagedRuntime.ManagedRuntime<LanguageModel.LanguageModel, unknown>, iterations: number) => {
  gc()
  const cpu = process.cpuUsage()
  await runtime.runPromise(Effect.repeatN(call, iterations - 1))
  const used = process.cpuUsage(cpu)
  return (used.user + used.system) / iterations
}


/**
 * @since 0.3.0
 */
export const run = async (options: { readonly iterations?: number; readonly rounds?: number } = {}): Promise<Array<Row>> => {
  const iterations = options.iterations ?? 1_000
  const rounds = options.rounds ?? 7
  const variants: ReadonlyArray<Variant> = ["bare", "handlers", "handlers + chunk hook"]
  const runtimes = new Map(variants.map((variant) => [variant, runtimeOf(variant)]))
  const times = new Map(variants.map((variant) => [variant, [] as Array<number>]))
  try {
    for (const variant of variants) await timeIt(runtimes.get(variant)!, Math.ceil(iterations / 4))
    for (let round = 0; round < rounds; round++) {
      // Rotated order: no variant always runs first.
      for (let i = 0; i < variants.length; i++) {
        const variant = variants[(round + i) % variants.length]!
        times.get(variant)!.push(await timeIt(runtimes.get(variant)!, iterations))
      }
    }
  } finally {
    for (const runtime of runtimes.values()) await runtime.dispose()
  }
  const bare = median(times.get("bare")!)
  return variants.map((variant) => {
    const cpu = median(times.get(variant)!)
    return {
      variant,
      "CPU µs/stream (median)": Number(cpu.toFixed(1)),
      "min": Number(Math.min(...times.get(variant)!).toFixed(1)),
      "overhead": variant === "bare" ? "-" : `${(((cpu - bare) / bare) * 100).toFixed(1)}%`,
      "target": variant === "bare" ? "-" : variant === "handlers" ? "<= 5%" : "<= 10%"
    }
  })
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  run().then((rows) => console.table(rows), (error) => {
    console.error(error)
    process.exitCode = 1
  })
}
