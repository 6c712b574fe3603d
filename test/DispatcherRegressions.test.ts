// Regression tests for defects found in the dispatcher, each failing before its fix.
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Layer, Logger, Metric, Option, Schedule, Scope, TestClock } from "effect"
import { CallbackMetrics, Callbacks, Dispatcher, Handler, Testing } from "../src/index.js"

const options = { provider: "openai", model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] }

/** A logger that keeps every message line. */
const captureLines = () => {
  const lines: Array<string> = []
  const logger = Logger.make(({ message }) => {
    lines.push(Array.isArray(message) ? message.join(" ") : String(message))
  })
  return { lines, logger }
}

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

  // Found by the reference-model comparison: cancelling the pending invocations of an
  // interrupted start dispatch one by one let a running one's freed slot go to a start
  // of the same dispatch still queued, which then heard a start its call never made.
  it.effect("an interrupted start dispatch cancels its queued invocations before freeing its slots", () =>
    Effect.gen(function*() {
      const log = makeLog()
      yield* Dispatcher.register(Handler.make({
        name: "A",
        // Fails every attempt; retries 200 ms apart hold the one slot.
        onLlmStart: (event) => Effect.zipRight(log.heard("A", "start")(event), Effect.fail("no")),
        onLlmEnd: log.heard("A", "end"),
        onLlmError: log.heard("A", "error"),
        retry: Schedule.spaced("200 millis").pipe(Schedule.intersect(Schedule.recurs(2))),
        timeout: "1 second"
      }))
      yield* Dispatcher.register(Handler.make({
        name: "B",
        onLlmStart: log.heard("B", "start"),
        onLlmEnd: log.heard("B", "end"),
        onLlmError: log.heard("B", "error"),
        timeout: "1 second"
      }))
      const c0 = yield* Effect.fork(Effect.succeed("c0").pipe(Callbacks.instrument({ ...options, callId: "c0" })))
      yield* TestClock.adjust("150 millis")
      const c1 = yield* Effect.fork(Effect.succeed("c1").pipe(Callbacks.instrument({ ...options, callId: "c1" })))
      // At 400 ms A's c0 start gives up, B's runs, A's c1 start takes the slot and retries.
      yield* TestClock.adjust("550 millis")
      yield* Fiber.interrupt(c1)
      yield* TestClock.adjust("5 seconds")
      assert.isTrue(Exit.isSuccess(yield* Fiber.await(c0)))
      assert.deepStrictEqual(log.lines.filter((line) => line.startsWith("B") && line.endsWith("c1")), [], log.lines.join(", "))
      // A heard c1's start (its attempts ran): it hears c1's error, once.
      assert.deepStrictEqual(log.lines.filter((line) => line.startsWith("A") && line.endsWith("c1")), [
        "A start c1",
        "A start c1",
        "A error c1"
      ])
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer({ maxConcurrent: 1 }))))
})

describe("Dispatcher: a background handler whose start was dropped", () => {
  it.effect("hears no terminal event of that call, though its buffer has room again by then", () =>
    Effect.gen(function*() {
      const heard: Array<string> = []
      const note = (event: { readonly _tag: string; readonly call: { readonly callId: string } }) =>
        Effect.sync(() => heard.push(`${event._tag} ${event.call.callId}`))
      yield* Dispatcher.register(Handler.make({
        name: "bg",
        mode: "background",
        bufferSize: 1,
        timeout: "10 seconds",
        retry: Schedule.stop,
        onLlmStart: (event) => Effect.zipRight(note(event), event.call.callId === "c1" ? Effect.sleep("5 seconds") : Effect.void),
        onLlmEnd: note,
        onLlmError: note
      }))
      // c1's start keeps the consumer busy 5 s and c2's fills the buffer: c3's start waits for room, and
      // its caller is interrupted meanwhile: that start is dropped. c3's error event then waits for room,
      // which comes at 5 s: the handler must not hear it.
      const c1 = yield* Effect.fork(Effect.succeed({ content: "ok" }).pipe(Callbacks.instrument({ ...options, callId: "c1" })))
      const c2 = yield* Effect.fork(Effect.succeed({ content: "ok" }).pipe(Callbacks.instrument({ ...options, callId: "c2" })))
      yield* TestClock.adjust("100 millis")
      const c3 = yield* Effect.fork(Effect.succeed({ content: "ok" }).pipe(Callbacks.instrument({ ...options, callId: "c3" })))
      yield* TestClock.adjust("1 second")
      yield* Fiber.interrupt(c3).pipe(Effect.fork)
      yield* TestClock.adjust("30 seconds")
      yield* Fiber.joinAll([c1, c2])
      yield* Dispatcher.flush
      assert.notInclude(heard, "Start c3", JSON.stringify(heard))
      assert.notInclude(heard, "Error c3", JSON.stringify(heard))
      assert.includeMembers(heard, ["Start c1", "Start c2", "End c1", "End c2"])
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer())))
})

