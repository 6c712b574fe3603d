/**
 * The real dispatcher against the reference model (test/support/referenceDispatcher.ts)
 * on random concurrent workloads under the TestClock (2-8 calls, 1-4 await
 * and background handlers with random behaviours per phase and priorities,
 * callers interrupted at random times): per handler, the events its hooks
 * were invoked with for each call (attempts included) and in order; each
 * call's Exit and the virtual time it completed at; and the outcome counts of
 * `health`. `REFERENCE_RUNS` sets the number of cases (default 100).
 */
import { assert, describe, it } from "@effect/vitest"
import {
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
import { bareCall, type Behaviour, behaviours, behave, type CallFailed, normalize } from "./support/behaviours.js"
import * as Reference from "./support/referenceDispatcher.js"

const callOutcomes = ["succeed", "fail", "die", "slowSucceed", "slowFail"] as const

interface HandlerSpec {
  readonly start: Behaviour
  readonly end: Behaviour
  readonly error: Behaviour
  readonly priority: number
  readonly mode: "await" | "background"
}

interface CallSpec {
  readonly outcome: typeof callOutcomes[number]
  readonly startAt: number
  readonly interruptAt: number | undefined
}

const TIMEOUT = Duration.seconds(1)

/**
 * The concurrency bound of both implementations. Bounded, the order in which
 * invocations that arrive at the same instant get a slot is the scheduler's
 * (Effect's `Semaphore` lets a newcomer take a permit released at that instant
 * before a waiter resumes; the real dispatcher's queue is strictly FIFO), so
 * the two are not comparable event for event: bounded concurrency is covered by
 * the invariants of test/Isolation.property.test.ts and the regression tests.
 */
const unbounded = 1_000
const STEP = 50
// Hook and call durations (300, 700, 1500 ms, retries every 200 ms) and
// interruption times (x50 ms, odd multiples) never coincide with a timeout.
const retry = Schedule.spaced("200 millis").pipe(Schedule.intersect(Schedule.recurs(2)))

/** What the hooks of each handler were invoked with, and the hook shared by both implementations. */
const makeHooks = (specs: ReadonlyArray<HandlerSpec>) => {
  const log = specs.map(() => [] as Array<string>)
  const attempts = new Map<string, number>()
  const hook = (index: number) => (phase: Reference.Phase, callId: string): Effect.Effect<void, string> => {
    log[index]!.push(`${phase} ${callId}`)
    const key = `${index} ${phase} ${callId}`
    const attempt = (attempts.get(key) ?? 0) + 1
    attempts.set(key, attempt)
    return behave(specs[index]![phase], attempt)
  }
  return { log, hook }
}

interface Run {
  readonly log: ReadonlyArray<ReadonlyArray<string>>
  readonly calls: ReadonlyArray<{ readonly exit: unknown; readonly doneAt: number }>
  readonly counts: ReadonlyArray<Reference.Counts>
}

/**
 * When call `i` starts: no two calls start at the same instant, so that both
 * implementations see invocations wait for a slot in the same order (at one
 * instant, the order of fibers is the scheduler's, not a semantic).
 */
const startOf = (call: CallSpec, i: number): number => 150 * i + call.startAt

/** Starts the calls at their times, interrupts them at theirs, and moves the clock until all are done. */
const drive = (
  calls: ReadonlyArray<CallSpec>,
  instrument: (index: number, call: Effect.Effect<string, CallFailed>) => Effect.Effect<string, CallFailed>
) =>
  Effect.gen(function*() {
    const fibers: Array<Fiber.RuntimeFiber<string, CallFailed> | undefined> = calls.map(() => undefined)
    const doneAt: Array<number | undefined> = calls.map(() => undefined)
    for (let t = 0; t <= 20_000; t += STEP) {
      for (const [i, call] of calls.entries()) {
        if (startOf(call, i) === t) fibers[i] = yield* Effect.fork(instrument(i, bareCall(call.outcome)))
        if (call.interruptAt !== undefined && startOf(call, i) + call.interruptAt === t) {
          yield* Effect.fork(Fiber.interrupt(fibers[i]!))
        }
      }
      for (const [i, fiber] of fibers.entries()) {
        if (fiber !== undefined && doneAt[i] === undefined && Option.isSome(yield* Fiber.poll(fiber))) doneAt[i] = t
      }
      if (doneAt.every((d) => d !== undefined)) break
      yield* TestClock.adjust(STEP)
    }
    // A call still running after 20 virtual seconds hangs: reported, not awaited.
    return yield* Effect.forEach(fibers, (fiber, i) =>
      Effect.map(Fiber.poll(fiber!), (exit) => ({
        exit: Option.isSome(exit) ? normalize(exit.value) : "hung",
        doneAt: doneAt[i] ?? -1
      })))
  })

/** Runs `effect` while moving the clock, until it completes. */
const withClock = <A>(effect: Effect.Effect<A>) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(effect)
    for (let i = 0; i < 2_000 && Option.isNone(yield* Fiber.poll(fiber)); i++) yield* TestClock.adjust(STEP)
    const exit = yield* Fiber.poll(fiber)
    if (Option.isNone(exit)) return yield* Effect.dieMessage("did not complete within 100 virtual seconds")
    return yield* exit.value
  })

