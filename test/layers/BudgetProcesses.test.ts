// Four app processes, 50 concurrent calls each, one user with room for 10
// calls, one shared store: a budget holds across processes only if admission
// is atomic in the store. Run against one Redis, a Redis Cluster, a
// PostgreSQL database and a SQLite file. And a process killed while it holds
// budget: its holds keep their tokens from the other processes until their
// TTL, then the room is back (Redis, PostgreSQL, SQLite file).
import { assert, describe, it } from "@effect/vitest"
import { spawn } from "node:child_process"
import * as path from "node:path"
import type * as SqlClient from "@effect/sql/SqlClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as os from "node:os"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import * as SqlTokenStore from "../../layers/SqlTokenStore.js"
import * as Budget from "../../src/Budget.js"
import * as TokenStore from "../../src/TokenStore.js"
import { budgetEnvironment, currentCycle, guardedCall } from "../support/budget.js"
import { bannerWithoutPostgres, postgresClient, postgresUrl, skipWithoutPostgres } from "../support/postgres.js"
import { bannerWithoutRedis, redisUrl, skipWithoutRedis, uniqueKeyPrefix } from "../support/redis.js"
import { redisCluster } from "../support/redisCluster.js"
import { workerReport } from "../support/worker.js"

const root = path.resolve(import.meta.dirname, "..", "..")
const worker = path.join(root, "test", "support", "budgetWorker.ts")
const workerUrl = new URL("../support/budgetWorker.ts", import.meta.url)

interface Outcome {
  readonly admitted: number
  readonly refused: number
  readonly other: number
}

const runWorker = (config: object): Effect.Effect<Outcome> =>
  Effect.orDie(workerReport<Outcome>(workerUrl, { args: [JSON.stringify(config)], timeoutMillis: 60_000 }))

const fourProcesses = (
  store: Effect.Effect<TokenStore.Service, unknown, Scope.Scope>,
  target:
    | { readonly url: string }
    | { readonly nodes: ReadonlyArray<string> }
    | { readonly postgres: string }
    | { readonly sqliteFile: string },
  keyPrefix: string,
  /** Every call is also one team's: each reservation locks two accounts. */
  teamId?: string
) =>
  Effect.gen(function*() {
    const service = yield* Effect.orDie(store)
    const userId = `shared-${Date.now()}`
    // A live test: the cycle is today's, as the workers compute it.
    const cycle = yield* currentCycle
    yield* Effect.orDie(service.setLimit(userId, cycle, 1_000))
    const startAt = Date.now() + 4_000
    const outcomes = yield* Effect.forEach(
      [0, 1, 2, 3],
      () => runWorker({ ...target, keyPrefix, userId, teamId, calls: 50, startAt }),
      { concurrency: "unbounded" }
    )
    const admitted = outcomes.reduce((n, o) => n + o.admitted, 0)
    const refused = outcomes.reduce((n, o) => n + o.refused, 0)
    assert.strictEqual(outcomes.reduce((n, o) => n + o.other, 0), 0, JSON.stringify(outcomes))
    // Each call's worst case (100) is what it uses: exactly 10 fit in 1,000.
    assert.strictEqual(admitted, 10, JSON.stringify(outcomes))
    assert.strictEqual(refused, 190)
    const stats = yield* Effect.orDie(service.stats(userId, cycle))
    assert.strictEqual(stats.totalTokens, 1_000)
    assert.strictEqual(stats.heldTokens, 0)
  })

/**
 * Starts a worker in hold mode, waits until its calls are admitted, and kills it (SIGKILL): how many it had.
 * The worker runs in the spawned process itself (`--import tsx`): through tsx's command, the SIGKILL ended
 * only the command, and the worker, holding its calls, lived on (orphaned) after the test.
 */
