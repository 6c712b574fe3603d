import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as TestClock from "effect/TestClock"
import * as AiError from "@effect/ai/AiError"
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as Option from "effect/Option"
import * as Stream from "effect/Stream"
import * as AiLanguageModel from "../layers/AiLanguageModel.js"
import * as AiTesting from "../layers/AiTesting.js"
import * as TokenUsage from "../layers/TokenUsage.js"
import * as Budget from "../src/Budget.js"
import { Callbacks, Dispatcher, type Events, Testing, TokenStore } from "../src/index.js"
import {
  budgetConformance,
  budgetEnvironment,
  currentCycle,
  fixedCounter,
  guardedCall,
  guardedStream,
  until
} from "./support/budgetConformance.js"
import { runWorker } from "./support/worker.js"

const { FakeReply } = AiTesting

/** Without a token-usage handler: a failing store must not keep a handler retrying on the TestClock. */
const withoutRecorder = (store: Layer.Layer<TokenStore.TokenStore>) =>
  Layer.mergeAll(store, Dispatcher.layer(), fixedCounter).pipe(Layer.orDie)

const failingStore = (failure: Effect.Effect<never, TokenStore.TokenStoreError>): Layer.Layer<TokenStore.TokenStore> =>
  Layer.succeed(TokenStore.TokenStore, {
    record: () => failure,
    recordMany: () => failure,
    stats: () => failure,
    reset: () => failure,
    setLimit: () => failure,
    checkLimit: () => failure,
    users: () => failure,
    reserve: () => failure,
    release: () => failure,
    idempotencyWindowMillis: 86_400_000
  })

const unavailable = Effect.fail(new TokenStore.TokenStoreError({ reason: "Unavailable", message: "store is down" }))

const captureLogs = Effect.sync(() => {
  const lines: Array<{ readonly level: string; readonly message: string }> = []
  const logger = Logger.make(({ logLevel, message }) => {
    lines.push({ level: logLevel.label, message: Array.isArray(message) ? message.join(" ") : String(message) })
  })
  return { lines, layer: Logger.add(logger) }
})

const counted = () => {
  const calls = { n: 0 }
  return calls
}

