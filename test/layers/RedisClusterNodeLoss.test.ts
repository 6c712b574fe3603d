// A Redis Cluster master crashes (SIGKILL) while an app records usage and
// guards calls. Without a replica, it starts again with its data (append-only
// file, fsync on every write): the subjects on the other masters go on as if
// nothing happened; a record whose parts span the lost master and a live one
// is kept by the outbox and, retried whole, counts each part once; guarded
// calls of a user on the lost master are allowed with a warning (or fail, with
// `onStoreError: "fail"`); once the master is back every total is exact and
// nothing stays held. With replicas, its replica takes over: what is recorded
// meanwhile reaches the new master, each call counted once.
import { assert, describe, it } from "@effect/vitest"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Schedule from "effect/Schedule"
import { Cluster } from "ioredis"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import * as Outbox from "../../src/Outbox.js"
import * as TokenStore from "../../src/TokenStore.js"
import { budgetEnvironment, currentCycle, guardedCall } from "../support/budget.js"
import { bannerWithoutRedis, skipWithoutRedis, uniqueKeyPrefix } from "../support/redis.js"
import { makeRedisCluster, type RedisCluster } from "../support/redisCluster.js"
import { freshId } from "../support/tokenStoreConformance.js"

/** Waits, in real time, until `done` holds: every 50 ms, 20 s at most. */
const eventually = <A, E, R>(read: Effect.Effect<A, E, R>, done: (a: A) => boolean, what: string) =>
  read.pipe(
    Effect.filterOrFail(done, (a) => `not reached in 20 s: ${what} (last: ${JSON.stringify(a)})`),
    Effect.retry(Schedule.spaced("50 millis").pipe(Schedule.intersect(Schedule.recurs(400)))),
    Effect.orDieWith((error) => new Error(String(error)))
  )

/**
 * An app over `cluster` (token-usage handler, budgets, an outbox in memory), with helpers to find ids
 * whose keys live on a given master, and the warnings it logged.
 */
const appOver = (cluster: RedisCluster, commandTimeout: Duration.DurationInput) =>
  Effect.gen(function*() {
    const ports = cluster.nodes.map((node) => Number(node.split(":")[1]))
    const keyPrefix = uniqueKeyPrefix("node_loss")
    const cycle = yield* currentCycle

    // Which node is the master of each subject's keys.
    const probe = new Cluster(ports.map((port) => ({ host: "127.0.0.1", port })))
    yield* Effect.addFinalizer(() => Effect.sync(() => probe.disconnect()))
    const slots = (yield* Effect.promise(() => probe.cluster("SLOTS"))) as unknown as Array<[number, number, [string, number]]>
    const masterOf = (key: string) =>
      Effect.map(
        Effect.promise(() => probe.cluster("KEYSLOT", key)),
        (slot) => ports.indexOf(slots.find(([from, to]) => slot >= from && slot <= to)![2][1])
      )
    /** A fresh id of `level` whose keys are on node `node` (a master). */
    const idOn = (node: number, base: string, level: TokenStore.Level) =>
      Effect.gen(function*() {
        while (true) {
          const id = freshId(base)
          const key = level === "user"
            ? RedisTokenStore.usageKey(keyPrefix, id, cycle)
            : RedisTokenStore.subjectBase(keyPrefix, { level, id })
          if ((yield* masterOf(key)) === node) return id
        }
      })
    const masters = [...new Set(slots.map((range) => ports.indexOf(range[2][1])))].sort()

    const warnings: Array<string> = []
    const logger = Logger.make(({ logLevel, message }) => {
      if (logLevel.label === "WARN") warnings.push(Array.isArray(message) ? message.join(" ") : String(message))
    })
    const store = Outbox.layer({ retry: Schedule.spaced("100 millis") }).pipe(
      Layer.provide(RedisTokenStore.layerCluster({ nodes: cluster.nodes, keyPrefix, commandTimeout, connectTimeout: "1 second" })),
      Layer.provide(Outbox.layerStorageMemory)
    )
    const context = yield* Layer.build(Layer.merge(budgetEnvironment(store), Logger.replace(Logger.defaultLogger, logger)))
    const run = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provide(effect, context)
    const stats = (owner: TokenStore.Owner) => run(Effect.flatMap(TokenStore.TokenStore, (s) => s.stats(owner, cycle)))
    const setLimit = (userId: string) => run(Effect.flatMap(TokenStore.TokenStore, (s) => s.setLimit(userId, cycle, 100_000)))
    /** `n` guarded calls at once of `userId` in `teamId` (worst case 100, using 60 each). */
    const calls = (userId: string, teamId: string, n: number, guard?: { readonly onStoreError: "fail" }) =>
      Effect.forEach(
        Array.from({ length: n }),
        () => Effect.exit(run(guardedCall({ userId, teamId, actual: 60, guard }))),
        { concurrency: "unbounded" }
      )
    return { masters, idOn, warnings, run, stats, setLimit, calls }
  })

const succeeded = (exits: ReadonlyArray<Exit.Exit<unknown, unknown>>) => {
  for (const exit of exits) assert.isTrue(Exit.isSuccess(exit), String(exit))
}

