/**
 * The real dispatcher against the reference model (test/support/referenceDispatcher.ts)
 * on random concurrent workloads under the TestClock (2-8 calls, 1-4 await
 * and background handlers with random behaviours per phase and priorities,
 * callers interrupted at random times): per handler, the events its hooks
 * were invoked with for each call (attempts included) and in order; each
 * call's Exit and the virtual time it completed at; and the outcome counts of
 * `health`. Concurrency bounds of 1, 2, 3 and unbounded; in some cases the
 * layer is closed while calls are in flight. `REFERENCE_RUNS` sets the
 * number of cases (default 300), `REFERENCE_SEED` their seed (a failure
 * names it), `REFERENCE_CONCURRENCY` how many run at once (default 8).
 */
import { describe, it } from "@effect/vitest"
import {
  Clock,
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
import { compareCases } from "./support/referenceCases.js"
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
 * The concurrency bounds tried. Bounded, invocations wait for a slot first
 * come, first served in both implementations (the reference with a FIFO
 * semaphore of its own: Effect's `Semaphore` lets a newcomer take a permit
 * released at the same instant). Bounded, when a slot frees up, the
 * dispatches that resume at that instant run in the scheduler's order, which
 * differs between the two implementations (the real one hands the slot over
 * synchronously, the reference wakes fibers): which call gets the slot first
 * is no semantic, and what depends on it (when a call completes, which phase
 * an interruption or the layer's close lands in, which of a background
 * consumer and an await invocation takes the last slot) is not compared.
 * Bounded cases therefore have await handlers, no interruptions and no close:
 * then every invocation's outcome depends on its own behaviour only (its
 * timeout starts when it gets a slot), and the events heard, the Exits and
 * the health counts must be equal.
 */
const bounds = [1, 2, 3, 1_000] as const
const unbounded = 1_000
// How far the clock moves at a time once nothing is scheduled by the test (sleepers in between run at their instants).
const STEP = 500
/**
 * How long calls may take, in virtual time: more than the slowest workload
 * (8 calls one at a time, each through 4 handlers timing out after 1 s in
 * both phases), so that no call is cut off while its handlers still run.
 */
const horizon = 120_000
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
  /** Health counts, when the layer was not closed mid-flight (closing unregisters the handlers). */
  readonly counts: ReadonlyArray<Reference.Counts> | undefined
}

/**
 * When call `i` starts: no two calls start at the same instant, so that both
 * implementations see invocations wait for a slot in the same order (at one
 * instant, the order of fibers is the scheduler's, not a semantic).
 */
const startOf = (call: CallSpec, i: number): number => 150 * i + call.startAt

/** Runs `effect` while moving the clock, until it completes. */
const withClock = <A>(effect: Effect.Effect<A>) =>
  Effect.gen(function*() {
    const fiber = yield* Effect.fork(effect)
    for (let i = 0; i < horizon / STEP && Option.isNone(yield* Fiber.poll(fiber)); i++) yield* TestClock.adjust(STEP)
    const exit = yield* Fiber.poll(fiber)
    if (Option.isNone(exit)) return yield* Effect.dieMessage(`did not complete within ${horizon / 1000} virtual seconds`)
    return yield* exit.value
  })

/**
 * Starts the calls at their times, interrupts them at theirs, closes the
 * layer at `closeAt`, and moves the clock until all calls are done (at most
 * `horizon`). Each call's completion is read from the clock when it
 * completes: the clock jumps from one scheduled action to the next, and every
 * `TestClock.adjust` costs real time (it waits for the fibers to settle).
 */
