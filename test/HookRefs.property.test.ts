/**
 * The refs a hook starts from, against plain Effect: whatever its callers
 * set (refs that fork to themselves, to a copy, or to a reset value, log
 * annotations, a span), each hook sees what a fiber forked from its call's
 * fiber sees at that point. The dispatcher keeps the refs it made for one
 * caller and reuses or patches them for the next (`InheritedRefs`); random
 * plans of calls, one after the other in one fiber or at once in fibers of
 * their own, check that cache against a plain `Effect.fork` from each call.
 * `HOOK_REFS_RUNS` and `HOOK_REFS_SEED` set the number of cases and the seed.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, FastCheck as fc, Fiber, FiberRef, HashMap, Layer, Option } from "effect"
import { Callbacks, Dispatcher, type Events, Handler } from "../src/index.js"

const response = { content: "ok", usage: { promptTokens: 1, completionTokens: 1, totalTokens: 2 } }
const options = { provider: "openai", model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] }

/** Forks to the value it holds (as most refs, a call context and log annotations do). */
const plain = FiberRef.unsafeMake("plain")
/** Forks to a copy: each fiber gets one of its own. */
const copied = FiberRef.unsafeMake<ReadonlyArray<string>>([], { fork: (items) => [...items] })
/** Forks to one value whichever fiber forks it (as Effect's fork scope override does). */
const reset = FiberRef.unsafeMake("initial", { fork: () => "reset" })

/** What a fiber sees of the refs a caller may set. */
const snapshot: Effect.Effect<string> = Effect.gen(function*() {
  const annotations = yield* FiberRef.get(FiberRef.currentLogAnnotations)
  const span = yield* Effect.option(Effect.currentSpan)
  return [
    yield* FiberRef.get(plain),
    (yield* FiberRef.get(copied)).join(","),
    yield* FiberRef.get(reset),
    Option.getOrElse(HashMap.get(annotations, "request"), () => "-"),
    Option.match(span, { onNone: () => "-", onSome: (span) => span.name })
  ].join(" | ")
})

interface CallSpec {
  readonly plain: string | undefined
  readonly copied: string | undefined
  readonly reset: string | undefined
  readonly annotation: string | undefined
  readonly span: string | undefined
}

interface Plan {
  readonly calls: ReadonlyArray<CallSpec>
  /** One after the other in one fiber (the kept refs' case), or at once in fibers of their own. */
  readonly atOnce: boolean
}

// Few values, so that consecutive calls often hold the same ones.
const valueOf = fc.option(fc.constantFrom("a", "b", "c"), { nil: undefined, freq: 3 })

const planOf: fc.Arbitrary<Plan> = fc.record({
  calls: fc.array(
    fc.record({
      plain: valueOf,
      // Rarer: from the first call that sets it on, the plan's calls fork their refs anew.
      copied: fc.oneof(
        { arbitrary: fc.constant(undefined), weight: 8 },
        { arbitrary: fc.constant("x"), weight: 1 }
      ),
      reset: valueOf,
      annotation: valueOf,
      span: valueOf
    }),
    { minLength: 1, maxLength: 8 }
  ),
  atOnce: fc.boolean()
})

/** A call set up as `spec` says: what a fiber forked from it sees, read before the call. */
const oneCall = (spec: CallSpec, i: number): Effect.Effect<string> => {
  let call: Effect.Effect<string> = Effect.gen(function*() {
    // Awaited, not joined: a join would give the call the probe's refs (a copy of `copied`).
    const expected = yield* Effect.flatten(Fiber.await(yield* Effect.fork(snapshot)))
    yield* Effect.succeed(response).pipe(Callbacks.instrument({ ...options, model: String(i) }))
    return expected
  })
  if (spec.plain !== undefined) call = Effect.locally(call, plain, spec.plain)
  if (spec.copied !== undefined) call = Effect.locally(call, copied, [spec.copied])
  if (spec.reset !== undefined) call = Effect.locally(call, reset, spec.reset)
  if (spec.annotation !== undefined) call = Effect.annotateLogs(call, "request", spec.annotation)
  if (spec.span !== undefined) call = Effect.withSpan(call, spec.span)
  return call
}

const runPlan = (plan: Plan) =>
  Effect.gen(function*() {
    const seen: Array<string> = []
    const note = (how: string, event: Events.StartEvent | Events.EndEvent) =>
      Effect.flatMap(snapshot, (values) => Effect.sync(() => seen.push(`${event.call.model} ${how} ${event._tag}: ${values}`)))
    // One hook that completes on its fiber at once, one that suspends first (on a promise: no timer).
    const handlers = Layer.mergeAll(
      Dispatcher.toLayer(Handler.make({
        name: "at-once",
        onLlmStart: (event) => note("at-once", event),
        onLlmEnd: (event) => note("at-once", event)
      })),
      Dispatcher.toLayer(Handler.make({
        name: "suspends",
        onLlmStart: (event) => Effect.zipRight(Effect.promise(() => Promise.resolve()), note("suspends", event)),
        onLlmEnd: (event) => Effect.zipRight(Effect.promise(() => Promise.resolve()), note("suspends", event))
      }))
    ).pipe(Layer.provideMerge(Dispatcher.layer()))
    const expected = yield* Effect.forEach(plan.calls, oneCall, {
      concurrency: plan.atOnce ? "unbounded" : 1
    }).pipe(Effect.provide(handlers))
    const wanted = expected.flatMap((values, i) =>
      ["at-once", "suspends"].flatMap((how) => ["Start", "End"].map((tag) => `${i} ${how} ${tag}: ${values}`))
    )
    return { seen: [...seen].sort(), wanted: wanted.sort() }
  })

const runs = Number(process.env["HOOK_REFS_RUNS"] ?? 150)
const seed = Number(process.env["HOOK_REFS_SEED"] ?? Math.floor(Math.random() * 2 ** 31))

describe("the refs hooks start from, against a fiber forked from the call", () => {
  // Live: the suspending hooks wait for a promise, not for a clock.
  it.live(`each hook sees what a fiber forked from its call sees (${runs} random plans)`, () =>
    Effect.gen(function*() {
      for (const [n, plan] of fc.sample(planOf, { numRuns: runs, seed }).entries()) {
        // On a fiber of its own, awaited, not joined (a join would take its refs): a ref set by one
        // plan's calls stays in its fiber's refs (at its old value), and one that forks to a copy keeps
        // the refs from being kept from then on.
        const { seen, wanted } = yield* Effect.flatten(Fiber.await(yield* Effect.fork(runPlan(plan))))
        assert.deepStrictEqual(seen, wanted, `plan ${n} of seed ${seed} (HOOK_REFS_SEED=${seed}): ${JSON.stringify(plan)}`)
      }
    }), 120_000)
})