describe("Dispatcher health", () => {
  it.effect("lastError.at comes from the Clock (TestClock here), not the wall clock", () =>
    Effect.gen(function*() {
      yield* TestClock.adjust("5 seconds")
      yield* Dispatcher.register(Handler.make({ name: "failing", onLlmEnd: () => Effect.fail("no"), retry: undefined }))
      yield* Effect.succeed("x").pipe(Callbacks.instrument(options))
      const health = yield* Dispatcher.health
      const lastError = health.handlers.find((h) => h.name === "failing")!.lastError
      assert.isTrue(Option.isSome(lastError))
      if (Option.isSome(lastError)) assert.strictEqual(lastError.value.at, 5_000)
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer({ maxRetryAttempts: 1 }))))
})

describe("Dispatcher shutdown accounting", () => {
  it.effect("offered = delivered + failed + timed out + dropped + undelivered, exactly, with one summary line per handler", () => {
    const { lines, logger } = captureLines()
    return Effect.gen(function*() {
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(
        Dispatcher.layer({ shutdownTimeout: "1 second", bufferSize: 1_000 }),
        scope
      )
      let delivered = 0
      yield* Dispatcher.register(Handler.make({
        name: "slow-background",
        mode: "background",
        onLlmEnd: () => Effect.zipRight(Effect.sleep("10 millis"), Effect.sync(() => void delivered++)),
        timeout: "1 minute"
      })).pipe(Scope.extend(scope), Effect.provide(context))
      for (let i = 0; i < 300; i++) {
        yield* Effect.succeed(i).pipe(Callbacks.instrument(options), Effect.provide(context))
      }
      const closing = yield* Effect.fork(Scope.close(scope, Exit.void))
      for (let i = 0; i < 200; i++) yield* TestClock.adjust("10 millis")
      yield* Fiber.join(closing)
      const dropped = yield* Metric.value(CallbackMetrics.droppedTotal.pipe(Metric.tagged("callback_type", "slow-background")))
      const executions = (status: string) =>
        Metric.value(
          CallbackMetrics.executionsTotal.pipe(
            Metric.tagged("callback_type", "slow-background"),
            Metric.tagged("phase", "end"),
            Metric.tagged("status", status)
          )
        ).pipe(Effect.map((counter) => counter.count))
      const success = yield* executions("success")
      const interrupted = yield* executions("interrupted")
      // About a second's worth (the shutdown timeout) was delivered; the rest is accounted once.
      assert.isAtLeast(delivered, 90)
      assert.isAtMost(delivered, 101)
      assert.strictEqual(success, delivered)
      assert.strictEqual(success + interrupted + dropped.count, 300)
      const summaries = lines.filter((line) => line.includes("slow-background") && line.includes("not delivered"))
      assert.strictEqual(summaries.length, 1, lines.join("\n"))
      assert.include(summaries[0]!, `${dropped.count + interrupted} background deliveries not delivered`)
    }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
  })
})

describe("Dispatcher: a hook that ignores interruption", () => {
  it.effect("past its timeout the call goes on, the slot is free for others, and health shows it overrunning", () =>
    Effect.gen(function*() {
      let others = 0
      yield* Dispatcher.register(Handler.make({
        name: "stubborn",
        onLlmEnd: () => Effect.uninterruptible(Effect.sleep("10 seconds")),
        timeout: "1 second"
      }))
      yield* Dispatcher.register(Handler.make({
        name: "other",
        priority: -1,
        onLlmEnd: () => Effect.zipRight(Effect.sleep("1 millis"), Effect.sync(() => void others++)),
        timeout: "1 second"
      }))
      const first = yield* Effect.fork(Effect.succeed(1).pipe(Callbacks.instrument(options)))
      yield* TestClock.adjust("1 second")
      yield* TestClock.adjust("1 millis")
      assert.isTrue(Option.isSome(yield* Fiber.poll(first)), "the call returned after the timeout")
      assert.strictEqual(others, 1, "the other handler got the one slot")
      const stubborn = () => Effect.map(Dispatcher.health, (h) => h.handlers.find((x) => x.name === "stubborn")!)
      assert.deepInclude(yield* stubborn(), { overrunning: 1, timeouts: 1, inFlight: 0 })
      yield* TestClock.adjust("9 seconds")
      assert.deepInclude(yield* stubborn(), { overrunning: 0 })
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer({ maxConcurrent: 1 }))))
})

describe("Testing.layer with a busy background handler", () => {
  it.effect("the layer closes (bounded in real time) though the TestClock never moves, saying why", () => {
    const { lines, logger } = captureLines()
    return Effect.gen(function*() {
      yield* Effect.scoped(
        Effect.gen(function*() {
          yield* Dispatcher.register(Handler.make({
            name: "busy",
            mode: "background",
            onLlmEnd: () => Effect.sleep("1 hour")
          }))
          yield* Effect.succeed(1).pipe(Callbacks.instrument(options))
        }).pipe(Effect.provide(Testing.layer({ shutdownTimeout: "50 millis" })))
      )
      const summary = lines.find((line) => line.includes("busy") && line.includes("not delivered"))
      assert.isDefined(summary, lines.join("\n"))
      assert.include(summary!, "TestClock")
    }).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, logger)))
  })
})