const drive = (
  calls: ReadonlyArray<CallSpec>,
  closeAt: number | undefined,
  close: Effect.Effect<void>,
  instrument: (index: number, call: Effect.Effect<string, CallFailed>) => Effect.Effect<string, CallFailed>
) =>
  Effect.gen(function*() {
    const fibers: Array<Fiber.RuntimeFiber<string, CallFailed> | undefined> = calls.map(() => undefined)
    const doneAt: Array<number | undefined> = calls.map(() => undefined)
    let closing: Fiber.RuntimeFiber<void> | undefined
    const origin = yield* Clock.currentTimeMillis
    // What happens when: starts, interruptions, the close (never at the same instant as another).
    const actions = new Map<number, Array<Effect.Effect<void>>>()
    const at = (t: number, action: Effect.Effect<void>) => actions.set(t, [...(actions.get(t) ?? []), action])
    if (closeAt !== undefined) at(closeAt, Effect.map(Effect.fork(close), (fiber) => void (closing = fiber)))
    for (const [i, call] of calls.entries()) {
      const started = instrument(i, bareCall(call.outcome)).pipe(
        Effect.onExit(() => Effect.map(Clock.currentTimeMillis, (now) => void (doneAt[i] = now - origin)))
      )
      at(startOf(call, i), Effect.map(Effect.forkDaemon(started), (fiber) => void (fibers[i] = fiber)))
      if (call.interruptAt !== undefined) {
        // The fiber is read when the interruption is due, once the call started.
        at(startOf(call, i) + call.interruptAt, Effect.asVoid(Effect.fork(Effect.suspend(() => Fiber.interrupt(fibers[i]!)))))
      }
    }
    const times = Array.from(actions.keys()).sort((x, y) => x - y)
    let now = 0
    for (const t of times) {
      if (t > now) yield* TestClock.adjust(t - now)
      now = t
      yield* Effect.all(actions.get(t)!, { discard: true })
    }
    while (now < horizon && doneAt.some((d) => d === undefined)) {
      yield* TestClock.adjust(STEP)
      now += STEP
    }
    if (closing !== undefined) yield* withClock(Fiber.join(closing))
    // A call still running past the horizon hangs: reported, not awaited.
    return yield* Effect.forEach(fibers, (fiber, i) =>
      Effect.map(Fiber.poll(fiber!), (exit) => ({
        exit: Option.isSome(exit) ? normalize(exit.value) : "hung",
        doneAt: doneAt[i] ?? -1
      })))
  })


/** `call` begun by hand (interruptibly, as a stream's acquire does), run, and finished with its `Exit`. */
const begunByHand = <A, E>(call: Effect.Effect<A, E>, callId: string): Effect.Effect<A, E> =>
  Effect.acquireUseRelease(
    Callbacks.begin({ provider: "p", model: "m", callId }, { interruptible: true }),
    () => call,
    (active, exit) => Option.isSome(active) ? active.value.finish(exit) : Effect.void
  )

const runReal = (
  specs: ReadonlyArray<HandlerSpec>,
  calls: ReadonlyArray<CallSpec>,
  maxConcurrent: number,
  closeAt: number | undefined
) =>
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
    const results = yield* drive(
      calls,
      closeAt,
      Scope.close(scope, Exit.void),
      // Every other call is begun by hand, as a stream integration begins its call: the same semantics.
      (i, call) =>
        (i % 2 === 0 ? call.pipe(Callbacks.instrument({ provider: "p", model: "m", callId: `c${i}` })) : begunByHand(call, `c${i}`))
          .pipe(Effect.provide(context))
    )
    if (closeAt !== undefined) {
      yield* TestClock.adjust("2 seconds")
      return { log, calls: results, counts: undefined } satisfies Run
    }
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

const runReference = (
  specs: ReadonlyArray<HandlerSpec>,
  calls: ReadonlyArray<CallSpec>,
  maxConcurrent: number,
  closeAt: number | undefined
) =>
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
    const results = yield* drive(calls, closeAt, reference.close, (i, call) => reference.instrument(`c${i}`, call))
    if (closeAt !== undefined) {
      yield* Scope.close(scope, Exit.void)
      yield* TestClock.adjust("2 seconds")
      return { log, calls: results, counts: undefined } satisfies Run
    }
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

const caseOf = fc.record({
  specs: fc.array(handlerSpec, { minLength: 1, maxLength: 4 }),
  calls: fc.array(callSpec, { minLength: 2, maxLength: 8 }),
  maxConcurrent: fc.constantFrom(...bounds),
  // Closing times are multiples of 50 ms plus 25: never at a start, an interruption or a timeout.
  closeAt: fc.option(fc.integer({ min: 0, max: 30 }).map((k) => 100 * k + 25), { nil: undefined, freq: 4 })
}).map(({ calls, closeAt, maxConcurrent, specs }) => {
  const bounded = maxConcurrent !== unbounded
  // Closing, the handlers are unregistered one after the other, the last registered first, each
  // background one after its drain: a handler registered before a background one is removed when
  // that drain ends, an instant at which calls dispatch too (on the same 50 ms grid), in the
  // scheduler's order. So in closing cases only the first handler may be a background one: every
  // other is removed at the closing instant itself, when nothing else happens. (20,000 cases found
  // 2 such ties, and no difference of semantics.)
  const awaitOnly = bounded ? () => true : closeAt !== undefined ? (index: number) => index > 0 : () => false
  return {
    specs: specs.map((spec, index) => awaitOnly(index) ? { ...spec, mode: "await" as const } : spec),
    calls: bounded ? calls.map((call) => ({ ...call, interruptAt: undefined })) : calls,
    maxConcurrent,
    closeAt: bounded ? undefined : closeAt
  }
})

