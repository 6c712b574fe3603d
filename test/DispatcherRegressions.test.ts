// Regression tests for defects found in the dispatcher, each failing before its fix.
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Option, TestClock } from "effect"
import { Callbacks, Dispatcher, Handler } from "../src/index.js"

const options = { provider: "openai", model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] }

/** A log of what each handler heard, as `<handler> <phase> <callId>`. */
const makeLog = () => {
  const lines: Array<string> = []
  const heard = (name: string, phase: string) => (event: { readonly call: { readonly callId: string } }) =>
    Effect.sync(() => void lines.push(`${name} ${phase} ${event.call.callId}`))
  return { lines, heard }
}

describe("Dispatcher regressions", () => {
  it.effect("a queued start cancelled after the slot queue was reset cancels nothing else; no call hangs", () =>
    Effect.gen(function*() {
      const log = makeLog()
      const suspending = (name: string, millis: number) =>
        Handler.make({
          name,
          onLlmStart: (event) => Effect.zipRight(Effect.sleep(millis), log.heard(name, "start")(event)),
          onLlmEnd: log.heard(name, "end"),
          onLlmError: log.heard(name, "error"),
          timeout: "30 seconds"
        })
      yield* Dispatcher.register(suspending("A", 1_000))
      yield* Dispatcher.register(Handler.make({
        name: "B",
        onLlmStart: log.heard("B", "start"),
        onLlmEnd: log.heard("B", "end"),
        onLlmError: log.heard("B", "error"),
        timeout: "30 seconds"
      }))
      yield* Dispatcher.register(suspending("C", 10_000))
      const c1 = yield* Effect.fork(Effect.succeed("c1").pipe(Callbacks.instrument({ ...options, callId: "c1" })))
      yield* TestClock.adjust("1 second")
      // A is done with c1, B ran from the queue, C holds the one slot.
      const c2 = yield* Effect.fork(Effect.succeed("c2").pipe(Callbacks.instrument({ ...options, callId: "c2" })))
      const interrupted = yield* Effect.fork(Fiber.interrupt(c1))
      yield* TestClock.adjust("200 seconds")
      const exit = yield* Fiber.poll(c2)
      assert.isTrue(Option.isSome(exit) && Exit.isSuccess(exit.value), `c2 finished: ${log.lines.join(", ")}`)
      assert.isTrue(Option.isSome(yield* Fiber.poll(interrupted)), "c1's interruption completed")
      // Whoever heard c1's start heard exactly one terminal event of it.
      for (const name of ["A", "B", "C"]) {
        const starts = log.lines.filter((l) => l === `${name} start c1`).length
        const terminals = log.lines.filter((l) => l === `${name} end c1` || l === `${name} error c1`).length
        assert.strictEqual(terminals, starts, `${name}: ${log.lines.join(", ")}`)
      }
      assert.include(log.lines, "A start c2")
      assert.include(log.lines, "A end c2")
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer({ maxConcurrent: 1 }))))
})
