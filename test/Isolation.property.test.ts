/**
 * The central law of the library: whatever the handlers do, the instrumented
 * call's (or tool run's) Exit equals the bare one's, every handler hears
 * exactly one terminal event per call (after its start), and await-mode
 * handlers add a bounded delay.
 */
import { assert, describe, it } from "@effect/vitest"
import {
  Cause,
  Duration,
  Effect,
  Exit,
  FastCheck as fc,
  Fiber,
  Layer,
  Option,
  Schedule,
  Scope,
  TestClock
} from "effect"
import { Callbacks, Dispatcher, Handler } from "../src/index.js"
import { bareCall, type Behaviour, behaviours, behave, CallFailed, callOutcomes, normalize } from "./support/behaviours.js"

// The isolation law's own behaviours: those of the reference comparison but
// "suspend" and "ignoreInterruption", whose latency the bound below does not cover.
const isolationBehaviours = behaviours.filter((b) => b !== "suspend" && b !== "ignoreInterruption")

const outcomes = [...callOutcomes, "callerInterrupted"] as const
type Outcome = typeof outcomes[number]

interface Spec {
  readonly behaviour: Behaviour
  readonly priority: number
  readonly mode: Handler.Mode
}

const TIMEOUT = Duration.seconds(1)
const STEP = Duration.millis(100)

const call = (outcome: Outcome): Effect.Effect<string, CallFailed> =>
  outcome === "callerInterrupted" ? Effect.never : bareCall(outcome)

const now = Effect.clockWith((clock) => clock.currentTimeMillis)

/** Runs `self`, moving the TestClock; for "callerInterrupted", interrupts it after 500 ms. */
const drive = <A, E, R>(self: Effect.Effect<A, E, R>, outcome: Outcome) =>
  Effect.gen(function*() {
    const started = yield* now
    const fiber = yield* Effect.fork(self)
    let interrupter: Fiber.RuntimeFiber<unknown> | undefined
    for (let i = 0; i < 1000; i++) {
      if (Option.isSome(yield* Fiber.poll(fiber))) break
      if (outcome === "callerInterrupted" && interrupter === undefined && (yield* now) - started >= 500) {
        interrupter = yield* Effect.fork(Fiber.interrupt(fiber))
      }
      yield* TestClock.adjust(STEP)
    }
    const exit = yield* Fiber.await(fiber)
    return { exit, elapsed: (yield* now) - started }
  })