type Case = typeof caseOf extends fc.Arbitrary<infer A> ? A : never

/** What differs between the two runs of a case, if anything. */
const compare = (c: Case) =>
  Effect.gen(function*() {
    const real = yield* runReal(c.specs, c.calls, c.maxConcurrent, c.closeAt)
    const reference = yield* runReference(c.specs, c.calls, c.maxConcurrent, c.closeAt)
    const differences: Array<string> = []
    const differ = (what: string, a: unknown, b: unknown) => {
      if (JSON.stringify(a) !== JSON.stringify(b)) differences.push(`${what}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`)
    }
    for (const [index] of c.specs.entries()) {
      differ(`h${index} heard`, byCall(real.log[index]!), byCall(reference.log[index]!))
    }
    differ("exits", real.calls.map((call) => call.exit), reference.calls.map((call) => call.exit))
    differ("health counts", real.counts, reference.counts)
    // Unbounded, both complete each call at the same virtual time.
    if (c.maxConcurrent === unbounded) differ("completion times", real.calls, reference.calls)
    return differences
  })

/**
 * Cases run first, every time: a caller interrupted during a start hook's
 * first attempt, and the two bounded cases that once differed (in the
 * scheduler's order at one instant, see `bounds`). The one defect the
 * comparison found is a regression test in DispatcherRegressions.test.ts.
 */
const regressions: ReadonlyArray<Case> = [
  {
    // A caller interrupted while a start hook is in its first attempt: that handler hears no terminal event.
    specs: [{ start: "slow", end: "succeed", error: "succeed", priority: 0, mode: "await" }],
    calls: [
      { outcome: "succeed", startAt: 0, interruptAt: 150 },
      { outcome: "succeed", startAt: 0, interruptAt: undefined }
    ],
    maxConcurrent: 1000,
    closeAt: undefined
  },
  {
    // An await handler holding the one slot past its timeout while another call waits.
    specs: [
      { start: "succeed", end: "ignoreInterruption", error: "succeed", priority: 1, mode: "await" },
      { start: "succeed", end: "succeed", error: "succeed", priority: 0, mode: "await" }
    ],
    calls: [
      { outcome: "succeed", startAt: 0, interruptAt: undefined },
      { outcome: "succeed", startAt: 0, interruptAt: undefined }
    ],
    maxConcurrent: 1,
    closeAt: undefined
  },
  {
    // Retries 200 ms apart holding the one slot while a second call queues.
    specs: [
      { start: "fail", end: "succeed", error: "succeed", priority: 0, mode: "await" },
      { start: "succeed", end: "succeed", error: "succeed", priority: 0, mode: "await" }
    ],
    calls: [
      { outcome: "succeed", startAt: 0, interruptAt: undefined },
      { outcome: "succeed", startAt: 0, interruptAt: undefined }
    ],
    maxConcurrent: 1,
    closeAt: undefined
  }
]

const runs = Number(process.env["REFERENCE_RUNS"] ?? 300)
const seed = Number(process.env["REFERENCE_SEED"] ?? Math.floor(Math.random() * 2 ** 31))

describe("Dispatcher against the reference model", () => {
  it.effect(
    `same events per handler and call, same Exits at the same virtual times, same health counts (${runs} random cases)`,
    () =>
      compareCases({
        cases: [...regressions, ...fc.sample(caseOf, { numRuns: runs, seed })],
        compare,
        seed: `REFERENCE_SEED=${seed}`,
        concurrency: Number(process.env["REFERENCE_CONCURRENCY"] ?? 8)
      }),
    // About 70 ms a case here; generous for slow machines and long runs.
    Math.max(600_000, runs * 500)
  )
})
