/**
 * `runNow` (src/internal/steps.ts) runs an effect with no fiber as far as
 * its steps need none, and hands back the rest: checked against Effect's own
 * run loop on random effects of successes, failures, synchronous steps that
 * log or throw, commits, `flatMap`, `map`, `catchAllCause`,
 * `matchCauseEffect`, generators (`Effect.gen`), and steps that need a fiber
 * (a yield, a read of the fiber), with random budgets. The exit and the order in which the steps
 * ran must be the same, every step run exactly once. With asynchronous steps (promises, `Effect.async`
 * resumed later or at once), so is it when each wait that `waitOf` finds is waited on with no fiber, and
 * `runNow` goes on with what it was resumed with, as the dispatcher does.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Equal, Exit, FastCheck as fc } from "effect"
import { runNow, waitOf } from "../src/internal/steps.js"

type Node =
  | { readonly t: "succeed"; readonly v: number }
  | { readonly t: "fail"; readonly e: string }
  | { readonly t: "sync"; readonly id: number }
  | { readonly t: "throw"; readonly id: number }
  | { readonly t: "flatMap"; readonly a: Node; readonly b: Node }
  | { readonly t: "map"; readonly a: Node }
  | { readonly t: "catch"; readonly a: Node; readonly b: Node }
  | { readonly t: "match"; readonly a: Node; readonly onFailure: Node; readonly onSuccess: Node }
  | { readonly t: "suspend"; readonly a: Node }
  | { readonly t: "yield"; readonly a: Node }
  | { readonly t: "withFiber"; readonly a: Node }
  | { readonly t: "gen"; readonly parts: ReadonlyArray<Node> }
  | { readonly t: "promise"; readonly v: number }
  | { readonly t: "asyncFail"; readonly e: string }
  | { readonly t: "asyncNow"; readonly v: number }

const { node } = fc.letrec<{ node: Node }>((tie) => ({
  node: fc.oneof(
    { depthSize: "small", withCrossShrink: true },
    fc.record({ t: fc.constant("succeed" as const), v: fc.integer({ min: 0, max: 9 }) }),
    fc.record({ t: fc.constant("fail" as const), e: fc.constantFrom("a", "b") }),
    fc.record({ t: fc.constant("sync" as const), id: fc.integer({ min: 0, max: 99 }) }),
    fc.record({ t: fc.constant("throw" as const), id: fc.integer({ min: 0, max: 99 }) }),
    fc.record({ t: fc.constant("flatMap" as const), a: tie("node"), b: tie("node") }),
    fc.record({ t: fc.constant("map" as const), a: tie("node") }),
    fc.record({ t: fc.constant("catch" as const), a: tie("node"), b: tie("node") }),
    fc.record({ t: fc.constant("match" as const), a: tie("node"), onFailure: tie("node"), onSuccess: tie("node") }),
    fc.record({ t: fc.constant("suspend" as const), a: tie("node") }),
    fc.record({ t: fc.constant("yield" as const), a: tie("node") }),
    fc.record({ t: fc.constant("withFiber" as const), a: tie("node") }),
    fc.record({ t: fc.constant("gen" as const), parts: fc.array(tie("node"), { maxLength: 4 }) }),
    fc.record({ t: fc.constant("promise" as const), v: fc.integer({ min: 0, max: 9 }) }),
    fc.record({ t: fc.constant("asyncFail" as const), e: fc.constantFrom("a", "b") }),
    fc.record({ t: fc.constant("asyncNow" as const), v: fc.integer({ min: 0, max: 9 }) })
  )
}))

/** The effect of `n`, logging every step it runs into `log`. */
const build = (n: Node, log: Array<string>): Effect.Effect<number, string> => {
  switch (n.t) {
    case "succeed":
      return Effect.succeed(n.v)
    case "fail":
      return Effect.fail(n.e)
    case "sync":
      return Effect.sync(() => {
        log.push(`sync ${n.id}`)
        return n.id
      })
    case "throw":
      return Effect.sync(() => {
        log.push(`throw ${n.id}`)
        throw `defect ${n.id}`
      })
    case "flatMap":
      return Effect.flatMap(build(n.a, log), (v) => {
        log.push(`flatMap ${v}`)
        return build(n.b, log)
      })
    case "map":
      return Effect.map(build(n.a, log), (v) => v + 1)
    case "catch":
      return Effect.catchAllCause(build(n.a, log), () => {
        log.push("caught")
        return build(n.b, log)
      })
    case "match":
      return Effect.matchCauseEffect(build(n.a, log), {
        onFailure: () => {
          log.push("onFailure")
          return build(n.onFailure, log)
        },
        onSuccess: (v) => {
          log.push(`onSuccess ${v}`)
          return build(n.onSuccess, log)
        }
      })
    case "suspend":
      return Effect.suspend(() => {
        log.push("suspend")
        return build(n.a, log)
      })
    case "yield":
      return Effect.zipRight(Effect.yieldNow(), build(n.a, log))
    case "withFiber":
      return Effect.withFiberRuntime(() => {
        log.push("withFiber")
        return build(n.a, log)
      })
    case "gen":
      return Effect.gen(function*() {
        let sum = 0
        for (const part of n.parts) {
          const value = yield* build(part, log)
          log.push(`gen got ${value}`)
          sum += value
        }
        return sum
      })
    case "promise":
      return Effect.promise(() =>
        Promise.resolve().then(() => {
          log.push(`promise ${n.v}`)
          return n.v
        })
      )
    case "asyncFail":
      return Effect.async<number, string>((resume) => {
        Promise.resolve().then(() => {
          log.push(`async ${n.e}`)
          resume(Effect.fail(n.e))
          resume(Effect.succeed(0)) // a second resume does not count
        })
      })
    case "asyncNow":
      return Effect.async<number>((resume) => {
        log.push(`asyncNow ${n.v}`)
        resume(Effect.succeed(n.v))
      })
  }
}

