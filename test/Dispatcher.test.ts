import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  ConfigProvider,
  Context,
  Deferred,
  Duration,
  Effect,
  Either,
  Equal,
  Exit,
  FiberId,
  FiberRef,
  Fiber,
  HashMap,
  Layer,
  Logger,
  LogLevel,
  Metric,
  Option,
  Schedule,
  Scheduler,
  Scope,
  Supervisor,
  TestClock,
  Tracer
} from "effect"
import { CallbackMetrics, Callbacks, Dispatcher, Events, Handler, HandlerError, Testing } from "../src/index.js"
import * as Outcome from "../src/internal/dispatch/outcome.js"
import { runWorker } from "./support/worker.js"

const response = { content: "ok", usage: { promptTokens: 1, completionTokens: 1, totalTokens: 2 } }
const options = { provider: "openai", model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] }
const call = Effect.succeed(response).pipe(Callbacks.instrument(options))
/**
 * A call whose I/O completes in the next event-loop turn: calls made at once
 * complete in the same turn (their setImmediate callbacks are queued together).
 */
const nextTurnCall = Effect.async<typeof response>((resume) => {
  setImmediate(() => resume(Effect.succeed(response)))
}).pipe(Callbacks.instrument(options))

const now = Effect.clockWith((clock) => clock.currentTimeMillis)

/** A hook that fails every attempt, noting each attempt's time in `attempts`. */
const failingAt = (attempts: Array<number>) => () =>
  Effect.flatMap(now, (t) => {
    attempts.push(t)
    return Effect.fail("always")
  })

/** `n` calls at once: their results, then the dispatcher's health. */
const callsAtOnce = (n: number) =>
  Effect.gen(function*() {
    const results = yield* Effect.all(Array.from({ length: n }, () => call), { concurrency: "unbounded" })
    return { results, health: yield* Dispatcher.health }
  })

/** A start event dispatched by hand (`Dispatcher.dispatch`), outside any instrumented call. */
const startByHand: Events.StartEvent = {
  _tag: "Start",
  call: { callId: "c1", provider: "p", model: "m", tags: [], metadata: {}, startedAt: 0 },
  messages: [],
  params: {}
}

/** A handler that notes every call's id and parent by its model. */
const callsByModel = () => {
  const parents: Record<string, string | undefined> = {}
  const ids: Record<string, string> = {}
  const recorder = Handler.make({
    name: "recorder",
    onLlmStart: (event: Events.StartEvent) =>
      Effect.sync(() => {
        ids[event.call.model] = event.call.callId
        parents[event.call.model] = event.call.parentCallId
      })
  })
  return { ids, parents, recorder }
}

/**
 * Twenty calls, one after the other, by a caller that set `ref` to `value`,
 * heard by two handlers whose hooks suspend once (on a promise: no timer) and
 * note the value of `ref` they see: what they saw after the first call, and
 * how many times `ref` was forked meanwhile (`forks` counts them). With
 * `perCall`, each call sets that ref anew (`call-0` to `call-19`), and what
 * the hooks saw of it is noted too.
 */
const hooksAfterFirstCall = <A>(
  ref: FiberRef.FiberRef<A>,
  value: A,
  forks: () => number,
  perCall?: FiberRef.FiberRef<string>
) =>
  Effect.gen(function*() {
    const seen: Array<A> = []
    const seenPerCall: Array<string> = []
    const hook = () =>
      Effect.zipRight(
        Effect.promise(() => Promise.resolve()),
        Effect.flatMap(
          Effect.all([FiberRef.get(ref), perCall === undefined ? Effect.succeed("-") : FiberRef.get(perCall)]),
          ([seenValue, seenOfCall]) =>
            Effect.sync(() => {
              seen.push(seenValue)
              seenPerCall.push(seenOfCall)
            })
        )
      )
    const handlers = [0, 1].map((i) => Handler.make({ name: `h${i}`, onLlmStart: hook, onLlmEnd: hook }))
    const callNumber = (i: number) => perCall === undefined ? call : Effect.locally(call, perCall, `call-${i}`)
    return yield* Effect.gen(function*() {
      yield* callNumber(0)
      const before = forks()
      seen.length = 0
      seenPerCall.length = 0
      yield* Effect.forEach(Array.from({ length: 19 }, (_, i) => i + 1), callNumber, { discard: true })
      return { seen, seenPerCall, forks: forks() - before }
    }).pipe(Effect.locally(ref, value), Effect.provide(withHandlers(handlers)))
  })

/** Executions of a handler's end hook by outcome, and its dropped deliveries, from the metrics. */
const counts = (handler: string) =>
  Effect.all({
    success: Metric.value(
      CallbackMetrics.executionsTotal.pipe(
        Metric.tagged("callback_type", handler),
        Metric.tagged("phase", "end"),
        Metric.tagged("status", "success")
      )
    ),
    interrupted: Metric.value(
      CallbackMetrics.executionsTotal.pipe(
        Metric.tagged("callback_type", handler),
        Metric.tagged("phase", "end"),
        Metric.tagged("status", "interrupted")
      )
    ),
    dropped: Metric.value(CallbackMetrics.droppedTotal.pipe(Metric.tagged("callback_type", handler)))
  }).pipe(Effect.map(({ dropped, interrupted, success }) => ({
    success: success.count,
    interrupted: interrupted.count,
    dropped: dropped.count
  })))

/** The (virtual) milliseconds `self` takes. */
const timed = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const started = yield* now
    yield* self
    return (yield* now) - started
  })

/** Runs `self` in a fiber and moves the TestClock until it completes. */
const runWithClock = <A, E, R>(self: Effect.Effect<A, E, R>, step: Duration.DurationInput = "100 millis", maxSteps = 10_000) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(self)
    for (let i = 0; i < maxSteps; i++) {
      const done = yield* Fiber.poll(fiber)
      if (Option.isSome(done)) break
      yield* TestClock.adjust(step)
    }
    return yield* Fiber.join(fiber)
  })

const withHandlers = (
  handlers: ReadonlyArray<Handler.Handler<any, never>>,
  options: Parameters<typeof Dispatcher.layer>[0] = {}
) =>
  handlers.reduce<Layer.Layer<never, unknown, Dispatcher.Dispatcher>>(
    (acc, h) => Layer.merge(acc, Dispatcher.toLayer(h)),
    Layer.empty
  ).pipe(Layer.provideMerge(Dispatcher.layer(options)))

