import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber } from "effect"
import { Buffer } from "../src/internal/dispatch/buffer.js"

/** Lets every queued microtask run (and those they queue), but no event-loop turn. */
const microtasks = Effect.promise(async () => {
  for (let i = 0; i < 50; i++) await Promise.resolve()
})

/** Forks the buffer's consumer and tells whether it was woken. */
const consumer = (buffer: Buffer<number>) =>
  Effect.gen(function*() {
    let woken = false
    const fiber = yield* Effect.fork(Effect.zipRight(buffer.waitNonEmpty, Effect.sync(() => (woken = true))))
    yield* microtasks
    return { woken: () => woken, fiber }
  })

describe("background buffer", () => {
  it.live("on the live clock, the consumer is woken once per event-loop turn, not per delivery", () =>
    Effect.gen(function*() {
      const buffer = new Buffer<number>(8, true)
      const { fiber, woken } = yield* consumer(buffer)
      assert.isTrue(buffer.offer(1))
      assert.isTrue(buffer.offer(2))
      yield* microtasks
      assert.isFalse(woken(), "woken within the turn")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual(buffer.takeAll(), [1, 2])
    }))

  it.live("half full, the consumer is woken at once: a turn where many calls end does not fill the buffer", () =>
    Effect.gen(function*() {
      const buffer = new Buffer<number>(8, true)
      const { fiber, woken } = yield* consumer(buffer)
      for (let i = 0; i < 4; i++) assert.isTrue(buffer.offer(i))
      yield* microtasks
      assert.isTrue(woken(), "not woken before the next turn")
      yield* Fiber.join(fiber)
      assert.deepStrictEqual(buffer.takeAll(), [0, 1, 2, 3])
      // The turn's wake still pending finds nobody waiting; the next wait is per turn again.
      const next = yield* consumer(buffer)
      assert.isTrue(buffer.offer(4))
      yield* microtasks
      assert.isFalse(next.woken())
      yield* Fiber.join(next.fiber)
      assert.deepStrictEqual(buffer.takeAll(), [4])
    }))

  it.live("full, it refuses; on another clock than the live one, every delivery wakes the consumer at once", () =>
    Effect.gen(function*() {
      const full = new Buffer<number>(2, true)
      assert.isTrue(full.offer(1))
      assert.isTrue(full.offer(2))
      assert.isFalse(full.offer(3))
      const buffer = new Buffer<number>(8, false)
      const { woken } = yield* consumer(buffer)
      assert.isTrue(buffer.offer(1))
      yield* microtasks
      assert.isTrue(woken())
    }))
})
