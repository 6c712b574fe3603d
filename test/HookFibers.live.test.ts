/**
 * Hook fibers woken for real, on random concurrent workloads, against the
 * same hooks run by plain Effect (per call: every start hook with
 * `Effect.forEach` at unbounded concurrency, the call, every end hook). A
 * hook's steps suspend on promises that settle and timers that fire (wakes
 * from outside any fiber, which run hook fibers in microtasks of their own),
 * on a `Deferred` another fiber completes (a wake from inside a fiber, which
 * goes to the caller's scheduler), yield, run long enough to be made to
 * yield, and fork children that inherit the hook's scheduler; now and then
 * one hangs until its timeout (a timer, outside any fiber) interrupts it.
 * Compared: per handler and call, the steps its hooks ran, in order, and the
 * hooks interrupted; each call's value; and the handlers' health (successes
 * and timeouts as the steps say, none in flight, none overrunning). A hook of
 * one step on a promise, a timer or a hang is now and then written as that
 * step alone (`bare`), which the dispatcher runs with no fiber; it notes its
 * step when the promise settles, and no interruption (it has nothing to run then).
 * The TestClock-driven reference test (Dispatcher.reference.test.ts) wakes
 * hook fibers from inside fibers only (its hooks that wait on a promise alone
 * run with no fiber). `HOOK_FIBER_RUNS` sets the number of
 * cases (default 40), `HOOK_FIBER_SEED` their seed (a failure names it).
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, FastCheck as fc, Fiber, Layer, ManagedRuntime, Schedule } from "effect"
import { Callbacks, Dispatcher, Handler } from "../src/index.js"

const stepKinds = ["promise", "timer", "deferred", "yield", "spin", "fork", "sync"] as const
type Step = typeof stepKinds[number] | "hang"

interface Case {
  readonly handlers: ReadonlyArray<
    { readonly start: ReadonlyArray<Step>; readonly end: ReadonlyArray<Step>; readonly bare: boolean }
  >
  readonly calls: number
  readonly maxConcurrent: number
}

// Promises most often: the hooks of one dispatch then wake in the same turn, and run in one drain.
// Now and then a hook hangs until its timeout interrupts it (from a timer's callback, outside any fiber).
const stepOf: fc.Arbitrary<Step> = fc.oneof(
  { arbitrary: fc.constant("promise" as const), weight: 24 },
  { arbitrary: fc.constantFrom(...stepKinds), weight: 16 },
  { arbitrary: fc.constant("hang" as const), weight: 1 }
)
const stepsOf = fc.array(stepOf, { minLength: 0, maxLength: 4 })
const caseOf: fc.Arbitrary<Case> = fc.record({
  handlers: fc.array(fc.record({ start: stepsOf, end: stepsOf, bare: fc.boolean() }), { minLength: 1, maxLength: 4 }),
  calls: fc.integer({ min: 1, max: 6 }),
  maxConcurrent: fc.constantFrom(1, 2, 1_000)
})

/** One step of a hook, woken the way its name says. */
const step = (kind: Step): Effect.Effect<void> => {
  switch (kind) {
    case "promise":
      return Effect.promise(() => Promise.resolve())
    case "timer":
      return Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 1)))
    case "deferred":
      return Effect.flatMap(Deferred.make<void>(), (latch) =>
        Effect.zipRight(
          Effect.fork(Effect.zipRight(Effect.yieldNow(), Deferred.succeed(latch, undefined))),
          Deferred.await(latch)
        ))
    case "yield":
      return Effect.yieldNow()
    case "spin":
      // More operations than a fiber runs before it is made to yield (2,048).
      return Effect.forEach(Array.from({ length: 2_500 }), () => Effect.sync(() => {}), { discard: true })
    case "fork":
      return Effect.flatMap(Effect.fork(Effect.promise(() => Promise.resolve())), Fiber.join)
    case "sync":
      return Effect.void
    case "hang":
      return Effect.never
  }
}

/**
 * A hook's timeout, in both implementations: far above what the other steps
 * take on a loaded machine, so that only the hanging hooks reach it.
 */
const TIMEOUT = "250 millis"

type Log = Map<string, Array<string>>

/** What the hooks did: per handler and call, the steps run, in order, and the hooks interrupted. */
interface Seen {
  readonly steps: Log
  readonly interrupted: Log
}

const note = (log: Log, key: string, what: string): void => {
  const seen = log.get(key) ?? []
  seen.push(what)
  log.set(key, seen)
}

/**
 * Runs a hook's steps, noting each one under its handler and call once it
 * has run, and the hook's interruption. (Apart: an interruption and the
 * next hook's steps have no order between them.)
 */
const runHook = (
  seen: Seen,
  handler: number,
  call: number,
  phase: "start" | "end",
  steps: ReadonlyArray<Step>,
  bare: boolean
): Effect.Effect<void> => {
  const key = `handler ${handler}, call ${call}`
  if (bare && steps.length === 1) {
    const noted = () => note(seen.steps, key, `${phase} 0 ${steps[0]}`)
    switch (steps[0]) {
      case "promise":
        return Effect.promise(() => Promise.resolve().then(noted))
      case "timer":
        return Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, 1)).then(noted))
      case "hang":
        return Effect.async<void>(() => {})
    }
  }
  return Effect.onInterrupt(
    Effect.forEach(steps, (kind, i) =>
      Effect.zipRight(step(kind), Effect.sync(() => note(seen.steps, key, `${phase} ${i} ${kind}`))), { discard: true }),
    () => Effect.sync(() => note(seen.interrupted, key, phase))
  )
}