describe("Budget.guard", () => {
  it.effect("a store failure admits the call by default and logs a warning", () =>
    Effect.gen(function*() {
      const logs = yield* captureLogs
      const calls = counted()
      const exit = yield* guardedCall({ userId: "gina", calls }).pipe(Effect.provide(logs.layer), Effect.exit)
      assert.isTrue(Exit.isSuccess(exit))
      assert.strictEqual(calls.n, 1)
      assert.isTrue(logs.lines.some((l) => l.level === "WARN" && l.message === "budget check failed; the call is allowed"))
    }).pipe(Effect.provide(withoutRecorder(failingStore(unavailable)))))

  it.effect("onStoreError: fail fails the call with the store's error, without calling the model", () =>
    Effect.gen(function*() {
      const calls = counted()
      const error = yield* Effect.flip(guardedCall({ userId: "gina", calls, guard: { onStoreError: "fail" } }))
      assert.deepInclude(error, { _tag: "TokenStoreError", reason: "Unavailable" })
      assert.strictEqual(calls.n, 0)
    }).pipe(Effect.provide(withoutRecorder(failingStore(unavailable)))))

  it.effect("an admission slower than the timeout counts as a store failure", () =>
    Effect.gen(function*() {
      const calls = counted()
      const allowed = yield* Effect.fork(guardedCall({ userId: "hank", calls, guard: { timeout: "1 second" } }))
      const failed = yield* Effect.fork(
        guardedCall({ userId: "hank", calls, guard: { timeout: "1 second", onStoreError: "fail" } })
      )
      yield* TestClock.adjust("999 millis")
      assert.strictEqual(calls.n, 0)
      yield* TestClock.adjust("1 millis")
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(allowed)))
      assert.deepInclude(yield* Effect.flip(Fiber.join(failed)), { _tag: "TokenStoreError", reason: "Timeout" })
      assert.strictEqual(calls.n, 1)
    }).pipe(Effect.provide(withoutRecorder(failingStore(Effect.never)))))

  it.effect("bad options are defects naming the option", () =>
    Effect.gen(function*() {
      for (
        const [guard, name] of [
          [{ cycleStartDate: "2025-02-30" }, "cycleStartDate"],
          [{ anchorDay: 29 }, "anchorDay"],
          [{ defaultMaxOutputTokens: -1 }, "defaultMaxOutputTokens"],
          [{ maxOutputTokens: { "gpt-4o": 1.5 } }, `maxOutputTokens["gpt-4o"]`],
          [{ holdTtl: "0 millis" }, "holdTtl"],
          [{ rateLimits: { user: { requestsPerMinute: 0 } } }, "rateLimits.user.requestsPerMinute"]
        ] as const
      ) {
        const calls = counted()
        const exit = yield* Effect.exit(guardedCall({ userId: "ivy", calls, guard }))
        assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause), name)
        if (Exit.isFailure(exit)) assert.include(Cause.pretty(exit.cause), name)
        assert.strictEqual(calls.n, 0)
        // The same for a stream's guard: the stream dies before it begins its call.
        const streamed = yield* Effect.exit(Stream.runDrain(
          Stream.fromEffect(guardedCall({ userId: "ivy", calls })).pipe(Budget.guardStream(guard))
        ))
        assert.isTrue(Exit.isFailure(streamed) && Cause.isDie(streamed.cause), name)
        if (Exit.isFailure(streamed)) assert.include(Cause.pretty(streamed.cause), name)
        assert.strictEqual(calls.n, 0)
      }
    }).pipe(Effect.provide(budgetEnvironment(TokenStore.layerMemory))))

  it.effect("a refused call is not heard by any handler", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      yield* store.setLimit("jack", yield* currentCycle, 5)
      const exit = yield* Effect.exit(guardedCall({ userId: "jack" }))
      assert.isTrue(Exit.isFailure(exit))
      assert.deepStrictEqual(yield* Testing.events, [])
    }).pipe(Effect.provide(Layer.provideMerge(TokenUsage.layer(), Layer.merge(TokenStore.layerMemory, Testing.layer())))))

  it.effect("the worst case is the prompt plus maxTokens, else the model's cap, else the default cap", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      const cycle = yield* currentCycle
      const held = (params: Record<string, unknown>, guard: Budget.Options) =>
        Effect.gen(function*() {
          const userId = `cap-${Math.random()}`
          yield* store.setLimit(userId, cycle, 0)
          const refused = yield* Effect.flip(
            Effect.succeed({ content: "" }).pipe(
              Callbacks.instrument({ provider: "p", model: "gpt-4o", userId, params, messages: [{ role: "user", content: "héllo" }] }),
              Budget.guard(guard)
            )
          )
          return (refused as Budget.UsageLimitExceeded).requestedTokens
        })
      // The default prompt counter: UTF-8 bytes (6) + 4 per message + 3 of priming.
      assert.strictEqual(yield* held({ max_tokens: 10 }, {}), 23)
      assert.strictEqual(yield* held({}, { maxOutputTokens: { "gpt-4o": 100 } }), 113)
      assert.strictEqual(yield* held({}, {}), 13 + 4096)
      assert.strictEqual(yield* held({}, { defaultMaxOutputTokens: 7 }), 20)
    }).pipe(Effect.provide(Layer.merge(TokenStore.layerMemory, Dispatcher.layer()))))

  it.effect("with gpt-tokenizer the prompt is counted exactly", () =>
    Effect.gen(function*() {
      const counter = yield* Budget.CurrentPromptCounter
      // "hello world" is 2 tokens in o200k_base; the chat format adds its own.
      const n = yield* counter("gpt-4o", [{ role: "user", content: "hello world" }])
      const bound = yield* Budget.byteBound("gpt-4o", [{ role: "user", content: "hello world" }])
      assert.isTrue(n > 2 && n < bound, `${n} tokens, bound ${bound}`)
    }).pipe(Effect.provide(TokenUsage.layerPromptCounter)))

  it.effect("a guard around no instrumented call says so", () =>
    Effect.gen(function*() {
      const logs = yield* captureLogs
      yield* Effect.void.pipe(Budget.guard(), Effect.provide(logs.layer))
      assert.isTrue(logs.lines.some((l) => l.level === "WARN" && l.message.includes("nothing was checked")))
    }).pipe(Effect.provide(TokenStore.layerMemory)))
})

const text = (words: string) => Effect.succeed(FakeReply.Text({ text: words, usage: { inputTokens: 20, outputTokens: 40 } }))

/** The total token handler over the memory store, the tokenizer for what cut-off streams consumed, a recorder. */
const streamEnvironment = TokenUsage.layer().pipe(
  Layer.provideMerge(Layer.mergeAll(Testing.layer(), TokenStore.layerMemory, TokenUsage.layerTokenCounter)),
  Layer.merge(fixedCounter)
)