const runReal = (specs: ReadonlyArray<HandlerSpec>, calls: ReadonlyArray<CallSpec>, maxConcurrent: number) =>
  Effect.gen(function*() {
    const { hook, log } = makeHooks(specs)
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(Dispatcher.layer({ maxConcurrent, shutdownTimeout: "1 minute" }), scope)
    yield* Effect.forEach(specs, (spec, index) =>
      Dispatcher.register(Handler.make({
        name: `h${index}`,
        priority: spec.priority,
        mode: spec.mode,
        timeout: TIMEOUT,
        retry,
        onLlmStart: (event) => hook(index)("start", event.call.callId),
        onLlmEnd: (event) => hook(index)("end", event.call.callId),
        onLlmError: (event) => hook(index)("error", event.call.callId)
      })).pipe(Scope.extend(scope), Effect.provide(context)))
    const results = yield* drive(calls, (i, call) =>
      call.pipe(Callbacks.instrument({ provider: "p", model: "m", callId: `c${i}` }), Effect.provide(context)))
    yield* withClock(Dispatcher.flush.pipe(Effect.provide(context)))
    const health = yield* Dispatcher.health.pipe(Effect.provide(context))
    const counts = specs.map((_, index) => {
      const h = health.handlers.find((x) => x.name === `h${index}`)!
      return {
        successes: h.successes,
        failures: h.failures,
        defects: h.defects,
        timeouts: h.timeouts,
        interruptions: h.interruptions,
        retries: h.retries
      }
    })
    yield* withClock(Scope.close(scope, Exit.void))
    // Let hooks that ignore interruption end.
    yield* TestClock.adjust("2 seconds")
    return { log, calls: results, counts } satisfies Run
  })

const runReference = (specs: ReadonlyArray<HandlerSpec>, calls: ReadonlyArray<CallSpec>, maxConcurrent: number) =>
  Effect.gen(function*() {
    const { hook, log } = makeHooks(specs)
    const scope = yield* Scope.make()
    const reference = yield* Reference.make(
      specs.map((spec, index) => ({
        name: `h${index}`,
        priority: spec.priority,
        mode: spec.mode,
        timeout: TIMEOUT,
        retry,
        hook: hook(index)
      })),
      maxConcurrent
    ).pipe(Scope.extend(scope))
    const results = yield* drive(calls, (i, call) => reference.instrument(`c${i}`, call))
    yield* withClock(reference.flush)
    const counts = specs.map((_, index) => ({ ...reference.counts(`h${index}`) }))
    yield* Scope.close(scope, Exit.void)
    yield* TestClock.adjust("2 seconds")
    return { log, calls: results, counts } satisfies Run
  })

/** Per handler, the events of each call in order (interleavings across calls may differ). */
const byCall = (log: ReadonlyArray<string>) => {
  const calls = new Map<string, Array<string>>()
  for (const line of log) {
    const [phase, callId] = line.split(" ") as [string, string]
    calls.set(callId, [...(calls.get(callId) ?? []), phase])
  }
  return Object.fromEntries(Array.from(calls.entries()).sort(([a], [b]) => a.localeCompare(b)))
}

const handlerSpec = fc.record({
  start: fc.constantFrom(...behaviours),
  end: fc.constantFrom(...behaviours),
  error: fc.constantFrom(...behaviours),
  priority: fc.constantFrom(0, 1),
  mode: fc.constantFrom<"await" | "background">("await", "await", "await", "background")
})

const callSpec = fc.record({
  outcome: fc.constantFrom(...callOutcomes),
  startAt: fc.constantFrom(0, 50, 100),
  interruptAt: fc.option(fc.constantFrom(150, 350, 550, 850, 1150), { nil: undefined })
})

describe("Dispatcher against the reference model", () => {
  it.effect.prop(
    "same events per handler and call, same Exits at the same virtual times, same health counts",
    {
      specs: fc.array(handlerSpec, { minLength: 1, maxLength: 4 }),
      calls: fc.array(callSpec, { minLength: 2, maxLength: 8 }),
    },
    ({ calls, specs }) =>
      Effect.gen(function*() {
        const real = yield* runReal(specs, calls, unbounded)
        const reference = yield* runReference(specs, calls, unbounded)
        for (const [index] of specs.entries()) {
          assert.deepStrictEqual(byCall(real.log[index]!), byCall(reference.log[index]!), `h${index} heard`)
        }
        assert.deepStrictEqual(real.calls.map((c) => c.exit), reference.calls.map((c) => c.exit), "exits")
        assert.deepStrictEqual(real.counts, reference.counts, "health counts")
        // Nothing waits for a slot: both complete each call at the same virtual time.
        assert.deepStrictEqual(real.calls, reference.calls, "completion times")
      }),
    { fastCheck: { numRuns: Number(process.env["REFERENCE_RUNS"] ?? 100) }, timeout: 600_000 }
  )
})
