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
import { Effect, Layer, Logger, LogLevel } from "effect"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import * as SqlOutbox from "../../layers/SqlOutbox.js"
import * as TokenUsage from "../../layers/TokenUsage.js"
import { Callbacks, Dispatcher, Outbox } from "../../src/index.js"
import { usageOf } from "./outboxUsage.js"

const [redisUrl, keyPrefix, outboxFile, calls] = process.argv.slice(2) as [string, string, string, string]

const say = (line: string) => Effect.sync(() => process.stdout.write(`${line}\n`))

const layer = TokenUsage.layer({ cycleStartDate: "2026-12-01", mode: "background" }).pipe(
  Layer.provideMerge(
    Layer.merge(
      Dispatcher.layer(),
      Outbox.layer().pipe(
        Layer.provide(RedisTokenStore.layer({
          url: redisUrl,
          keyPrefix,
          commandTimeout: "1 second",
          connectTimeout: "1 second",
          connection: "background"
        })),
        Layer.provide(SqlOutbox.layerSqlite({ filename: outboxFile }))
      )
    )
  )
)

const program = Effect.gen(function*() {
  yield* Effect.forEach(
    Array.from({ length: Number(calls) }, (_, i) => i),
    (i) =>
      Effect.sync(() => {
        const usage = usageOf(i)
        return { content: "ok", usage: { ...usage, totalTokens: usage.promptTokens + usage.completionTokens } }
      }).pipe(Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", userId: `user-${i % 13}`, callId: `call-${i}` })),
    { concurrency: 32, discard: true }
  )
  const health = yield* Dispatcher.health
  yield* say(`made ${health.handlers.reduce((n, handler) => n + handler.pending, 0)}`)
  yield* Outbox.flush
  yield* say("drained")
  yield* Effect.never
})

NodeRuntime.runMain(program.pipe(Effect.provide(layer), Logger.withMinimumLogLevel(LogLevel.None)))