describe("Budget and streams", () => {
  it.effect("refused: the stream fails with the refusal before the model is called, and no handler hears of it", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      yield* store.setLimit("lena", yield* currentCycle, 99)
      const calls = { n: 0 }
      const refused = yield* Effect.flip(Stream.runCollect(guardedStream({ userId: "lena", reply: () => text("never"), calls })))
      assert.deepInclude(refused, { _tag: "UsageLimitExceeded", userId: "lena", limit: 99, requestedTokens: 100 })
      assert.strictEqual(calls.n, 0)
      assert.deepStrictEqual(yield* Testing.events, [])
    }).pipe(Effect.provide(streamEnvironment)))

  it.effect("cut off by its consumer after the first part: what it consumed is recorded, estimated, and its hold ends", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      const cycle = yield* currentCycle
      yield* store.setLimit("mia", cycle, 1_000)
      const calls = { n: 0 }
      let heldWhileStreaming = 0
      const parts = yield* Stream.runCollect(
        guardedStream({ userId: "mia", reply: () => text("one two three four five six"), calls }).pipe(
          Stream.filter((part) => part.type === "text-delta"),
          Stream.take(1),
          Stream.tap(() => Effect.map(store.stats("mia", cycle), (stats) => heldWhileStreaming = stats.heldTokens))
        )
      )
      assert.strictEqual(parts.length, 1)
      assert.strictEqual(heldWhileStreaming, 100)
      const events = (yield* Testing.events).filter((e) => e._tag !== "Chunk")
      assert.deepStrictEqual(events.map((e) => e._tag), ["Start", "Error"])
      const usage = (events[1] as Events.ErrorEvent).response?.usage
      assert.isTrue(usage !== undefined && usage.totalTokens > 0 && usage.estimated === true, JSON.stringify(usage))
      yield* Dispatcher.flush
      const stats = yield* store.stats("mia", cycle)
      assert.deepInclude(stats, { heldTokens: 0, totalTokens: usage!.totalTokens })
    }).pipe(Effect.provide(streamEnvironment)))

  it.effect("failed before any output, or its consumer interrupted while it waits: nothing recorded, the hold released", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      const cycle = yield* currentCycle
      yield* store.setLimit("noa", cycle, 100)
      const calls = { n: 0 }
      const failure = new AiError.UnknownError({ module: "test", method: "streamText", description: "429" })
      const failing = guardedStream({ userId: "noa", reply: () => Effect.succeed(FakeReply.Fail({ error: failure })), calls })
      const failed = yield* Effect.flip(Stream.runCollect(failing))
      assert.strictEqual(failed, failure)
      assert.deepInclude(yield* store.stats("noa", cycle), { heldTokens: 0, totalTokens: 0 })
      const fiber = yield* Effect.fork(Stream.runCollect(guardedStream({ userId: "noa", reply: () => Effect.never, calls })))
      yield* until(() => calls.n === 2)
      assert.strictEqual((yield* store.stats("noa", cycle)).heldTokens, 100)
      assert.isTrue(Exit.isInterrupted(yield* Fiber.interrupt(fiber)))
      assert.deepInclude(yield* store.stats("noa", cycle), { heldTokens: 0, totalTokens: 0 })
      // The whole limit is there again.
      assert.isTrue(Exit.isSuccess(yield* Effect.exit(Stream.runCollect(guardedStream({ userId: "noa", reply: () => text("ok"), calls })))))
    }).pipe(Effect.provide(streamEnvironment)))

  it.effect("Budget.guard around a region that runs a stream guards its call too", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      yield* store.setLimit("olga", yield* currentCycle, 99)
      const calls = { n: 0 }
      const run = LanguageModel.streamText({ prompt: "hello" }).pipe(
        Stream.runCollect,
        Callbacks.withCallContext({ userId: "olga" }),
        Budget.guard(),
        Effect.provide(AiLanguageModel.withCallbacks(
          AiTesting.layerFakeModel(() => Effect.suspend(() => (calls.n++, text("never")))),
          { model: "fake-model" }
        ))
      )
      assert.deepInclude(yield* Effect.flip(run), { _tag: "UsageLimitExceeded", userId: "olga" })
      assert.strictEqual(calls.n, 0)
    }).pipe(Effect.provide(streamEnvironment)))

  it.effect("guardStream guards the stream's own call, not what its consumer does between parts; around no call it says so", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      const cycle = yield* currentCycle
      yield* store.setLimit("pia", cycle, 100)
      const calls = { n: 0 }
      let inner = 0
      // The stream holds the whole limit while it runs; the consumer's own call is not admitted by its guard.
      yield* Stream.runForEach(guardedStream({ userId: "pia", reply: () => text("a b"), calls }), () =>
        Effect.succeed({ content: "x" }).pipe(
          Callbacks.instrument({ provider: "p", model: "m", userId: "pia" }),
          Effect.tap(() => Effect.sync(() => inner++))
        ))
      assert.isTrue(inner > 0)
      const logs = yield* captureLogs
      yield* Stream.runDrain(Stream.make(1, 2).pipe(Budget.guardStream())).pipe(Effect.provide(logs.layer))
      assert.isTrue(logs.lines.some((l) => l.level === "WARN" && l.message.includes("nothing was checked")))
    }).pipe(Effect.provide(streamEnvironment)))

  it.effect("Callbacks.begin under the guard: refused before start; admitted, held until finish", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      const cycle = yield* currentCycle
      yield* store.setLimit("quinn", cycle, 150)
      const options = { provider: "p", model: "m", userId: "quinn", params: { maxTokens: 80 } }
      yield* Effect.gen(function*() {
        const active = Option.getOrThrow(yield* Callbacks.begin(options))
        assert.strictEqual((yield* store.stats("quinn", cycle)).heldTokens, 100)
        const refused = yield* Effect.flip(Callbacks.begin(options))
        assert.deepInclude(refused, { _tag: "UsageLimitExceeded", heldTokens: 100, requestedTokens: 100 })
        yield* active.finish(Exit.fail("provider error"))
        assert.strictEqual((yield* store.stats("quinn", cycle)).heldTokens, 0)
      }).pipe(Budget.guard())
      assert.deepStrictEqual((yield* Testing.events).map((e) => e._tag), ["Start", "Error"])
    }).pipe(Effect.provide(streamEnvironment)))
})