describe("Dispatcher", () => {
  describe("retries", () => {
    it.effect("a failing handler is retried on its schedule: exact attempts and delays", () =>
      Effect.gen(function*() {
        const attempts: Array<number> = []
        const flaky = Handler.make({
          name: "flaky",
          onLlmEnd: () =>
            Effect.flatMap(now, (t) => {
              attempts.push(t)
              return attempts.length < 3 ? Effect.fail("not yet") : Effect.void
            }),
          retry: Schedule.spaced("1 second"),
          timeout: "1 minute"
        })
        // The invocation's metrics, under its handler and phase (read before and after: the registry is global).
        const series = (metric: Metric.Metric.Counter<number>) =>
          metric.pipe(Metric.tagged("callback_type", "flaky"), Metric.tagged("phase", "end"))
        const metrics = Effect.all({
          retries: Metric.value(series(CallbackMetrics.retriesTotal)),
          successes: Metric.value(series(CallbackMetrics.executionsTotal).pipe(Metric.tagged("status", "success"))),
          failures: Metric.value(series(CallbackMetrics.executionsTotal).pipe(Metric.tagged("status", "failed"))),
          timed: Metric.value(
            CallbackMetrics.durationSeconds.pipe(Metric.tagged("callback_type", "flaky"), Metric.tagged("phase", "end"))
          )
        }).pipe(Effect.map(({ failures, retries, successes, timed }) => [retries.count, successes.count, failures.count, timed.count]))
        const before = yield* metrics
        yield* runWithClock(call.pipe(Effect.provide(withHandlers([flaky]))))
        assert.deepStrictEqual(attempts, [0, 1000, 2000])
        const after = yield* metrics
        // One invocation: two retries, one success, no failure, one duration.
        assert.deepStrictEqual(after.map((n, i) => n - before[i]!), [2, 1, 0, 1])
      }))

    it.effect("the default schedule: 3 attempts in all, exponential from CALLBACK_RETRY_DELAY", () =>
      Effect.gen(function*() {
        const attempts: Array<number> = []
        const failing = Handler.make({ name: "failing", onLlmEnd: failingAt(attempts) })
        const layer = withHandlers([failing], { retryDelay: "1 second", maxRetryAttempts: 3 })
        const report = yield* runWithClock(
          Effect.gen(function*() {
            yield* call
            return yield* Dispatcher.health
          }).pipe(Effect.provide(layer))
        )
        assert.deepStrictEqual(attempts, [0, 1000, 3000])
        const health = report.handlers[0]!
        assert.strictEqual(health.failures, 1)
        assert.strictEqual(health.retries, 2)
        assert.strictEqual(Option.getOrThrow(health.lastError).reason, "Failed")
      }))

    it.effect("a schedule whose steps read a service (jittered reads Random) goes on on a fiber: every attempt, each after its delay", () =>
      Effect.gen(function*() {
        const attempts: Array<number> = []
        const flaky = Handler.make({
          name: "flaky",
          onLlmEnd: failingAt(attempts),
          // Steps of pure computation run with no fiber; jittered's random factor (0.8-1.2) needs one.
          retry: Schedule.spaced("1 second").pipe(Schedule.jittered, Schedule.intersect(Schedule.recurs(2))),
          timeout: "1 minute"
        })
        const health = yield* runWithClock(
          call.pipe(Effect.zipRight(Dispatcher.health), Effect.provide(withHandlers([flaky]))),
          "10 millis"
        )
        assert.strictEqual(attempts.length, 3)
        for (let i = 1; i < attempts.length; i++) {
          const delay = attempts[i]! - attempts[i - 1]!
          assert.isTrue(delay >= 800 && delay <= 1210, `delay ${delay}`)
        }
        assert.strictEqual(health.handlers[0]!.retries, 2)
        assert.strictEqual(health.handlers[0]!.failures, 1)
      }))

    it.effect("recovery disabled: no retries", () =>
      Effect.gen(function*() {
        let attempts = 0
        const failing = Handler.make({
          name: "failing",
          onLlmEnd: () => Effect.suspend(() => (attempts++, Effect.fail("no"))),
          retry: Schedule.spaced("1 second")
        })
        yield* runWithClock(call.pipe(Effect.provide(withHandlers([failing], { enableRecovery: false }))))
        assert.strictEqual(attempts, 1)
      }))

    it.effect("defects are not retried", () =>
      Effect.gen(function*() {
        let attempts = 0
        const dying = Handler.make({
          name: "dying",
          onLlmEnd: () => Effect.suspend(() => (attempts++, Effect.die("bug"))),
          retry: Schedule.spaced("1 second")
        })
        yield* runWithClock(call.pipe(Effect.provide(withHandlers([dying]))))
        assert.strictEqual(attempts, 1)
      }))
  })

  describe("synchronous steps", () => {
    it.effect("hooks that are synchronous steps (Effect.sync) run once per invocation, at once; what they throw is a defect, not the call's", () =>
      Effect.gen(function*() {
        let started = 0
        let ended = 0
        const steps = Handler.make({
          name: "steps",
          onLlmStart: () => Effect.sync(() => void started++),
          onLlmEnd: () =>
            Effect.sync(() => {
              ended++
              throw new Error("the end step threw")
            }),
          retry: Schedule.recurs(2)
        })
        const { health, results } = yield* callsAtOnce(6).pipe(Effect.provide(withHandlers([steps])))
        assert.deepStrictEqual(results, Array.from({ length: 6 }, () => response))
        assert.strictEqual(started, 6)
        // A defect is not retried: one step per call.
        assert.strictEqual(ended, 6)
        const handler = health.handlers[0]!
        assert.strictEqual(handler.successes, 6)
        assert.strictEqual(handler.defects, 6)
        assert.strictEqual(handler.inFlight, 0)
        assert.match(Option.getOrThrow(handler.lastError).message, /the end step threw/)
      }))

    it.effect("traced, a synchronous step runs on a hook fiber of its own: its defect carries the handler's span", () =>
      Effect.gen(function*() {
        const native = yield* Effect.tracer
        // A tracer other than Effect's own (which exports nowhere): handler invocations get spans.
        const tracer = Tracer.make({ span: (...args) => native.span(...args), context: (f) => f() })
        const steps = Handler.make({
          name: "steps",
          onLlmStart: () =>
            Effect.sync(() => {
              throw new Error("the start step threw")
            })
        })
        const defectOf = (traced: boolean) =>
          Effect.flatMap(Dispatcher.Dispatcher, (dispatcher) =>
            dispatcher.dispatch(startByHand)).pipe(
              Effect.provide(withHandlers([steps])),
              traced ? Effect.withTracer(tracer) : (self) => self,
              Effect.map((report) => {
                const error = report.results[0]!.error!
                assert.strictEqual(error.reason, "Defect")
                return Cause.pretty(Cause.die(error.cause))
              })
            )
        assert.include(yield* defectOf(true), "at callback steps start")
        assert.include(yield* defectOf(false), "the start step threw")
        assert.notInclude(yield* defectOf(false), "at callback steps start")
      }))

    it.scoped("registered inside a span, a handler's synchronous steps run on hook fibers: their defects carry that span", () =>
      Effect.gen(function*() {
        const steps = Handler.make({
          name: "steps",
          onLlmStart: () =>
            Effect.sync(() => {
              throw new Error("the start step threw")
            })
        })
        // The handler's context (captured at registration) holds the span as parent.
        yield* Dispatcher.register(steps).pipe(Effect.withSpan("registration"))
        const dispatcher = yield* Dispatcher.Dispatcher
        const report = yield* dispatcher.dispatch(startByHand)
        const error = report.results[0]!.error!
        assert.strictEqual(error.reason, "Defect")
        assert.include(Cause.pretty(Cause.die(error.cause)), "at registration")
      }).pipe(Effect.provide(Dispatcher.layer())))
  })

  describe("timeouts", () => {
    it.effect("a hung handler holds the call for its timeout, retries included, not attempts x timeout", () =>
      Effect.gen(function*() {
        const hung = Handler.make({
          name: "hung",
          onLlmEnd: () => Effect.never,
          timeout: "2 seconds",
          retry: Schedule.recurs(5)
        })
        const elapsed = yield* runWithClock(
          timed(call).pipe(Effect.provide(withHandlers([hung]))),
          "500 millis"
        )
        assert.strictEqual(elapsed, 2000)
      }))

    it.effect("a handler failing slowly is cut at its timeout across retries", () =>
      Effect.gen(function*() {
        let attempts = 0
        const slowFail = Handler.make({
          name: "slow-fail",
          onLlmEnd: () => Effect.sleep("1 second").pipe(Effect.zipRight(Effect.suspend(() => (attempts++, Effect.fail("x"))))),
          timeout: "2500 millis",
          retry: Schedule.spaced("100 millis")
        })
        const report = yield* runWithClock(
          Effect.gen(function*() {
            const started = yield* now
            yield* call
            return { elapsed: (yield* now) - started, health: yield* Dispatcher.health }
          }).pipe(Effect.provide(withHandlers([slowFail]))),
          "100 millis"
        )
        assert.strictEqual(report.elapsed, 2500)
        assert.strictEqual(attempts, 2)
        assert.strictEqual(report.health.handlers[0]!.timeouts, 1)
      }))

    it.effect("a hook failing with a TimeoutException of its own has failed, not timed out", () =>
      Effect.gen(function*() {
        const own = Handler.make({
          name: "own-timeout",
          onLlmEnd: () => Effect.fail(new Cause.TimeoutException("the hook's own deadline")),
          retry: Schedule.stop
        })
        const health = yield* Effect.zipRight(call, Dispatcher.health).pipe(Effect.provide(withHandlers([own])))
        assert.strictEqual(health.handlers[0]!.failures, 1)
        assert.strictEqual(health.handlers[0]!.timeouts, 0)
      }))

    it.live("on the live clock: one timer for a handler's invocations, each timed out at its own deadline", () =>
      Effect.gen(function*() {
        // Calls started 10 ms apart. The handler hangs on every third call;
        // on the others it finishes after 5 ms (leaving the deadline list as
        // its last node) or after 25 ms (leaving it from the middle). Each hung
        // call times out no earlier than 1 s after its own start (a bound a loaded machine
        // cannot make a 25 ms hook miss).
        let index = 0
        const handler = Handler.make({
          name: "some-hang",
          onLlmStart: () =>
            Effect.suspend(() => {
              const i = index++
              return i % 3 === 0 ? Effect.never : Effect.sleep(i % 3 === 1 ? "5 millis" : "25 millis")
            }),
          timeout: "1 second",
          retry: Schedule.stop
        })
        const layer = withHandlers([handler])
        const result = yield* Effect.gen(function*() {
          const fibers = []
          for (let i = 0; i < 20; i++) {
            fibers.push(yield* Effect.fork(timed(call)))
            yield* Effect.sleep("10 millis")
          }
          const elapsed = yield* Fiber.joinAll(fibers)
          return { elapsed, health: yield* Dispatcher.health }
        }).pipe(Effect.provide(layer))
        const hung = result.elapsed.filter((_, i) => i % 3 === 0)
        const quick = result.elapsed.filter((_, i) => i % 3 !== 0)
        for (const ms of hung) assert.isAtLeast(ms, 1000)
        for (const ms of quick) assert.isBelow(ms, 1000)
        const stats = result.health.handlers[0]!
        assert.strictEqual(stats.timeouts, 7)
        assert.strictEqual(stats.successes, 13)
        assert.strictEqual(stats.inFlight, 0)
      }), 20_000)

    it.live("a settled invocation's timeout does not hold the process open", () =>
      Effect.gen(function*() {
        const started = Date.now()
        const stdout = yield* runWorker(new URL("./support/exitWorker.ts", import.meta.url))
        const report = JSON.parse(stdout.trim()) as { successes: number; ms: number }
        assert.strictEqual(report.successes, 40) // start and end of 20 calls
        // The handlers' timeout is 60 s: the process ended long before it.
        assert.isBelow(Date.now() - started, 45_000)
      }), 60_000)

    it.effect("a timed-out handler fiber is interrupted", () =>
      Effect.gen(function*() {
        const interrupted = yield* Deferred.make<void>()
        const hung = Handler.make({
          name: "hung",
          onLlmEnd: () => Effect.never.pipe(Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))),
          timeout: "1 second"
        })
        yield* runWithClock(call.pipe(Effect.provide(withHandlers([hung]))))
        yield* Deferred.await(interrupted)
      }))
  })

  describe("fan-out", () => {
    it.effect("equal priorities run concurrently; a higher priority group completes before a lower one starts", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        const sleeper = (name: string, priority: number) =>
          Handler.make({
            name,
            priority,
            onLlmStart: () =>
              Effect.gen(function*() {
                log.push(`${name} start @${yield* now}`)
                yield* Effect.sleep("1 second")
                log.push(`${name} done @${yield* now}`)
              })
          })
        yield* runWithClock(
          call.pipe(Effect.provide(withHandlers([sleeper("low", 0), sleeper("high-a", 10), sleeper("high-b", 10)])))
        )
        // Handlers of one group start (and complete) at the same instant, in either order.
        log.splice(0, 2, ...log.slice(0, 2).sort())
        log.splice(2, 2, ...log.slice(2, 4).sort())
        assert.deepStrictEqual(log, [
          "high-a start @0",
          "high-b start @0",
          "high-a done @1000",
          "high-b done @1000",
          "low start @1000",
          "low done @2000"
        ])
      }))

    it.effect("the global bound on concurrent invocations is never exceeded", () =>
      Effect.gen(function*() {
        let inFlight = 0
        let peak = 0
        const handlers = Array.from({ length: 6 }, (_, i) =>
          Handler.make({
            name: `h${i}`,
            onLlmStart: () =>
              Effect.acquireUseRelease(
                Effect.sync(() => {
                  inFlight++
                  peak = Math.max(peak, inFlight)
                }),
                () => Effect.sleep("1 second"),
                () => Effect.sync(() => inFlight--)
              )
          }))
        const elapsed = yield* runWithClock(
          Effect.gen(function*() {
            const started = yield* now
            yield* Effect.all([call, call], { concurrency: "unbounded" })
            return (yield* now) - started
          }).pipe(Effect.provide(withHandlers(handlers, { maxConcurrent: 2 })))
        )
        assert.strictEqual(peak, 2)
        // 12 invocations of 1 s, 2 at a time.
        assert.strictEqual(elapsed, 6000)
      }))

    it.effect("a hook that calls a model itself (a judge) does not wait for the slot it holds: one slot, no stall", () =>
      Effect.forEach(["in the hook", "in a fiber the hook forks", "begun by hand (a stream) in the hook"], (where) =>
        Effect.gen(function*() {
          const heard: Array<string> = []
          const judging: Effect.Effect<unknown> = where.startsWith("begun")
            ? Effect.flatMap(
              Callbacks.begin({ ...options, tags: ["judge"] }),
              (active) => Option.getOrThrow(active).finish(Exit.succeed(response))
            )
            : Effect.succeed(response).pipe(Callbacks.instrument({ ...options, tags: ["judge"] }))
          const judge = Handler.make({
            name: "judge",
            timeout: "10 seconds",
            onLlmEnd: (event) =>
              event.call.tags.includes("judge")
                ? Effect.sync(() => void heard.push("judge call ended"))
                : (where === "in the hook" ? judging : Effect.flatMap(Effect.fork(judging), Fiber.join)).pipe(
                  Effect.zipRight(Effect.sync(() => void heard.push("judged")))
                )
          })
          const { elapsed, health } = yield* runWithClock(
            Effect.gen(function*() {
              const started = yield* now
              yield* call
              return { elapsed: (yield* now) - started, health: yield* Dispatcher.health }
            }).pipe(Effect.provide(withHandlers([judge], { maxConcurrent: 1 })))
          )
          // Had it waited for the slot its own hook holds, the judge's call would have stalled until that hook timed out (10 s).
          assert.strictEqual(elapsed, 0, where)
          assert.deepStrictEqual(heard, ["judge call ended", "judged"], where)
          const handler = health.handlers[0]!
          assert.strictEqual(handler.successes, 2, where)
          assert.strictEqual(handler.timeouts, 0, where)
          assert.strictEqual(handler.inFlight, 0, where)
        })))

    it.effect("calls made by hooks run past the bound; the others keep it, and nothing waits for a timeout", () =>
      Effect.gen(function*() {
        let inFlight = 0
        let peak = 0
        let judged = 0
        // Counts the invocations of the calls the test makes (not those of the judge's calls).
        const counted = <A, E, R>(event: Events.CallbackEvent, effect: Effect.Effect<A, E, R>) =>
          event.call.tags.includes("judge") ? effect : Effect.acquireUseRelease(
            Effect.sync(() => {
              inFlight++
              peak = Math.max(peak, inFlight)
            }),
            () => effect,
            () => Effect.sync(() => inFlight--)
          )
        const slow = Handler.make({
          name: "slow",
          timeout: "10 seconds",
          onLlmStart: (event) => counted(event, Effect.sleep("1 second")),
          onLlmEnd: (event) => counted(event, Effect.sleep("1 second"))
        })
        const judge = Handler.make({
          name: "judge",
          timeout: "10 seconds",
          onLlmEnd: (event) =>
            event.call.tags.includes("judge") ? Effect.void : counted(
              event,
              Effect.succeed(response).pipe(
                Callbacks.instrument({ ...options, tags: ["judge"] }),
                Effect.zipRight(Effect.sync(() => void judged++))
              )
            )
        })
        const { health, results } = yield* runWithClock(
          callsAtOnce(6).pipe(Effect.provide(withHandlers([slow, judge], { maxConcurrent: 2 })))
        )
        assert.deepStrictEqual(results, Array.from({ length: 6 }, () => response))
        assert.strictEqual(judged, 6)
        // The calls the test made never had more than the bound in flight.
        assert.strictEqual(peak, 2)
        for (const handler of health.handlers) {
          // Had they queued behind the judges' own hooks, their calls' invocations would have timed out with them (10 s).
          assert.strictEqual(handler.timeouts, 0, handler.name)
          assert.strictEqual(handler.inFlight, 0, handler.name)
        }
        // 6 start and 6 end invocations of the calls, 6 start and 6 end of the judges' calls.
        assert.strictEqual(health.handlers.find((h) => h.name === "slow")!.successes, 24)
        assert.strictEqual(health.handlers.find((h) => h.name === "judge")!.successes, 12)
      }))

    it.effect("a judge timed out while its own call runs: the slots that call took past the bound are given back", () =>
      Effect.gen(function*() {
        const heard: Array<string> = []
        // Slow only on the judge's calls: the judge's hook times out while its call's start is dispatched.
        const slow = Handler.make({
          name: "slow",
          timeout: "10 seconds",
          onLlmStart: (event) =>
            event.call.tags.includes("judge")
              ? Effect.sleep("5 seconds")
              : Effect.sync(() => void heard.push(`start ${event.call.callId}`))
        })
        const judge = Handler.make({
          name: "judge",
          timeout: "1 second",
          onLlmEnd: (event) =>
            event.call.tags.includes("judge") ? Effect.void : Effect.asVoid(
              Effect.succeed(response).pipe(Callbacks.instrument({ ...options, tags: ["judge"] }))
            )
        })
        const { first, second, health } = yield* runWithClock(
          Effect.gen(function*() {
            const timed = Effect.gen(function*() {
              const started = yield* now
              yield* call
              return (yield* now) - started
            })
            const first = yield* timed
            // A slot kept by the interrupted call would leave the next one waiting for ever (one slot).
            const second = yield* timed
            return { first, second, health: yield* Dispatcher.health }
          }).pipe(Effect.provide(withHandlers([slow, judge], { maxConcurrent: 1 })))
        )
        assert.strictEqual(first, 1000)
        assert.strictEqual(second, 1000)
        assert.strictEqual(heard.length, 2)
        const byName = (name: string) => health.handlers.find((h) => h.name === name)!
        assert.strictEqual(byName("judge").timeouts, 2)
        for (const handler of health.handlers) assert.strictEqual(handler.inFlight, 0, handler.name)
        assert.strictEqual(health.pending, 0)
      }))

    it.effect("a background hook that calls a model itself: its call's deliveries do not wait for room in the buffer its consumer drains", () =>
      Effect.gen(function*() {
        let judged = 0
        const judge = Handler.make({
          name: "judge",
          mode: "background",
          bufferSize: 1,
          timeout: "10 seconds",
          onLlmEnd: (event) =>
            event.call.tags.includes("judge") ? Effect.void : Effect.succeed(response).pipe(
              Callbacks.instrument({ ...options, tags: ["judge"] }),
              Effect.zipRight(Effect.sync(() => void judged++))
            )
        })
        const { elapsed, health } = yield* runWithClock(
          Effect.gen(function*() {
            const started = yield* now
            yield* Effect.all(Array.from({ length: 4 }, () => call), { concurrency: "unbounded" })
            const elapsed = (yield* now) - started
            yield* Effect.sleep("1 second")
            return { elapsed, health: yield* Dispatcher.health }
          }).pipe(Effect.provide(withHandlers([judge])))
        )
        // Had the judges' calls waited for room, the consumer (running their
        // hooks) would have made none: calls stalled for the handler's timeout
        // (10 s), the hooks timed out and their calls were lost.
        assert.isBelow(elapsed, 10_000)
        assert.strictEqual(judged, 4)
        const handler = health.handlers[0]!
        assert.strictEqual(handler.successes, 8)
        assert.strictEqual(handler.timeouts, 0)
        assert.strictEqual(handler.dropped, 0)
        assert.strictEqual(handler.pending, 0)
      }))

    it.effect("a handler still waiting for a slot when the caller is interrupted hears nothing of that call", () =>
      Effect.gen(function*() {
        const heard: Array<string> = []
        const holder = Handler.make({
          name: "holder",
          mode: "background",
          onLlmStart: () => Effect.sleep("10 seconds"),
          timeout: "20 seconds"
        })
        const waiter = Handler.make({
          name: "waiter",
          onLlmStart: (e) => Effect.sync(() => void heard.push(`start ${e.call.callId}`)),
          onLlmError: (e) => Effect.sync(() => void heard.push(`error ${e.call.callId}`))
        })
        yield* Effect.gen(function*() {
          // The holder's first delivery takes the only slot...
          const first = yield* Effect.fork(Effect.succeed(response).pipe(Callbacks.instrument({ ...options, callId: "a" })))
          yield* TestClock.adjust("1 second")
          // ...so the waiter's start for the second call is queued, and the caller gives up.
          const second = yield* Effect.fork(Effect.succeed(response).pipe(Callbacks.instrument({ ...options, callId: "b" })))
          yield* TestClock.adjust("1 second")
          const interrupting = yield* Effect.fork(Fiber.interrupt(second))
          yield* TestClock.adjust("1 minute")
          yield* Fiber.join(interrupting)
          yield* Fiber.join(first)
        }).pipe(Effect.provide(withHandlers([holder, waiter], { maxConcurrent: 1 })))
        assert.deepStrictEqual(heard.filter((line) => line.endsWith(" b")), [])
        assert.include(heard, "start a")
      }))

    it.effect("every outcome lands in the dispatch report; dispatch never fails", () =>
      Effect.gen(function*() {
        const handlers = [
          Handler.make({ name: "ok", onLlmStart: () => Effect.void }),
          Handler.make({ name: "sync-ok", onLlmStart: () => Effect.sync(() => undefined) }),
          Handler.make({ name: "fails", onLlmStart: () => Effect.fail("nope"), retry: Schedule.stop }),
          Handler.make({ name: "dies", onLlmStart: () => Effect.die(new Error("bug")) }),
          Handler.make({
            name: "throws",
            onLlmStart: () => {
              throw new Error("thrown")
            }
          }),
          Handler.make({ name: "hangs", onLlmStart: () => Effect.never, timeout: "1 second" }),
          Handler.make({ name: "interrupts", onLlmStart: () => Effect.interrupt })
        ]
        const report = yield* runWithClock(
          Effect.gen(function*() {
            const dispatcher = yield* Dispatcher.Dispatcher
            return yield* dispatcher.dispatch(startByHand)
          }).pipe(Effect.provide(withHandlers(handlers)))
        )
        const byName = Object.fromEntries(report.results.map((r) => [r.handler, r]))
        assert.strictEqual(byName.ok!.status, "success")
        assert.strictEqual(byName["sync-ok"]!.status, "success")
        assert.strictEqual(byName.fails!.status, "failed")
        assert.strictEqual(byName.fails!.error!.message, "nope")
        assert.strictEqual(byName.dies!.status, "defect")
        assert.strictEqual(byName.throws!.status, "defect")
        assert.match(byName.throws!.error!.message, /thrown/)
        assert.strictEqual(byName.hangs!.status, "timeout")
        assert.strictEqual(byName.interrupts!.status, "interrupted")
        assert.isTrue(report.results.every((r) => r.phase === "start"))
        assert.instanceOf(byName.fails!.error, HandlerError.HandlerError)
      }))

    it.effect("a dispatch by hand of an end event, interrupted, interrupts the hooks it waits for", () =>
      Effect.gen(function*() {
        const interrupted = yield* Deferred.make<void>()
        const hangs = Handler.make({
          name: "hangs-on-end",
          onLlmEnd: () => Effect.never.pipe(Effect.onInterrupt(() => Deferred.succeed(interrupted, undefined))),
          timeout: "1 hour"
        })
        const health = yield* Effect.gen(function*() {
          const dispatcher = yield* Dispatcher.Dispatcher
          const fiber = yield* Effect.fork(dispatcher.dispatch({
            _tag: "End",
            call: { callId: "c1", provider: "p", model: "m", tags: [], metadata: {}, startedAt: 0 },
            messages: [],
            response,
            durationMs: 1
          } as unknown as Events.CallbackEvent))
          yield* Effect.yieldNow()
          yield* Fiber.interrupt(fiber)
          // No clock moved: the hook was interrupted by the dispatch's interruption, not by its timeout.
          yield* Deferred.await(interrupted)
          return yield* Dispatcher.health
        }).pipe(Effect.provide(withHandlers([hangs])))
        const h = health.handlers[0]!
        assert.strictEqual(h.inFlight, 0)
        assert.strictEqual(h.interruptions, 1)
      }))

    it.effect("handler hooks may use services captured when their layer was built", () =>
      Effect.gen(function*() {
        class Greeting extends Effect.Tag("test/Greeting")<Greeting, { readonly word: string }>() {}
        const heard: Array<string> = []
        const greeter = Handler.make({
          name: "greeter",
          onLlmEnd: (event: Events.EndEvent) =>
            Effect.map(Greeting, (g) => {
              heard.push(`${g.word} ${event.response.content}`)
            })
        })
        const layer = Dispatcher.toLayer(greeter).pipe(
          Layer.provide(Layer.succeed(Greeting, { word: "hello" })),
          Layer.provideMerge(Dispatcher.layer())
        )
        yield* call.pipe(Effect.provide(layer))
        assert.deepStrictEqual(heard, ["hello ok"])
      }))

    it.effect("the caller's context and fiber refs are untouched by handlers that suspend", () =>
      Effect.gen(function*() {
        class Caller extends Effect.Tag("test/Caller")<Caller, { readonly who: string }>() {}
        class HandlerOwn extends Effect.Tag("test/HandlerOwn")<HandlerOwn, { readonly who: string }>() {}
        const suspending = Handler.make({
          name: "suspending",
          onLlmStart: () => Effect.flatMap(HandlerOwn, () => Effect.sleep("10 millis")),
          onLlmEnd: () => Effect.flatMap(HandlerOwn, () => Effect.sleep("10 millis")),
          mode: "await"
        })
        const background = Handler.make({
          name: "background",
          mode: "background",
          bufferSize: 1,
          onLlmEnd: () => Effect.sleep("10 millis")
        })
        const layer = Layer.merge(Dispatcher.toLayer(suspending), Dispatcher.toLayer(background)).pipe(
          Layer.provide(Layer.succeed(HandlerOwn, { who: "handler" })),
          Layer.provideMerge(Dispatcher.layer())
        )
        const seen = yield* runWithClock(
          Effect.gen(function*() {
            yield* call
            yield* call
            yield* call
            return {
              caller: yield* Effect.serviceOption(Caller),
              own: yield* Effect.serviceOption(HandlerOwn)
            }
          }).pipe(Effect.provide(layer), Effect.provideService(Caller, { who: "caller" })),
          "10 millis"
        )
        assert.deepStrictEqual(seen.caller, Option.some({ who: "caller" }))
        assert.isTrue(Option.isNone(seen.own))
      }))

    it.effect("hooks that suspend see their call's fiber refs as a fiber forked from it does, and their own handler's services", () =>
      Effect.gen(function*() {
        class Who extends Context.Tag("test/Who")<Who, string>() {}
        const ref = FiberRef.unsafeMake("none", { fork: (value: string) => `${value} (forked)` })
        const seen: Array<string> = []
        const hook = (event: Events.StartEvent | Events.EndEvent) =>
          Effect.gen(function*() {
            yield* Effect.sleep("10 millis")
            const who = yield* Who
            const annotations = yield* Effect.logAnnotations
            // A child of the hook's fiber (the ref forked once more), joined: its change comes back.
            yield* Fiber.join(yield* Effect.fork(FiberRef.update(ref, (value) => `${value} +child`)))
            yield* Effect.sleep("10 millis")
            seen.push(`${who} ${event._tag} ${HashMap.unsafeGet(annotations, "call")} ${yield* FiberRef.get(ref)}`)
          })
        const handler = (name: string) =>
          Dispatcher.toLayer(Handler.make({ name, onLlmStart: hook, onLlmEnd: hook, retry: Schedule.stop })).pipe(
            Layer.provide(Layer.succeed(Who, name))
          )
        const layer = Layer.merge(handler("a"), handler("b")).pipe(Layer.provideMerge(Dispatcher.layer()))
        const callers = yield* runWithClock(
          Effect.forEach([1, 2, 3, 4], (i) =>
            Effect.gen(function*() {
              yield* call
              return yield* FiberRef.get(ref)
            }).pipe(Effect.locally(ref, `call-${i}`), Effect.annotateLogs("call", i)), { concurrency: "unbounded" }).pipe(
              Effect.provide(layer)
            ),
          "10 millis"
        )
        // The callers' own refs are as they set them.
        assert.deepStrictEqual(callers, ["call-1", "call-2", "call-3", "call-4"])
        const expected = [1, 2, 3, 4].flatMap((i) =>
          ["a", "b"].flatMap((who) =>
            ["Start", "End"].map((tag) => `${who} ${tag} ${i} call-${i} (forked) (forked) +child`)
          )
        )
        assert.deepStrictEqual([...seen].sort(), expected.sort())
      }))

    it.effect("hooks see each call's own fiber-ref values, call after call and at once (the refs a handler's fibers start from are kept only for equal values)", () =>
      Effect.gen(function*() {
        // Refs forked as they are (the kept refs' case), set per call, or not at all.
        const tenant = FiberRef.unsafeMake<string>("default")
        const level = FiberRef.unsafeMake<number>(0)
        // A mutable value that every fiber gets a copy of: never shared by two hooks.
        const noBag: Array<string> = []
        const bag = FiberRef.unsafeMake<Array<string>>(noBag, { fork: (items) => [...items] })
        const seen: Array<string> = []
        const record = (how: string, event: Events.StartEvent | Events.EndEvent) =>
          Effect.gen(function*() {
            const items = yield* FiberRef.get(bag)
            const span = Option.getOrUndefined(yield* Effect.option(Effect.currentSpan))
            seen.push(
              `${how} ${event._tag} ${event.call.model} ${yield* FiberRef.get(tenant)} ${yield* FiberRef.get(level)} ${items.length} ${
                span?.name ?? "-"
              }`
            )
            if (items !== noBag) items.push(how)
            // A hook's own change stays in its fiber.
            yield* FiberRef.set(tenant, "changed by a hook")
          })
        const layer = Layer.mergeAll(
          Dispatcher.toLayer(Handler.make({
            name: "suspends",
            onLlmStart: (event) => Effect.zipRight(Effect.sleep("10 millis"), record("suspends", event)),
            onLlmEnd: (event) => Effect.zipRight(Effect.sleep("10 millis"), record("suspends", event))
          })),
          Dispatcher.toLayer(Handler.make({
            name: "sync",
            onLlmStart: (event) => record("sync", event),
            onLlmEnd: (event) => record("sync", event)
          }))
        ).pipe(Layer.provideMerge(Dispatcher.layer()))
        const oneCall = (i: number, value: string | undefined, n: number, span: string | undefined) => {
          // Told apart by their model, so that nothing else differs between the calls' refs.
          const named = Effect.succeed(response).pipe(Callbacks.instrument({ ...options, model: String(i) }))
          const inSpan = span === undefined ? named : Effect.withSpan(named, span)
          const withTenant = value === undefined ? inSpan : Effect.locally(inSpan, tenant, value)
          // Calls with a bag of their own have a ref that forks to a new value: theirs are never kept.
          const withBag = value === "b" ? Effect.suspend(() => Effect.locally(withTenant, bag, [])) : withTenant
          return n === 0 ? withBag : Effect.locally(withBag, level, n)
        }
        // Values alternating, repeated, added and taken away, in a span or none: one call after the other,
        // then all at once.
        const plan: ReadonlyArray<readonly [string | undefined, number, string | undefined]> = [
          ["a", 0, undefined],
          ["a", 0, undefined],
          ["b", 0, "s1"],
          [undefined, 0, "s1"],
          ["a", 1, "s2"],
          ["a", 1, undefined],
          ["a", 2, undefined],
          ["a", 0, undefined],
          ["c", 0, undefined],
          ["b", 2, "s3"],
          [undefined, 0, undefined],
          ["a", 0, "s3"]
        ]
        // Each call on a fiber of its own, whose refs are its parent's (which sets none) and its own settings.
        const run = (concurrency: number | "unbounded") =>
          Effect.forEach(
            plan,
            ([value, n, span], i) =>
              Effect.flatMap(Effect.fork(oneCall(i, value, n, span)), (fiber) => Effect.flatten(Fiber.await(fiber))),
            { concurrency, discard: true }
          )
        yield* runWithClock(Effect.zipRight(run(1), run("unbounded")).pipe(Effect.provide(layer)), "10 millis")
        const expected = [0, 1].flatMap(() =>
          plan.flatMap(([value, n, span], i) =>
            ["suspends", "sync"].flatMap((how) =>
              ["Start", "End"].map((tag) => `${how} ${tag} ${i} ${value ?? "default"} ${n} 0 ${span ?? "-"}`)
            )
          )
        )
        assert.deepStrictEqual([...seen].sort(), expected.sort())
      }))

    // Live: under a TestClock, each suspended invocation's timeout is a fiber forked with the caller's refs.
    it.live("a ref that forks to one value whichever fiber forks it (reset, as Effect's fork scope override) does not keep the refs from being kept", () =>
      Effect.gen(function*() {
        let forks = 0
        const ref = FiberRef.unsafeMake("initial", {
          fork: () => {
            forks++
            return "reset"
          }
        })
        const after = yield* hooksAfterFirstCall(ref, "set by the caller", () => forks)
        // Every hook saw the value a fiber forked from its caller sees.
        assert.deepStrictEqual(after.seen, Array.from({ length: 76 }, () => "reset"))
        // Forked for the first call's dispatches, then kept: none per hook fiber.
        assert.strictEqual(after.forks, 0)
      }))

    // Live, as the test above.
    it.live("a ref set anew by each call (a call context, log annotations) keeps the refs kept: each dispatch gets them with the caller's value, and no ref is forked", () =>
      Effect.gen(function*() {
        let forks = 0
        const ref = FiberRef.unsafeMake("initial", {
          fork: (value) => {
            forks++
            return value
          }
        })
        const after = yield* hooksAfterFirstCall(ref, "set by the caller", () => forks, FiberRef.unsafeMake("none"))
        // Each hook saw the value kept of the one ref, and its own call's value of the other, call after call.
        assert.deepStrictEqual(after.seen, Array.from({ length: 76 }, () => "set by the caller"))
        assert.deepStrictEqual(after.seenPerCall, Array.from({ length: 76 }, (_, i) => `call-${Math.floor(i / 4) + 1}`))
        // Forked for the first call only: later dispatches took the kept refs with the caller's value.
        assert.strictEqual(after.forks, 0)
      }))

    // Live: under a TestClock, each suspended invocation's timeout is a fiber (counted: it is the caller's).
    it.live("hook fibers, and the fibers their hooks fork, are the dispatcher's own: Effect's fiber metrics (effect_fiber_*) do not count them", () =>
      Effect.gen(function*() {
        // Effect counts a fiber under its metric labels, which hook fibers and their forks take from the
        // caller: only the fibers started under this test's label are read, whatever else runs.
        const label = ["test", `hook-fiber-metrics-${Math.random()}`] as const
        const fiberMetrics = Effect.all(
          [Metric.fiberStarted, Metric.fiberSuccesses, Metric.fiberActive].map((metric) =>
            Metric.value(Metric.tagged(metric, ...label))
          )
        ).pipe(Effect.map((states) => states.map((state) => state.count)))
        let heard = 0
        // A hook that needs a fiber, and one that forks one of its own.
        const handler = Handler.make({
          name: "fibers",
          onLlmStart: () => Effect.sync(() => heard++),
          onLlmEnd: () => Effect.flatMap(Effect.fork(Effect.sync(() => heard++)), Fiber.join)
        })
        // A fiber forked under the label is counted: the label reaches what the caller forks.
        yield* Effect.tagMetrics(Effect.flatMap(Effect.fork(Effect.void), Fiber.join), ...label)
        assert.deepStrictEqual(yield* fiberMetrics, [1, 1, 0])
        yield* Effect.forEach(Array.from({ length: 10 }), () => call, { discard: true }).pipe(
          Effect.tagMetrics(...label),
          Effect.provide(withHandlers([handler]))
        )
        assert.strictEqual(heard, 20)
        // Neither the 20 hook fibers nor the 10 fibers they forked.
        assert.deepStrictEqual(yield* fiberMetrics, [1, 1, 0])
      }))

    // Live, as the test above.
    it.live("a ref that forks to a copy: each hook fiber gets its own, the refs forked once per hook fiber and checked once per dispatch", () =>
      Effect.gen(function*() {
        let copies = 0
        const ref = FiberRef.unsafeMake<ReadonlyArray<string>>([], {
          fork: (items) => {
            copies++
            return [...items]
          }
        })
        const after = yield* hooksAfterFirstCall(ref, ["set by the caller"], () => copies)
        // Each hook fiber had a copy of its own.
        assert.strictEqual(after.seen.length, 76)
        assert.strictEqual(new Set(after.seen).size, 76)
        for (const value of after.seen) assert.deepStrictEqual(value, ["set by the caller"])
        // 38 dispatches of 2 hook fibers: a fork each, and one more per dispatch to see that the ref copies.
        assert.strictEqual(after.forks, 38 * 3)
      }))

    it.effect("hooks of one dispatch that make instrumented calls at once each see the dispatching call's parent, not each other's calls", () =>
      Effect.gen(function*() {
        const { ids, parents, recorder } = callsByModel()
        // On the inner call's start, each of two handlers suspends, then makes an instrumented call of its
        // own that is in flight while the other's starts.
        const caller = (name: string, delay: number) =>
          Handler.make({
            name,
            onLlmStart: (event: Events.StartEvent) =>
              event.call.model !== "inner" ? Effect.void : Effect.sleep(`${delay} millis`).pipe(
                Effect.zipRight(
                  Effect.sleep("100 millis").pipe(
                    Effect.as(response),
                    Callbacks.instrument({ ...options, model: `from-${name}` })
                  )
                )
              )
          })
        const inner = Effect.succeed(response).pipe(Callbacks.instrument({ ...options, model: "inner" }))
        yield* runWithClock(
          inner.pipe(
            Callbacks.instrument({ ...options, model: "outer" }),
            Effect.provide(withHandlers([recorder, caller("a", 10), caller("b", 20)]))
          ),
          "10 millis"
        )
        assert.strictEqual(parents["inner"], ids["outer"])
        // Made while the dispatching fiber was inside the outer call: that is their parent, for both.
        assert.strictEqual(parents["from-a"], ids["outer"])
        assert.strictEqual(parents["from-b"], ids["outer"])
      }))

    it.effect("a hook's calls have the dispatching call's parent in every attempt", () =>
      Effect.gen(function*() {
        const { ids, parents, recorder } = callsByModel()
        // On the inner call's start: each attempt makes an instrumented call; the first attempt then fails.
        let attempt = 0
        const retried = Handler.make({
          name: "retried",
          retry: Schedule.recurs(1),
          onLlmStart: (event: Events.StartEvent) =>
            event.call.model !== "inner" ? Effect.void : Effect.suspend(() => {
              const n = ++attempt
              return Effect.sleep("10 millis").pipe(
                Effect.as(response),
                Callbacks.instrument({ ...options, model: `attempt-${n}` }),
                Effect.zipRight(n === 1 ? Effect.fail("first attempt fails") : Effect.void)
              )
            })
        })
        const inner = Effect.succeed(response).pipe(Callbacks.instrument({ ...options, model: "inner" }))
        yield* runWithClock(
          inner.pipe(
            Callbacks.instrument({ ...options, model: "outer" }),
            Effect.provide(withHandlers([recorder, retried]))
          ),
          "10 millis"
        )
        assert.strictEqual(attempt, 2)
        assert.strictEqual(parents["attempt-1"], ids["outer"])
        assert.strictEqual(parents["attempt-2"], ids["outer"])
      }))

    it.effect("composite: children run in order, isolated; the composite fails with every child failure", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        const composite = Handler.composite("composite", [
          Handler.make({ name: "a", onLlmEnd: () => Effect.sync(() => log.push("a")) }),
          Handler.make({ name: "b", onLlmEnd: () => Effect.fail("b failed") }),
          Handler.make({ name: "c", onLlmEnd: () => Effect.sync(() => log.push("c")) })
        ], { retry: Schedule.stop })
        const health = yield* Effect.gen(function*() {
          yield* call
          return yield* Dispatcher.health
        }).pipe(Effect.provide(withHandlers([composite])))
        assert.deepStrictEqual(log, ["a", "c"])
        assert.strictEqual(health.handlers[0]!.failures, 1)
        assert.match(Option.getOrThrow(health.handlers[0]!.lastError).message, /b failed/)
      }))
  })

  /** Counts the fibers started under it. */
  class FibersStarted extends Supervisor.AbstractSupervisor<void> {
    count = 0
    readonly value = Effect.void
    override onStart() {
      this.count++
    }
  }

  describe("hook fibers", () => {
    it.live("are held by their invocation, not entered among the global scope's roots; a supervisor sees them", () =>
      Effect.gen(function*() {
        class Started extends Supervisor.AbstractSupervisor<void> {
          readonly ids = new Set<number>()
          readonly value = Effect.void
          override onStart(
            _context: Context.Context<never>,
            _effect: Effect.Effect<unknown, unknown, unknown>,
            _parent: Option.Option<Fiber.RuntimeFiber<unknown, unknown>>,
            fiber: Fiber.RuntimeFiber<unknown, unknown>
          ) {
            this.ids.add(fiber.id().id)
          }
        }
        const seen: Array<{ readonly id: number; readonly root: boolean }> = []
        const hook = () =>
          Effect.gen(function*() {
            yield* Effect.promise(() => Promise.resolve())
            const id = (yield* Effect.fiberId as Effect.Effect<FiberId.Runtime>).id
            const roots = yield* Fiber.roots
            seen.push({ id, root: roots.some((root) => root.id().id === id) })
          })
        const handler = Handler.make({ name: "suspending", onLlmStart: hook, onLlmEnd: hook })
        yield* Effect.all([call, call], { concurrency: "unbounded" }).pipe(Effect.provide(withHandlers([handler])))
        assert.deepStrictEqual(seen.map(({ root }) => root), [false, false, false, false])
        const started = new Started()
        seen.length = 0
        yield* Effect.all([call, call], { concurrency: "unbounded" }).pipe(
          Effect.provide(withHandlers([handler])),
          Effect.supervised(started)
        )
        assert.strictEqual(seen.length, 4)
        for (const { id } of seen) assert.isTrue(started.ids.has(id), `the supervisor did not see hook fiber ${id}`)
      }))


    it.live("a hook that waits on one asynchronous step (Effect.promise), alone or inside continuations, runs on no fiber; from a step that needs a fiber on, on a fiber", () =>
      Effect.gen(function*() {
        let settled = 0
        const oneStep = () => Effect.promise(() => Promise.resolve().then(() => void settled++))
        const twoSteps = () => Effect.zipRight(oneStep(), Effect.void)
        const run = (hook: () => Effect.Effect<void>, scheduler?: Scheduler.Scheduler) =>
          Effect.gen(function*() {
            const started = new FibersStarted()
            settled = 0
            const handler = Handler.make({ name: "suspending", onLlmStart: hook, onLlmEnd: hook })
            const calls = Effect.all([call, call], { concurrency: "unbounded" }).pipe(
              Effect.provide(withHandlers([handler])),
              Effect.supervised(started)
            )
            const results = yield* (scheduler === undefined ? calls : Effect.withScheduler(calls, scheduler))
            assert.deepStrictEqual(results, [response, response])
            assert.strictEqual(settled, 4)
            return started.count
          })
        // The fibers of the calls and the layer's: a synchronous hook, run on the spot, adds none.
        const base = yield* run(() => Effect.sync(() => void settled++))
        assert.strictEqual(yield* run(oneStep), base)
        assert.strictEqual(yield* run(twoSteps), base)
        // A generator that awaits twice, with synchronous work between and after: its steps go on where it was resumed.
        let after = 0
        const generator = () =>
          Effect.gen(function*() {
            yield* oneStep()
            settled--
            yield* oneStep()
            after++
          })
        assert.strictEqual(yield* run(generator), base)
        assert.strictEqual(after, 4)
        // What comes after the wait needs a fiber (a log reads the fiber's refs): that rest runs on one.
        assert.strictEqual(yield* run(() => Effect.zipRight(oneStep(), Effect.logDebug("resumed"))), base + 4)
        // A promise given an AbortSignal commits to more than the wait (the signal is aborted on interruption).
        const withSignal = () => Effect.promise((_signal) => Promise.resolve().then(() => void settled++))
        assert.strictEqual(yield* run(withSignal), base + 4)
        // On a scheduler of the caller's own, every hook runs on a fiber, which that scheduler wakes.
        const scheduler: Scheduler.Scheduler = {
          shouldYield: (fiber) => Scheduler.defaultScheduler.shouldYield(fiber),
          scheduleTask: (task, priority, fiber) => Scheduler.defaultScheduler.scheduleTask(task, priority, fiber)
        }
        assert.strictEqual(yield* run(oneStep, scheduler), base + 4)
      }))

    it.live("a hook of synchronous steps (a generator, a chain) runs on no fiber; from its first step that needs one, on a fiber", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        const run = (hook: (event: { readonly _tag: string }) => Effect.Effect<void>) =>
          Effect.gen(function*() {
            const started = new FibersStarted()
            log.length = 0
            const handler = Handler.make({ name: "steps", onLlmStart: hook, onLlmEnd: hook })
            const results = yield* Effect.all([call, call], { concurrency: "unbounded" }).pipe(
              Effect.provide(withHandlers([handler])),
              Effect.supervised(started)
            )
            assert.deepStrictEqual(results, [response, response])
            return { fibers: started.count, log: [...log] }
          })
        const base = (yield* run(() => Effect.void)).fibers
        const generator = yield* run((event) =>
          Effect.gen(function*() {
            const a = yield* Effect.sync(() => 1)
            const b = yield* Effect.succeed(2)
            yield* Effect.sync(() => log.push(`${event._tag} ${a + b}`))
          })
        )
        assert.strictEqual(generator.fibers, base)
        assert.deepStrictEqual([...generator.log].sort(), ["End 3", "End 3", "Start 3", "Start 3"])
        const chain = yield* run((event) =>
          Effect.sync(() => log.push(`${event._tag} first`)).pipe(
            Effect.flatMap(() => Effect.sync(() => log.push(`${event._tag} second`))),
            Effect.asVoid
          )
        )
        assert.strictEqual(chain.fibers, base)
        assert.deepStrictEqual(chain.log.filter((line) => line.startsWith("Start")), ["Start first", "Start second", "Start first", "Start second"])
        // A step that needs a fiber (a log reads the fiber's refs): what comes before it ran once, the rest on a fiber.
        const logging = yield* run((event) =>
          Effect.gen(function*() {
            yield* Effect.sync(() => log.push(`${event._tag} before`))
            yield* Effect.logDebug("a hook's log")
            yield* Effect.sync(() => log.push(`${event._tag} after`))
          })
        )
        assert.strictEqual(logging.fibers, base + 4)
        assert.deepStrictEqual(logging.log.filter((line) => line.startsWith("Start")), ["Start before", "Start after", "Start before", "Start after"])
        // A generator that fails after its steps: a failure, as on a fiber, retried on the handler's schedule.
        let attempts = 0
        const failing = Handler.make({
          name: "failing",
          onLlmEnd: () =>
            Effect.gen(function*() {
              yield* Effect.sync(() => attempts++)
              return yield* Effect.fail("gave up")
            }),
          retry: Schedule.recurs(1)
        })
        const health = yield* Effect.zipRight(call, Dispatcher.health).pipe(Effect.provide(withHandlers([failing])))
        assert.strictEqual(attempts, 2)
        assert.strictEqual(health.handlers[0]!.failures, 1)
        assert.strictEqual(health.handlers[0]!.retries, 1)
        assert.match(Option.getOrThrow(health.handlers[0]!.lastError).message, /gave up/)
      }))

    it.effect("a hook on no fiber that times out is given up; resumed later, nothing more happens (its wait alone, or inside a generator)", () =>
      Effect.forEach([false, true], (inGenerator) =>
        Effect.gen(function*() {
          let resumeLate: ((effect: Effect.Effect<void, string>) => void) | undefined
          let calls = 0
          let ranLate = false
          const wait = Effect.async<void, string>((resume) => {
            calls++
            resumeLate = resume
          })
          const handler = Handler.make({
            name: "late",
            onLlmStart: () =>
              inGenerator
                ? Effect.gen(function*() {
                  yield* Effect.sync(() => undefined)
                  yield* wait
                  // The generator's rest must not run once its wait was given up.
                  ranLate = true
                })
                : wait,
            timeout: "1 second",
            retry: Schedule.recurs(3)
          })
          yield* Effect.gen(function*() {
            const fiber = yield* Effect.fork(call)
            yield* TestClock.adjust("1 second")
            assert.deepStrictEqual(yield* Fiber.join(fiber), response)
            const timedOut = yield* Dispatcher.health
            assert.strictEqual(timedOut.handlers[0]!.timeouts, 1)
            assert.strictEqual(timedOut.handlers[0]!.inFlight, 0)
            // Resumed after its timeout: with a step (which must not run), then with a failure (which must not be retried).
            resumeLate!(Effect.sync(() => {
              ranLate = true
            }))
            resumeLate!(Effect.fail("late failure"))
            yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
            yield* TestClock.adjust("10 seconds")
            const after = yield* Dispatcher.health
            assert.deepStrictEqual(after.handlers[0], timedOut.handlers[0])
            assert.isFalse(ranLate)
            assert.strictEqual(calls, 1)
          }).pipe(Effect.provide(withHandlers([handler])))
        }))
      )

    it.effect("a hook on no fiber resumed twice: the first resume counts, as a fiber's", () =>
      Effect.gen(function*() {
        // Attempt 1 is resumed with a failure, then (while its retry waits) with a success, which must not
        // count; attempt 2 succeeds. At once: while registering; after a turn: from a promise's callback.
        const twice = (atOnce: boolean) => {
          let calls = 0
          const hook = () =>
            Effect.async<void, string>((resume) => {
              const attempt = ++calls
              const resumeAll = () => {
                if (attempt === 1) resume(Effect.fail("first"))
                resume(Effect.void)
              }
              if (atOnce) resumeAll()
              else Promise.resolve().then(resumeAll)
            })
          return {
            calls: () => calls,
            handler: Handler.make({
              name: atOnce ? "at-once" : "after-a-turn",
              onLlmStart: hook,
              retry: Schedule.spaced("1 second").pipe(Schedule.intersect(Schedule.recurs(1)))
            })
          }
        }
        const specs = [twice(true), twice(false)]
        const health = yield* Effect.gen(function*() {
          const fiber = yield* Effect.fork(call)
          yield* Effect.promise(() => new Promise((resolve) => setImmediate(resolve)))
          yield* TestClock.adjust("1 second")
          assert.deepStrictEqual(yield* Fiber.join(fiber), response)
          return yield* Dispatcher.health
        }).pipe(Effect.provide(withHandlers(specs.map((spec) => spec.handler))))
        for (const [i, handler] of health.handlers.entries()) {
          assert.deepStrictEqual(
            [handler.name, handler.successes, handler.failures, handler.retries, specs[i]!.calls()],
            [handler.name, 1, 0, 1, 2]
          )
        }
      }))

    it.effect("a hook resumed at once with a failure, retried 20,000 times without delay, neither overflows the stack nor holds the call", () =>
      Effect.gen(function*() {
        let attempts = 0
        const handler = Handler.make({
          name: "failing-at-once",
          onLlmStart: () =>
            Effect.async<void, string>((resume) => {
              attempts++
              resume(Effect.fail("failed at once"))
            }),
          retry: Schedule.recurs(20_000)
        })
        const health = yield* Effect.gen(function*() {
          assert.deepStrictEqual(yield* call, response)
          return yield* Dispatcher.health
        }).pipe(Effect.provide(withHandlers([handler])))
        assert.strictEqual(attempts, 20_001)
        assert.strictEqual(health.handlers[0]!.failures, 1)
      }))

    it.live("a hook woken from outside any fiber goes on in a microtask, never on the waker's stack (on a fiber or none)", () =>
      Effect.gen(function*() {
        const woken = (hookOf: (step: Effect.Effect<void>, wakeUp: (wake: () => void) => void) => Effect.Effect<void>) =>
          Effect.gen(function*() {
            let wake: (() => void) | undefined
            let resumed = false
            const step = Effect.sync(() => {
              resumed = true
            })
            const handler = Handler.make({ name: "woken", onLlmStart: () => hookOf(step, (w) => wake = w) })
            const fiber = yield* Effect.fork(call.pipe(Effect.provide(withHandlers([handler]))))
            while (wake === undefined) yield* Effect.sleep("1 millis")
            // Woken from a timer's callback, as an emitter or a socket would wake it.
            const onTheWakersStack = yield* Effect.promise(() =>
              new Promise<boolean>((resolve) =>
                setTimeout(() => {
                  wake!()
                  resolve(resumed)
                }, 0)
              )
            )
            assert.deepStrictEqual(yield* Fiber.join(fiber), response)
            assert.isFalse(onTheWakersStack)
            assert.isTrue(resumed)
          })
        // On a hook fiber: a step after the asynchronous one.
        yield* woken((step, wakeUp) =>
          Effect.zipRight(Effect.async<void>((resume) => wakeUp(() => resume(Effect.void))), step)
        )
        // On no fiber: one asynchronous step, resumed with a synchronous one.
        yield* woken((step, wakeUp) => Effect.async<void>((resume) => wakeUp(() => resume(step))))
      }))

    it.live("hook fibers of a caller on a scheduler of its own are woken by that scheduler", () =>
      Effect.gen(function*() {
        const given = new Set<number>()
        const scheduler: Scheduler.Scheduler = {
          shouldYield: (fiber) => Scheduler.defaultScheduler.shouldYield(fiber),
          scheduleTask: (task, priority, fiber) => {
            if (fiber !== undefined) given.add(fiber.id().id)
            Scheduler.defaultScheduler.scheduleTask(task, priority, fiber)
          }
        }
        const hookFibers: Array<number> = []
        const hook = () =>
          Effect.zipRight(
            Effect.promise(() => Promise.resolve()),
            Effect.fiberIdWith((id) => Effect.sync(() => hookFibers.push(id.id)))
          )
        const handler = Handler.make({ name: "suspending", onLlmStart: hook, onLlmEnd: hook })
        yield* Effect.all([call, call], { concurrency: "unbounded" }).pipe(
          Effect.provide(withHandlers([handler])),
          Effect.withScheduler(scheduler)
        )
        assert.strictEqual(hookFibers.length, 4)
        for (const id of hookFibers) assert.isTrue(given.has(id), `hook fiber ${id} was not woken by the caller's scheduler`)
      }))
  })

  describe("registration", () => {
    it.effect("invalid definitions fail with a typed error at registration", () =>
      Effect.gen(function*() {
        const register = (handler: Handler.Handler<never, never>) =>
          Effect.either(Effect.scoped(Dispatcher.register(handler)))
        const empty = yield* register(Handler.make({ name: " " }))
        const negative = yield* register(Handler.make({ name: "neg", timeout: -5 }))
        const buffer = yield* register(Handler.make({ name: "buf", mode: "background", bufferSize: 0 }))
        assert.isTrue(Either.isLeft(empty) && empty.left.reason === "InvalidName")
        assert.isTrue(Either.isLeft(negative) && negative.left.reason === "InvalidPolicy")
        assert.isTrue(Either.isLeft(negative) && /timeout/.test(negative.left.message))
        assert.isTrue(Either.isLeft(buffer) && /bufferSize/.test(buffer.left.message))
        const layer = Layer.merge(
          Dispatcher.toLayer(Handler.make({ name: "same" })),
          Dispatcher.toLayer(Handler.make({ name: "same" }))
        ).pipe(Layer.provide(Dispatcher.layer()))
        const duplicate = yield* Effect.either(Effect.scoped(Layer.build(layer)))
        assert.isTrue(
          Either.isLeft(duplicate) && duplicate.left._tag === "HandlerRegistrationError" &&
            duplicate.left.reason === "DuplicateName"
        )
      }).pipe(Effect.provide(Dispatcher.layer())))

    it.effect("run-time registration is scoped; a call in progress keeps the set it started with", () =>
      Effect.gen(function*() {
        const heard: Array<string> = []
        const named = (name: string) =>
          Handler.make({
            name,
            onLlmStart: () => Effect.sync(() => heard.push(`${name}:start`)),
            onLlmEnd: () => Effect.sync(() => heard.push(`${name}:end`))
          })
        const gate = yield* Deferred.make<void>()
        const scopeA = yield* Scope.make()
        yield* Dispatcher.register(named("a")).pipe(Scope.extend(scopeA))
        const fiber = yield* Effect.fork(Deferred.await(gate).pipe(Effect.as(response), Callbacks.instrument(options)))
        yield* Effect.yieldNow()
        // While the call runs: a leaves, b arrives.
        yield* Scope.close(scopeA, Exit.void)
        const scopeB = yield* Scope.make()
        yield* Dispatcher.register(named("b")).pipe(Scope.extend(scopeB))
        yield* Deferred.succeed(gate, undefined)
        yield* Fiber.join(fiber)
        assert.deepStrictEqual(heard, ["a:start", "a:end"])
        yield* call
        assert.deepStrictEqual(heard, ["a:start", "a:end", "b:start", "b:end"])
        assert.deepStrictEqual(yield* Effect.flatMap(Dispatcher.Dispatcher, (d) => d.handlers), ["b"])
      }).pipe(Effect.provide(Dispatcher.layer())))
  })

  describe("background", () => {
    it.effect("the call does not wait; start is delivered before end; flush waits for all deliveries", () =>
      Effect.gen(function*() {
        const heard: Array<string> = []
        const slow = Handler.make({
          name: "slow",
          mode: "background",
          onLlmStart: (e) => Effect.sleep("1 second").pipe(Effect.zipRight(Effect.sync(() => heard.push(`start ${e.call.callId}`)))),
          onLlmEnd: (e) => Effect.sleep("1 second").pipe(Effect.zipRight(Effect.sync(() => heard.push(`end ${e.call.callId}`)))),
          timeout: "10 seconds"
        })
        yield* Effect.gen(function*() {
          const started = yield* now
          yield* Effect.succeed(response).pipe(Callbacks.instrument({ ...options, callId: "c1" }))
          yield* Effect.succeed(response).pipe(Callbacks.instrument({ ...options, callId: "c2" }))
          assert.strictEqual((yield* now) - started, 0)
          assert.strictEqual((yield* Dispatcher.health).pending, 4)
          yield* runWithClock(Dispatcher.flush)
          assert.deepStrictEqual(heard, ["start c1", "end c1", "start c2", "end c2"])
          assert.strictEqual((yield* Dispatcher.health).pending, 0)
        }).pipe(Effect.provide(withHandlers([slow])))
      }))

    it.effect("concurrency: calls overlap across lanes; each call's start still precedes its end", () =>
      Effect.gen(function*() {
        const log: Array<string> = []
        let running = 0
        let peak = 0
        const slow = (tag: string) => (e: Events.CallbackEvent) =>
          Effect.acquireUseRelease(
            Effect.sync(() => {
              running++
              peak = Math.max(peak, running)
            }),
            () => Effect.sleep("1 second").pipe(Effect.zipRight(Effect.sync(() => log.push(`${tag} ${e.call.callId}`)))),
            () => Effect.sync(() => running--)
          )
        const lanes = Handler.make({
          name: "lanes",
          mode: "background",
          concurrency: 4,
          onLlmStart: slow("start"),
          onLlmEnd: slow("end"),
          timeout: "10 seconds"
        })
        yield* Effect.gen(function*() {
          for (let i = 0; i < 8; i++) {
            yield* Effect.succeed(response).pipe(Callbacks.instrument({ ...options, callId: `call-${i}` }))
          }
          yield* runWithClock(Dispatcher.flush)
        }).pipe(Effect.provide(withHandlers([lanes])))
        assert.isAbove(peak, 1)
        assert.isAtMost(peak, 4)
        for (let i = 0; i < 8; i++) {
          const start = log.indexOf(`start call-${i}`)
          const end = log.indexOf(`end call-${i}`)
          assert.isTrue(start >= 0 && end > start, `call-${i}: ${log}`)
        }
      }))

    it.effect("onLlmEndBatch hears runs of end events at once; counts are per event", () =>
      Effect.gen(function*() {
        const batches: Array<ReadonlyArray<string>> = []
        let failNext = true
        const bulk = Handler.make({
          name: "bulk",
          mode: "background",
          onLlmEndBatch: (events) =>
            Effect.suspend(() => {
              if (failNext) {
                failNext = false
                return Effect.fail("first attempt fails")
              }
              batches.push(events.map((e) => e.call.callId))
              return Effect.void
            }),
          retry: Schedule.recurs(1)
        })
        const health = yield* Effect.gen(function*() {
          // The consumer is busy with nothing yet: five calls' end events pile up, then run as one batch.
          for (let i = 0; i < 5; i++) {
            yield* Effect.succeed(response).pipe(Callbacks.instrument({ ...options, callId: `b${i}` }))
          }
          yield* Dispatcher.flush
          return yield* Dispatcher.health
        }).pipe(Effect.provide(withHandlers([bulk])))
        assert.deepStrictEqual(batches.flat(), ["b0", "b1", "b2", "b3", "b4"])
        assert.isBelow(batches.length, 5)
        const h = health.handlers[0]!
        assert.strictEqual(h.successes, 5)
        assert.strictEqual(h.pending, 0)
        assert.isAbove(h.retries, 0)
      }))

    it.live("on the live clock, deliveries made in one event-loop turn are taken as one batch", () =>
      Effect.gen(function*() {
        const batches: Array<number> = []
        const bulk = Handler.make({
          name: "bulk-turn",
          mode: "background",
          onLlmEndBatch: (events) => Effect.sync(() => void batches.push(events.length))
        })
        // 50 calls whose I/O completes in the same turn.
        yield* Effect.gen(function*() {
          yield* Effect.forEach(Array.from({ length: 50 }), () => nextTurnCall, {
            concurrency: "unbounded",
            discard: true
          })
          yield* Dispatcher.flush
        }).pipe(Effect.provide(withHandlers([bulk])))
        assert.strictEqual(batches.reduce((a, b) => a + b, 0), 50)
        // Woken once per turn, not once per delivery (which would make about 50 batches).
        assert.isAtMost(batches.length, 3)
      }))

    it.live("on the live clock, more deliveries in one turn than the buffer holds are taken within the turn, not a bufferful per turn", () =>
      Effect.gen(function*() {
        let heard = 0
        const small = Handler.make({
          name: "small-turn",
          mode: "background",
          bufferSize: 4,
          onLlmStart: () => Effect.sync(() => void heard++),
          onLlmEnd: () => Effect.sync(() => void heard++)
        })
        // Event-loop turns, counted while the calls run.
        let turns = 0
        let ticking = true
        const tick = () => {
          turns++
          if (ticking) setImmediate(tick)
        }
        const rounds = 20
        const health = yield* Effect.gen(function*() {
          setImmediate(tick)
          // Each round, 20 calls at once: 20 starts in one turn, 20 ends in the next, for a buffer of 4.
          for (let round = 0; round < rounds; round++) {
            yield* Effect.forEach(Array.from({ length: 20 }), () => nextTurnCall, {
              concurrency: "unbounded",
              discard: true
            })
          }
          ticking = false
          yield* Dispatcher.flush
          return yield* Dispatcher.health
        }).pipe(Effect.provide(withHandlers([small])))
        assert.strictEqual(heard, 40 * rounds)
        const h = health.handlers[0]!
        assert.deepStrictEqual([h.successes, h.dropped], [40 * rounds, 0])
        // Woken at once when the buffer is half full, the consumer makes room
        // within the turn: a round takes one turn, its I/O's (21 turns in all).
        // Woken once per turn only, the full buffer costs each round a turn
        // more (41).
        assert.isAtMost(turns, rounds * 1.5)
      }))

    it.effect("a batch-only handler in await mode hears each end event alone", () =>
      Effect.gen(function*() {
        const batches: Array<number> = []
        const bulk = Handler.make({
          name: "bulk-await",
          onLlmEndBatch: (events) => Effect.sync(() => void batches.push(events.length))
        })
        yield* Effect.gen(function*() {
          yield* call
          yield* call
        }).pipe(Effect.provide(withHandlers([bulk])))
        assert.deepStrictEqual(batches, [1, 1])
      }))

    it.effect("closing the layer drains pending deliveries", () =>
      Effect.gen(function*() {
        const heard: Array<string> = []
        const slow = Handler.make({
          name: "slow",
          mode: "background",
          onLlmEnd: () => Effect.sleep("1 second").pipe(Effect.zipRight(Effect.sync(() => heard.push("end")))),
          timeout: "10 seconds"
        })
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(withHandlers([slow], { shutdownTimeout: "1 minute" }), scope)
        yield* Effect.all([call, call, call], { discard: true }).pipe(Effect.provide(context))
        yield* runWithClock(Scope.close(scope, Exit.void))
        assert.deepStrictEqual(heard, ["end", "end", "end"])
      }))

    it.effect("what cannot be drained within the shutdown timeout is reported, and nothing is left running", () =>
      Effect.gen(function*() {
        let completed = 0
        const slow = Handler.make({
          name: "slow-drain",
          mode: "background",
          onLlmEnd: () => Effect.sleep("10 seconds").pipe(Effect.zipRight(Effect.sync(() => completed++))),
          timeout: "1 minute"
        })
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(withHandlers([slow], { shutdownTimeout: "15 seconds" }), scope)
        yield* Effect.all([call, call, call], { discard: true }).pipe(Effect.provide(context))
        yield* runWithClock(Scope.close(scope, Exit.void), "1 second")
        // The first delivered in time, the second interrupted at the shutdown timeout, the third never run.
        assert.strictEqual(completed, 1)
        assert.deepStrictEqual(yield* counts("slow-drain"), { success: 1, interrupted: 1, dropped: 1 })
        yield* TestClock.adjust("1 minute")
        assert.strictEqual(completed, 1)
      }))

    it.effect("at shutdown, producers still waiting for buffer room are released and counted once as dropped", () =>
      Effect.gen(function*() {
        const slow = Handler.make({
          name: "slow-full",
          mode: "background",
          bufferSize: 1,
          onLlmEnd: () => Effect.sleep("10 seconds"),
          timeout: "1 minute"
        })
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(withHandlers([slow], { shutdownTimeout: "5 seconds" }), scope)
        const first = yield* Effect.fork(call.pipe(Effect.provide(context)))
        yield* Effect.yieldNow()
        // The second call fills the buffer; the third and fourth wait for room.
        const others = yield* Effect.fork(
          Effect.all([call, call, call], { concurrency: "unbounded", discard: true }).pipe(Effect.provide(context))
        )
        yield* TestClock.adjust("1 second")
        yield* runWithClock(Scope.close(scope, Exit.void), "1 second")
        yield* Fiber.join(first)
        yield* Fiber.join(others)
        assert.deepStrictEqual(yield* counts("slow-full"), { success: 0, interrupted: 1, dropped: 3 })
        // Their timeouts, had they fired, would have counted them a second time.
        yield* TestClock.adjust("2 minutes")
        assert.deepStrictEqual(yield* counts("slow-full"), { success: 0, interrupted: 1, dropped: 3 })
      }))

    it.effect("a full buffer applies backpressure, bounded by the handler's timeout, then drops visibly", () =>
      Effect.gen(function*() {
        const slow = Handler.make({
          name: "slow",
          mode: "background",
          bufferSize: 1,
          onLlmEnd: () => Effect.sleep("10 seconds"),
          timeout: "2 seconds"
        })
        const result = yield* runWithClock(
          Effect.gen(function*() {
            const started = yield* now
            // 1st: taken by the consumer; 2nd: fills the buffer; 3rd: waits, then is dropped.
            yield* call
            yield* Effect.yieldNow()
            yield* call
            yield* call
            return { elapsed: (yield* now) - started, health: yield* Dispatcher.health }
          }).pipe(Effect.provide(withHandlers([slow])))
        )
        assert.strictEqual(result.elapsed, 2000)
        assert.strictEqual(result.health.handlers[0]!.dropped, 1)
      }))
  })

  describe("config", () => {
    const withEnv = (env: Record<string, string>) =>
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

    it.effect("defaults: 30 s timeout, 100 concurrent, 3 attempts, 1 s retry delay, recovery on, await", () =>
      Effect.gen(function*() {
        const hung = Handler.make({ name: "hung", onLlmEnd: () => Effect.never })
        const elapsed = yield* runWithClock(
          timed(call).pipe(Effect.provide(withHandlers([hung]))),
          "1 second"
        )
        assert.strictEqual(elapsed, 30_000)
      }))

    it.effect("settings come from CALLBACK_* variables", () =>
      Effect.gen(function*() {
        const hung = Handler.make({ name: "hung", onLlmEnd: () => Effect.never })
        const layer = Dispatcher.toLayer(hung).pipe(Layer.provideMerge(Dispatcher.layerConfig))
        const elapsed = yield* runWithClock(
          timed(call).pipe(Effect.provide(layer), withEnv({ CALLBACK_TIMEOUT: "1.5" }))
        )
        assert.strictEqual(elapsed, 1500)
      }))

    it.effect("a bad value fails the layer with an error naming the variable and the value", () =>
      Effect.gen(function*() {
        const cases: Array<[string, string]> = [
          ["CALLBACK_TIMEOUT", "soon"],
          ["CALLBACK_MAX_CONCURRENT", "0"],
          ["CALLBACK_MAX_RETRY_ATTEMPTS", "2.5"],
          ["CALLBACK_RETRY_DELAY", "-1"],
          ["CALLBACK_ENABLE_RECOVERY", "maybe"],
          ["CALLBACK_MODE", "later"],
          ["CALLBACK_SHUTDOWN_TIMEOUT", "x"]
        ]
        for (const [name, value] of cases) {
          const exit = yield* Effect.exit(
            Effect.scoped(Layer.build(Dispatcher.layerConfig)).pipe(withEnv({ [name]: value }))
          )
          assert.isTrue(Exit.isFailure(exit), name)
          const message = String(Exit.isFailure(exit) ? exit.cause : "")
          assert.include(message, name)
          assert.include(message, value)
        }
      }))

    it.effect("bad options fail Dispatcher.layer with an error naming the option", () =>
      Effect.gen(function*() {
        const exit = yield* Effect.exit(Effect.scoped(Layer.build(Dispatcher.layer({ maxConcurrent: -1 }))))
        assert.isTrue(Exit.isFailure(exit))
        assert.include(String(Exit.isFailure(exit) ? exit.cause : ""), "maxConcurrent")
      }))
  })

  describe("health", () => {
    it.effect("reports status and per-handler counts", () =>
      Effect.gen(function*() {
        let fail = false
        const sometimes = Handler.make({
          name: "sometimes",
          onLlmEnd: () => Effect.suspend(() => fail ? Effect.fail("bad") : Effect.void),
          retry: Schedule.stop
        })
        yield* Effect.gen(function*() {
          yield* call
          const healthy = yield* Dispatcher.health
          assert.strictEqual(healthy.status, "healthy")
          assert.strictEqual(healthy.handlers[0]!.successes, 1)
          fail = true
          yield* call
          const degraded = yield* Dispatcher.health
          assert.strictEqual(degraded.status, "degraded")
          assert.strictEqual(degraded.handlers[0]!.failures, 1)
          assert.strictEqual(degraded.inFlight, 0)
        }).pipe(Effect.provide(withHandlers([sometimes])))
      }))

    it.effect("the recorder sees events in order", () =>
      Effect.gen(function*() {
        yield* call
        yield* Effect.exit(Effect.fail("x").pipe(Callbacks.instrument(options)))
        const events = yield* Testing.events
        assert.deepStrictEqual(events.map((e) => e._tag), ["Start", "End", "Start", "Error"])
      }).pipe(Effect.provide(Testing.layer())))
  })
})