/**
 * Runs `effect` as the dispatcher runs a hook's attempt: `runNow`, then, while
 * what is left is a wait `waitOf` finds, that wait with no fiber (the first
 * resume counts) and `runNow` again from what it was resumed with; what is
 * left after that, on a fiber.
 */
const runFiberless = async <A, E>(effect: Effect.Effect<A, E>, budget: number): Promise<Exit.Exit<A, E>> => {
  let current: Effect.Effect<A, E> = effect
  for (;;) {
    const ran = runNow(current, budget)
    if (Exit.isExit(ran)) return ran
    const register = waitOf(ran)
    if (register === undefined) return Effect.runPromiseExit(ran)
    current = await new Promise<Effect.Effect<A, E>>((resolve) => {
      let resumed = false
      register((next) => {
        if (resumed) return
        resumed = true
        resolve(next as Effect.Effect<A, E>)
      })
    })
  }
}

/** Runs `n` as Effect's run loop does and as `run` does, on 1,000 random effects: same steps, in the same order, same exit. */
const sameAsRunLoop = (
  run: (effect: Effect.Effect<number, string>, budget: number) => Promise<Exit.Exit<number, string>>
) =>
  Effect.promise(() =>
    fc.assert(
      fc.asyncProperty(node, fc.integer({ min: 0, max: 30 }), async (n, budget) => {
        const expectedLog: Array<string> = []
        const expected = await Effect.runPromiseExit(build(n, expectedLog))
        const log: Array<string> = []
        const exit = await run(build(n, log), budget)
        assert.deepStrictEqual(log, expectedLog)
        assert.isTrue(Equal.equals(exit, expected), `${String(exit)} against ${String(expected)}`)
      }),
      { numRuns: 1_000 }
    )
  )

describe("runNow", () => {
  it.effect("gives the exit Effect's run loop gives, running each step once and in the same order", () =>
    sameAsRunLoop(async (effect, budget) => {
      const ran = runNow(effect, budget)
      return Exit.isExit(ran) ? ran : Effect.runPromiseExit(ran)
    }))

  it.effect("and so does it when the waits it leaves are waited on with no fiber (waitOf)", () =>
    sameAsRunLoop(runFiberless))

  it("finds the wait of one asynchronous step, alone or inside continuations, and nothing else", () => {
    const wait = Effect.async<number>((resume) => resume(Effect.succeed(1)))
    const inside = (effect: Effect.Effect<number>) => runNow(Effect.map(Effect.flatMap(Effect.sync(() => 1), () => effect), (n) => n + 1))
    assert.isDefined(waitOf(runNow(wait) as Effect.Effect<number>))
    assert.isDefined(waitOf(inside(Effect.promise(() => Promise.resolve(1))) as Effect.Effect<number>))
    // A canceller, or an AbortSignal, commits to more than the wait; so does a step that needs a fiber.
    assert.isUndefined(waitOf(runNow(Effect.async<number>(() => Effect.void)) as Effect.Effect<number>))
    assert.isUndefined(waitOf(inside(Effect.promise((_signal) => Promise.resolve(1))) as Effect.Effect<number>))
    assert.isUndefined(waitOf(inside(Effect.zipRight(Effect.yieldNow(), wait)) as Effect.Effect<number>))
  })

  it("runs with no fiber what needs none, and stops at the first step that needs one", () => {
    const log: Array<string> = []
    const effect = Effect.flatMap(Effect.sync(() => log.push("before")), () =>
      Effect.zipRight(Effect.yieldNow(), Effect.sync(() => log.push("after"))))
    const ran = runNow(effect)
    assert.isFalse(Exit.isExit(ran))
    assert.deepStrictEqual(log, ["before"])
    assert.deepStrictEqual(Effect.runSync(ran as Effect.Effect<number>), 2)
    assert.deepStrictEqual(log, ["before", "after"])
    assert.isTrue(Exit.isExit(runNow(Effect.map(Effect.sync(() => 1), (n) => n + 1))))
  })

  it("hands back a computation that outlasts its budget, for a fiber (which yields) to run", () => {
    const forever: Effect.Effect<never> = Effect.suspend(() => forever)
    const ran = runNow(forever, 100)
    assert.isFalse(Exit.isExit(ran))
  })
})
