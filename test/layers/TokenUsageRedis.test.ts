import { assert, describe, it } from "@effect/vitest"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Metric from "effect/Metric"
import * as MetricLabel from "effect/MetricLabel"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import * as TokenUsage from "../../layers/TokenUsage.js"
import { CallbackMetrics, Callbacks, Dispatcher, TokenStore } from "../../src/index.js"
import * as FaultProxy from "../support/FaultProxy.js"
import { assertStoredTotals, bannerWithoutRedis, dedicatedRedis, redisUrl, skipWithoutRedis, uniqueKeyPrefix } from "../support/redis.js"
import { freshId, makeWorkload } from "../support/tokenStoreConformance.js"

const cycle = "2025-03-01"

/** Retries a record until Redis answers: short at first, then every 250 ms, 60 times at most. */
const untilAnswered = Schedule.exponential("10 millis", 1.5).pipe(
  Schedule.union(Schedule.spaced("250 millis")),
  Schedule.intersect(Schedule.recurs(60))
)

/** Builds the dispatcher, the token-usage handler and the Redis store, for the current scope. */
const buildStack = (options: {
  readonly url: string
  readonly keyPrefix: string
  readonly handler: TokenUsage.Options
  readonly commandTimeout: Duration.DurationInput
}) =>
  Layer.build(
    TokenUsage.layer(options.handler).pipe(
      Layer.provideMerge(
        Layer.merge(
          Dispatcher.layer(),
          RedisTokenStore.layer({
            url: options.url,
            keyPrefix: options.keyPrefix,
            commandTimeout: options.commandTimeout,
            connectTimeout: "500 millis"
          })
        )
      )
    )
  )

const handlerHealth = (name: string) =>
  Effect.map(Dispatcher.health, (health) => health.handlers.find((handler) => handler.name === name)!)

const failureCount = (name: string) =>
  Metric.value(
    Metric.taggedWithLabels(CallbackMetrics.errorsTotal, [
      MetricLabel.make("callback_type", name),
      MetricLabel.make("error_type", "failed")
    ])
  ).pipe(Effect.map((state) => state.count))

bannerWithoutRedis("test/layers/TokenUsageRedis.test.ts")

