/**
 * What the outbox tests' app processes share (test/support/outboxWorker.ts, shutdownWorker.ts): the usage
 * of call i, which the tests sum, and the app's stack: the token-usage handler over Redis through an outbox
 * in a SQLite file.
 */
import { Effect, Layer } from "effect"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import * as SqlOutbox from "../../layers/SqlOutbox.js"
import * as TokenUsage from "../../layers/TokenUsage.js"
import { Callbacks, Dispatcher, Outbox } from "../../src/index.js"

/** The usage of call i. */
export const usageOf = (i: number) => ({ promptTokens: 10 + (i % 17), completionTokens: 1 + (i % 5) })

/** Call i: an instrumented call of user `user-<i mod 13>`, id `call-<i>`, using `usageOf(i)`. */
export const appCall = (i: number) =>
  Effect.sync(() => {
    const usage = usageOf(i)
    return { content: "ok", usage: { ...usage, totalTokens: usage.promptTokens + usage.completionTokens } }
  }).pipe(Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", userId: `user-${i % 13}`, callId: `call-${i}` }))

/** The app's stack; Redis connects in the background (the app starts during an outage). */
export const appLayer = (options: {
  readonly redisUrl: string
  readonly keyPrefix: string
  readonly outboxFile: string
  readonly mode: "await" | "background"
}) =>
  TokenUsage.layer({ cycleStartDate: "2026-12-01", mode: options.mode, timeout: "3 seconds" }).pipe(
    Layer.provideMerge(
      Layer.merge(
        Dispatcher.layer({ retryDelay: "10 millis" }),
        Outbox.layer({ batchSize: 512 }).pipe(
          Layer.provide(RedisTokenStore.layer({
            url: options.redisUrl,
            keyPrefix: options.keyPrefix,
            commandTimeout: "1 second",
            connectTimeout: "1 second",
            connection: "background"
          })),
          Layer.provide(SqlOutbox.layerSqlite({ filename: options.outboxFile }))
        )
      )
    )
  )
