import { assert, describe, it } from "@effect/vitest"
import * as Cause from "effect/Cause"
import * as DateTime from "effect/DateTime"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Schema from "effect/Schema"
import * as TestClock from "effect/TestClock"
import * as BillingCycle from "../src/BillingCycle.js"

const setNow = (iso: string) => TestClock.setTime(DateTime.toEpochMillis(DateTime.unsafeMake(iso)))

describe("BillingCycle.fromDate", () => {
  it.effect("accepts real calendar dates", () =>
    Effect.gen(function*() {
      for (const date of ["2025-01-01", "2025-12-31", "2024-02-29", "2000-02-29", "2025-04-30"]) {
        assert.strictEqual(yield* BillingCycle.fromDate(date), date)
      }
    }))

  it.effect("rejects anything else, naming the value", () =>
    Effect.gen(function*() {
      for (
        const date of [
          "2025-02-30",
          "2025-02-29",
          "1900-02-29",
          "2025-04-31",
          "2025-13-01",
          "2025-00-10",
          "2025-01-00",
          "2025-1-1",
          "25-01-01",
          "2025-01-01T00:00:00Z",
          " 2025-01-01",
          "",
          "b:2025-01-01"
        ]
      ) {
        const error = yield* Effect.flip(BillingCycle.fromDate(date))
        assert.strictEqual(error._tag, "InvalidCycle")
        assert.strictEqual(error.value, date)
        assert.include(error.message, JSON.stringify(date))
      }
    }))

  it("CycleDate is a Schema for the same dates", () => {
    const decode = Schema.decodeUnknownSync(BillingCycle.CycleDate)
    assert.strictEqual(decode("2024-02-29"), "2024-02-29")
    assert.throws(() => decode("2025-02-29"), /2025-02-29/)
    assert.throws(() => decode(20250101))
  })
})

describe("BillingCycle.current", () => {
  it.effect("is the month of now, UTC, by default", () =>
    Effect.gen(function*() {
      yield* setNow("2025-03-17T12:00:00Z")
      assert.strictEqual(yield* BillingCycle.current(), "2025-03-01")
      yield* setNow("2025-03-01T00:00:00Z")
      assert.strictEqual(yield* BillingCycle.current(), "2025-03-01")
      yield* setNow("2025-03-31T23:59:59.999Z")
      assert.strictEqual(yield* BillingCycle.current(), "2025-03-01")
    }))

  it.effect("moves with the TestClock across a month boundary", () =>
    Effect.gen(function*() {
      yield* setNow("2025-01-31T23:59:59Z")
      assert.strictEqual(yield* BillingCycle.current(), "2025-01-01")
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* BillingCycle.current(), "2025-02-01")
    }))

  it.effect("crosses December into January", () =>
    Effect.gen(function*() {
      yield* setNow("2025-12-31T23:59:59.999Z")
      assert.strictEqual(yield* BillingCycle.current(), "2025-12-01")
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* BillingCycle.current(), "2026-01-01")
    }))

  it.effect("uses UTC, not the local zone", () =>
    Effect.gen(function*() {
      // 23:30 on March 31st in UTC-5 is already April 1st in UTC.
      yield* setNow("2025-04-01T04:30:00Z")
      assert.strictEqual(yield* BillingCycle.current(), "2025-04-01")
    }))

  it.effect("starts cycles on the anchor day", () =>
    Effect.gen(function*() {
      yield* setNow("2025-03-03T10:00:00Z")
      assert.strictEqual(yield* BillingCycle.current({ anchorDay: 15 }), "2025-02-15")
      yield* setNow("2025-03-14T23:59:59Z")
      assert.strictEqual(yield* BillingCycle.current({ anchorDay: 15 }), "2025-02-15")
      yield* setNow("2025-03-15T00:00:00Z")
      assert.strictEqual(yield* BillingCycle.current({ anchorDay: 15 }), "2025-03-15")
      yield* setNow("2025-01-10T00:00:00Z")
      assert.strictEqual(yield* BillingCycle.current({ anchorDay: 15 }), "2024-12-15")
      yield* setNow("2025-12-20T00:00:00Z")
      assert.strictEqual(yield* BillingCycle.current({ anchorDay: 15 }), "2025-12-15")
    }))

  it.effect("anchor day 28 works through February, leap years included", () =>
    Effect.gen(function*() {
      yield* setNow("2024-02-29T12:00:00Z")
      assert.strictEqual(yield* BillingCycle.current({ anchorDay: 28 }), "2024-02-28")
      assert.strictEqual(yield* BillingCycle.current(), "2024-02-01")
      yield* setNow("2024-03-27T12:00:00Z")
      assert.strictEqual(yield* BillingCycle.current({ anchorDay: 28 }), "2024-02-28")
      yield* setNow("2025-03-01T00:00:00Z")
      assert.strictEqual(yield* BillingCycle.current({ anchorDay: 28 }), "2025-02-28")
    }))

  it.effect("a computed cycle is always a valid cycle date", () =>
    Effect.gen(function*() {
      yield* setNow("2023-11-05T00:00:00Z")
      for (let day = 0; day < 800; day += 7) {
        for (const anchorDay of [1, 9, 28]) {
          const cycle = yield* BillingCycle.current({ anchorDay })
          assert.isTrue(BillingCycle.isCycleDate(cycle), cycle)
          assert.isTrue(cycle.endsWith(`-${String(anchorDay).padStart(2, "0")}`))
        }
        yield* TestClock.adjust("7 days")
      }
    }))

  it.effect("an anchor day outside 1..28 is a defect naming it", () =>
    Effect.gen(function*() {
      for (const anchorDay of [0, 29, 31, 1.5, -1, Number.NaN]) {
        const exit = yield* Effect.exit(BillingCycle.current({ anchorDay }))
        assert.isTrue(Exit.isFailure(exit) && Cause.isDie(exit.cause), String(anchorDay))
        if (Exit.isFailure(exit)) assert.include(Cause.pretty(exit.cause), "anchorDay")
      }
    }))
})

describe("BillingCycle.resolve", () => {
  it.effect("an explicit start date wins", () =>
    Effect.gen(function*() {
      yield* setNow("2025-03-17T12:00:00Z")
      assert.strictEqual(yield* BillingCycle.resolve({ cycleStartDate: "2024-07-04", anchorDay: 15 }), "2024-07-04")
      assert.strictEqual(yield* BillingCycle.resolve({ anchorDay: 15 }), "2025-03-15")
      assert.strictEqual(yield* BillingCycle.resolve({}), "2025-03-01")
      assert.strictEqual(yield* BillingCycle.resolve({ cycleStartDate: undefined }), "2025-03-01")
    }))

  it.effect("an invalid explicit date fails", () =>
    Effect.gen(function*() {
      const error = yield* Effect.flip(BillingCycle.resolve({ cycleStartDate: "2025-02-30" }))
      assert.strictEqual(error._tag, "InvalidCycle")
      assert.include(error.message, "2025-02-30")
    }))
})
