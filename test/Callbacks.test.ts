import { assert, describe, it } from "@effect/vitest"
import { Cause, Deferred, Duration, Effect, Exit, Fiber, Layer, ManagedRuntime, Option, Stream, TestClock } from "effect"
import { Callbacks, Dispatcher, Events, Handler, Testing } from "../src/index.js"
import { runWorker } from "./support/worker.js"

const response = { content: "hello", usage: { promptTokens: 3, completionTokens: 2, totalTokens: 5 } }
const messages = [{ role: "user", content: "hi" }]
const options = { provider: "openai", model: "gpt-4o-mini", messages }

const tags = (events: ReadonlyArray<Events.CallbackEvent>) => events.map((event) => event._tag)

describe("Callbacks.instrument", () => {
  it.effect("success: handlers hear start then end; the call returns its own value", () =>
    Effect.gen(function*() {
      const result = yield* Effect.succeed(response).pipe(
        Callbacks.instrument({
          ...options,
          userId: "alice",
          tags: ["chat"],
          metadata: { tenant: "t1" },
          params: { temperature: 0.2 }
        })
      )
      assert.strictEqual(result, response)
      const events = yield* Testing.events
      assert.deepStrictEqual(tags(events), ["Start", "End"])
      const [start, end] = events as [Events.StartEvent, Events.EndEvent]
      assert.strictEqual(start.call.callId, end.call.callId)
      assert.strictEqual(start.call.provider, "openai")
      assert.strictEqual(start.call.model, "gpt-4o-mini")
      assert.strictEqual(start.call.userId, "alice")
      assert.deepStrictEqual(start.call.tags, ["chat"])
      assert.deepStrictEqual(start.call.metadata, { tenant: "t1" })
      assert.deepStrictEqual(start.params, { temperature: 0.2 })
      assert.deepStrictEqual(start.messages, messages)
      assert.deepStrictEqual(end.response.usage, response.usage)
      assert.strictEqual(end.response.content, "hello")
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("durations come from the Clock", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(
        Effect.sleep("3 seconds").pipe(Effect.as(response), Callbacks.instrument(options))
      )
      yield* TestClock.adjust("3 seconds")
      yield* Fiber.join(fiber)
      const [, end] = (yield* Testing.events) as [Events.StartEvent, Events.EndEvent]
      assert.strictEqual(end.durationMs, 3000)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("typed failure: error event with the failure; the call fails with the same error", () =>
    Effect.gen(function*() {
      class RateLimited extends Error {
        readonly _tag = "RateLimited"
      }
      const error = new RateLimited("slow down")
      const exit = yield* Effect.exit(Effect.fail(error).pipe(Callbacks.instrument(options)))
      assert.deepStrictEqual(exit, Exit.fail(error))
      const events = yield* Testing.events
      assert.deepStrictEqual(tags(events), ["Start", "Error"])
      const failed = events[1] as Events.ErrorEvent
      assert.strictEqual(failed.failure.kind, "failure")
      assert.strictEqual(failed.failure.errorType, "RateLimited")
      assert.strictEqual(failed.failure.message, "slow down")
      assert.strictEqual(failed.failure.error, error)
      assert.isFalse(failed.interrupted)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("defect: error event marked as a defect; the call dies with the same defect", () =>
    Effect.gen(function*() {
      const defect = new Error("bug")
      const exit = yield* Effect.exit(Effect.die(defect).pipe(Callbacks.instrument(options)))
      assert.isTrue(Exit.isFailure(exit) && Option.getOrUndefined(Cause.dieOption(exit.cause)) === defect)
      const failed = (yield* Testing.events)[1] as Events.ErrorEvent
      assert.strictEqual(failed.failure.kind, "defect")
      assert.strictEqual(failed.failure.error, defect)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("interrupted call: exactly one error event, marked interrupted", () =>
    Effect.gen(function*() {
      const fiber = yield* Effect.fork(Effect.never.pipe(Callbacks.instrument(options)))
      yield* TestClock.adjust("1 second")
      const exit = yield* Fiber.interrupt(fiber)
      assert.isTrue(Exit.isInterrupted(exit))
      const events = yield* Testing.events
      assert.deepStrictEqual(tags(events), ["Start", "Error"])
      const failed = events[1] as Events.ErrorEvent
      assert.isTrue(failed.interrupted)
      assert.strictEqual(failed.failure.kind, "interrupted")
      assert.strictEqual(failed.durationMs, 1000)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("the call keeps its caller's interruptibility: run uninterruptibly, an interrupted caller waits for it to end", () =>
    Effect.gen(function*() {
      // The same instrumented effect, run by an interruptible caller and by an uninterruptible one.
      const call = Effect.sleep("2 seconds").pipe(Effect.as(response), Callbacks.instrument(options))
      const interrupted = (run: Effect.Effect<unknown>) =>
        Effect.gen(function*() {
          const fiber = yield* Effect.fork(run)
          yield* TestClock.adjust("1 second")
          const interrupting = yield* Effect.fork(Fiber.interrupt(fiber))
          yield* TestClock.adjust("1 second")
          yield* Fiber.join(interrupting)
          return (yield* Testing.events).at(-1)!
        })
      const interruptibly = yield* interrupted(call)
      assert.strictEqual(interruptibly._tag, "Error")
      assert.isTrue((interruptibly as Events.ErrorEvent).interrupted)
      const uninterruptibly = yield* interrupted(Effect.uninterruptible(call))
      assert.strictEqual(uninterruptibly._tag, "End")
      assert.strictEqual((uninterruptibly as Events.EndEvent).durationMs, 2000)
      // Once more each way: the first run of the effect did not fix its interruptibility.
      assert.strictEqual((yield* interrupted(Effect.uninterruptible(call)))._tag, "End")
      assert.strictEqual((yield* interrupted(call))._tag, "Error")
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("the terminal dispatch completes even when the caller is interrupted (instrument, and begin's finish)", () =>
    Effect.forEach(["instrument", "finish"], (how) =>
      Effect.gen(function*() {
        const heard = yield* Deferred.make<string>()
        const slow = Handler.make({
          name: "slow-end",
          onLlmEnd: () => Effect.sleep("2 seconds").pipe(Effect.zipRight(Deferred.succeed(heard, "end"))),
          timeout: "10 seconds"
        })
        yield* Effect.gen(function*() {
          const ended: Effect.Effect<unknown> = how === "instrument"
            ? Effect.succeed(response).pipe(Callbacks.instrument(options))
            : Option.getOrThrow(yield* Callbacks.begin(options)).finish(Exit.succeed(response))
          const fiber = yield* Effect.fork(ended)
          yield* Effect.yieldNow()
          // The call completed; its end handler is running. Interrupt the caller now.
          const interrupting = yield* Effect.fork(Fiber.interrupt(fiber))
          yield* TestClock.adjust("2 seconds")
          yield* Fiber.join(interrupting)
          assert.strictEqual(yield* Deferred.await(heard), "end", how)
        }).pipe(Effect.provide(Dispatcher.toLayer(slow)), Effect.scoped)
      }).pipe(Effect.provide(Dispatcher.layer()))))

  it.effect("interrupted while start handlers run: the call never runs (instrument) or no ActiveCall is given (begin); who heard start hears one error", () =>
    Effect.forEach(["instrument", "begin"], (how) =>
      Effect.gen(function*() {
        let ran = false
        const call: Effect.Effect<unknown> = how === "begin" ? Callbacks.begin(options) : Effect.sync(() => {
          ran = true
          return response
        }).pipe(Callbacks.instrument(options))
        const fiber = yield* Effect.fork(call)
        yield* TestClock.adjust("1 second")
        yield* Fiber.interrupt(fiber)
        assert.isTrue(Exit.isInterrupted(yield* Fiber.await(fiber)), how)
        assert.isFalse(ran)
        const events = yield* Testing.events
        assert.deepStrictEqual(tags(events), ["Start", "Error"], how)
        assert.isTrue((events[1] as Events.ErrorEvent).interrupted)
        assert.strictEqual(events[1]!.call.callId, events[0]!.call.callId)
        // The slow handler's start was cancelled: it heard nothing more, and nothing is left in flight.
        const health = yield* Dispatcher.health
        assert.deepStrictEqual(health.handlers.map((h) => [h.name, h.interruptions, h.defects, h.inFlight]).sort(), [
          ["recorder", 0, 0, 0],
          ["slow-start", 1, 0, 0]
        ], how)
      }).pipe(
        Effect.provide(
          Testing.layerRecorder({ priority: 1 }).pipe(
            Layer.provideMerge(Dispatcher.toLayer(Handler.make({
              name: "slow-start",
              onLlmStart: () => Effect.sleep("10 seconds"),
              onLlmError: () => Effect.die("a handler whose start was cancelled hears no terminal event"),
              timeout: "20 seconds"
            }))),
            Layer.provideMerge(Dispatcher.layer())
          )
        )
      )))

  it.effect("without a dispatcher the call runs bare", () =>
    Effect.gen(function*() {
      const result = yield* Effect.succeed(response).pipe(Callbacks.instrument(options))
      assert.strictEqual(result, response)
    }))

  it.live("without a dispatcher, a debug line says so once per process, and only where debug logs are on", () =>
    Effect.gen(function*() {
      const stdout = yield* runWorker(new URL("./support/bareNoticeWorker.ts", import.meta.url))
      const report = JSON.parse(stdout.trim()) as {
        readonly lines: ReadonlyArray<{ readonly level: string; readonly message: ReadonlyArray<string> }>
        readonly results: unknown
      }
      // The calls themselves are untouched: run bare, begun by hand gives none.
      assert.deepStrictEqual(report.results, {
        quiet: ["ok", "ran", "none"],
        loud: ["ok", "ran", "none", "ok", "ran", "none"],
        withDispatcher: "ok"
      })
      // Nothing while debug logs were off; one line among six calls at once with them on; none with a dispatcher.
      assert.strictEqual(report.lines.length, 1)
      assert.strictEqual(report.lines[0]!.level, "DEBUG")
      assert.match(report.lines[0]!.message[0]!, /without a Dispatcher in its context.*Dispatcher\.layer\(\)/)
    }), 60_000)

  it.effect("response reader: reads the response out of the result", () =>
    Effect.gen(function*() {
      const result = yield* Callbacks.instrument(Effect.succeed({ text: "hey", input: 4, output: 1 }), {
        ...options,
        response: (r) => ({
          content: r.text,
          usage: { promptTokens: r.input, completionTokens: r.output, totalTokens: r.input + r.output }
        })
      })
      assert.deepStrictEqual(result, { text: "hey", input: 4, output: 1 })
      const end = (yield* Testing.events)[1] as Events.EndEvent
      assert.strictEqual(end.response.content, "hey")
      assert.deepStrictEqual(end.response.usage, { promptTokens: 4, completionTokens: 1, totalTokens: 5 })
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("a throwing response reader is reported as data and never breaks the call", () =>
    Effect.gen(function*() {
      const result = yield* Effect.succeed(42).pipe(
        Callbacks.instrument({
          ...options,
          response: () => {
            throw new Error("cannot read")
          }
        })
      )
      assert.strictEqual(result, 42)
      const end = (yield* Testing.events)[1] as Events.EndEvent
      assert.strictEqual(end.response.content, "")
      assert.isDefined(end.outputIssues)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("the Python design's snake_case response dictionary decodes", () =>
    Effect.gen(function*() {
      yield* Effect.succeed({
        content: "ok",
        tokens_used: 30,
        prompt_tokens: 20,
        completion_tokens: 10,
        response_time: 1.5,
        cost_estimate: 0.002
      }).pipe(Callbacks.instrument(options))
      const end = (yield* Testing.events)[1] as Events.EndEvent
      assert.deepStrictEqual(end.response.usage, { promptTokens: 20, completionTokens: 10, totalTokens: 30 })
      assert.strictEqual(end.response.costEstimate, 0.002)
      assert.isUndefined(end.outputIssues)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("malformed messages and responses are reported to handlers as data; the call is untouched", () =>
    Effect.gen(function*() {
      const result = yield* Effect.succeed({ content: 5, usage: { promptTokens: -1 } }).pipe(
        Callbacks.instrument({
          provider: "openai",
          model: "m",
          messages: [{ role: "user", content: "fine" }, { role: 7 }, "nonsense"]
        })
      )
      assert.deepStrictEqual(result, { content: 5, usage: { promptTokens: -1 } })
      const [start, end] = (yield* Testing.events) as [Events.StartEvent, Events.EndEvent]
      assert.deepStrictEqual(start.messages, [{ role: "user", content: "fine" }])
      assert.strictEqual(start.inputIssues?.length, 2)
      assert.match(start.inputIssues![0]!, /messages\[1\]/)
      assert.isDefined(end.outputIssues)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("multi-part message contents decode", () =>
    Effect.gen(function*() {
      const parts = [{ role: "user", content: [{ type: "text", text: "look" }, { type: "image", url: "x" }] }]
      yield* Effect.succeed(response).pipe(Callbacks.instrument({ ...options, messages: parts }))
      const start = (yield* Testing.events)[0] as Events.StartEvent
      assert.deepStrictEqual(start.messages, parts)
      assert.isUndefined(start.inputIssues)
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("nested calls get the enclosing call as parent; withCallContext sets user and tags", () =>
    Effect.gen(function*() {
      const inner = Effect.succeed(response).pipe(Callbacks.instrument({ ...options, model: "inner" }))
      yield* Effect.zipRight(inner, Effect.succeed(response)).pipe(
        Callbacks.instrument({ ...options, model: "outer" }),
        Callbacks.withCallContext({ userId: "bob", tags: ["agent"] })
      )
      // After the outer call, a sibling call has no parent again.
      yield* Effect.succeed(response).pipe(Callbacks.instrument({ ...options, model: "sibling" }))
      const starts = (yield* Testing.events).filter((e): e is Events.StartEvent => e._tag === "Start")
      const byModel = Object.fromEntries(starts.map((s) => [s.call.model, s.call]))
      assert.strictEqual(byModel.inner!.parentCallId, byModel.outer!.callId)
      assert.isUndefined(byModel.outer!.parentCallId)
      assert.isUndefined(byModel.sibling!.parentCallId)
      assert.strictEqual(byModel.inner!.userId, "bob")
      assert.deepStrictEqual(byModel.inner!.tags, ["agent"])
      assert.isUndefined(byModel.sibling!.userId)
    }).pipe(Effect.provide(Testing.layer())))

  it.live("parents under concurrency: root fibers of a runtime, fibers sharing one provided runtime, forked children", () =>
    Effect.gen(function*() {
      const starts: Array<Events.StartEvent["call"]> = []
      const recorder = Handler.make({
        name: "recorder",
        onLlmStart: (event: Events.StartEvent) => Effect.sync(() => void starts.push(event.call))
      })
      class Other extends Effect.Tag("test/Other")<Other, { readonly n: number }>() {}
      // The dispatcher's layer built beside another (its fiber refs joined from a fiber of its own).
      const layer = Layer.merge(
        Dispatcher.toLayer(recorder).pipe(Layer.provideMerge(Dispatcher.layer())),
        Layer.succeed(Other, { n: 1 })
      )
      const call = (model: string, inside: Effect.Effect<unknown> = Effect.void) =>
        Effect.zipRight(Effect.zipRight(Effect.sleep("1 millis"), inside), Effect.succeed(response)).pipe(
          Callbacks.instrument({ ...options, model })
        )
      // Each agent: an outer call with a nested call and a forked one that starts while the other agents'
      // calls are in flight, then a call of its own after the outer one.
      const agent = (name: string) =>
        Effect.zipRight(
          call(
            `outer-${name}`,
            Effect.flatMap(Effect.fork(call(`forked-${name}`)), (fiber) => Effect.zipRight(call(`inner-${name}`), Fiber.join(fiber)))
          ),
          call(`after-${name}`)
        )
      const managed = ManagedRuntime.make(layer)
      // Root fibers of the runtime, each its own: a first wave, and a second forked from the runtime while
      // the first wave's calls are in flight.
      yield* Effect.promise(() => {
        const first = Promise.all(Array.from({ length: 5 }, (_, i) => managed.runPromise(agent(`root${i}`))))
        const second = new Promise((resolve) => setTimeout(resolve, 2)).then(() =>
          Promise.all(Array.from({ length: 5 }, (_, i) => managed.runPromise(agent(`root${i + 5}`))))
        )
        return Promise.all([first, second])
      })
      // Fibers that provide the same runtime: its fiber refs are copied into each.
      const runtime = yield* Effect.promise(() => managed.runtime())
      yield* Effect.forEach(Array.from({ length: 10 }, (_, i) => i), (i) => agent(`shared${i}`).pipe(Effect.provide(runtime)), {
        concurrency: "unbounded"
      })
      // A runtime captured in a forked fiber (its parent holder among its refs), provided by several fibers.
      const captured = yield* Effect.flatMap(Effect.fork(Effect.runtime<never>()), Fiber.join).pipe(Effect.provide(runtime))
      yield* Effect.forEach(Array.from({ length: 10 }, (_, i) => i), (i) => agent(`captured${i}`).pipe(Effect.provide(captured)), {
        concurrency: "unbounded"
      })
      yield* Effect.promise(() => managed.dispose())
      const byModel = new Map(starts.map((call) => [call.model, call]))
      const names = ["root", "shared", "captured"].flatMap((kind) => Array.from({ length: 10 }, (_, i) => `${kind}${i}`))
      assert.strictEqual(byModel.size, names.length * 4)
      for (const name of names) {
        const outer = byModel.get(`outer-${name}`)!
        assert.isUndefined(outer.parentCallId, name)
        assert.strictEqual(byModel.get(`inner-${name}`)!.parentCallId, outer.callId, name)
        assert.strictEqual(byModel.get(`forked-${name}`)!.parentCallId, outer.callId, name)
        assert.isUndefined(byModel.get(`after-${name}`)!.parentCallId, name)
      }
    }))

  it.effect("withCallContext on a stream: its calls have the context wherever it runs; its consumer's do not", () =>
    Effect.gen(function*() {
      const stream = Stream.fromEffect(Effect.succeed(response).pipe(Callbacks.instrument(options))).pipe(
        Stream.concat(Stream.fromEffect(Effect.succeed(response).pipe(Callbacks.instrument(options)))),
        Callbacks.withCallContext({ userId: "alice", tags: ["stream"] })
      )
      // Run later, somewhere else (as a server runs a response's stream), with a context of its own.
      yield* Stream.runForEach(stream, () => Effect.succeed(response).pipe(Callbacks.instrument(options))).pipe(
        Callbacks.withCallContext({ userId: "bob" })
      )
      const starts = (yield* Testing.events).filter((event) => event._tag === "Start")
      assert.deepStrictEqual(starts.map((event) => [event.call.userId, event.call.tags]), [
        ["alice", ["stream"]],
        ["bob", []],
        ["alice", ["stream"]],
        ["bob", []]
      ])
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("withCallContext's parentCallId wins over an enclosing call, on a stream as on an effect", () =>
    Effect.gen(function*() {
      const inner = (model: string) => Effect.succeed(response).pipe(Callbacks.instrument({ ...options, model }))
      const asEffect = inner("effect").pipe(Callbacks.withCallContext({ parentCallId: "explicit" }))
      const asStream = Stream.runDrain(
        Stream.fromEffect(inner("stream")).pipe(Callbacks.withCallContext({ parentCallId: "explicit" }))
      )
      yield* Effect.zipRight(asEffect, asStream).pipe(Effect.as(response), Callbacks.instrument({ ...options, model: "outer" }))
      const starts = (yield* Testing.events).filter((event) => event._tag === "Start")
      assert.deepStrictEqual(starts.map((event) => [event.call.model, event.call.parentCallId]), [
        ["outer", undefined],
        ["effect", "explicit"],
        ["stream", "explicit"]
      ])
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("a call id of the caller's choosing is used", () =>
    Effect.gen(function*() {
      yield* Effect.succeed(response).pipe(Callbacks.instrument({ ...options, callId: "call-1" }))
      const events = yield* Testing.events
      assert.deepStrictEqual(events.map((e) => e.call.callId), ["call-1", "call-1"])
    }).pipe(Effect.provide(Testing.layer())))

  it.effect("begin/finish: the terminal event is dispatched exactly once", () =>
    Effect.gen(function*() {
      const active = yield* Callbacks.begin(options)
      assert.isTrue(Option.isSome(active))
      const call = Option.getOrThrow(active)
      yield* TestClock.adjust(Duration.millis(250))
      const first = yield* call.finish(Exit.succeed(response))
      const second = yield* call.finish(Exit.fail("late"))
      assert.isTrue(Option.isSome(first))
      assert.isTrue(Option.isNone(second))
      const events = yield* Testing.events
      assert.deepStrictEqual(tags(events), ["Start", "End"])
      assert.strictEqual((events[1] as Events.EndEvent).durationMs, 250)
    }).pipe(Effect.provide(Testing.layer())))
})
