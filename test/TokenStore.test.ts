import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as TestClock from "effect/TestClock"
import * as TokenStore from "../src/TokenStore.js"
import { tokenStoreConformance } from "./support/tokenStoreConformance.js"

const usage = { promptTokens: 3, completionTokens: 2, totalTokens: 5 }
const cycle = "2025-03-01"

describe("TokenStore.makeMemory", () => {
  it.effect("remembers a call id for the idempotency window, by the Clock", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.makeMemory({ idempotencyWindow: "1 hour" })
      const input = { callId: "c1", userId: "u", cycle, usage }
      assert.strictEqual(yield* store.record(input), "recorded")
      yield* TestClock.adjust("59 minutes")
      assert.strictEqual(yield* store.record(input), "duplicate")
      yield* TestClock.adjust("1 minute")
      // The window is over: the same call id counts again.
      assert.strictEqual(yield* store.record(input), "recorded")
      assert.strictEqual((yield* store.stats("u", cycle)).totalTokens, 10)
    }))

  it.effect("defaults to a 24 hour window", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.makeMemory()
      const input = { callId: "c1", userId: "u", cycle, usage }
      yield* store.record(input)
      yield* TestClock.adjust("23 hours")
      assert.strictEqual(yield* store.record(input), "duplicate")
      yield* TestClock.adjust("1 hour")
      assert.strictEqual(yield* store.record(input), "recorded")
    }))

  it.effect("keeps at most maxIdempotencyKeys call ids, forgetting the oldest", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.makeMemory({ maxIdempotencyKeys: 3 })
      const record = (callId: string) => store.record({ callId, userId: "u", cycle, usage })
      for (const callId of ["c1", "c2", "c3", "c4"]) {
        assert.strictEqual(yield* record(callId), "recorded")
      }
      // c1 was evicted to make room for c4; c2..c4 are still known.
      assert.strictEqual(yield* record("c4"), "duplicate")
      assert.strictEqual(yield* record("c3"), "duplicate")
      assert.strictEqual(yield* record("c1"), "recorded")
      assert.strictEqual(yield* record("c2"), "recorded")
    }))

  it.effect("a bad option is a defect naming it", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(TokenStore.makeMemory({ maxIdempotencyKeys: 0 }))
      assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause))
      if (Exit.isFailure(exit)) assert.include(Cause.pretty(exit.cause), "maxIdempotencyKeys")
    }))

  it.effect("each layer build is a fresh store", () =>
    Effect.gen(function*() {
      const first = yield* TokenStore.TokenStore.pipe(Effect.provide(TokenStore.layerMemory))
      yield* first.record({ callId: "c1", userId: "u", cycle, usage })
      const second = yield* TokenStore.TokenStore.pipe(Effect.provide(TokenStore.layerMemory))
      assert.deepStrictEqual((yield* second.stats("u", cycle)).limit, Option.none())
      assert.strictEqual((yield* second.stats("u", cycle)).totalTokens, 0)
    }))
})

describe("TokenStore.makeLimitCheck", () => {
  it("is exceeded at the limit", () => {
    assert.isTrue(TokenStore.makeLimitCheck(10, Option.some(10)).exceeded)
    assert.isFalse(TokenStore.makeLimitCheck(9, Option.some(10)).exceeded)
    assert.isTrue(TokenStore.makeLimitCheck(0, Option.some(0)).exceeded)
    assert.deepStrictEqual(TokenStore.makeLimitCheck(12, Option.some(10)).remaining, Option.some(0))
  })
})

// Last in the file: @effect/vitest's `layer` installs its environment on the
// shared `it`, so tests defined after it in the same file would run in it.
tokenStoreConformance("memory", TokenStore.layerMemory)
