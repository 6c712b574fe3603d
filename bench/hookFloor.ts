/**
 * What the suspend x10 row pays beyond its hook fibers: per call, ours
 * (`instrument` with 10 await handlers whose hooks suspend once, start and
 * end: 20 hook fibers) against the same 20 hook fibers started and awaited by
 * hand (`startHookFiber` with the hook scheduler, two waits of 10, no
 * dispatcher), and the bare call. Same loop for every variant (one
 * `Runtime.runPromise` per call), interleaved rounds, median (and min).
 *
 * Run alone, compiled as `npm run bench` runs (under `tsx` every variant ran
 * slower, ours twice as slow): `npx tsc -p tsconfig.bench.json && node
 * .tmp/bench-dist/bench/hookFloor.js`. To see what V8's pretenuring costs,
 * add `--no-allocation-site-pretenuring` to `node`; `--trace-gc-nvp` prints
 * what each young collection promotes.
 */
import { Effect, FiberId, FiberRef, FiberRefs, Scheduler } from "effect"
import { pathToFileURL } from "node:url"
import type { Dispatcher } from "../src/index.js"
import { Handler } from "../src/index.js"
import { fiberClassOf, hookScheduler, startHookFiber } from "../src/internal/dispatch/hookFiber.js"
import { instrumented, median, response, type Row, runtimeWith } from "./common.js"

const handlers = 10
const hook = () => Effect.promise(() => Promise.resolve())

const runtime = runtimeWith(
  Array.from({ length: handlers }, (_, i) => Handler.make({ name: `suspend-${i}`, onLlmStart: hook, onLlmEnd: hook }))
)

const scheduler = hookScheduler(Scheduler.defaultScheduler)!

/** `handlers` hook fibers, started at once with the caller's refs (on the hook scheduler), all awaited. */
const byHand = Effect.withFiberRuntime<void>((fiber) => {
  const refs = FiberRefs.updateAs(fiber.getFiberRefs(), {
    fiberId: FiberId.runtime(-1, 0),
    fiberRef: FiberRef.currentScheduler,
    value: scheduler
  })
  const FiberClass = fiberClassOf(fiber)
  return Effect.async<void>((resume) => {
    let left = handlers
    const one = () => {
      if (--left === 0) resume(Effect.void)
    }
    for (let i = 0; i < handlers; i++) {
      const hookFiber = startHookFiber(FiberClass, refs, hook())
      if (hookFiber.unsafePoll() === null) hookFiber.addObserver(one)
      else one()
    }
  })
})

const variants: Record<string, Effect.Effect<unknown, unknown, Dispatcher.Dispatcher>> = {
  bare: Effect.succeed(response),
  "hook fibers by hand": Effect.zipRight(byHand, Effect.zipRight(Effect.succeed(response), byHand)),
  ours: instrumented(Effect.succeed(response))
}

/** µs per call of `calls` calls, one at a time. */
const batch = async (effect: Effect.Effect<unknown, unknown, Dispatcher.Dispatcher>, calls: number) => {
  const start = process.hrtime.bigint()
  for (let i = 0; i < calls; i++) await runtime.runPromise(effect)
  return Number(process.hrtime.bigint() - start) / 1000 / calls
}

export const run = async (rounds = 9, calls = 3_000): Promise<Array<Row>> => {
  const names = Object.keys(variants)
  const times = new Map(names.map((name) => [name, [] as Array<number>]))
  try {
    for (const name of names) await batch(variants[name]!, calls)
    for (let round = 0; round < rounds; round++) {
      for (let i = 0; i < names.length; i++) {
        const name = names[(i + round) % names.length]!
        times.get(name)!.push(await batch(variants[name]!, calls))
      }
    }
  } finally {
    await runtime.dispose()
  }
  return names.map((name) => ({
    variant: name,
    "µs/call (median)": Number(median(times.get(name)!).toFixed(2)),
    "min": Number(Math.min(...times.get(name)!).toFixed(2))
  }))
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  run().then((rows) => console.table(rows), (error) => {
    console.error(error)
    process.exitCode = 1
  })
}
