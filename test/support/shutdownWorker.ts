/**
 * An app process that ends as an app does: run by `NodeRuntime.runMain`, stopped with SIGTERM (see
 * test/layers/OutboxRedis.test.ts). Its calls' token usage goes to Redis through the token-usage
 * handler in background mode and an outbox in a SQLite file.
 *
 * Arguments: `<redisUrl> <keyPrefix> <outboxFile> <calls>`. It makes calls [0, calls) (32 at once), prints
 * `made <n>` with `n` the deliveries still waiting in the handler's buffer, then waits for the outbox to be
 * empty (`drained`), then for a signal. Records left in the outbox file by a previous process are replayed.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Effect, Logger, LogLevel } from "effect"
import { Dispatcher, Outbox } from "../../src/index.js"
import { appCall, appLayer } from "./outboxUsage.js"

const [redisUrl, keyPrefix, outboxFile, calls] = process.argv.slice(2) as [string, string, string, string]

const say = (line: string) => Effect.sync(() => process.stdout.write(`${line}\n`))

const layer = appLayer({ redisUrl, keyPrefix, outboxFile, mode: "background" })

const program = Effect.gen(function*() {
  yield* Effect.forEach(
    Array.from({ length: Number(calls) }, (_, i) => i),
    appCall,
    { concurrency: 32, discard: true }
  )
  const health = yield* Dispatcher.health
  yield* say(`made ${health.handlers.reduce((n, handler) => n + handler.pending, 0)}`)
  yield* Outbox.flush
  yield* say("drained")
  yield* Effect.never
})

NodeRuntime.runMain(program.pipe(Effect.provide(layer), Logger.withMinimumLogLevel(LogLevel.None)))
