import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Fiber, Option, Schedule, TestClock } from "effect"
import { Callbacks, Dispatcher, type Events, Handler, Testing, TokenStore } from "../src/index.js"

const options = { provider: "openai", model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] }

/** What one handler heard, as short strings: `Start`, `Chunk:<index>`, `End`... */
const heard = (log: Array<string>) => {
  const push = (event: Events.CallbackEvent) =>
    Effect.sync(() => log.push(event._tag === "Chunk" ? `Chunk:${event.index}` : event._tag))
  return push
}

/** A call started by hand (as a stream integration does): its chunks are offered from a plain loop. */
const streamByHand = (deltas: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const active = Option.getOrThrow(yield* Callbacks.begin(options))
    for (const delta of deltas) active.chunk("text", delta)
    return active
  })

describe("stream chunks", () => {
  it.effect("a chunk hook that completes at once runs inline, in order, before the call's end", () =>
    Effect.gen(function*() {
      const active = yield* streamByHand(["a", "b", "c"])
      // Already heard, synchronously, before anything else ran.
      const before = yield* Testing.events
      assert.deepStrictEqual(before.map((event) => event._tag), ["Start", "Chunk", "Chunk", "Chunk"])
      assert.isTrue(active.hearsChunks)
      yield* active.finish(Exit.succeed({ content: "abc" }))
      const events = yield* Testing.events
      assert.deepStrictEqual(
        events.flatMap((event) => event._tag === "Chunk" ? [[event.index, event.delta, event.kind]] : []),
        [[0, "a", "text"], [1, "b", "text"], [2, "c", "text"]]
      )
      assert.strictEqual(events[4]?._tag, "End")
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("no handler hears chunks: nothing is built per chunk", () =>
    Effect.gen(function*() {
      yield* Dispatcher.register(Handler.make({ name: "ends", onLlmEnd: () => Effect.void }))
      const active = Option.getOrThrow(yield* Callbacks.begin(options))
      assert.isFalse(active.hearsChunks)
      active.chunk("text", "ignored")
      yield* active.finish(Exit.succeed({ content: "" }))
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer())))

  it.effect("a chunk hook that suspends never slows the stream; the handler hears every chunk in order, then the end", () =>
    Effect.gen(function*() {
      const log: Array<string> = []
      const push = heard(log)
      yield* Dispatcher.register(Handler.make({
        name: "slow",
        onLlmStart: push,
        onLlmChunk: (event) => Effect.zipRight(Effect.sleep("1 second"), push(event)),
        onLlmEnd: push
      }))
      const active = yield* streamByHand(["a", "b", "c", "d"])
      // The four chunks were offered without the clock moving: the stream did not wait.
      assert.deepStrictEqual(log, ["Start"])
      const finished = yield* Effect.fork(active.finish(Exit.succeed({ content: "abcd" })))
      yield* TestClock.adjust("2 seconds")
      assert.deepStrictEqual(log, ["Start", "Chunk:0", "Chunk:1"])
      yield* TestClock.adjust("2 seconds")
      yield* Fiber.join(finished)
      assert.deepStrictEqual(log, ["Start", "Chunk:0", "Chunk:1", "Chunk:2", "Chunk:3", "End"])
      const health = yield* Dispatcher.health
      assert.strictEqual(health.handlers[0]!.successes, 6)
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer())))

  it.effect("the end waits for a handler's chunks at most its timeout: the rest is cut, counted and the end still heard", () =>
    Effect.gen(function*() {
      const log: Array<string> = []
      const push = heard(log)
      yield* Dispatcher.register(Handler.make({
        name: "slow",
        onLlmChunk: (event) => Effect.zipRight(Effect.sleep("2 seconds"), push(event)),
        onLlmEnd: push,
        timeout: "3 seconds",
        retry: Schedule.stop
      }))
      const active = yield* streamByHand(["a", "b", "c", "d"])
      const finished = yield* Effect.fork(active.finish(Exit.succeed({ content: "abcd" })))
      yield* TestClock.adjust("3 seconds")
      yield* Fiber.join(finished)
      // Chunk 0 at 2 s; chunk 1 running when the bound fell (interrupted); 2 and 3 never ran (dropped).
      assert.deepStrictEqual(log, ["Chunk:0", "End"])
      const h = (yield* Dispatcher.health).handlers[0]!
      assert.deepStrictEqual([h.successes, h.interruptions, h.dropped, h.pending], [2, 1, 2, 0])
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer())))

  it.effect("a failing or dying chunk hook changes nothing: the stream's chunks and the end go on", () =>
    Effect.gen(function*() {
      yield* Dispatcher.register(Handler.make({
        name: "broken",
        onLlmChunk: (event) => event.index % 2 === 0 ? Effect.fail("nope") : Effect.die("bug"),
        retry: Schedule.stop
      }))
      const active = yield* streamByHand(["a", "b", "c"])
      const report = yield* active.finish(Exit.succeed({ content: "abc" }))
      assert.isTrue(Option.isSome(report))
      const events = yield* Testing.events
      assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "Chunk", "Chunk", "Chunk", "End"])
      const broken = (yield* Dispatcher.health).handlers.find((h) => h.name === "broken")!
      assert.deepStrictEqual([broken.failures, broken.defects], [2, 1])
    }).pipe(Effect.scoped, Effect.provide(Testing.layer())))

  it.effect("several streams at once: each handler hears each call's chunks in order, and its end after them", () =>
    Effect.gen(function*() {
      const byCall = new Map<string, Array<string>>()
      const note = (event: Events.CallbackEvent) =>
        Effect.sync(() => {
          const log = byCall.get(event.call.callId) ?? []
          log.push(event._tag === "Chunk" ? `Chunk:${event.index}` : event._tag)
          byCall.set(event.call.callId, log)
        })
      yield* Dispatcher.register(Handler.make({
        name: "jittery",
        // Suspends on some chunks only, for different times.
        onLlmChunk: (event) =>
          Effect.zipRight(event.index % 3 === 1 ? Effect.sleep(`${event.index * 100} millis`) : Effect.void, note(event)),
        onLlmEnd: note
      }))
      const calls = 6
      const fibers = yield* Effect.forEach(Array.from({ length: calls }, (_, i) => i), (i) =>
        Effect.fork(Effect.gen(function*() {
          const active = yield* streamByHand(Array.from({ length: 4 + i }, (_, n) => `d${n}`))
          yield* Effect.sleep(`${i * 50} millis`)
          yield* active.finish(Exit.succeed({ content: "" }))
        })))
      yield* TestClock.adjust("10 seconds")
      yield* Fiber.joinAll(fibers)
      assert.strictEqual(byCall.size, calls)
      const lengths = Array.from(byCall.values(), (log) => log.length).sort((a, b) => a - b)
      assert.deepStrictEqual(lengths, [5, 6, 7, 8, 9, 10])
      for (const log of byCall.values()) {
        const chunks = log.length - 1
        assert.deepStrictEqual(log, [...Array.from({ length: chunks }, (_, n) => `Chunk:${n}`), "End"])
      }
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer({ maxConcurrent: 2 }))))

  it.effect("a background handler hears a call's chunks through its buffer, in order, its end after them", () =>
    Effect.gen(function*() {
      const log: Array<string> = []
      const push = heard(log)
      yield* Dispatcher.register(Handler.make({
        name: "bg",
        mode: "background",
        onLlmStart: push,
        onLlmChunk: (event) => Effect.zipRight(Effect.sleep("10 millis"), push(event)),
        onLlmEnd: push
      }))
      const active = yield* streamByHand(["a", "b", "c"])
      yield* active.finish(Exit.succeed({ content: "abc" }))
      yield* TestClock.adjust("1 second")
      yield* Dispatcher.flush
      assert.deepStrictEqual(log, ["Start", "Chunk:0", "Chunk:1", "Chunk:2", "End"])
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer())))

  it.effect("a handler that did not hear the start (its start was cut by the caller's interruption) hears no chunk", () =>
    Effect.gen(function*() {
      const log: Array<string> = []
      const push = heard(log)
      yield* Dispatcher.register(Handler.make({
        name: "late",
        priority: -1,
        onLlmStart: push,
        onLlmChunk: push,
        onLlmEnd: push
      }))
      yield* Dispatcher.register(Handler.make({ name: "slow-start", priority: 1, onLlmStart: () => Effect.never }))
      const fiber = yield* Effect.fork(streamByHand(["a"]))
      yield* TestClock.adjust("1 second")
      yield* Fiber.interrupt(fiber)
      assert.deepStrictEqual(log, [])
    }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer())))
})

