/**
 * One app process of the multi-process budget test: it waits until the
 * agreed start time, runs `calls` concurrent guarded calls of one user against
 * the shared Redis (or Cluster), and prints what was admitted as JSON.
 *
 * Usage: node <tsx> test/support/budgetWorker.ts '<json config>'
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import { budgetEnvironment, guardedCall } from "./budget.js"

interface WorkerConfig {
  readonly url?: string
  readonly nodes?: ReadonlyArray<string>
  readonly keyPrefix: string
  readonly userId: string
  readonly calls: number
  /** Epoch ms at which every worker fires its calls. */
  readonly startAt: number
}

const config = JSON.parse(process.argv[2] ?? "{}") as WorkerConfig

const store = config.nodes !== undefined
  ? RedisTokenStore.layerCluster({ nodes: config.nodes, keyPrefix: config.keyPrefix })
  : RedisTokenStore.layer({ url: config.url, keyPrefix: config.keyPrefix })

const program = Effect.gen(function*() {
  yield* Effect.sleep(Math.max(0, config.startAt - Date.now()))
  const exits = yield* Effect.forEach(
    Array.from({ length: config.calls }),
    // The model takes 200 ms, so the calls of every process overlap.
    () => Effect.exit(guardedCall({ userId: config.userId, latency: "200 millis" })),
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
