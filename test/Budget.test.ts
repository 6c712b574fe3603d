import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Ref from "effect/Ref"
import * as TestClock from "effect/TestClock"
import * as Budget from "../src/Budget.js"
import { Callbacks, type Events, Testing, TokenStore } from "../src/index.js"

const cycle = "2025-03-01"

const usage = (totalTokens: number): TokenStore.TokenCounts => ({
  promptTokens: totalTokens,
  completionTokens: 0,
  totalTokens
})

/** A call that counts how often the model was really called. */
const modelCall = Effect.gen(function*() {
  const calls = yield* Ref.make(0)
  const call = Effect.as(Ref.update(calls, (n) => n + 1), "answer")
  return { calls, call }
})

const spend = (userId: string, tokens: number, cycleDate = cycle) =>
  Effect.flatMap(TokenStore.TokenStore, (store) =>
    store.record({ callId: crypto.randomUUID(), userId, cycle: cycleDate, usage: usage(tokens) }))

const setLimit = (userId: string, limit: number, cycleDate = cycle) =>
  Effect.flatMap(TokenStore.TokenStore, (store) => store.setLimit(userId, cycleDate, limit))

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
    release: () => failure
  })

const unavailable = Effect.fail(new TokenStore.TokenStoreError({ reason: "Unavailable", message: "store is down" }))

const captureLogs = Effect.gen(function*() {
  const lines: Array<{ readonly level: string; readonly message: string }> = []
  const logger = Logger.make(({ logLevel, message }) => {
    lines.push({ level: logLevel.label, message: Array.isArray(message) ? message.join(" ") : String(message) })
  })
  return { lines, layer: Logger.add(logger) }
})