describe("tool runs", () => {
  it.effect("instrumentTool: tool_start then tool_end with name, params, result and duration; the parent is the enclosing call", () =>
    Effect.gen(function*() {
      const result = yield* Effect.gen(function*() {
        const celsius = yield* Effect.sleep("2 seconds").pipe(
          Effect.as({ celsius: 21 }),
          Callbacks.instrumentTool({ name: "get_weather", params: { city: "Paris" }, toolCallId: "tc_1" })
        )
        return { content: `${celsius.celsius}` }
      }).pipe(
        Callbacks.instrument(options),
        Callbacks.withCallContext({ userId: "alice" }),
        Effect.fork,
        Effect.tap(() => TestClock.adjust("2 seconds")),
        Effect.flatMap(Fiber.join)
      )
      assert.deepStrictEqual(result, { content: "21" })
      const events = yield* Testing.events
      assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "ToolStart", "ToolEnd", "End"])
      const [llm, toolStart, toolEnd] = events as [Events.StartEvent, Events.ToolStartEvent, Events.ToolEndEvent]
      assert.deepStrictEqual(toolStart.tool, { name: "get_weather", id: "tc_1" })
      assert.deepStrictEqual(toolStart.params, { city: "Paris" })
      assert.strictEqual(toolStart.call.parentCallId, llm.call.callId)
      assert.strictEqual(toolStart.call.userId, "alice")
      assert.strictEqual(toolStart.call.metadata["gen_ai.operation.name"], "execute_tool")
      assert.notStrictEqual(toolStart.call.callId, llm.call.callId)
      assert.strictEqual(toolEnd.call.callId, toolStart.call.callId)
      assert.deepStrictEqual(toolEnd.result, { celsius: 21 })
      assert.strictEqual(toolEnd.durationMs, 2000)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("a failing tool: tool_error with the failure; the run fails exactly as the bare run", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(
        Effect.fail({ _tag: "CityUnknown", message: "no such city" } as const).pipe(
          Callbacks.instrumentTool({ name: "get_weather", params: { city: "Atlantis" }, parentCallId: "call-9" })
        )
      )
      assert.deepStrictEqual(exit, Exit.fail({ _tag: "CityUnknown", message: "no such city" } as const))
      const [start, error] = (yield* Testing.events) as [Events.ToolStartEvent, Events.ToolErrorEvent]
      assert.strictEqual(start.call.parentCallId, "call-9")
      assert.strictEqual(error._tag, "ToolError")
      assert.strictEqual(error.failure.errorType, "CityUnknown")
      assert.isFalse(error.interrupted)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("a tool that returns its failure (failureOf) is heard as tool_error; the effect succeeds", () =>
    Effect.gen(function*() {
      const value = yield* Effect.succeed({ isFailure: true, result: "quota" }).pipe(
        Callbacks.instrumentTool({ name: "search", failureOf: (r) => r.isFailure ? r.result : undefined })
      )
      assert.deepStrictEqual(value, { isFailure: true, result: "quota" })
      const events = yield* Testing.events
      const error = events[1] as Events.ToolErrorEvent
      assert.strictEqual(error._tag, "ToolError")
      assert.strictEqual(error.failure.error, "quota")
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("an interrupted tool run: exactly one tool_error marked interrupted; a failing tool hook never breaks the run", () =>
    Effect.gen(function*() {
      yield* Dispatcher.register(Handler.make({
        name: "broken",
        onToolStart: () => Effect.die("bug"),
        onToolEnd: () => Effect.fail("x"),
        retry: Schedule.stop
      }))
      const fiber = yield* Effect.fork(Effect.never.pipe(Callbacks.instrumentTool({ name: "wait" })))
      yield* TestClock.adjust("1 second")
      yield* Fiber.interrupt(fiber)
      assert.strictEqual(yield* Effect.succeed(1).pipe(Callbacks.instrumentTool({ name: "one" })), 1)
      const events = yield* Testing.events
      assert.deepStrictEqual(events.map((event) => event._tag), ["ToolStart", "ToolError", "ToolStart", "ToolEnd"])
      assert.isTrue((events[1] as Events.ToolErrorEvent).interrupted)
    }).pipe(Effect.scoped, Effect.provide(Testing.layer())))
})

describe("retried attempts", () => {
  it.effect("Effect.retry inside withOperation: each attempt a call of its own, numbered, under one operation id", () =>
    Effect.gen(function*() {
      let attempts = 0
      const callModel = Effect.suspend(() =>
        ++attempts < 3 ? Effect.fail("overloaded") : Effect.succeed({ content: "ok" })
      )
      const result = yield* callModel.pipe(
        Callbacks.instrument({ ...options, userId: "alice" }),
        Effect.retry(Schedule.recurs(5)),
        Callbacks.withOperation({ operationId: "op-1" })
      )
      assert.deepStrictEqual(result, { content: "ok" })
      const events = yield* Testing.events
      assert.deepStrictEqual(events.map((event) => event._tag), ["Start", "Error", "Start", "Error", "Start", "End"])
      assert.deepStrictEqual(events.map((event) => [event.call.operationId, event.call.attempt]), [
        ["op-1", 1],
        ["op-1", 1],
        ["op-1", 2],
        ["op-1", 2],
        ["op-1", 3],
        ["op-1", 3]
      ])
      assert.strictEqual(new Set(events.map((event) => event.call.callId)).size, 3)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("calls nested in an attempt are not attempts; calls outside an operation have none", () =>
    Effect.gen(function*() {
      const inner = Effect.succeed({ content: "inner" }).pipe(Callbacks.instrument(options))
      yield* Effect.zipRight(inner, Effect.succeed({ content: "outer" })).pipe(
        Callbacks.instrument(options),
        Callbacks.withOperation()
      )
      yield* Effect.succeed({ content: "alone" }).pipe(Callbacks.instrument(options))
      const starts = (yield* Testing.events).filter((event): event is Events.StartEvent => event._tag === "Start")
      assert.strictEqual(starts.length, 3)
      assert.strictEqual(starts[0]!.call.attempt, 1)
      assert.isString(starts[0]!.call.operationId)
      assert.strictEqual(starts[1]!.call.attempt, undefined)
      assert.strictEqual(starts[1]!.call.parentCallId, starts[0]!.call.callId)
      assert.strictEqual(starts[2]!.call.operationId, undefined)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("every billed attempt is recorded once: a failed attempt that consumed tokens and the one that succeeded", () =>
    Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      yield* Dispatcher.register(Handler.make({
        name: "tokens",
        // What a token handler does with each attempt's usage, by its own call id.
        onLlmEnd: (event) =>
          Effect.orDie(store.record({
            callId: event.call.callId,
            userId: "alice",
            cycle: "2026-12-01",
            usage: event.response.usage!
          }))
      }))
      let attempts = 0
      const billed = { promptTokens: 10, completionTokens: 5, totalTokens: 15 }
      const answer = Effect.suspend(() => {
        attempts++
        return Effect.succeed({ content: "x", usage: billed })
      })
      // The app retries when it dislikes the answer: each attempt was billed by the provider.
      yield* answer.pipe(
        Callbacks.instrument({ ...options, userId: "alice" }),
        Effect.flatMap((r) => attempts < 3 ? Effect.fail("retry") : Effect.succeed(r)),
        Effect.retry(Schedule.recurs(5)),
        Callbacks.withOperation()
      )
      const stats = yield* store.stats("alice", "2026-12-01")
      assert.strictEqual(stats.totalTokens, 45)
      // A lost reply retried by the handler re-sends the same call id: nothing counts twice.
      const starts = (yield* Testing.events).filter((event) => event._tag === "Start")
      assert.deepStrictEqual(starts.map((event) => event.call.attempt), [1, 2, 3])
    }).pipe(Effect.scoped, Effect.provide(Testing.layer()), Effect.provide(TokenStore.layerMemory)))
})

describe("isolation of the new hooks", () => {
  it.effect("hooks that hang on tool and chunk events delay the call at most their timeout, and never change its Exit", () =>
    Effect.gen(function*() {
      yield* Dispatcher.register(Handler.make({
        name: "hangs",
        onToolStart: () => Effect.never,
        onToolError: () => Effect.never,
        onLlmChunk: () => Effect.never,
        timeout: "1 second"
      }))
      const fiber = yield* Effect.fork(Effect.gen(function*() {
        const active = yield* streamByHand(["a"])
        const tool = yield* Effect.exit(Effect.fail("boom").pipe(Callbacks.instrumentTool({ name: "t" })))
        yield* active.finish(Exit.succeed({ content: "a" }))
        return tool
      }))
      yield* TestClock.adjust("3 seconds")
      const tool = yield* Fiber.join(fiber)
      assert.isTrue(Exit.isFailure(tool) && Cause.failureOption(tool.cause)._tag === "Some")
      const h = (yield* Dispatcher.health).handlers.find((handler) => handler.name === "hangs")!
      assert.strictEqual(h.timeouts, 3)
    }).pipe(Effect.scoped, Effect.provide(Testing.layer())))
})