describe.skipIf(skipWithoutRedis)("Redis", () => {
describe("TokenUsage over Redis", () => {
  it.scopedLive(
    "10,000 concurrent instrumented calls through dropped replies and resets: exact totals, no call failed",
    () =>
      Effect.gen(function*() {
        const target = new URL(redisUrl())
        const proxy = yield* FaultProxy.make({
          targetPort: Number(target.port),
          faults: { dropReply: 0.05, reset: 0.05, stallMillis: 400 },
          seed: 20251127
        })
        const keyPrefix = uniqueKeyPrefix("usage_load")
        const name = freshId("token-usage")
        const context = yield* buildStack({
          url: proxy.url,
          keyPrefix,
          commandTimeout: "250 millis",
          handler: { name, cycleStartDate: cycle, retry: untilAnswered, timeout: "60 seconds" }
        })
        const workload = makeWorkload({ calls: 10_000, users: 50, userPrefix: freshId("usage") })

        const exits = yield* Effect.forEach(
          workload.records,
          (planned) =>
            Effect.succeed({ content: "ok", usage: planned.usage }).pipe(
              Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", userId: planned.userId }),
              Effect.exit
            ),
          { concurrency: 200 }
        ).pipe(Effect.provide(context))
        yield* proxy.setFaults({ dropReply: 0, reset: 0 })

        // No call failed because of the faults.
        assert.strictEqual(exits.filter(Exit.isSuccess).length, 10_000)
        // The faults really happened and the handler really saw some of them.
        const counters = yield* proxy.counters
        assert.isAbove(counters.repliesDropped, 0, "no reply was dropped")
        assert.isAbove(counters.resets, 0, "no connection was reset")
        const health = yield* handlerHealth(name).pipe(Effect.provide(context))
        assert.isAbove(health.retries, 0, "no record was retried")
        assert.strictEqual(health.failures + health.timeouts + health.defects, 0, "a record was given up")
        assert.strictEqual(health.successes, 10_000)

        // Exactly what the calls reported: nothing lost, nothing counted twice.
        yield* assertStoredTotals(keyPrefix, cycle, workload.expected)
        yield* Effect.logInfo("instrumented lost-reply run").pipe(
          Effect.annotateLogs({ ...counters, retries: health.retries })
        )
      }),
    60_000
  )

  it.scopedLive("Redis stopped mid-run: calls keep succeeding, recording fails visibly and recovers", () =>
    Effect.gen(function*() {
      const server = yield* dedicatedRedis
      const keyPrefix = uniqueKeyPrefix("usage_restart")
      const name = freshId("token-usage")
      const warnings: Array<string> = []
      const logger = Logger.make(({ logLevel, message }) => {
        if (logLevel.label === "WARN") warnings.push(Array.isArray(message) ? message.join(" ") : String(message))
      })
      const context = yield* buildStack({
        url: server.url,
        keyPrefix,
        commandTimeout: "500 millis",
        handler: {
          name,
          cycleStartDate: cycle,
          retry: Schedule.spaced("50 millis").pipe(Schedule.intersect(Schedule.recurs(1))),
          timeout: "3 seconds"
        }
      })
      const provide = <A, E>(effect: Effect.Effect<A, E, Dispatcher.Dispatcher | TokenStore.TokenStore>) =>
        effect.pipe(Effect.provide(context), Effect.provide(Logger.add(logger)))
      const call = (label: string) =>
        provide(
          Effect.succeed({ content: label, usage: { promptTokens: 5, completionTokens: 5, totalTokens: 10 } }).pipe(
            Callbacks.instrument({ provider: "openai", model: "gpt-4o-mini", userId: "erin" })
          )
        )

      assert.strictEqual((yield* call("before")).content, "before")
      assert.strictEqual((yield* provide(Dispatcher.health)).status, "healthy")
      const failuresBefore = yield* failureCount(name)

      yield* server.stop
      for (const i of [1, 2, 3]) {
        // The call returns its own value, within the handler's bound.
        const result = yield* call(`down-${i}`).pipe(
          Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => "call hung while Redis was down" })
        )
        assert.strictEqual(result.content, `down-${i}`)
      }
      // Visible: health, metrics and logs.
      const down = yield* provide(Dispatcher.health)
      assert.strictEqual(down.status, "degraded")
      const downHandler = down.handlers.find((handler) => handler.name === name)!
      assert.strictEqual(downHandler.failures, 3)
      assert.isTrue(Option.isSome(downHandler.lastError))
      if (Option.isSome(downHandler.lastError)) assert.include(downHandler.lastError.value.message, "RedisTokenStore")
      assert.strictEqual((yield* failureCount(name)) - failuresBefore, 3)
      assert.strictEqual(warnings.filter((line) => line.includes(name)).length, 3)

      yield* server.start
      // ioredis reconnects by itself: calls go on, and recording resumes.
      yield* call("after").pipe(
        Effect.zipRight(provide(handlerHealth(name))),
        Effect.repeat({
          until: (health) => health.successes >= 2,
          schedule: Schedule.spaced("100 millis").pipe(Schedule.intersect(Schedule.recurs(100)))
        })
      )
      assert.strictEqual((yield* provide(Dispatcher.health)).status, "healthy")
      // The restarted server kept nothing (no persistence): only what was recorded after.
      const recorded = yield* provide(
        Effect.flatMap(TokenStore.TokenStore, (store) => store.stats("erin", cycle))
      )
      assert.isAbove(recorded.totalTokens, 0)
      assert.strictEqual(recorded.totalTokens % 10, 0)
    }), 30_000)
})
})
