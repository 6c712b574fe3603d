import { assert, describe, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as TestClock from "effect/TestClock"
import cl100k from "gpt-tokenizer/encoding/cl100k_base"
import o200k from "gpt-tokenizer/encoding/o200k_base"
import * as TokenUsage from "../../layers/TokenUsage.js"
import * as CallbackMetrics from "../../src/CallbackMetrics.js"
import * as Cost from "../../src/Cost.js"
import { Callbacks, Dispatcher, type Events, TokenStore } from "../../src/index.js"

const cycle = "2025-03-01"

const messages: ReadonlyArray<Events.Message> = [
  { role: "system", content: "You are a terse assistant." },
  { role: "user", content: "Summarise the plot of Hamlet in one sentence, please." }
]

const usage = (promptTokens: number, completionTokens: number, totalTokens = promptTokens + completionTokens) => ({
  promptTokens,
  completionTokens,
  totalTokens
})

type Response = { readonly content: string; readonly usage?: Events.Usage; readonly costEstimate?: number }

/** One instrumented call answering `response`. */
const call = (
  response: Response,
  options: { readonly userId?: string; readonly model?: string; readonly callId?: string } = {}
) =>
  Effect.succeed(response).pipe(
    Callbacks.instrument({
      provider: "openai",
      model: options.model ?? "gpt-4o",
      messages,
      ...(options.userId !== undefined ? { userId: options.userId } : {}),
      ...(options.callId !== undefined ? { callId: options.callId } : {})
    })
  )

const stats = (userId: string, cycleDate = cycle) =>
  Effect.flatMap(TokenStore.TokenStore, (store) => store.stats(userId, cycleDate))

const counts = (userId: string, cycleDate = cycle) =>
  Effect.map(stats(userId, cycleDate), ({ completionTokens, promptTokens, totalTokens }) => ({
    promptTokens,
    completionTokens,
    totalTokens
  }))

const withStore = <E>(
  handler: Layer.Layer<never, E, Dispatcher.Dispatcher | TokenStore.TokenStore>,
  store: Layer.Layer<TokenStore.TokenStore> = TokenStore.layerMemory
) => handler.pipe(Layer.provideMerge(Layer.merge(Dispatcher.layer(), store)))

const captureLogs = () => {
  const lines: Array<{ readonly level: string; readonly message: string }> = []
  const logger = Logger.make(({ logLevel, message }) => {
    lines.push({ level: logLevel.label, message: Array.isArray(message) ? message.join(" ") : String(message) })
  })
  return { lines, layer: Logger.add(logger) }
}

/** Counted the way OpenAI chat models count a prompt (gpt-tokenizer's encodeChat). */
const chatTokens = (encoding: typeof o200k, model: "gpt-4o" | "gpt-4") =>
  encoding.encodeChat(
    messages.map((m) => ({ role: m.role as "system" | "user", content: m.content as string })),
    model
  ).length

describe("TokenUsage.layer (total)", () => {
  it.effect("records the reported usage for the call's user and cycle, before the call returns", () =>
    Effect.gen(function*() {
      yield* call({ content: "ok", usage: usage(120, 30) }, { userId: "alice" })
      yield* call({ content: "ok", usage: usage(10, 5) }, { userId: "alice" })
      yield* call({ content: "ok", usage: usage(7, 1) }, { userId: "bob" })
      assert.deepStrictEqual(yield* counts("alice"), usage(130, 35))
      assert.deepStrictEqual(yield* counts("bob"), usage(7, 1))
    }).pipe(Effect.provide(withStore(TokenUsage.layer({ cycleStartDate: cycle })))))

  it.effect("the cycle is the one containing the call's start, for the anchor day", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(Date.UTC(2025, 2, 14, 23, 59))
      yield* call({ content: "ok", usage: usage(1, 1) }, { userId: "carol" })
      yield* TestClock.setTime(Date.UTC(2025, 2, 15))
      yield* call({ content: "ok", usage: usage(2, 2) }, { userId: "carol" })
      assert.strictEqual((yield* stats("carol", "2025-02-15")).totalTokens, 2)
      assert.strictEqual((yield* stats("carol", "2025-03-15")).totalTokens, 4)
    }).pipe(Effect.provide(withStore(TokenUsage.layer({ anchorDay: 15 })))))

  it.effect("a provider that reports only a total is recorded as that total", () =>
    Effect.gen(function*() {
      yield* call({ content: "ok", usage: usage(0, 0, 42) }, { userId: "dave" })
      assert.deepStrictEqual(yield* counts("dave"), usage(0, 0, 42))
    }).pipe(Effect.provide(withStore(TokenUsage.layer({ cycleStartDate: cycle })))))

  it.effect("a response without usage, and a failed call, record nothing", () =>
    Effect.gen(function*() {
      yield* call({ content: "no usage here" }, { userId: "erin" })
      yield* Effect.fail("boom").pipe(
        Callbacks.instrument({ provider: "openai", model: "gpt-4o", userId: "erin" }),
        Effect.ignore
      )
      assert.deepStrictEqual(yield* counts("erin"), usage(0, 0))
      assert.deepStrictEqual(yield* Effect.flatMap(TokenStore.TokenStore, (s) => s.users(cycle)), [])
    }).pipe(Effect.provide(withStore(TokenUsage.layer({ cycleStartDate: cycle })))))

  it.effect("a call without a user is not recorded: one warning per call, not a handler failure", () => {
    const logs = captureLogs()
    return Effect.gen(function*() {
      yield* call({ content: "ok", usage: usage(5, 5) })
      yield* call({ content: "ok", usage: usage(5, 5) })
      assert.deepStrictEqual(yield* Effect.flatMap(TokenStore.TokenStore, (s) => s.users(cycle)), [])
      const warnings = logs.lines.filter((line) => line.message.includes("no user id"))
      assert.deepStrictEqual(warnings.map((line) => line.level), ["WARN", "WARN"])
      const health = yield* Dispatcher.health
      const handler = health.handlers.find((h) => h.name === "token-usage")!
      assert.strictEqual(handler.failures, 0)
      assert.strictEqual(handler.successes, 2)
      assert.strictEqual(health.status, "healthy")
    }).pipe(Effect.provide(Layer.merge(withStore(TokenUsage.layer({ cycleStartDate: cycle })), logs.layer)))
  })

  it.effect("invalid usage is never silent: a warning with user, call and value, a metric, a failure in health", () => {
    const logs = captureLogs()
    return Effect.gen(function*() {
      const bad = [-3, 1.5, Number.NaN, "12"] as const
      for (const [i, promptTokens] of bad.entries()) {
        yield* Effect.succeed({ content: "ok", usage: { promptTokens, completionTokens: 1, totalTokens: 2 } }).pipe(
          Callbacks.instrument({ provider: "openai", model: "gpt-4o", userId: "ines", callId: `bad-${i}` })
        )
      }
      assert.deepStrictEqual(yield* counts("ines"), usage(0, 0))
      const warnings = logs.lines.filter((line) => line.message.includes("the reported usage is invalid"))
      assert.strictEqual(warnings.length, bad.length)
      const health = yield* Dispatcher.health
      const handler = health.handlers.find((h) => h.name === "token-usage")!
      // Each failed once: invalid input is not retried.
      assert.strictEqual(handler.failures, bad.length)
      assert.strictEqual(handler.retries, 0)
      assert.isTrue(Option.isSome(handler.lastError))
      if (Option.isSome(handler.lastError)) {
        assert.include(handler.lastError.value.message, "bad-3")
        assert.include(handler.lastError.value.message, "ines")
      }
      const invalid = yield* Metric.value(
        CallbackMetrics.invalidUsageTotal.pipe(Metric.tagged("callback_type", "token-usage"))
      )
      assert.isAtLeast(invalid.count, bad.length)
    }).pipe(Effect.provide(Layer.merge(withStore(TokenUsage.layer({ cycleStartDate: cycle })), logs.layer)))
  })

  it.effect("an invalid record (an empty user id) fails at once: not retried, the call is not held", () =>
    Effect.gen(function*() {
      // The default retry schedule waits 1 s, then 2 s: with no clock adjustment the call must still return.
      const fiber = yield* Effect.fork(call({ content: "ok", usage: usage(1, 1) }, { userId: "" }))
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(exit._tag === "Success")
      const handler = (yield* Dispatcher.health).handlers.find((h) => h.name === "token-usage")!
      assert.strictEqual(handler.failures, 1)
      assert.strictEqual(handler.retries, 0)
    }).pipe(Effect.provide(withStore(TokenUsage.layer({ cycleStartDate: cycle })))))

  it.effect("passes the cost of the call in the same record", () =>
    Effect.gen(function*() {
      yield* call({ content: "ok", usage: usage(1000, 500) }, { userId: "fay" })
      const recorded = yield* stats("fay")
      assert.strictEqual(recorded.costMicros, 2_000)
      assert.strictEqual(recorded.totalTokens, 1_500)
    }).pipe(
      Effect.provide(withStore(TokenUsage.layer({
        cycleStartDate: cycle,
        costMicros: (event) => (event.response.usage?.promptTokens ?? 0) * 2
      })))
    ))

  it.effect("by default records the call's cost estimate (Cost.microsOf) with its tokens", () =>
    Effect.gen(function*() {
      yield* call({ content: "ok", usage: usage(10, 10), costEstimate: 0.0125 } , { userId: "fin" })
      assert.strictEqual((yield* stats("fin")).costMicros, 12_500)
      // The price table in force prices the call when it ends: 1000 x 2.5 + 500 x 10 micro-units.
      const table = yield* Either.match(Cost.decode({ "gpt-4o": { input: 2.5, output: 10 } }), {
        onLeft: (error) => Effect.die(error),
        onRight: Effect.succeed
      })
      yield* call({ content: "ok", usage: usage(1000, 500) }, { userId: "gil" }).pipe(Cost.withPriceTable(table))
      assert.strictEqual((yield* stats("gil")).costMicros, 7_500)
      yield* call({ content: "ok", usage: usage(1000, 500) }, { userId: "gil" })
      assert.strictEqual((yield* stats("gil")).costMicros, 7_500, "an unpriced call records no cost")
    }).pipe(Effect.provide(withStore(TokenUsage.layer({ cycleStartDate: cycle })))))

  it.effect("a record retried after a lost reply re-sends the call id and counts once", () => {
    // A store whose first reply is lost: the record happened, the handler saw a failure.
    let attempts = 0
    const lossy = Layer.effect(
      TokenStore.TokenStore,
      Effect.map(TokenStore.makeMemory(), (store): TokenStore.Service => ({
        ...store,
        record: (input) =>
          Effect.flatMap(store.record(input), (outcome) =>
            attempts++ === 0
              ? Effect.fail(new TokenStore.TokenStoreError({ reason: "Timeout", message: "reply lost" }))
              : Effect.succeed(outcome))
      }))
    )
    return Effect.gen(function*() {
      const fiber = yield* Effect.fork(call({ content: "ok", usage: usage(40, 2) }, { userId: "gus" }))
      yield* TestClock.adjust("1 second")
      yield* Fiber.join(fiber)
      assert.strictEqual(attempts, 2)
      assert.deepStrictEqual(yield* counts("gus"), usage(40, 2))
      const handler = (yield* Dispatcher.health).handlers.find((h) => h.name === "token-usage")!
      assert.strictEqual(handler.retries, 1)
      assert.strictEqual(handler.failures, 0)
    }).pipe(
      Effect.provide(withStore(
        TokenUsage.layer({ cycleStartDate: cycle, retry: Schedule.spaced("1 second") }),
        lossy
      ))
    )
  })

  it.effect("mode background: recorded once flushed", () =>
    Effect.gen(function*() {
      yield* call({ content: "ok", usage: usage(3, 4) }, { userId: "hal" })
      yield* Dispatcher.flush
      assert.deepStrictEqual(yield* counts("hal"), usage(3, 4))
      const handler = (yield* Dispatcher.health).handlers.find((h) => h.name === "tokens")!
      assert.strictEqual(handler.mode, "background")
    }).pipe(
      Effect.provide(withStore(TokenUsage.layer({ cycleStartDate: cycle, mode: "background", name: "tokens" })))
    ))
})

