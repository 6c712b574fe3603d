/**
 * What a budget reservation adds per call: instrumented calls through the
 * await-mode token-usage handler into one Redis on loopback, with and without
 * `Budget.guard` (an atomic reservation before the call; its record settles
 * it). Both variants run the same loop (100 calls in flight), in interleaved
 * rounds with the order rotated; the table gives median and min per call and
 * the script calls per call that Redis counted (`INFO commandstats`).
 * Every round checks that the stored totals are exact and nothing is held.
 *
 * Uses `REDIS_URL`, or starts a redis-server of its own on a free loopback
 * port (and stops it). Run alone: `npx tsx bench/budget.ts`.
 */
import { Effect, Layer, ManagedRuntime } from "effect"
import { Redis } from "ioredis"
import { pathToFileURL } from "node:url"
import * as RedisTokenStore from "../layers/RedisTokenStore.js"
import * as TokenUsage from "../layers/TokenUsage.js"
import { BillingCycle, Budget, Callbacks, Dispatcher, TokenStore } from "../src/index.js"
import { type RedisProcess, startRedisProcess, stopRedisProcess } from "../test/support/globalSetup.js"
import { median } from "./common.js"

const users = 50
const inFlight = 100

const scriptCalls = async (redis: Redis): Promise<number> => {
  const info = await redis.info("commandstats")
  let n = 0
  for (const match of info.matchAll(/cmdstat_(evalsha|eval):calls=(\d+)/g)) n += Number(match[2])
  return n
}


export const run = async (calls = 20_000, rounds = 5): Promise<Array<Record<string, string | number>>> => {
  let server: RedisProcess | undefined
  const fromEnv = process.env["REDIS_URL"]
  const url = fromEnv !== undefined && fromEnv !== "" ? fromEnv : (server = await startRedisProcess()).url
  const probe = new Redis(url, { lazyConnect: true })
  await probe.connect()
  try {
    const keyPrefix = `bench_budget_${process.pid}_${Date.now().toString(36)}`
    const runtime = ManagedRuntime.make(
      TokenUsage.layer().pipe(
        Layer.provideMerge(Layer.merge(Dispatcher.layer(), RedisTokenStore.layer({ url, keyPrefix }))),
        Layer.merge(Layer.succeed(Budget.CurrentPromptCounter, () => Effect.succeed(20)))
      )
    )
    const cycle = await runtime.runPromise(BillingCycle.current())
    const call = (i: number, round: number, guarded: boolean) => {
      const instrumented = Effect.succeed({
        content: "ok",
        usage: { promptTokens: 20, completionTokens: 30, totalTokens: 50 }
      }).pipe(
        Callbacks.instrument({
          provider: "openai",
          model: "gpt-4o-mini",
          messages: [{ role: "user", content: "hello" }],
          userId: `${guarded ? "g" : "p"}${round}-${i % users}`,
          params: { maxTokens: 80 }
        })
      )
      return guarded ? Effect.orDie(instrumented.pipe(Budget.guard())) : instrumented
    }
    const loop = (round: number, guarded: boolean) =>
      Effect.forEach(Array.from({ length: calls }, (_, i) => i), (i) => call(i, round, guarded), {
        concurrency: inFlight,
        discard: true
      })
    const check = (round: number, guarded: boolean) =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        let total = 0
        let held = 0
        for (let u = 0; u < users; u++) {
          const stats = yield* store.stats(`${guarded ? "g" : "p"}${round}-${u}`, cycle)
          total += stats.totalTokens
          held += stats.heldTokens
        }
        if (total !== calls * 50 || held !== 0) throw new Error(`bench/budget: totals off: ${total} stored, ${held} held`)
      })
    // Warm-up of both variants.
    await runtime.runPromise(Effect.zipRight(loop(-1, false), loop(-2, true)))
    const times = { plain: [] as Array<number>, guarded: [] as Array<number> }
    const scripts = { plain: 0, guarded: 0 }
    for (let round = 0; round < rounds; round++) {
      const order = round % 2 === 0 ? [false, true] : [true, false]
      for (const guarded of order) {
        const before = await scriptCalls(probe)
        const start = process.hrtime.bigint()
        await runtime.runPromise(loop(round, guarded))
        const micros = Number(process.hrtime.bigint() - start) / 1e3 / calls
        scripts[guarded ? "guarded" : "plain"] += (await scriptCalls(probe)) - before
        times[guarded ? "guarded" : "plain"].push(micros)
        await runtime.runPromise(check(round, guarded))
      }
    }
    await runtime.dispose()
    const row = (name: string, key: "plain" | "guarded") => ({
      variant: name,
      "median µs/call": +median(times[key]).toFixed(2),
      "min µs/call": +Math.min(...times[key]).toFixed(2),
      "script calls/call": +(scripts[key] / (calls * rounds)).toFixed(3)
    })
    const plain = row("record only (await token handler)", "plain")
    const guarded = row("Budget.guard + record", "guarded")
    return [
      plain,
      guarded,
      {
        variant: "reservation adds",
        "median µs/call": +(guarded["median µs/call"] - plain["median µs/call"]).toFixed(2),
        "min µs/call": +(guarded["min µs/call"] - plain["min µs/call"]).toFixed(2),
        "script calls/call": +(guarded["script calls/call"] - plain["script calls/call"]).toFixed(3)
      }
    ]
  } finally {
    await probe.quit()
    if (server !== undefined) await stopRedisProcess(server)
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  run().then((rows) => console.table(rows), (error) => {
    console.error(error)
    process.exit(1)
  })
}