const response = { content: "ok", usage: { promptTokens: 1, completionTokens: 1, totalTokens: 2 } }

/** The calls through the dispatcher, all at once. */
const real = (c: Case) =>
  Effect.gen(function*() {
    const seen: Seen = { steps: new Map(), interrupted: new Map() }
    const callOf = (event: { readonly call: { readonly metadata: Readonly<Record<string, unknown>> } }) =>
      event.call.metadata["call"] as number
    const layer = c.handlers.reduce<Layer.Layer<never, unknown, Dispatcher.Dispatcher>>(
      (acc, spec, h) =>
        Layer.merge(
          acc,
          Dispatcher.toLayer(Handler.make({
            name: `handler-${h}`,
            onLlmStart: (event) => runHook(seen, h, callOf(event), "start", spec.start, spec.bare),
            onLlmEnd: (event) => runHook(seen, h, callOf(event), "end", spec.end, spec.bare),
            timeout: TIMEOUT,
            retry: Schedule.stop
          }))
        ),
      Layer.empty
    ).pipe(Layer.provideMerge(Dispatcher.layer({ maxConcurrent: c.maxConcurrent })))
    // On a runtime of its own, as an application runs its calls.
    const runtime = ManagedRuntime.make(layer)
    const { health, values } = yield* Effect.promise(() =>
      runtime.runPromise(Effect.gen(function*() {
        const values = yield* Effect.forEach(
          Array.from({ length: c.calls }, (_, i) => i),
          (i) =>
            Effect.succeed(`${response.content} ${i}`).pipe(
              Effect.map((content) => ({ ...response, content })),
              Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", messages: [], metadata: { call: i } })
            ),
          { concurrency: "unbounded" }
        )
        return { values, health: yield* Dispatcher.health }
      }))
    ).pipe(Effect.ensuring(Effect.promise(() => runtime.dispose())))
    return { seen, values, health }
  })

/** The same hooks by plain Effect. */
const reference = (c: Case) =>
  Effect.gen(function*() {
    const seen: Seen = { steps: new Map(), interrupted: new Map() }
    const hook = (h: number, i: number, phase: "start" | "end", steps: ReadonlyArray<Step>, bare: boolean) =>
      runHook(seen, h, i, phase, steps, bare).pipe(Effect.timeout(TIMEOUT), Effect.ignore)
    const values = yield* Effect.forEach(
      Array.from({ length: c.calls }, (_, i) => i),
      (i) =>
        Effect.gen(function*() {
          yield* Effect.forEach(c.handlers, (spec, h) => hook(h, i, "start", spec.start, spec.bare), {
            concurrency: "unbounded",
            discard: true
          })
          const value = { ...response, content: `${response.content} ${i}` }
          yield* Effect.forEach(c.handlers, (spec, h) => hook(h, i, "end", spec.end, spec.bare), {
            concurrency: "unbounded",
            discard: true
          })
          return value
        }),
      { concurrency: "unbounded" }
    )
    return { seen, values }
  })

const sorted = (log: Log) => [...log.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))

const runs = Number(process.env["HOOK_FIBER_RUNS"] ?? 40)
const seed = Number(process.env["HOOK_FIBER_SEED"] ?? Math.floor(Math.random() * 2 ** 31))

describe("hook fibers woken for real, against plain Effect", () => {
  it.live(`same steps per handler and call, in order, and interruptions; same values; health counts (${runs} random cases)`, () =>
    Effect.gen(function*() {
      const cases = fc.sample(caseOf, { numRuns: runs, seed })
      for (const [n, c] of cases.entries()) {
        const mine = yield* real(c)
        const theirs = yield* reference(c)
        const where = `case ${n} of seed ${seed} (HOOK_FIBER_SEED=${seed}): ${JSON.stringify(c)}`
        assert.deepStrictEqual(sorted(mine.seen.steps), sorted(theirs.seen.steps), where)
        assert.deepStrictEqual(sorted(mine.seen.interrupted), sorted(theirs.seen.interrupted), where)
        assert.deepStrictEqual(mine.values, theirs.values, where)
        for (const [h, spec] of c.handlers.entries()) {
          const handler = mine.health.handlers.find((handler) => handler.name === `handler-${h}`)!
          const hangs = [spec.start, spec.end].filter((steps) => steps.includes("hang")).length
          assert.strictEqual(handler.successes, c.calls * (2 - hangs), `${where}: ${handler.name}'s successes`)
          assert.strictEqual(handler.timeouts, c.calls * hangs, `${where}: ${handler.name}'s timeouts`)
          assert.strictEqual(handler.failures + handler.defects, 0, `${where}: ${handler.name}`)
          assert.strictEqual(handler.inFlight, 0, `${where}: ${handler.name} in flight`)
          // A timed-out hook was interrupted (from the timeout's timer): none still runs.
          assert.strictEqual(handler.overrunning, 0, `${where}: ${handler.name} overrunning`)
        }
      }
    }), 120_000)
})