describe("isolation law", () => {
  it.effect.prop(
    "the instrumented call's Exit is the bare call's; start then one terminal event per handler; bounded latency",
    {
      specs: fc.array(
        fc.record({
          behaviour: fc.constantFrom(...isolationBehaviours),
          priority: fc.integer({ min: 0, max: 2 }),
          mode: fc.constantFrom<Handler.Mode>("await", "await", "background")
        }),
        { minLength: 1, maxLength: 5 }
      ),
      outcome: fc.constantFrom(...outcomes),
      // Small bounds exercise the queue of invocations waiting for a slot.
      maxConcurrent: fc.constantFrom(1, 2, 100),
      // An LLM call (start, end / error) or a tool run (tool_start, tool_end / tool_error): the same law.
      kind: fc.constantFrom<"llm" | "tool">("llm", "tool")
    },
    (
      { kind, maxConcurrent, outcome, specs }: {
        specs: ReadonlyArray<Spec>
        outcome: Outcome
        maxConcurrent: number
        kind: "llm" | "tool"
      }
    ) =>
      Effect.gen(function*() {
        const heard = specs.map(() => [] as Array<{ readonly _tag: string }>)
        // Whether a handler's start hook ran to an end of its own (not interrupted).
        const startSettled = specs.map(() => false)
        const handlers = specs.map((spec, index) => {
          let attempts = 0
          const hook = (event: { readonly _tag: string }) => {
            heard[index]!.push(event)
            return behave(spec.behaviour, ++attempts).pipe(
              Effect.onExit((exit) =>
                Effect.sync(() => {
                  const opening = event._tag === "Start" || event._tag === "ToolStart"
                  if (opening && !(Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause))) {
                    startSettled[index] = true
                  }
                })
              )
            )
          }
          return Handler.make({
            name: `h${index}`,
            priority: spec.priority,
            mode: spec.mode,
            timeout: TIMEOUT,
            retry: Schedule.spaced("200 millis").pipe(Schedule.intersect(Schedule.recurs(2))),
            ...(kind === "llm"
              ? { onLlmStart: hook, onLlmEnd: hook, onLlmError: hook }
              : { onToolStart: hook, onToolEnd: hook, onToolError: hook })
          })
        })
        const layer = handlers.reduce<Layer.Layer<never, unknown, Dispatcher.Dispatcher>>(
          (acc, h) => Layer.merge(acc, Dispatcher.toLayer(h)),
          Layer.empty
        ).pipe(Layer.provideMerge(Dispatcher.layer({ shutdownTimeout: "1 minute", maxConcurrent })))

        const bare = yield* drive(call(outcome), outcome)
        const scope = yield* Scope.make()
        const context = yield* Layer.buildWithScope(layer, scope)
        const instrumented = yield* drive(
          call(outcome).pipe(
            (self) =>
              kind === "llm"
                ? Callbacks.instrument(self, { provider: "p", model: "m", messages: [{ role: "user", content: "x" }] })
                : Callbacks.instrumentTool(self, { name: "t", params: { q: 1 } }),
            Effect.provide(context)
          ),
          outcome
        )
        // Closing the layer drains background deliveries.
        yield* drive(Scope.close(scope, Exit.void), "succeed")

        // 1. Same Exit.
        assert.deepStrictEqual(normalize(instrumented.exit), normalize(bare.exit))

        // 2. Each handler heard start, then exactly one terminal event. Retries
        //    repeat the same event object; distinct events are what was delivered.
        for (const [index, events] of heard.entries()) {
          const distinct = Array.from(new Set(events))
          const label = `h${index} (${specs[index]!.behaviour}, ${specs[index]!.mode}) heard ${events.map((e) => e._tag)}`
          // A caller interrupted during the start dispatch stops it: handlers of
          // lower priority groups not reached yet hear neither start nor a terminal event.
          if (distinct.length === 0 && outcome === "callerInterrupted" && specs[index]!.mode === "await") continue
          // A start cancelled by the caller's interruption was not heard: no terminal event
          // follows. A start that ran to its end (or to its timeout) is followed by exactly one.
          const [open, end, error] = kind === "llm" ? ["Start", "End", "Error"] : ["ToolStart", "ToolEnd", "ToolError"]
          if (outcome === "callerInterrupted" && distinct.length === 1 && !startSettled[index]) {
            assert.strictEqual(distinct[0]!._tag, open, label)
            continue
          }
          assert.strictEqual(distinct.length, 2, label)
          assert.strictEqual(distinct[0]!._tag, open, label)
          assert.include([end, error], distinct[1]!._tag, label)
          if (outcome !== "succeed" && outcome !== "slowSucceed") assert.strictEqual(distinct[1]!._tag, error, label)
        }

        // 3. Await handlers add at most one timeout per priority group and phase
        //    (plus one clock step of slack for the driver's granularity).
        // When the concurrency bound is tighter than the handlers, invocations (background ones
        // included) may wait for one another: then each invocation adds at most one timeout.
        const groups = new Set(specs.filter((s) => s.mode === "await").map((s) => s.priority)).size
        const waits = maxConcurrent >= specs.length ? groups : specs.length
        const bound = 2 * waits * Duration.toMillis(TIMEOUT) + Duration.toMillis(STEP)
        assert.isAtMost(instrumented.elapsed - bare.elapsed, bound)
      }),
    { fastCheck: { numRuns: 150 } }
  )
})