describe("TokenUsage.layerDetailed", () => {
  const detailed = withStore(TokenUsage.layerDetailed({ cycleStartDate: cycle }))

  it.effect("no usage reported: prompt and completion counted with the model's tokenizer", () =>
    Effect.gen(function*() {
      const content = "Hamlet, prince of Denmark, avenges his father's murder and dies in the attempt."
      yield* call({ content }, { userId: "ivy", model: "gpt-4o" })
      yield* call({ content }, { userId: "jay", model: "gpt-4" })
      const o200kPrompt = chatTokens(o200k, "gpt-4o")
      const cl100kPrompt = chatTokens(cl100k, "gpt-4")
      assert.deepStrictEqual(yield* counts("ivy"), usage(o200kPrompt, o200k.countTokens(content)))
      assert.deepStrictEqual(yield* counts("jay"), usage(cl100kPrompt, cl100k.countTokens(content)))
      // The chat format's tokens are counted: more than the contents alone.
      const contentsOnly = messages.reduce((n, m) => n + o200k.countTokens(m.content as string), 0)
      assert.isAbove(o200kPrompt, contentsOnly)
    }).pipe(Effect.provide(detailed)))

  it.effect("only a total reported: the total is kept, prompt is estimated, completion is the rest", () =>
    Effect.gen(function*() {
      const prompt = chatTokens(o200k, "gpt-4o")
      yield* call({ content: "x", usage: usage(0, 0, prompt + 100) }, { userId: "kay" })
      assert.deepStrictEqual(yield* counts("kay"), usage(prompt, 100))
      // A total below the estimated prompt: prompt is capped at the total.
      yield* call({ content: "x", usage: usage(0, 0, 5) }, { userId: "lee" })
      assert.deepStrictEqual(yield* counts("lee"), usage(5, 0))
    }).pipe(Effect.provide(detailed)))

  it.effect("explicit zeros reported by the provider are never replaced by estimates", () =>
    Effect.gen(function*() {
      yield* call({ content: "cached answer", usage: usage(0, 0, 0) }, { userId: "max" })
      yield* call({ content: "cached answer", usage: usage(0, 9) }, { userId: "ned" })
      yield* call({ content: "cached answer", usage: usage(12, 0) }, { userId: "oli" })
      assert.deepStrictEqual(yield* counts("max"), usage(0, 0, 0))
      assert.deepStrictEqual(yield* counts("ned"), usage(0, 9))
      assert.deepStrictEqual(yield* counts("oli"), usage(12, 0))
    }).pipe(Effect.provide(detailed)))

  it.effect("counts text parts, and special-token markers as plain text", () =>
    Effect.gen(function*() {
      yield* Effect.succeed({ content: "<|endoftext|> done" }).pipe(
        Callbacks.instrument({
          provider: "openai",
          model: "gpt-4o-mini",
          userId: "pat",
          messages: [{ role: "user", content: [{ type: "text", text: "Describe" }, { type: "image", url: "x" }] }]
        })
      )
      const prompt = o200k.encodeChat([{ role: "user", content: "Describe" }], "gpt-4o").length
      const completion = o200k.countTokens("<|endoftext|> done", { disallowedSpecial: new Set() })
      assert.deepStrictEqual(yield* counts("pat"), usage(prompt, completion))
      const handler = (yield* Dispatcher.health).handlers.find((h) => h.name === "token-usage-detailed")!
      assert.strictEqual(handler.failures + handler.defects, 0)
    }).pipe(Effect.provide(detailed)))
})