const holdAndDie = (config: object): Effect.Effect<number> =>
  Effect.async<number>((resume) => {
    const child = spawn(process.execPath, ["--import", "tsx", worker, JSON.stringify(config)], { cwd: root })
    let stdout = ""
    let stderr = ""
    child.stderr.on("data", (data) => stderr += String(data))
    child.stdout.on("data", (data) => {
      stdout += String(data)
      const line = stdout.split("\n").find((l) => l.startsWith("{"))
      if (line === undefined) return
      const report = JSON.parse(line) as { admitted: number; pid: number }
      child.once("exit", () => {
        // The process that held the calls is gone (signal 0 only asks whether it exists).
        const alive = (() => {
          try {
            process.kill(report.pid, 0)
            return true
          } catch {
            return false
          }
        })()
        if (alive) process.kill(report.pid, "SIGKILL")
        resume(
          alive
            ? Effect.die(new Error(`the worker holding the calls (pid ${report.pid}) outlived the process killed`))
            : Effect.succeed(report.admitted)
        )
      })
      child.kill("SIGKILL")
    })
    child.once("exit", (code, signal) => {
      if (signal !== "SIGKILL") resume(Effect.die(new Error(`worker exited (${code}) before its calls were admitted\n${stderr}`)))
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/**
 * A process that holds budget and is killed: its holds keep their tokens from everyone else until their
 * TTL, then the room is back; nothing was counted.
 */
const killedHolder = (
  store: Effect.Effect<TokenStore.Service, unknown, Scope.Scope>,
  target:
    | { readonly url: string }
    | { readonly postgres: string }
    | { readonly sqliteFile: string },
  keyPrefix: string
) =>
  Effect.gen(function*() {
    const service = yield* Effect.orDie(store)
    const userId = `killed-${Date.now()}`
    const cycle = yield* currentCycle
    yield* Effect.orDie(service.setLimit(userId, cycle, 300))
    // Three calls of 100 admitted in the other process, which then dies (its holds live 5 s).
    const admitted = yield* holdAndDie({ ...target, keyPrefix, userId, calls: 3, startAt: 0, holdTtlMillis: 5_000 })
    assert.strictEqual(admitted, 3)
    assert.deepInclude(yield* Effect.orDie(service.stats(userId, cycle)), { heldTokens: 300, totalTokens: 0 })
    const call = guardedCall({ userId }).pipe(Effect.provide(budgetEnvironment(Layer.succeed(TokenStore.TokenStore, service))))
    // Refused while they live...
    assert.deepInclude(yield* Effect.flip(call), { _tag: "UsageLimitExceeded", heldTokens: 300 })
    // ...admitted once they expired (5 s after they were made; 15 s at most here).
    const exit = yield* call.pipe(
      Effect.retry({ schedule: Schedule.spaced("200 millis"), times: 75, while: (e) => e instanceof Budget.UsageLimitExceeded }),
      Effect.exit
    )
    assert.isTrue(Exit.isSuccess(exit), String(exit))
    assert.deepInclude(yield* Effect.orDie(service.stats(userId, cycle)), { heldTokens: 0, totalTokens: 100 })
  })

bannerWithoutRedis("test/layers/BudgetProcesses.test.ts")
bannerWithoutPostgres("test/layers/BudgetProcesses.test.ts (PostgreSQL)")

/** The SQL store over a client kept open for the test's scope. */
const sqlStore = (client: Layer.Layer<SqlClient.SqlClient>) =>
  Effect.flatMap(Layer.build(client), (context) => Effect.provide(SqlTokenStore.make(), context))

describe("SQL", () => {
  describe("Budgets across processes", () => {
    // Each process makes its 50 reservations in one transaction or a few (see SqlTokenStore); the
    // user's and the team's accounts are locked in one order by all, so that none deadlocks.
    it.live.skipIf(skipWithoutPostgres)("4 processes x 50 calls against one PostgreSQL database: 10 admitted, usage exact", () =>
      fourProcesses(
        sqlStore(postgresClient),
        { postgres: postgresUrl() },
        "",
        `team-${Date.now()}`
      ).pipe(Effect.scoped), 120_000)

    it.live.skipIf(skipWithoutPostgres)("a process killed while it holds budget (PostgreSQL): its holds expire, nothing counted", () =>
      killedHolder(sqlStore(postgresClient), { postgres: postgresUrl() }, "").pipe(Effect.scoped), 60_000)

    it.live("a process killed while it holds budget (SQLite file): its holds expire, nothing counted", () => {
      const sqliteFile = `${fs.mkdtempSync(`${os.tmpdir()}/effect-llm-callbacks-budget-`)}/killed.sqlite`
      return killedHolder(sqlStore(SqliteClient.layer({ filename: sqliteFile }).pipe(Layer.orDie)), { sqliteFile }, "").pipe(
        Effect.scoped
      )
    }, 60_000)

    it.live("4 processes x 50 calls against one SQLite file: 10 admitted, usage exact", () => {
      const sqliteFile = `${fs.mkdtempSync(`${os.tmpdir()}/effect-llm-callbacks-budget-`)}/budget.sqlite`
      return fourProcesses(
        sqlStore(SqliteClient.layer({ filename: sqliteFile }).pipe(Layer.orDie)),
        { sqliteFile },
        "",
        `team-${Date.now()}`
      ).pipe(Effect.scoped)
    }, 120_000)
  })
})

describe.skipIf(skipWithoutRedis)("Redis", () => {
describe("Budgets across processes", () => {
  it.live("4 processes x 50 calls against one Redis: 10 admitted, usage exact", () =>
    Effect.gen(function*() {
      const keyPrefix = uniqueKeyPrefix("processes")
      yield* fourProcesses(RedisTokenStore.make({ url: redisUrl(), keyPrefix }), { url: redisUrl() }, keyPrefix)
    }).pipe(Effect.scoped), 120_000)

  it.live("a process killed while it holds budget: its holds expire, nothing counted", () =>
    Effect.gen(function*() {
      const keyPrefix = uniqueKeyPrefix("killed")
      yield* killedHolder(RedisTokenStore.make({ url: redisUrl(), keyPrefix }), { url: redisUrl() }, keyPrefix)
    }).pipe(Effect.scoped), 60_000)

  it.live("4 processes x 50 calls against a Redis Cluster: 10 admitted, usage exact", () =>
    Effect.gen(function*() {
      const cluster = yield* redisCluster
      const keyPrefix = uniqueKeyPrefix("processes")
      yield* fourProcesses(RedisTokenStore.makeCluster({ nodes: cluster.nodes, keyPrefix }), { nodes: cluster.nodes }, keyPrefix)
    }).pipe(Effect.scoped), 120_000)
})
})