bannerWithoutRedis("test/layers/RedisClusterNodeLoss.test.ts")

describe.skipIf(skipWithoutRedis)("Redis", () => {
  describe("RedisTokenStore on a Cluster that loses a master", () => {
    it.scopedLive("without a replica, crashed and started again: other masters unaffected, every total exact", () =>
      Effect.gen(function*() {
        const cluster = yield* makeRedisCluster({ durable: true })
        // Bounds that a slow, busy machine does not reach while the cluster answers.
        const { calls, idOn, masters, run, setLimit, stats, warnings } = yield* appOver(cluster, "1 second")
        const [lost, live, other] = masters as [number, number, number]
        const lostUser = yield* idOn(lost, "lost", "user")
        const liveUser = yield* idOn(live, "live", "user")
        const team = yield* idOn(other, "team", "team")
        yield* setLimit(lostUser)
        yield* setLimit(liveUser)

        // Before: 10 calls of each user.
        succeeded(yield* calls(lostUser, team, 10))
        succeeded(yield* calls(liveUser, team, 10))
        yield* eventually(run(Outbox.stats), (s) => s.pending === 0, "nothing pending")

        // The master of `lostUser` crashes.
        yield* cluster.kill(lost)
        // The live user goes on as before: admitted, recorded at once, nothing kept by the outbox.
        succeeded(yield* calls(liveUser, team, 20))
        yield* eventually(stats(liveUser), (s) => s.totalTokens === 30 * 60 && s.heldTokens === 0, "the live user's 30 calls")
        assert.strictEqual((yield* run(Outbox.stats)).pending, 0)
        assert.deepStrictEqual(warnings, [])
        // The lost user's calls are allowed with a warning (their budget cannot be checked), or fail when asked to.
        succeeded(yield* calls(lostUser, team, 5))
        assert.isTrue(warnings.some((line) => line.includes("budget check failed; the call is allowed")), warnings.join("\n"))
        for (const exit of yield* calls(lostUser, team, 2, { onStoreError: "fail" })) {
          assert.isTrue(Exit.isFailure(exit), String(exit))
          if (Exit.isFailure(exit)) assert.include(String(exit.cause), "TokenStoreError")
        }
        // Their records (the team's part on a live master, the user's on the lost one) wait in the outbox.
        yield* eventually(run(Outbox.stats), (s) => s.pending === 5, "5 records pending")

        // The master starts again with its data: the outbox writes the five records, each part once.
        yield* cluster.restart(lost)
        yield* eventually(run(Outbox.stats), (s) => s.pending === 0, "the outbox written")
        assert.deepInclude(yield* stats(lostUser), { totalTokens: 15 * 60, promptTokens: 15 * 20, heldTokens: 0 })
        assert.deepInclude(yield* stats(liveUser), { totalTokens: 30 * 60, promptTokens: 30 * 20, heldTokens: 0 })
        assert.deepInclude(yield* stats({ level: "team", id: team }), { totalTokens: 45 * 60, promptTokens: 45 * 20 })
        // And the lost user's budget is checked again.
        const before = warnings.length
        succeeded(yield* calls(lostUser, team, 3))
        yield* eventually(stats(lostUser), (s) => s.totalTokens === 18 * 60 && s.heldTokens === 0, "3 more calls")
        assert.deepStrictEqual(warnings.slice(before), [])
      }), 120_000)

    it.scopedLive("with replicas, its replica takes over: the calls made meanwhile are counted once each on the new master", () =>
      Effect.gen(function*() {
        // The replica takes over about a second after its master stops answering.
        const cluster = yield* makeRedisCluster({ replicas: true, nodeTimeoutMillis: 1_000 })
        const { calls, idOn, masters, run, setLimit, stats } = yield* appOver(cluster, "2 seconds")
        const [lost, , other] = masters as [number, number, number]
        const lostUser = yield* idOn(lost, "lost", "user")
        const team = yield* idOn(other, "team", "team")
        yield* setLimit(lostUser)
        succeeded(yield* calls(lostUser, team, 10))
        yield* eventually(run(Outbox.stats), (s) => s.pending === 0, "nothing pending")
        // The replica has all its master acknowledged (replication is asynchronous: what a master
        // acknowledged and had not sent when it crashed is lost, whoever wrote it).
        yield* cluster.replicated

        yield* cluster.kill(lost)
        // Calls while the cluster fails over: allowed (budget checked, or with a warning), recorded on the
        // new master directly or through the outbox.
        succeeded(yield* calls(lostUser, team, 20))
        yield* cluster.settled
        succeeded(yield* calls(lostUser, team, 10))
        yield* eventually(run(Outbox.stats), (s) => s.pending === 0, "the outbox written")
        yield* eventually(stats(lostUser), (s) => s.totalTokens === 40 * 60, "40 calls recorded")
        assert.deepInclude(yield* stats(lostUser), { totalTokens: 40 * 60, promptTokens: 40 * 20, heldTokens: 0 })
        assert.deepInclude(yield* stats({ level: "team", id: team }), { totalTokens: 40 * 60, promptTokens: 40 * 20 })
      }), 120_000)
  })
})