describe("TokenUsage estimation", () => {
  it.effect("picks the model's encoding, o200k_base for models gpt-tokenizer does not know", () =>
    Effect.gen(function*() {
      const estimator = yield* TokenUsage.makeEstimator
      const cases: ReadonlyArray<readonly [string, TokenUsage.EncodingName]> = [
        ["gpt-4o", "o200k_base"],
        ["gpt-4o-2099-01-01", "o200k_base"],
        ["openai/gpt-3.5-turbo", "cl100k_base"],
        ["gpt-4", "cl100k_base"],
        ["gpt-4-0613", "cl100k_base"],
        ["ft:gpt-4-0613:acme::abc123", "cl100k_base"],
        ["text-davinci-003", "p50k_base"],
        ["text-embedding-ada-002", "cl100k_base"],
        ["gpt-4.1", "o200k_base"],
        ["claude-3-5-sonnet", "o200k_base"]
      ]
      for (const [model, encoding] of cases) {
        assert.strictEqual(yield* estimator.encodingFor(model), encoding, model)
      }
      // The encodings really differ on this text, so the choice matters.
      const text = "Ünïcödé façade — 東京タワー"
      assert.strictEqual(yield* estimator.countText("gpt-4", text), cl100k.countTokens(text))
      assert.strictEqual(yield* estimator.countText("mystery-model", text), o200k.countTokens(text))
      assert.notStrictEqual(cl100k.countTokens(text), o200k.countTokens(text))
    }))

  it.effect("resolveUsage flags estimates and leaves reported usage alone", () =>
    Effect.gen(function*() {
      const estimator = yield* TokenUsage.makeEstimator
      const event = (response: Response): Events.EndEvent => ({
        _tag: "End",
        call: { callId: "c", provider: "openai", model: "gpt-4o", tags: [], metadata: {}, startedAt: 0 },
        messages,
        response,
        durationMs: 1
      })
      const estimated = yield* TokenUsage.resolveUsage(estimator, event({ content: "hi" }))
      assert.strictEqual(estimated.estimated, true)
      assert.strictEqual(estimated.completionTokens, o200k.countTokens("hi"))
      const reported = { ...usage(3, 4), cachedTokens: 1 }
      assert.strictEqual(yield* TokenUsage.resolveUsage(estimator, event({ content: "hi", usage: reported })), reported)
      const onlyTotal = yield* TokenUsage.resolveUsage(estimator, event({ content: "hi", usage: usage(0, 0, 1000) }))
      const prompt = chatTokens(o200k, "gpt-4o")
      assert.deepStrictEqual(onlyTotal, { ...usage(prompt, 1000 - prompt, 1000), estimated: true })
    }))
})