describe("Dispatcher call ids", () => {
  it.effect("are UUID-shaped: a random prefix per dispatcher, then a counter, in order and distinct", () =>
    Effect.gen(function*() {
      const idsOf = (calls: number) =>
        Effect.gen(function*() {
          const ids: Array<string> = []
          yield* Dispatcher.register(Handler.make({
            name: "ids",
            onLlmStart: (event) => Effect.sync(() => void ids.push(event.call.callId))
          }))
          for (let i = 0; i < calls; i++) yield* call
          return ids
        }).pipe(Effect.scoped, Effect.provide(Dispatcher.layer()))
      // Past two boundaries of the counter's low byte.
      const ids = yield* idsOf(600)
      const other = yield* idsOf(1)
      for (const id of [...ids, ...other]) {
        assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
      }
      assert.strictEqual(new Set(ids).size, ids.length)
      assert.strictEqual(new Set(ids.map((id) => id.slice(0, 24))).size, 1)
      assert.notStrictEqual(other[0]!.slice(0, 24), ids[0]!.slice(0, 24))
      assert.deepStrictEqual(ids.map((id) => parseInt(id.slice(24), 16)), ids.map((_, i) => i))
      assert.strictEqual(other[0]!.slice(24), "000000000000")
    }))
})

describe("Dispatcher metric series", () => {
  const seriesOf = (name: string, handler: string) =>
    Metric.unsafeSnapshot().filter((pair) =>
      pair.metricKey.name === name &&
      pair.metricKey.tags.some((tag) => tag.key === "callback_type" && tag.value === handler)
    ).map((pair) =>
      Object.fromEntries(pair.metricKey.tags.filter((tag) => tag.key !== "callback_type").map((tag) => [tag.key, tag.value]))
    )

  it.scoped("exist at 0 from registration for the outcomes a handler can have, and only those", () =>
    Effect.gen(function*() {
      yield* Dispatcher.register(Handler.make({ name: "series-await", onLlmEnd: () => Effect.void }))
      yield* Dispatcher.register(Handler.make({ name: "series-bg", mode: "background", onLlmStart: () => Effect.void }))
      const awaitStatuses = seriesOf("callback_executions_total", "series-await")
      assert.deepStrictEqual(
        awaitStatuses.map((tags) => `${tags["phase"]} ${tags["status"]}`).sort(),
        ["end defect", "end failed", "end interrupted", "end success", "end timeout"]
      )
      assert.isTrue(
        seriesOf("callback_executions_total", "series-bg").some((tags) => tags["phase"] === "start" && tags["status"] === "dropped")
      )
      // Background handlers' drop counter and queue gauge, at 0 before any event.
      assert.strictEqual(yield* Metric.value(CallbackMetrics.droppedTotal.pipe(Metric.tagged("callback_type", "series-bg"))).pipe(Effect.map((s) => s.count)), 0)
      assert.lengthOf(seriesOf("callback_dropped_total", "series-bg"), 1)
      assert.lengthOf(seriesOf("callback_queue_depth", "series-bg"), 1)
      assert.lengthOf(seriesOf("callback_dropped_total", "series-await"), 0)
    }).pipe(Effect.provide(Dispatcher.layer())))
})

