import { assert, describe, it } from "@effect/vitest"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as RedisTokenStore from "../../layers/RedisTokenStore.js"
import * as Outbox from "../../src/Outbox.js"
import * as TokenStore from "../../src/TokenStore.js"
import * as FaultProxy from "../support/FaultProxy.js"
import {
  assertStoredTotals,
  bannerWithoutRedis,
  dedicatedRedis,
  directClient,
  freePort,
  redisUrl,
  skipWithoutRedis,
  uniqueKeyPrefix
} from "../support/redis.js"
import {
  freshId,
  makeWorkload,
  retryUntilAnswered,
  tokenStoreConformance
} from "../support/tokenStoreConformance.js"

bannerWithoutRedis("test/layers/RedisTokenStore.test.ts")

describe.skipIf(skipWithoutRedis)("Redis", () => {
tokenStoreConformance(
  "redis",
  Layer.unwrapEffect(
    Effect.sync(() => RedisTokenStore.layer({ url: redisUrl(), keyPrefix: uniqueKeyPrefix("conformance") }))
  )
)

const usage = (promptTokens: number, completionTokens: number): TokenStore.TokenCounts => ({
  promptTokens,
  completionTokens,
  totalTokens: promptTokens + completionTokens
})

describe("RedisTokenStore", () => {
  it.scoped("lays keys out as <prefix>:{<user>}:<cycle>, with the call's marker in a marker hash", () =>
    Effect.gen(function*() {
      const keyPrefix = uniqueKeyPrefix("layout")
      const store = yield* RedisTokenStore.make({ url: redisUrl(), keyPrefix, idempotencyTtl: "1 hour" })
      const redis = yield* directClient(redisUrl())
      yield* store.record({
        callId: "call:1 {x}",
        userId: "a:b{c} d%",
        cycle: "2025-03-01",
        usage: usage(7, 3),
        costMicros: 12
      })
      yield* store.setLimit("a:b{c} d%", "2025-03-01", 500)
      const hashKey = `${keyPrefix}:{a%3Ab%7Bc%7D%20d%25}:2025-03-01`
      const countsKey = `${keyPrefix}:{a%3Ab%7Bc%7D%20d%25}:m`
      const keys = (yield* Effect.promise(() => redis.keys(`${keyPrefix}:*`))).sort()
      // One marker: in the counts' hash itself (a period's first 16 are), beside the period's count.
      assert.deepStrictEqual(keys, [hashKey, countsKey].sort())
      const fields = yield* Effect.promise(() => redis.hgetall(countsKey))
      const period = Object.keys(fields).find((field) => /^\d+$/.test(field))!
      assert.strictEqual(fields[period], "1")
      // Periods are numbered since the epoch: 15 minutes each here.
      assert.isTrue(Math.abs(Number(period) - Date.now() / 900_000) < 2, period)
      // The digest of the call id (132 bits of SHA-256, base64url).
      const markers = Object.keys(fields).filter((field) => field !== period)
      assert.strictEqual(markers.length, 1)
      assert.isTrue(markers[0]!.startsWith(`${period}|`), markers[0])
      assert.match(markers[0]!.slice(period.length + 1), /^[A-Za-z0-9_-]{22}$/)
      const markerKey = countsKey
      assert.strictEqual(yield* Effect.promise(() => redis.object("ENCODING", markerKey)), "listpack")
      assert.deepStrictEqual(yield* Effect.promise(() => redis.hgetall(hashKey)), {
        prompt_tokens: "7",
        completion_tokens: "3",
        total_tokens: "10",
        cost_micros: "12",
        usage_limit: "500"
      })
      // It lives at least the window (1 hour), at most a period (15 minutes) more.
      const ttl = yield* Effect.promise(() => redis.pttl(markerKey))
      assert.isTrue(ttl > 3_600_000 - 60_000 && ttl <= 4_500_000, `marker TTL ${ttl}`)
      assert.strictEqual(RedisTokenStore.usageKey(keyPrefix, "a:b{c} d%", "2025-03-01"), hashKey)
      assert.strictEqual(RedisTokenStore.markersKey(keyPrefix, "a:b{c} d%"), countsKey)
    }))

  it.scoped("2,000 calls of one user: 50 marker buckets of about 40, compact, and every call counts once", () =>
    Effect.gen(function*() {
      const keyPrefix = uniqueKeyPrefix("markers")
      const store = yield* RedisTokenStore.make({ url: redisUrl(), keyPrefix })
      const redis = yield* directClient(redisUrl())
      const cycle = "2025-03-01"
      const calls = Array.from({ length: 2_000 }, (_, i) => ({ callId: `m${i}`, userId: "heavy", cycle, usage: usage(1, 1) }))
      const first = yield* Effect.forEach(calls, store.record, { concurrency: 50 })
      assert.isTrue(first.every((outcome) => outcome === "recorded"))
      // Every call again, in another order: each one a duplicate.
      const again = yield* Effect.forEach([...calls].reverse(), store.record, { concurrency: 50 })
      assert.isTrue(again.every((outcome) => outcome === "duplicate"))
      assert.strictEqual((yield* store.stats("heavy", cycle)).totalTokens, 4_000)
      const markerKeys = yield* Effect.promise(() => redis.keys(`${keyPrefix}:{heavy}:m:*`))
      let fields = 0
      for (const key of markerKeys) {
        const size = yield* Effect.promise(() => redis.hlen(key))
        fields += size
        assert.isAtMost(size, 128, key)
        assert.strictEqual(yield* Effect.promise(() => redis.object("ENCODING", key)), "listpack", key)
      }
      assert.strictEqual(fields, 2_000)
      // Linear hashing: 2,000 markers in ceil(2,000 / 40) = 50 buckets, numbered 0 to 49.
      assert.deepStrictEqual(
        markerKeys.map((key) => Number(/:(\d+)$/.exec(key)![1])).sort((a, b) => a - b),
        Array.from({ length: 50 }, (_, i) => i)
      )
    }))

  it.scoped("a marker of the layout before marker hashes (<base>:call:<id>) still makes a duplicate", () =>
    Effect.gen(function*() {
      const keyPrefix = uniqueKeyPrefix("legacy")
      const store = yield* RedisTokenStore.make({ url: redisUrl(), keyPrefix })
      const redis = yield* directClient(redisUrl())
      yield* Effect.promise(() => redis.set(RedisTokenStore.callKey(keyPrefix, "old", "c1"), "1", "PX", 60_000))
      const input = { callId: "c1", userId: "old", cycle: "2025-03-01", usage: usage(5, 5) }
      assert.strictEqual(yield* store.record(input), "duplicate")
      assert.strictEqual((yield* store.stats("old", "2025-03-01")).totalTokens, 0)
      assert.strictEqual(yield* store.record({ ...input, callId: "c2" }), "recorded")
    }))

  it.live("a short window: a call id is remembered at least the window, and forgotten within a period after", () =>
    Effect.gen(function*() {
      const keyPrefix = uniqueKeyPrefix("window")
      // A window of 2 s: periods of 500 ms. Real time: Redis expires the markers on its own clock.
      const store = yield* RedisTokenStore.make({ url: redisUrl(), keyPrefix, idempotencyTtl: "2 seconds" })
      const input = { callId: "w1", userId: "u", cycle: "2025-03-01", usage: usage(1, 0) }
      assert.strictEqual(yield* store.record(input), "recorded")
      yield* Effect.sleep("1500 millis")
      assert.strictEqual(yield* store.record(input), "duplicate")
      yield* Effect.sleep("1200 millis")
      // 2.7 s after: past the window plus a period.
      assert.strictEqual(yield* store.record(input), "recorded")
      assert.strictEqual((yield* store.stats("u", "2025-03-01")).totalTokens, 2)
      // 400 calls over about 1.2 s (three periods, each split into buckets), each replayed at once and
      // again at the end: within the window every replay is a duplicate, whatever its period.
      const calls = Array.from({ length: 400 }, (_, i) => ({ ...input, callId: `spread-${i}`, userId: "spread" }))
      for (let i = 0; i < calls.length; i += 40) {
        const slice = calls.slice(i, i + 40)
        assert.isTrue((yield* Effect.forEach(slice, store.record, { concurrency: 10 })).every((o) => o === "recorded"))
        assert.isTrue((yield* Effect.forEach(slice, store.record, { concurrency: 10 })).every((o) => o === "duplicate"))
        yield* Effect.sleep("120 millis")
      }
      assert.isTrue((yield* Effect.forEach(calls, store.record, { concurrency: 10 })).every((o) => o === "duplicate"))
      assert.strictEqual((yield* store.stats("spread", "2025-03-01")).totalTokens, 400)
    }).pipe(Effect.scoped))

  it.scoped("reads hashes written by the Python design (token_usage:<user>:<cycle> fields)", () =>
    Effect.gen(function*() {
      const keyPrefix = uniqueKeyPrefix("compat")
      const store = yield* RedisTokenStore.make({ url: redisUrl(), keyPrefix })
      const redis = yield* directClient(redisUrl())
      yield* Effect.promise(() =>
        redis.hset(RedisTokenStore.usageKey(keyPrefix, "alice", "2025-03-01"), {
          prompt_tokens: 120,
          completion_tokens: 30,
          total_tokens: 150,
          usage_limit: 1000
        })
      )
      assert.deepStrictEqual(yield* store.stats("alice", "2025-03-01"), {
        promptTokens: 120,
        completionTokens: 30,
        totalTokens: 150,
        costMicros: 0,
        cachedTokens: 0,
        cacheWriteTokens: 0,
        reasoningTokens: 0,
        estimatedTokens: 0,
        limit: Option.some(1000),
        heldTokens: 0
      })
      assert.deepStrictEqual(yield* store.users("2025-03-01"), ["alice"])
    }))

  it.scoped("a corrupted field is an Unknown error, not a wrong number", () =>
    Effect.gen(function*() {
      const keyPrefix = uniqueKeyPrefix("corrupt")
      const store = yield* RedisTokenStore.make({ url: redisUrl(), keyPrefix })
      const redis = yield* directClient(redisUrl())
      yield* Effect.promise(() =>
        redis.hset(RedisTokenStore.usageKey(keyPrefix, "bob", "2025-03-01"), "total_tokens", "lots")
      )
      const error = yield* Effect.flip(store.checkLimit("bob", "2025-03-01"))
      assert.strictEqual(error.reason, "Unknown")
      assert.include(error.message, "total_tokens")
      // The record script fails before it marks the call, so a retry is not a duplicate.
      const input = { callId: "c1", userId: "bob", cycle: "2025-03-01", usage: usage(1, 1) }
      assert.strictEqual((yield* Effect.flip(store.record(input))).reason, "Unknown")
      yield* Effect.promise(() =>
        redis.hset(RedisTokenStore.usageKey(keyPrefix, "bob", "2025-03-01"), "total_tokens", 0)
      )
      assert.strictEqual(yield* store.record(input), "recorded")
    }))

  it.scoped("records of one batch keep their own outcomes: a corrupted user does not fail the others", () =>
    Effect.gen(function*() {
      const keyPrefix = uniqueKeyPrefix("batch")
      const cycle = "2025-03-01"
      const store = yield* RedisTokenStore.make({ url: redisUrl(), keyPrefix })
      const redis = yield* directClient(redisUrl())
      yield* Effect.promise(() => redis.hset(RedisTokenStore.usageKey(keyPrefix, "broken", cycle), "prompt_tokens", "x"))
      // Issued together, so they go to Redis as one script call.
      const outcomes = yield* Effect.all(
        [
          store.record({ callId: "a1", userId: "alice", cycle, usage: usage(1, 2) }),
          store.record({ callId: "b1", userId: "broken", cycle, usage: usage(5, 5) }),
          store.record({ callId: "a1", userId: "alice", cycle, usage: usage(1, 2) }),
          store.record({ callId: "c1", userId: "carol", cycle, usage: usage(3, 4) })
        ].map(Effect.either),
        { concurrency: "unbounded" }
      )
      assert.deepStrictEqual(outcomes.map((o) => o._tag === "Right" ? o.right : o.left.reason), [
        "recorded",
        "Unknown",
        "duplicate",
        "recorded"
      ])
      assert.strictEqual((yield* store.stats("alice", cycle)).totalTokens, 3)
      assert.strictEqual((yield* store.stats("carol", cycle)).totalTokens, 7)
      // Nothing was written for the corrupted user: not even the valid fields.
      const broken = yield* Effect.promise(() => redis.hgetall(RedisTokenStore.usageKey(keyPrefix, "broken", cycle)))
      assert.deepStrictEqual(broken, { prompt_tokens: "x" })
    }))

  it.scoped("batchSize bounds the records per script call; every record still counts once", () =>
    Effect.gen(function*() {
      const keyPrefix = uniqueKeyPrefix("batchsize")
      const cycle = "2025-03-01"
      const store = yield* RedisTokenStore.make({ url: redisUrl(), keyPrefix, batchSize: 7 })
      const outcomes = yield* Effect.forEach(
        Array.from({ length: 100 }, (_, i) => i),
        (i) => store.record({ callId: `c${i % 50}`, userId: `u${i % 5}`, cycle, usage: usage(1, 1) }),
        { concurrency: "unbounded" }
      )
      assert.strictEqual(outcomes.filter((o) => o === "recorded").length, 50)
      let total = 0
      for (let u = 0; u < 5; u++) total += (yield* store.stats(`u${u}`, cycle)).totalTokens
      assert.strictEqual(total, 100)
      const bad = yield* Effect.exit(RedisTokenStore.make({ url: redisUrl(), keyPrefix, batchSize: 0 }))
      assert.isTrue(bad._tag === "Failure" && String(bad.cause).includes("batchSize"))
    }))

  it("encodes key parts injectively", () => {
    const ids = ["a", "a:b", "a%3Ab", "%", "%25", "{x}", "x", "a b", "a\u00a0b", "a\u2028b", "用户🙂", ""]
    const encoded = ids.map(RedisTokenStore.encodeKeyPart)
    assert.strictEqual(new Set(encoded).size, ids.length)
    for (const [i, id] of ids.entries()) {
      assert.notMatch(encoded[i]!, /[:{}\s]/)
      assert.deepStrictEqual(RedisTokenStore.decodeKeyPart(encoded[i]!), Option.some(id))
    }
    assert.deepStrictEqual(RedisTokenStore.decodeKeyPart("a%3"), Option.none())
    assert.deepStrictEqual(RedisTokenStore.decodeKeyPart("a:b"), Option.none())
  })

  describe("configuration", () => {
    const withEnv = (env: Record<string, string>) =>
      Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env))))

    it.scoped("layerConfig reads REDIS_URL and REDIS_KEY_PREFIX", () =>
      Effect.gen(function*() {
        const keyPrefix = uniqueKeyPrefix("config")
        yield* TokenStore.TokenStore.pipe(
          Effect.flatMap((store) =>
            store.record({ callId: "c1", userId: "carol", cycle: "2025-03-01", usage: usage(1, 2) })
          ),
          Effect.provide(RedisTokenStore.layerConfig()),
          withEnv({ REDIS_URL: redisUrl(), REDIS_KEY_PREFIX: keyPrefix })
        )
        const redis = yield* directClient(redisUrl())
        assert.strictEqual(
          yield* Effect.promise(() =>
            redis.hget(RedisTokenStore.usageKey(keyPrefix, "carol", "2025-03-01"), "total_tokens")
          ),
          "3"
        )
      }))

    it.effect("a bad or missing REDIS_URL fails the layer naming it, without echoing the URL", () =>
      Effect.gen(function*() {
        for (const env of [{ REDIS_URL: "http://user:s3cret@localhost:6379" }, { REDIS_URL: "not a url" }, {}]) {
          const error = yield* Effect.flip(
            Layer.build(RedisTokenStore.layerConfig()).pipe(Effect.scoped, withEnv(env))
          )
          assert.strictEqual(error._tag, "ConfigError")
          assert.include(String(error), "REDIS_URL")
          assert.notInclude(String(error), "s3cret")
        }
        const prefixError = yield* Effect.flip(
          Layer.build(RedisTokenStore.layerConfig()).pipe(
            Effect.scoped,
            withEnv({ REDIS_URL: "redis://127.0.0.1:1", REDIS_KEY_PREFIX: "a{b}" })
          )
        )
        assert.include(String(prefixError), "REDIS_KEY_PREFIX")
      }))

    it.effect("bad options fail the layer naming the option", () =>
      Effect.gen(function*() {
        const cases: ReadonlyArray<readonly [RedisTokenStore.Options, string]> = [
          [{ url: "localhost:6379" }, "url"],
          [{ url: redisUrl(), keyPrefix: "{tag}" }, "keyPrefix"],
          [{ url: redisUrl(), keyPrefix: "" }, "keyPrefix"],
          [{ url: redisUrl(), commandTimeout: Duration.zero }, "commandTimeout"],
          [{ url: redisUrl(), idempotencyTtl: Duration.infinity }, "idempotencyTtl"]
        ]
        for (const [options, name] of cases) {
          const error = yield* Effect.flip(Effect.scoped(RedisTokenStore.make(options)))
          assert.strictEqual(error._tag, "ConfigError", name)
          assert.include(String(error), name)
        }
      }))

    it.scoped("an unreachable Redis fails the layer as Unavailable", () =>
      Effect.gen(function*() {
        const port = yield* Effect.promise(() => freePort())
        const error = yield* Effect.flip(
          Effect.scoped(RedisTokenStore.make({ url: `redis://127.0.0.1:${port}`, connectTimeout: "1 second" }))
        )
        assert.strictEqual(error._tag, "TokenStoreError")
        if (error._tag === "TokenStoreError") assert.strictEqual(error.reason, "Unavailable")
      }))
  })

  describe("faults", () => {
    it.scopedLive("a connection reset while the layer starts does not fail it: it waits for the reconnection", () =>
      Effect.gen(function*() {
        const target = new URL(redisUrl())
        const proxy = yield* FaultProxy.make({ targetPort: Number(target.port) })
        yield* proxy.setFaults({ dropReply: 0, reset: 1 })
        const starting = yield* Effect.fork(RedisTokenStore.make({ url: proxy.url, keyPrefix: uniqueKeyPrefix("reset") }))
        yield* Effect.sleep("400 millis")
        assert.isAtLeast((yield* proxy.counters).resets, 1)
        yield* proxy.setFaults({ dropReply: 0, reset: 0 })
        const store = yield* Fiber.join(starting)
        assert.strictEqual(
          yield* store.record({ callId: freshId("call"), userId: "erin", cycle: "2025-03-01", usage: usage(3, 1) }),
          "recorded"
        )
      }))

    it.scopedLive("a lost reply is retried with the same call id and counted once", () =>
      Effect.gen(function*() {
        const target = new URL(redisUrl())
        const proxy = yield* FaultProxy.make({ targetPort: Number(target.port) })
        const keyPrefix = uniqueKeyPrefix("lost")
        const store = yield* RedisTokenStore.make({ url: proxy.url, keyPrefix, commandTimeout: "500 millis" })
        const input = { callId: freshId("call"), userId: "dana", cycle: "2025-03-01", usage: usage(40, 2) }
        yield* proxy.dropNextReply
        // The script ran but its reply was lost; whichever retry answers
        // (ioredis' resend after reconnecting, or ours) finds the marker.
        const outcome = yield* store.record(input).pipe(Effect.retry(retryUntilAnswered))
        assert.strictEqual(outcome, "duplicate")
        assert.strictEqual((yield* proxy.counters).repliesDropped, 1)
        const redis = yield* directClient(redisUrl())
        assert.deepStrictEqual(
          yield* Effect.promise(() => redis.hgetall(RedisTokenStore.usageKey(keyPrefix, "dana", "2025-03-01"))),
          { prompt_tokens: "40", completion_tokens: "2", total_tokens: "42" }
        )
      }))

    it.scopedLive(
      "10,000 concurrent records through dropped replies and resets: no loss, no double count",
      () =>
        Effect.gen(function*() {
          const target = new URL(redisUrl())
          const proxy = yield* FaultProxy.make({
            targetPort: Number(target.port),
            faults: { dropReply: 0.05, reset: 0.05, stallMillis: 400 },
            seed: 20251127
          })
          const keyPrefix = uniqueKeyPrefix("load")
          const store = yield* RedisTokenStore.make({ url: proxy.url, keyPrefix, commandTimeout: "250 millis" })
          const cycle = "2025-03-01"
          const workload = makeWorkload({ calls: 10_000, users: 50, userPrefix: freshId("load") })
          let failures = 0
          const outcomes = yield* Effect.forEach(
            workload.records,
            (planned) =>
              store.record({ ...planned, cycle }).pipe(
                Effect.tapError(() => Effect.sync(() => failures++)),
                Effect.retry(retryUntilAnswered)
              ),
            { concurrency: 200 }
          )
          yield* proxy.setFaults({ dropReply: 0, reset: 0 })
          const counters = yield* proxy.counters
          // The faults really happened, and callers really saw some of them.
          assert.isAbove(counters.repliesDropped, 0, "no reply was dropped")
          assert.isAbove(counters.resets, 0, "no connection was reset")
          assert.isAbove(failures, 0, "no record failed")
          assert.strictEqual(outcomes.length, 10_000)

          yield* assertStoredTotals(keyPrefix, cycle, workload.expected)
          assert.deepStrictEqual(
            yield* store.users(cycle).pipe(Effect.retry(retryUntilAnswered)),
            [...workload.expected.keys()].sort()
          )
          yield* Effect.logInfo("lost-reply run").pipe(
            Effect.annotateLogs({
              ...counters,
              failures,
              duplicates: outcomes.filter((outcome) => outcome === "duplicate").length
            })
          )
        }),
      60_000
    )

    it.scopedLive("Redis stopped mid-run fails records quickly, and they succeed again after a restart", () =>
      Effect.gen(function*() {
        const server = yield* dedicatedRedis
        const store = yield* RedisTokenStore.make({
          url: server.url,
          keyPrefix: "restart",
          commandTimeout: "500 millis",
          connectTimeout: "500 millis"
        })
        const cycle = "2025-03-01"
        const record = (callId: string) => store.record({ callId, userId: "erin", cycle, usage: usage(5, 5) })
        assert.strictEqual(yield* record("before"), "recorded")

        yield* server.stop
        // Each failure is typed and comes within a bound, never a hang.
        for (const i of [1, 2, 3, 4, 5]) {
          const error = yield* record(`down-${i}`).pipe(
            Effect.flip,
            Effect.timeoutFail({
              duration: "3 seconds",
              onTimeout: () => new Error("record hung while Redis was down")
            })
          )
          assert.strictEqual(error._tag, "TokenStoreError")
          assert.include(["Unavailable", "Timeout"], error.reason)
          yield* Effect.sleep("100 millis")
        }

        yield* server.start
        // ioredis reconnects by itself; the caller only retries.
        const outcome = yield* record("after").pipe(
          Effect.retry(Schedule.spaced("100 millis").pipe(Schedule.intersect(Schedule.recurs(100))))
        )
        assert.strictEqual(outcome, "recorded")
        // The restarted server kept nothing (no persistence): only "after" is there.
        assert.strictEqual((yield* store.stats("erin", cycle)).totalTokens, 10)
        assert.strictEqual(yield* record("after"), "duplicate")
      }), 30_000)

    it.scopedLive("a Redis that may evict keys is warned about; one out of memory is unavailable: records wait in the outbox", () =>
      Effect.gen(function*() {
        const server = yield* dedicatedRedis
        const admin = yield* directClient(server.url)
        const warnings: Array<string> = []
        const logger = Logger.replace(
          Logger.defaultLogger,
          Logger.make(({ logLevel, message }) => {
            if (logLevel.label === "WARN") warnings.push(Array.isArray(message) ? message.join(" ") : String(message))
          })
        )
        const keyPrefix = uniqueKeyPrefix("memory")
        const build = Layer.build(
          Outbox.layer({ retry: Schedule.spaced("100 millis") }).pipe(
            Layer.provide(RedisTokenStore.layer({ url: server.url, keyPrefix })),
            Layer.provide(Outbox.layerStorageMemory),
            Layer.provideMerge(logger)
          )
        )
        const evicting = () => warnings.filter((line) => line.includes("may evict keys"))
        // The default policy (noeviction): nothing said.
        yield* Effect.scoped(Effect.zipRight(build, Effect.sleep("300 millis")))
        assert.deepStrictEqual(evicting(), [])
        // A policy that evicts: said once, naming it.
        yield* Effect.promise(() => admin.config("SET", "maxmemory-policy", "allkeys-lru"))
        yield* Effect.scoped(Effect.zipRight(build, Effect.sync(() => evicting().length > 0).pipe(
          Effect.repeat({ until: (done) => done, schedule: Schedule.spaced("20 millis") }),
          Effect.timeout("10 seconds")
        )))
        assert.strictEqual(evicting().length, 1)
        assert.include(evicting()[0]!, "maxmemory-policy allkeys-lru")
        // Out of memory (noeviction, maxmemory reached): records are kept by the outbox, then written.
        yield* Effect.promise(() => admin.config("SET", "maxmemory-policy", "noeviction"))
        const context = yield* build
        const store = Context.get(context, TokenStore.TokenStore)
        const cycle = "2025-03-01"
        const record = (callId: string) => store.record({ callId, userId: "gil", cycle, usage: usage(5, 5) })
        assert.strictEqual(yield* record("before"), "recorded")
        yield* Effect.promise(() => admin.config("SET", "maxmemory", "1"))
        assert.strictEqual(yield* record("full-1"), "queued")
        assert.strictEqual(yield* record("full-2"), "queued")
        assert.strictEqual((yield* Effect.provide(Outbox.stats, context)).rejected, 0)
        yield* Effect.promise(() => admin.config("SET", "maxmemory", "0"))
        yield* Effect.provide(Outbox.flush, context).pipe(Effect.timeout("20 seconds"))
        assert.strictEqual((yield* store.stats("gil", cycle)).totalTokens, 30)
      }), 60_000)

    it.scopedLive("a password missing or wrong fails the layer at once, saying so; rotated under a running app, records wait in the outbox", () =>
      Effect.gen(function*() {
        const server = yield* dedicatedRedis
        const admin = yield* directClient(server.url)
        yield* Effect.promise(() => admin.config("SET", "requirepass", "pw-one"))
        const withPassword = (password: string) => server.url.replace("redis://", `redis://:${password}@`)
        const keyPrefix = uniqueKeyPrefix("auth")
        // Refused: fails at once (not after the connection retries), naming the refusal, not the password.
        for (const [url, reply] of [[server.url, "NOAUTH"], [withPassword("pw-wrong"), "WRONGPASS"]] as const) {
          const error = yield* Effect.flip(Effect.scoped(RedisTokenStore.make({ url, keyPrefix })))
          assert.include(error.message, reply)
          assert.notInclude(error.message, "pw-wrong")
        }
        // A running app; the password is rotated and its connections dropped: every command is refused.
        const warnings: Array<string> = []
        const logger = Logger.make(({ logLevel, message }) => {
          if (logLevel.label === "WARN") warnings.push(Array.isArray(message) ? message.join(" ") : String(message))
        })
        const context = yield* Layer.build(
          Outbox.layer({ retry: Schedule.spaced("100 millis") }).pipe(
            Layer.provide(RedisTokenStore.layer({ url: withPassword("pw-one"), keyPrefix, commandTimeout: "1 second" })),
            Layer.provide(Outbox.layerStorageMemory),
            Layer.provideMerge(Logger.replace(Logger.defaultLogger, logger))
          )
        )
        const store = Context.get(context, TokenStore.TokenStore)
        const cycle = "2025-03-01"
        const record = (callId: string) => store.record({ callId, userId: "fay", cycle, usage: usage(5, 5) })
        assert.strictEqual(yield* record("before"), "recorded")
        yield* Effect.promise(() => admin.config("SET", "requirepass", "pw-two"))
        yield* Effect.promise(() => admin.client("KILL", "TYPE", "normal", "SKIPME", "yes"))
        // Records are kept by the outbox (the refusal counts as unavailable), not refused for good.
        const outcomes = yield* Effect.forEach(["r1", "r2", "r3"], record)
        assert.isTrue(outcomes.every((outcome) => outcome === "queued" || outcome === "recorded"), String(outcomes))
        const refused = () => warnings.filter((line) => line.includes("cannot connect to Redis"))
        yield* Effect.sync(() => refused().length > 0).pipe(
          Effect.repeat({ until: (done) => done, schedule: Schedule.spaced("50 millis") }),
          Effect.timeout("10 seconds")
        )
        // Said once, not at every reconnection.
        yield* Effect.sleep("1500 millis")
        assert.strictEqual(refused().length, 1, refused().join("\n"))
        assert.include(refused()[0]!, "WRONGPASS")
        assert.strictEqual((yield* Effect.provide(Outbox.stats, context)).rejected, 0)
        // The operator puts the password back: the app reconnects and the outbox writes what waited, once each.
        yield* Effect.promise(() => admin.config("SET", "requirepass", "pw-one"))
        yield* Effect.provide(Outbox.flush, context).pipe(Effect.timeout("20 seconds"))
        assert.strictEqual((yield* store.stats("fay", cycle)).totalTokens, 40)
        // The rights taken away on a live connection (an ACL without scripts): the same, the record waits.
        yield* Effect.promise(() => admin.call("ACL", "SETUSER", "default", "-@scripting"))
        assert.strictEqual(yield* record("r4"), "queued")
        yield* Effect.promise(() => admin.call("ACL", "SETUSER", "default", "+@scripting"))
        yield* Effect.provide(Outbox.flush, context).pipe(Effect.timeout("20 seconds"))
        assert.strictEqual((yield* store.stats("fay", cycle)).totalTokens, 50)
        assert.strictEqual((yield* Effect.provide(Outbox.stats, context)).rejected, 0)
      }), 60_000)
  })
})
})
