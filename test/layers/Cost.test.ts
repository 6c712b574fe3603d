import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Exit, HashMap, Layer, Logger } from "effect"
import * as CostLayer from "../../layers/Cost.js"
import * as Cost from "../../src/Cost.js"
import { Callbacks, Dispatcher, type Events, Testing } from "../../src/index.js"

const usage = { promptTokens: 1000, completionTokens: 500, totalTokens: 1500 }
const prices = { "gpt-4o-mini": { input: 0.15, output: 0.6, cachedInput: 0.075 } }

const captureWarnings = () => {
  const lines: Array<{ message: string; annotations: Record<string, unknown> }> = []
  const logger = Logger.make<unknown, void>(({ annotations, logLevel, message }) => {
    if (logLevel.label !== "WARN") return
    lines.push({
      message: Array.isArray(message) ? message.join(" ") : String(message),
      annotations: Object.fromEntries(HashMap.toEntries(annotations))
    })
  })
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
}

const ends = Effect.map(Testing.events, (events) => events.filter((e): e is Events.EndEvent => e._tag === "End"))

const call = (model: string, response: unknown = { content: "ok", usage }) =>
  Effect.succeed(response).pipe(Callbacks.instrument({ provider: "openai", model, userId: "alice" }))

const withDispatcher = <A, E>(layer: Layer.Layer<A, E, Dispatcher.Dispatcher>) =>
  Layer.merge(layer, Testing.layerRecorder()).pipe(Layer.provideMerge(Dispatcher.layer()))

describe("layers/Cost", () => {
  it.effect("puts the price table in force: end events carry the estimate and microsOf the micro-units", () =>
    Effect.gen(function*() {
      yield* call("gpt-4o-mini")
      const [end] = yield* ends
      // 1000 × 0.15 + 500 × 0.6 = 450 micro-units
      assert.strictEqual(end!.response.costEstimate, 0.00045)
      assert.strictEqual(Cost.microsOf(end!), 450)
    }).pipe(Effect.provide(withDispatcher(CostLayer.layer({ prices })))))

  it.effect("an unknown model: no cost, no error, one warning per model", () => {
    const { layer, lines } = captureWarnings()
    return Effect.gen(function*() {
      const exits = yield* Effect.all([call("mystery"), call("mystery"), call("other"), call("gpt-4o-mini")].map(Effect.exit))
      assert.isTrue(exits.every(Exit.isSuccess))
      const [first, , third, priced] = yield* ends
      assert.isUndefined(first!.response.costEstimate)
      assert.isUndefined(third!.response.costEstimate)
      assert.isDefined(priced!.response.costEstimate)
      assert.deepStrictEqual(lines.map((l) => l.annotations.model), ["mystery", "other"])
    }).pipe(Effect.provide(Layer.merge(withDispatcher(CostLayer.layer({ prices })), layer)))
  })

  it.effect("the set of unknown models is bounded: past the limit one last warning, then silence", () => {
    const { layer, lines } = captureWarnings()
    return Effect.gen(function*() {
      for (const model of ["a", "b", "c", "d", "a"]) yield* call(model)
      assert.deepStrictEqual(lines.map((l) => l.annotations.model ?? "limit"), ["a", "b", "limit"])
    }).pipe(Effect.provide(Layer.merge(withDispatcher(CostLayer.layer({ prices, maxUnknownModels: 2 })), layer)))
  })

  it.effect("no usage: no estimate and no warning", () => {
    const { layer, lines } = captureWarnings()
    return Effect.gen(function*() {
      yield* call("gpt-4o-mini", { content: "ok" })
      yield* call("mystery", { content: "ok" })
      for (const end of yield* ends) assert.isUndefined(end.response.costEstimate)
      assert.strictEqual(lines.length, 0)
    }).pipe(Effect.provide(Layer.merge(withDispatcher(CostLayer.layer({ prices })), layer)))
  })

  it.effect("a bad price table fails the layer naming the setting", () =>
    Effect.gen(function*() {
      const bad = yield* Effect.exit(
        Layer.build(withDispatcher(CostLayer.layer({ prices: { "gpt-4o": { input: -1, output: 1 } } })))
      )
      assert.isTrue(Exit.isFailure(bad))
      const text = String(Exit.isFailure(bad) ? bad.cause : "")
      assert.include(text, "prices:")
      assert.include(text, "gpt-4o")
      const limit = yield* Effect.exit(Layer.build(withDispatcher(CostLayer.layer({ prices, maxUnknownModels: 0 }))))
      assert.include(String(Exit.isFailure(limit) ? limit.cause : ""), "maxUnknownModels")
    }).pipe(Effect.scoped))

  it.effect("CALLBACK_PRICE_TABLE: JSON price table; malformed JSON or prices fail naming the variable", () =>
    Effect.gen(function*() {
      const fromEnv = (value: string) =>
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map([["CALLBACK_PRICE_TABLE", value]])))
      yield* Effect.gen(function*() {
        yield* call("gpt-4o")
        const [end] = yield* ends
        assert.strictEqual(Cost.microsOf(end!), 1000 * 2.5 + 500 * 10)
      }).pipe(
        Effect.provide(withDispatcher(CostLayer.layerConfig())),
        fromEnv(JSON.stringify({ "gpt-4o": { input: 2.5, output: 10 } }))
      )
      for (const value of ["{not json", JSON.stringify({ "gpt-4o": { input: "cheap", output: 10 } }), "[]"]) {
        const exit = yield* Effect.exit(Layer.build(withDispatcher(CostLayer.layerConfig())).pipe(fromEnv(value)))
        assert.isTrue(Exit.isFailure(exit), value)
        assert.include(String(Exit.isFailure(exit) ? exit.cause : ""), "CALLBACK_PRICE_TABLE")
      }
      // unset: an empty table, no estimates
      yield* Effect.gen(function*() {
        yield* call("gpt-4o")
        const [end] = yield* ends
        assert.isUndefined(end!.response.costEstimate)
      }).pipe(
        Effect.provide(withDispatcher(CostLayer.layerConfig())),
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map()))
      )
    }).pipe(Effect.scoped))
})