describe("Budget: holds the store did not release", () => {
  it.live("are released again in the background, which does not hold the process open", () =>
    Effect.gen(function*() {
      const started = Date.now()
      const stdout = yield* runWorker(new URL("./support/releaseExitWorker.ts", import.meta.url))
      const report = JSON.parse(stdout.trim()) as { ms: number; notYet: number }
      // Five failed calls, five releases the store did not take, tried again for the holds' TTL (60 s)...
      assert.strictEqual(report.notYet, 5)
      // ...in the background: the process ended long before that.
      assert.isBelow(Date.now() - started, 45_000)
    }), 60_000)
})

describe("Budget and calls with no dispatcher to hear them", () => {
  it.effect("admitted all the same (a call: its hold ends with its failure; begun by hand: by its TTL), refused alike", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      const cycle = yield* currentCycle
      yield* store.setLimit("rob", cycle, 250)
      const options = { provider: "p", model: "m", userId: "rob", params: { maxTokens: 80 } }
      // A failed call: admitted, then released.
      assert.strictEqual(yield* Effect.flip(Effect.fail("boom").pipe(Callbacks.instrument(options), Budget.guard())), "boom")
      assert.strictEqual((yield* store.stats("rob", cycle)).heldTokens, 0)
      // Begun by hand: None (nothing hears it), and no finish to end the hold, nor a handler to record it.
      assert.isTrue(Option.isNone(yield* Callbacks.begin(options).pipe(Budget.guard())))
      assert.strictEqual((yield* store.stats("rob", cycle)).heldTokens, 100)
      assert.isTrue(Option.isNone(yield* Callbacks.begin(options).pipe(Budget.guard())))
      assert.deepInclude(yield* Effect.flip(Callbacks.begin(options).pipe(Budget.guard())), {
        _tag: "UsageLimitExceeded",
        heldTokens: 200
      })
      yield* TestClock.adjust("10 minutes")
      assert.strictEqual((yield* store.stats("rob", cycle)).heldTokens, 0)
    }).pipe(Effect.provide(Layer.merge(TokenStore.layerMemory, fixedCounter))))
})

describe("Budget.check", () => {
  it.effect("fails with UsageLimitExceeded once the recorded usage reaches the limit, or with the store's error", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      const cycle = "2025-03-01"
      yield* store.setLimit("kim", cycle, 3)
      yield* Budget.check({ userId: "kim", cycleStartDate: cycle })
      yield* store.record({
        callId: "k1",
        userId: "kim",
        cycle,
        usage: { promptTokens: 3, completionTokens: 0, totalTokens: 3 }
      })
      const error = yield* Effect.flip(Budget.check({ userId: "kim", cycleStartDate: cycle }))
      assert.deepInclude(error, { _tag: "UsageLimitExceeded", currentUsage: 3, limit: 3 })
      const storeError = yield* Effect.flip(
        Budget.check({ userId: "kim", cycleStartDate: cycle }).pipe(Effect.provide(failingStore(unavailable)))
      )
      assert.strictEqual(storeError._tag, "TokenStoreError")
      // From the call context.
      const fromContext = yield* Effect.flip(
        Budget.check({ cycleStartDate: cycle }).pipe(Callbacks.withCallContext({ userId: "kim" }))
      )
      assert.strictEqual(fromContext._tag, "UsageLimitExceeded")
    }).pipe(Effect.provide(TokenStore.layerMemory)))
})

// Last in the file: @effect/vitest's `layer` installs its environment on the
// shared `it`, so tests defined after it in the same file would run in it.
budgetConformance("memory", TokenStore.layerMemory)