describe("TokenUsage configuration", () => {
  const withEnv = (env: Record<string, string>) =>
    Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

  const build = <E>(handler: Layer.Layer<never, E, Dispatcher.Dispatcher | TokenStore.TokenStore>) =>
    Layer.build(withStore(handler)).pipe(Effect.scoped)

  it.effect("bad options fail the layer with a ConfigError naming the option and value", () =>
    Effect.gen(function*() {
      const cases: ReadonlyArray<readonly [TokenUsage.Options, string, string]> = [
        [{ anchorDay: 0 }, "anchorDay", "0"],
        [{ anchorDay: 29 }, "anchorDay", "29"],
        [{ anchorDay: 1.5 }, "anchorDay", "1.5"],
        [{ cycleStartDate: "2025-02-30" }, "cycleStartDate", "2025-02-30"],
        [{ mode: "later" as "await" }, "mode", "later"],
        [{ name: "" }, "name", `""`]
      ]
      for (const [options, name, value] of cases) {
        for (const layer of [TokenUsage.layer(options), TokenUsage.layerDetailed(options)]) {
          const error = yield* Effect.flip(build(layer))
          assert.strictEqual(error._tag, "ConfigError", name)
          assert.include(String(error), name)
          assert.include(String(error), value)
        }
      }
    }))

  it.effect("layerConfig reads CALLBACK_BILLING_ANCHOR_DAY and CALLBACK_CYCLE_START_DATE", () =>
    Effect.gen(function*() {
      yield* TestClock.setTime(Date.UTC(2025, 2, 3))
      const run = (env: Record<string, string>) =>
        Effect.gen(function*() {
          yield* call({ content: "ok", usage: usage(1, 1) }, { userId: "quinn" })
          return yield* Effect.flatMap(TokenStore.TokenStore, (store) => store.users("2025-02-10")).pipe(
            Effect.zip(Effect.flatMap(TokenStore.TokenStore, (store) => store.users("2024-12-24")))
          )
        }).pipe(Effect.provide(withStore(TokenUsage.layerDetailedConfig())), withEnv(env))
      assert.deepStrictEqual(yield* run({ CALLBACK_BILLING_ANCHOR_DAY: "10" }), [["quinn"], []])
      assert.deepStrictEqual(
        yield* run({ CALLBACK_BILLING_ANCHOR_DAY: "10", CALLBACK_CYCLE_START_DATE: "2024-12-24" }),
        [[], ["quinn"]]
      )
    }))

  it.effect("a bad setting fails layerConfig naming the variable", () =>
    Effect.gen(function*() {
      for (
        const [env, name] of [
          [{ CALLBACK_BILLING_ANCHOR_DAY: "31" }, "CALLBACK_BILLING_ANCHOR_DAY"],
          [{ CALLBACK_BILLING_ANCHOR_DAY: "first" }, "CALLBACK_BILLING_ANCHOR_DAY"],
          [{ CALLBACK_CYCLE_START_DATE: "2025-13-01" }, "CALLBACK_CYCLE_START_DATE"]
        ] as const
      ) {
        const error = yield* Effect.flip(build(TokenUsage.layerConfig()).pipe(withEnv(env)))
        assert.strictEqual(error._tag, "ConfigError")
        assert.include(String(error), name)
      }
      // Unset: defaults (anchor day 1) build fine.
      yield* build(TokenUsage.layerConfig()).pipe(withEnv({}))
    }))
})