describe("HandlerError made by the dispatcher", () => {
  it("is the same object as the class makes: prototype, own properties, JSON, equality, text", () => {
    for (const cause of [undefined, new Error("boom"), { _tag: "Oops" }]) {
      const args = { reason: "Failed" as const, handler: "h", phase: "end" as const, message: "Error: boom" }
      const made = new HandlerError.HandlerError(cause === undefined ? args : { ...args, cause })
      const cheap = Outcome.handlerError(args.reason, args.handler, args.phase, args.message, cause)
      assert.isTrue(cheap instanceof HandlerError.HandlerError && cheap instanceof Error)
      assert.deepStrictEqual(Object.getOwnPropertyNames(cheap), Object.getOwnPropertyNames(made))
      assert.deepStrictEqual(Object.keys(cheap), Object.keys(made))
      assert.strictEqual(JSON.stringify(cheap), JSON.stringify(made))
      assert.strictEqual(String(cheap), String(made))
      assert.isTrue(Equal.equals(cheap, made))
      assert.strictEqual(cheap.cause, made.cause)
      assert.strictEqual(cheap.stack?.split("\n")[0], "HandlerError: Error: boom")
    }
  })
})

describe("Dispatcher: the warning of a failed invocation", () => {
  const failing = Handler.make({ name: "flaky", onLlmStart: () => Effect.fail("nope"), retry: Schedule.recurs(1) })
  const call = Effect.succeed("ok").pipe(Callbacks.instrument({ provider: "openai", model: "m", userId: "u" }))
  const capture = () => {
    const lines: Array<{ readonly message: unknown; readonly level: string; readonly annotations: Record<string, unknown> }> = []
    const logger = Logger.make(({ annotations, logLevel, message }) => {
      lines.push({ message, level: logLevel.label, annotations: Object.fromEntries(HashMap.toEntries(annotations)) })
    })
    return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
  }

  it.scoped("is logged once per failed invocation, with the call, handler, phase, reason, error and attempts", () => {
    const { layer, lines } = capture()
    return Effect.gen(function*() {
      yield* Dispatcher.register(failing)
      yield* call
      const warnings = lines.filter((line) => line.level === "WARN")
      assert.strictEqual(warnings.length, 1)
      assert.deepInclude(warnings[0]!.annotations, { handler: "flaky", phase: "start", reason: "Failed", error: "nope", attempts: 2 })
    }).pipe(Effect.provide(Layer.merge(Dispatcher.layer(), layer)))
  })

  it.scoped("is logged for hooks that fail after the dispatch waited, in its last group or in an earlier one", () => {
    const { layer, lines } = capture()
    const waitThenFail = (error: string) => () =>
      Effect.promise(() => Promise.resolve()).pipe(Effect.zipRight(Effect.fail(error)))
    return Effect.gen(function*() {
      // Priority 2 runs first and waits; priority 1 then fails at once; priority 0 waits, then fails.
      yield* Dispatcher.register(Handler.make({ name: "first", priority: 2, onLlmStart: waitThenFail("one"), retry: Schedule.recurs(0) }))
      yield* Dispatcher.register(Handler.make({ name: "second", priority: 1, onLlmStart: () => Effect.fail("two"), retry: Schedule.recurs(0) }))
      yield* Dispatcher.register(Handler.make({ name: "third", priority: 0, onLlmStart: waitThenFail("three"), retry: Schedule.recurs(0) }))
      yield* call
      const warnings = lines.filter((line) => line.level === "WARN").map((line) => [line.annotations["handler"], line.annotations["error"]])
      assert.deepStrictEqual(warnings, [["first", "one"], ["second", "two"], ["third", "three"]])
    }).pipe(Effect.provide(Layer.merge(Dispatcher.layer(), layer)))
  })

  it.scoped("in the background, is logged per failed delivery with its own call and phase, batch hooks included", () => {
    const { layer, lines } = capture()
    const failsFor = (callId: string, phase: string) => (event: Events.CallbackEvent) =>
      event.call.callId === callId ? Effect.fail(`${phase} ${callId}`) : Effect.void
    return Effect.gen(function*() {
      yield* Dispatcher.register(Handler.make({
        name: "bg",
        mode: "background",
        onLlmStart: failsFor("c1", "start"),
        onLlmEnd: failsFor("c2", "end"),
        retry: Schedule.recurs(0)
      }))
      yield* Dispatcher.register(Handler.make({
        name: "bg-batch",
        mode: "background",
        onLlmStart: failsFor("c3", "start"),
        onLlmEndBatch: (events) => events.some((event) => event.call.callId === "c2") ? Effect.fail("batch") : Effect.void,
        retry: Schedule.recurs(0)
      }))
      yield* Effect.forEach(["c1", "c2", "c3"], (callId) =>
        Effect.succeed("ok").pipe(Callbacks.instrument({ provider: "openai", model: "m", callId })), { discard: true })
      yield* Dispatcher.flush
      const warnings = lines.filter((line) => line.level === "WARN").map(({ annotations }) =>
        `${annotations["handler"]} ${annotations["phase"]} ${annotations["callId"]}: ${annotations["error"]}`
      )
      // A failed batch hook fails every end event of its batch.
      const batched = lines.filter((line) => line.level === "WARN" && line.annotations["handler"] === "bg-batch" &&
        line.annotations["phase"] === "end").length
      assert.isAtLeast(batched, 1)
      assert.deepStrictEqual(warnings.filter((line) => !line.startsWith("bg-batch end")).sort(), [
        "bg end c2: end c2",
        "bg start c1: start c1",
        "bg-batch start c3: start c3"
      ])
      assert.isTrue(warnings.includes("bg-batch end c2: batch"))
      const health = yield* Dispatcher.health
      assert.strictEqual(health.handlers.find((h) => h.name === "bg")?.failures, 2)
      assert.strictEqual(health.handlers.find((h) => h.name === "bg")?.successes, 4)
      assert.strictEqual(health.handlers.find((h) => h.name === "bg-batch")?.failures, 1 + batched)
    }).pipe(Effect.provide(Layer.merge(Dispatcher.layer(), layer)))
  })

  it.scoped("is not built when no logger would take it (the minimum level is above warnings)", () => {
    const { layer, lines } = capture()
    return Effect.gen(function*() {
      yield* Dispatcher.register(failing)
      yield* call
      assert.deepStrictEqual(lines.filter((line) => line.level === "WARN"), [])
      // The failure is still counted.
      assert.strictEqual((yield* Dispatcher.health).handlers.find((h) => h.name === "flaky")?.failures, 1)
    }).pipe(Effect.provide(Layer.mergeAll(Dispatcher.layer(), layer, Logger.minimumLogLevel(LogLevel.Error))))
  })
})
