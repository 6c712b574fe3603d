/**
 * One app process of the multi-process budget test: it waits until the
 * agreed start time, runs `calls` concurrent guarded calls of one user against
 * the shared store (a Redis, a Redis Cluster, a PostgreSQL database or a
 * SQLite file), and prints what was admitted as JSON. In hold mode
 * (`holdTtlMillis`) its calls are admitted and never end: it prints how many,
 * and waits to be killed.
 *
 * Usage: node <tsx> test/support/budgetWorker.ts '<json config>'
 */
import * as PgClient from "@effect/sql-pg/PgClient"
import * as SqliteClient from "@effect/sql-sqlite-node/SqliteClient"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import * as SqlTokenStore from "../../layers/SqlTokenStore.js"
import type * as TokenStore from "../../src/TokenStore.js"
import { budgetEnvironment, guardedCall, until } from "./budget.js"

interface WorkerConfig {
  readonly url?: string
  readonly nodes?: ReadonlyArray<string>
  readonly postgres?: string
  readonly sqliteFile?: string
  readonly keyPrefix: string
  readonly userId: string
  /** Every call is also the team's (a second account locked by each reservation). */
  readonly teamId?: string
  readonly calls: number
  /** Epoch ms at which every worker fires its calls. */
  readonly startAt: number
  /**
   * Hold mode: the calls' holds live this long; once every call is admitted and waiting in the model
   * (which never answers), the worker prints how many and waits to be killed.
   */
  readonly holdTtlMillis?: number
}

const config = JSON.parse(process.argv[2] ?? "{}") as WorkerConfig

const store: Layer.Layer<TokenStore.TokenStore, unknown> = config.postgres !== undefined
  ? SqlTokenStore.layer().pipe(Layer.provide(PgClient.layer({ url: Redacted.make(config.postgres) })))
  : config.sqliteFile !== undefined
  ? SqlTokenStore.layer().pipe(Layer.provide(SqliteClient.layer({ filename: config.sqliteFile })))
  : config.nodes !== undefined
  ? RedisTokenStore.layerCluster({ nodes: config.nodes, keyPrefix: config.keyPrefix })
  : RedisTokenStore.layer({ url: config.url, keyPrefix: config.keyPrefix })

const holding = Effect.gen(function*() {
  const calls = { n: 0 }
  const guard = { holdTtl: Duration.millis(config.holdTtlMillis!) }
  yield* Effect.forEach(
    Array.from({ length: config.calls }),
    () => Effect.fork(guardedCall({ userId: config.userId, calls, latency: "1 hour", guard })),
    { discard: true }
  )
  yield* until(() => calls.n === config.calls)
  // Its process id: the test checks that the process it killed is the one holding the calls.
  process.stdout.write(`${JSON.stringify({ admitted: calls.n, pid: process.pid })}\n`)
  return yield* Effect.never
})

const program = config.holdTtlMillis !== undefined ? holding : Effect.gen(function*() {
  yield* Effect.sleep(Math.max(0, config.startAt - Date.now()))
  const exits = yield* Effect.forEach(
    Array.from({ length: config.calls }),
    // The model takes 200 ms, so the calls of every process overlap.
    () => Effect.exit(guardedCall({ userId: config.userId, teamId: config.teamId, latency: "200 millis" })),
    { concurrency: "unbounded" }
  )
  const refused = exits.filter((exit) =>
    Exit.isFailure(exit) && exit.cause._tag === "Fail" &&
    (exit.cause.error as { readonly _tag?: string })._tag === "UsageLimitExceeded"
  ).length
  const admitted = exits.filter(Exit.isSuccess).length
  process.stdout.write(`${JSON.stringify({ admitted, refused, other: config.calls - admitted - refused })}\n`)
})

Effect.runPromise(program.pipe(Effect.provide(budgetEnvironment(store)))).catch((error) => {
  process.stderr.write(`${String(error)}\n`)
  process.exit(1)
})