describe("Budget.guard", () => {
  it.effect("a user under the limit: the call runs and returns its value", () =>
    Effect.gen(function*() {
      const { call, calls } = yield* modelCall
      yield* setLimit("alice", 100)
      yield* spend("alice", 99)
      const result = yield* call.pipe(Budget.guard({ userId: "alice", cycleStartDate: cycle }))
      assert.strictEqual(result, "answer")
      assert.strictEqual(yield* Ref.get(calls), 1)
    }).pipe(Effect.provide(TokenStore.layerMemory)))

  it.effect("a user at or over the limit: fails with UsageLimitExceeded and the model is not called", () =>
    Effect.gen(function*() {
      const { call, calls } = yield* modelCall
      yield* setLimit("bob", 100)
      yield* spend("bob", 100)
      const error = yield* Effect.flip(call.pipe(Budget.guard({ userId: "bob", cycleStartDate: cycle })))
      assert.instanceOf(error, Budget.UsageLimitExceeded)
      assert.deepStrictEqual(
        { userId: error.userId, cycle: error.cycle, limit: error.limit, currentUsage: error.currentUsage },
        { userId: "bob", cycle, limit: 100, currentUsage: 100 }
      )
      assert.include(error.message, "100 of 100 tokens")
      assert.strictEqual(yield* Ref.get(calls), 0)
      // A limit of 0 refuses at once.
      yield* setLimit("zero", 0)
      assert.strictEqual(
        (yield* Effect.flip(call.pipe(Budget.guard({ userId: "zero", cycleStartDate: cycle }))))._tag,
        "UsageLimitExceeded"
      )
      assert.strictEqual(yield* Ref.get(calls), 0)
    }).pipe(Effect.provide(TokenStore.layerMemory)))

  it.effect("reads the user from the call context; the options win over it", () =>
    Effect.gen(function*() {
      const { call, calls } = yield* modelCall
      yield* setLimit("carol", 10)
      yield* spend("carol", 50)
      const refused = yield* call.pipe(
        Budget.guard({ cycleStartDate: cycle }),
        Callbacks.withCallContext({ userId: "carol" }),
        Effect.exit
      )
      assert.isTrue(Exit.isFailure(refused))
      const allowed = yield* call.pipe(
        Budget.guard({ userId: "dave", cycleStartDate: cycle }),
        Callbacks.withCallContext({ userId: "carol" })
      )
      assert.strictEqual(allowed, "answer")
      assert.strictEqual(yield* Ref.get(calls), 1)
    }).pipe(Effect.provide(TokenStore.layerMemory)))

  it.effect("a call without a user is not checked", () =>
    Effect.gen(function*() {
      const { call, calls } = yield* modelCall
      assert.strictEqual(yield* call.pipe(Budget.guard()), "answer")
      assert.strictEqual(yield* Ref.get(calls), 1)
    }).pipe(Effect.provide(failingStore(unavailable))))

  it.effect("data-first and pipeable forms agree", () =>
    Effect.gen(function*() {
      const { call } = yield* modelCall
      yield* setLimit("erin", 1)
      yield* spend("erin", 1)
      const options = { userId: "erin", cycleStartDate: cycle }
      assert.strictEqual((yield* Effect.flip(Budget.guard(call, options)))._tag, "UsageLimitExceeded")
      assert.strictEqual((yield* Effect.flip(call.pipe(Budget.guard(options))))._tag, "UsageLimitExceeded")
      // Without options, data-first: the context's user.
      const exit = yield* Budget.guard(call).pipe(Callbacks.withCallContext({ userId: "erin" }), Effect.exit)
      assert.isTrue(Exit.isSuccess(exit), "a computed cycle other than 2025-03-01 has no limit")
    }).pipe(Effect.provide(TokenStore.layerMemory)))

  it.effect("the cycle is computed from the Clock and the anchor day", () =>
    Effect.gen(function*() {
      const { call, calls } = yield* modelCall
      // 2025-03-03: with anchor day 15 the cycle started on 2025-02-15.
      yield* TestClock.setTime(Date.UTC(2025, 2, 3, 12))
      yield* setLimit("frank", 10, "2025-02-15")
      yield* spend("frank", 10, "2025-02-15")
      const refused = yield* Effect.flip(call.pipe(Budget.guard({ userId: "frank", anchorDay: 15 })))
      assert.strictEqual(refused._tag, "UsageLimitExceeded")
      if (refused._tag === "UsageLimitExceeded") assert.strictEqual(refused.cycle, "2025-02-15")
      // Anchor day 1: the cycle of 2025-03-01 has no limit.
      assert.strictEqual(yield* call.pipe(Budget.guard({ userId: "frank" })), "answer")
      // A new cycle starts on 2025-03-15.
      yield* TestClock.setTime(Date.UTC(2025, 2, 15))
      assert.strictEqual(yield* call.pipe(Budget.guard({ userId: "frank", anchorDay: 15 })), "answer")
      assert.strictEqual(yield* Ref.get(calls), 2)
    }).pipe(Effect.provide(TokenStore.layerMemory)))

  it.effect("a store failure allows the call by default and logs a warning", () =>
    Effect.gen(function*() {
      const { call, calls } = yield* modelCall
      const logs = yield* captureLogs
      const result = yield* call.pipe(
        Budget.guard({ userId: "gina", cycleStartDate: cycle }),
        Effect.provide(logs.layer)
      )
      assert.strictEqual(result, "answer")
      assert.strictEqual(yield* Ref.get(calls), 1)
      assert.deepStrictEqual(logs.lines, [{ level: "WARN", message: "budget check failed; the call is allowed" }])
    }).pipe(Effect.provide(failingStore(unavailable))))

  it.effect("onStoreError: fail fails the call with the store's error, without calling the model", () =>
    Effect.gen(function*() {
      const { call, calls } = yield* modelCall
      const guarded: Effect.Effect<
        string,
        Budget.UsageLimitExceeded | TokenStore.TokenStoreError,
        TokenStore.TokenStore
      > = call.pipe(Budget.guard({ userId: "gina", cycleStartDate: cycle, onStoreError: "fail" }))
      const error = yield* Effect.flip(guarded)
      assert.strictEqual(error._tag, "TokenStoreError")
      if (error._tag === "TokenStoreError") assert.strictEqual(error.reason, "Unavailable")
      assert.strictEqual(yield* Ref.get(calls), 0)
    }).pipe(Effect.provide(failingStore(unavailable))))

  it.effect("a check slower than the timeout counts as a store failure", () =>
    Effect.gen(function*() {
      const { call, calls } = yield* modelCall
      const allowed = yield* call.pipe(
        Budget.guard({ userId: "hank", cycleStartDate: cycle, timeout: "1 second" }),
        Effect.fork
      )
      const failed = yield* call.pipe(
        Budget.guard({ userId: "hank", cycleStartDate: cycle, timeout: "1 second", onStoreError: "fail" }),
        Effect.fork
      )
      yield* TestClock.adjust("999 millis")
      assert.strictEqual(yield* Ref.get(calls), 0)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* Fiber.join(allowed), "answer")
      const error = yield* Effect.flip(Fiber.join(failed))
      assert.strictEqual(error._tag, "TokenStoreError")
      if (error._tag === "TokenStoreError") assert.strictEqual(error.reason, "Timeout")
      assert.strictEqual(yield* Ref.get(calls), 1)
    }).pipe(Effect.provide(failingStore(Effect.never))))

  it.effect("a bad cycleStartDate is a defect naming the setting", () =>
    Effect.gen(function*() {
      const { call, calls } = yield* modelCall
      const exit = yield* call.pipe(Budget.guard({ userId: "ivy", cycleStartDate: "2025-02-30" }), Effect.exit)
      assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause))
      if (Exit.isFailure(exit)) assert.include(Cause.pretty(exit.cause), "cycleStartDate")
      assert.strictEqual(yield* Ref.get(calls), 0)
    }).pipe(Effect.provide(TokenStore.layerMemory)))

  it.effect("inside instrument: handlers hear start, then an error with UsageLimitExceeded", () =>
    Effect.gen(function*() {
      const { call, calls } = yield* modelCall
      yield* setLimit("jack", 5)
      yield* spend("jack", 5)
      const exit = yield* call.pipe(
        Budget.guard({ cycleStartDate: cycle }),
        Callbacks.instrument({ provider: "fake", model: "m", userId: "jack", response: (content) => ({ content }) }),
        Callbacks.withCallContext({ userId: "jack" }),
        Effect.exit
      )
      assert.isTrue(Exit.isFailure(exit))
      const events = yield* Testing.events
      assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "Error"])
      assert.strictEqual((events[1] as Events.ErrorEvent).failure.errorType, "UsageLimitExceeded")
      assert.strictEqual(yield* Ref.get(calls), 0)
    }).pipe(Effect.provide(Layer.merge(TokenStore.layerMemory, Testing.layer()))))
})

describe("Budget.check", () => {
  it.effect("fails with UsageLimitExceeded or the store's error, whatever onStoreError says", () =>
    Effect.gen(function*() {
      yield* setLimit("kim", 3)
      yield* Budget.check({ userId: "kim", cycleStartDate: cycle })
      yield* spend("kim", 3)
      const error = yield* Effect.flip(Budget.check({ userId: "kim", cycleStartDate: cycle }))
      assert.strictEqual(error._tag, "UsageLimitExceeded")
      const storeError = yield* Effect.flip(
        Budget.check({ userId: "kim", cycleStartDate: cycle }).pipe(Effect.provide(failingStore(unavailable)))
      )
      assert.strictEqual(storeError._tag, "TokenStoreError")
    }).pipe(Effect.provide(TokenStore.layerMemory), Logger.withMinimumLogLevel(LogLevel.Info)))
})
