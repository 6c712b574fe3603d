// Budgets through a store outage, on Redis and on PostgreSQL: guarded streams
// admitted before the store stops answering run to their end for their
// consumers; their token records wait in the outbox and, once the store
// answers again, settle each stream's hold to what it used (the holds end
// then, not when they expire). Guarded work during the outage follows
// `onStoreError`; the holds of calls that failed meanwhile are released once
// the store answers. The outage is a proxy that resets every connection, so
// the store keeps what it held.
import { assert, describe, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Schedule from "effect/Schedule"
import * as Stream from "effect/Stream"
import * as PgClient from "@effect/sql-pg/PgClient"
import * as Redacted from "effect/Redacted"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import * as SqlTokenStore from "../../layers/SqlTokenStore.js"
import * as Outbox from "../../src/Outbox.js"
import * as TokenStore from "../../src/TokenStore.js"
import { budgetEnvironment, currentCycle, guardedCall, guardedStream, until } from "../support/budgetConformance.js"
import * as FaultProxy from "../support/FaultProxy.js"
import { bannerWithoutPostgres, postgresUrl, skipWithoutPostgres } from "../support/postgres.js"
import { bannerWithoutRedis, dedicatedRedis, redisUrl, skipWithoutRedis, uniqueKeyPrefix } from "../support/redis.js"
import { freshId } from "../support/tokenStoreConformance.js"

/** Waits, in real time, until `done` holds: every 20 ms, 10 s at most. */
const eventually = <A, E, R>(read: Effect.Effect<A, E, R>, done: (a: A) => boolean, what: string) =>
  read.pipe(
    Effect.filterOrFail(done, (a) => `not reached in 10 s: ${what} (last: ${JSON.stringify(a)})`),
    Effect.retry(Schedule.spaced("20 millis").pipe(Schedule.intersect(Schedule.recurs(500)))),
    Effect.orDieWith((error) => new Error(String(error)))
  )

/** The token store of the tests, reached through the proxy on `port`. */
type StoreVia = (port: number) => Layer.Layer<TokenStore.TokenStore, unknown>

const redisVia = (port: number) =>
  RedisTokenStore.layer({
    url: `redis://127.0.0.1:${port}`,
    keyPrefix: uniqueKeyPrefix("budget_outage"),
    // Bounds that a slow, busy machine does not reach while the store answers.
    commandTimeout: "1 second",
    connectTimeout: "1 second"
  })

const postgresVia = (port: number) => {
  const url = new URL(postgresUrl())
  url.port = String(port)
  return SqlTokenStore.layer({ timeout: "2 seconds" }).pipe(
    Layer.provide(PgClient.layer({ url: Redacted.make(url.toString()), connectTimeout: "1 second" }))
  )
}

/**
 * The stack of an app whose store (at `targetPort`) sits behind a fault proxy: the token-usage handler
 * and budgets over the store with an outbox in memory. `down` and `up` start and end an outage;
 * `warnings` are the warnings logged.
 */
const outageStack = (targetPort: number, storeVia: StoreVia) =>
  Effect.gen(function*() {
    const proxy = yield* FaultProxy.make({ targetPort, faults: { dropReply: 0, reset: 0 }, seed: 7 })
    const warnings: Array<string> = []
    const logger = Logger.make(({ logLevel, message }) => {
      if (logLevel.label === "WARN") warnings.push(Array.isArray(message) ? message.join(" ") : String(message))
    })
    const store = Outbox.layer({ retry: Schedule.spaced("100 millis") }).pipe(
      Layer.provide(storeVia(proxy.port)),
      Layer.provide(Outbox.layerStorageMemory)
    )
    const context = yield* Layer.build(Layer.merge(budgetEnvironment(store), Logger.replace(Logger.defaultLogger, logger)))
    const run = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provide(effect, context)
    const userId = freshId("outage")
    const cycle = yield* currentCycle
    yield* run(Effect.flatMap(TokenStore.TokenStore, (s) => s.setLimit(userId, cycle, 1_000)))
    return {
      proxy,
      run,
      userId,
      warnings,
      stats: run(Effect.flatMap(TokenStore.TokenStore, (s) => s.stats(userId, cycle))),
      down: proxy.setFaults({ dropReply: 0, reset: 1 }),
      up: proxy.setFaults({ dropReply: 0, reset: 0 })
    }
  })

bannerWithoutRedis("test/layers/BudgetOutage.test.ts")
bannerWithoutPostgres("test/layers/BudgetOutage.test.ts (PostgreSQL)")

/** What holds through an outage of any store. */
const outageSuite = (targetPort: () => number, storeVia: StoreVia) =>
  describe("Budgets through an outage", () => {
    it.live(
      "guarded streams outlive an outage: every chunk delivered, records kept by the outbox, holds settled once the store answers",
      () =>
        Effect.gen(function*() {
          const { down, run, stats, up, userId, warnings } = yield* outageStack(targetPort(), storeVia)
          // Four streams admitted while the store answers (worst case 100 each), waiting in the model.
          const go = yield* Deferred.make<void>()
          const calls = { n: 0 }
          const streams = yield* Effect.forEach([1, 2, 3, 4], () =>
            Effect.fork(run(Stream.runCollect(guardedStream({ userId, go, calls })))))
          yield* until(() => calls.n === 4)
          assert.deepInclude(yield* stats, { heldTokens: 400, totalTokens: 0 })

          // The store stops answering; the streams go on and end.
          yield* down
          yield* Deferred.succeed(go, undefined)
          const exits = yield* Effect.forEach(streams, Fiber.await)
          for (const exit of exits) {
            assert.isTrue(Exit.isSuccess(exit), String(exit))
            if (Exit.isSuccess(exit)) {
              const text = Chunk.toReadonlyArray(exit.value).flatMap((part) => part.type === "text-delta" ? [part.delta] : [])
              assert.strictEqual(text.join(""), "one two three")
            }
          }
          // Their records (60 tokens each) wait in the outbox.
          yield* eventually(run(Outbox.stats), (s) => s.pending === 4, "4 records pending")

          // Guarded work meanwhile: allowed by default (with a warning), failed with onStoreError "fail".
          const during = yield* run(Stream.runCollect(guardedStream({ userId, calls })))
          assert.isAbove(Chunk.size(during), 0)
          assert.isTrue(warnings.some((line) => line.includes("budget check failed; the call is allowed")), warnings.join("\n"))
          const failed = yield* Effect.flip(run(guardedCall({ userId, guard: { onStoreError: "fail" } })))
          assert.deepInclude(failed, { _tag: "TokenStoreError", reason: "Unavailable" })
          yield* eventually(run(Outbox.stats), (s) => s.pending === 5, "5 records pending")

          // The store answers again: the outbox writes the five records, each once, and the four holds end with them.
          yield* up
          yield* eventually(run(Outbox.stats), (s) => s.pending === 0, "the outbox written")
          assert.deepInclude(yield* stats, { heldTokens: 0, totalTokens: 300 })
          // What they left is usable at once: 7 more worst cases fit in the 700 left, not 8.
          const more = yield* Effect.forEach(
            Array.from({ length: 8 }),
            () => Effect.exit(run(guardedCall({ userId }))),
            { concurrency: "unbounded" }
          )
          assert.strictEqual(more.filter(Exit.isSuccess).length, 7)
          assert.deepInclude(yield* stats, { heldTokens: 0, totalTokens: 1_000 })
        }).pipe(Effect.scoped),
      60_000
    )

    it.live(
      "streams cut off during an outage: their holds are released once the store answers again, not when they expire",
      () =>
        Effect.gen(function*() {
          const { down, run, stats, up, userId, warnings } = yield* outageStack(targetPort(), storeVia)
          const calls = { n: 0 }
          const never = yield* Deferred.make<void>()
          const streams = yield* Effect.forEach([1, 2], () =>
            Effect.fork(run(Stream.runCollect(guardedStream({ userId, calls, go: never })))))
          yield* until(() => calls.n === 2)
          assert.deepInclude(yield* stats, { heldTokens: 200, totalTokens: 0 })

          yield* down
          // The consumers go away before any output: the guard releases the holds, which the store does not hear.
          // They are done at once all the same (the releases are tried again in the background).
          yield* Effect.forEach(streams, Fiber.interrupt)
          const notYet = warnings.filter((line) => line.includes("budget hold not released yet"))
          assert.strictEqual(notYet.length, 2, warnings.join("\n"))
          // The store stays unreachable a while: the first tries again fail too, and only a later one lands.
          yield* Effect.sleep("500 millis")
          yield* up
          // Released once the store answers: long before the holds' TTL (10 minutes); nothing was counted.
          yield* eventually(stats, (s) => s.heldTokens === 0, "the holds released")
          assert.deepInclude(yield* stats, { heldTokens: 0, totalTokens: 0 })
          assert.isFalse(warnings.some((line) => line.includes("it expires by itself")), warnings.join("\n"))
          assert.strictEqual((yield* run(Outbox.stats)).written, 0)
        }).pipe(Effect.scoped),
      60_000
    )
  })

const redisPort = () => Number(new URL(redisUrl()).port)

describe.skipIf(skipWithoutRedis)("Redis", () => {
  outageSuite(redisPort, redisVia)

  describe("Budgets through an outage: the Redis client", () => {
    it.live(
      "a reservation cut off by the outage and refused to its caller: made later by the client's resend, it is released",
      () =>
        Effect.gen(function*() {
          const { down, run, stats, up, userId } = yield* outageStack(redisPort(), redisVia)
          // The connection is up; the outage starts while the reservation is in flight.
          yield* down
          const failed = yield* Effect.flip(run(guardedCall({ userId, guard: { onStoreError: "fail" } })))
          assert.deepInclude(failed, { _tag: "TokenStoreError", reason: "Timeout" })
          yield* up
          // The client sends what was in flight again once it reconnects, the reservation included; the
          // guard's release, tried until the store takes it, comes after it: nothing stays held.
          yield* eventually(
            Effect.exit(run(guardedCall({ userId, actual: 50, guard: { onStoreError: "fail" } }))),
            Exit.isSuccess,
            "a call admitted"
          )
          yield* eventually(stats, (s) => s.heldTokens === 0, "nothing held")
          assert.deepInclude(yield* stats, { heldTokens: 0, totalTokens: 50 })
        }).pipe(Effect.scoped),
      60_000
    )

    it.live(
      "Redis hangs while reservations are in flight: refused or allowed after commandTimeout, nothing held once it goes on",
      () =>
        Effect.gen(function*() {
          const server = yield* dedicatedRedis
          const { run, stats, userId, warnings } = yield* outageStack(server.port, redisVia)
          // Frozen, as in a long script or a stalled fork: connections open, nothing answered.
          yield* server.pause
          const [failed, allowed] = yield* Effect.all([
            Effect.flip(run(guardedCall({ userId, guard: { onStoreError: "fail" } }))),
            Effect.exit(run(guardedCall({ userId, actual: 50 })))
          ], { concurrency: "unbounded" })
          assert.deepInclude(failed, { _tag: "TokenStoreError", reason: "Timeout" })
          assert.isTrue(Exit.isSuccess(allowed), String(allowed))
          assert.isTrue(warnings.some((line) => line.includes("budget check failed; the call is allowed")), warnings.join("\n"))
          // Redis goes on with what was sent meanwhile, in order: both reservations, then the guard's releases
          // (each behind its reservation on the connection); the allowed call's record waits in the outbox.
          yield* server.resume
          yield* eventually(run(Outbox.stats), (s) => s.pending === 0, "the outbox written")
          yield* eventually(stats, (s) => s.heldTokens === 0, "nothing held")
          assert.deepInclude(yield* stats, { heldTokens: 0, totalTokens: 50 })
        }).pipe(Effect.scoped),
      60_000
    )

    it.live(
      "a reservation whose answer was lost with its connection is sent again on the next one: the call goes through, counted once",
      () =>
        Effect.gen(function*() {
          const { proxy, run, stats, userId } = yield* outageStack(redisPort(), redisVia)
          // The reservation runs in Redis; its answer is swallowed and the connection closed.
          yield* proxy.dropNextReply
          yield* run(guardedCall({ userId, guard: { onStoreError: "fail" } }))
          // The answer dropped was the reservation's: it ran in Redis, and again (held once) after the reconnect.
          assert.strictEqual((yield* proxy.counters).repliesDropped, 1)
          assert.deepInclude(yield* stats, { heldTokens: 0, totalTokens: 100 })
        }).pipe(Effect.scoped),
      60_000
    )
  })
})

describe.skipIf(skipWithoutPostgres)("PostgreSQL", () => {
  outageSuite(() => Number(new URL(postgresUrl()).port || 5432), postgresVia)
})
