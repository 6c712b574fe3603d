/**
 * The behaviour every `TokenStore` backend must have, as one suite run against
 * each of them (`test/TokenStore.test.ts`, `test/layers/RedisTokenStore.test.ts`),
 * and the workload of the lost-reply tests, reusable through other layers
 * (e.g. the token-usage handler).
 */
import { assert, layer } from "@effect/vitest"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import type * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schedule from "effect/Schedule"
import * as TokenStore from "../../src/TokenStore.js"

let counter = 0

/** An id no other test of the run uses. */
export const freshId = (label: string): string =>
  `${label}-${(counter++).toString(36)}-${Math.random().toString(36).slice(2, 8)}`

/** A cycle start date no other test of the run uses (years 3000-8999). */
export const freshCycle = (): string => `${3000 + ((counter++) % 6000)}-01-01`

const usage = (promptTokens: number, completionTokens: number): TokenStore.TokenCounts => ({
  promptTokens,
  completionTokens,
  totalTokens: promptTokens + completionTokens
})

/** One planned record of a workload. */
export interface PlannedRecord {
  readonly callId: string
  readonly userId: string
  readonly usage: TokenStore.TokenCounts
}

/**
 * A workload of `calls` records with distinct call ids spread over `users`
 * users (ids `<userPrefix>-<n>`), with random token counts from a seeded
 * generator, and the totals per user they must add up to.
 */
export const makeWorkload = (options: {
  readonly calls: number
  readonly users: number
  readonly userPrefix: string
  readonly seed?: number | undefined
}): {
  readonly records: ReadonlyArray<PlannedRecord>
  readonly expected: ReadonlyMap<string, TokenStore.TokenCounts>
} => {
  const [records] = FastCheck.sample(
    FastCheck.array(
      FastCheck.record({
        user: FastCheck.integer({ min: 0, max: options.users - 1 }),
        prompt: FastCheck.integer({ min: 0, max: 5_000 }),
        completion: FastCheck.integer({ min: 0, max: 2_000 })
      }),
      { minLength: options.calls, maxLength: options.calls }
    ),
    { numRuns: 1, seed: options.seed ?? 7 }
  )
  const planned = (records ?? []).map((r, i): PlannedRecord => ({
    callId: `${options.userPrefix}-call-${i}`,
    userId: `${options.userPrefix}-${r.user}`,
    usage: usage(r.prompt, r.completion)
  }))
  const expected = new Map<string, TokenStore.TokenCounts>()
  for (const record of planned) {
    const current = expected.get(record.userId) ?? usage(0, 0)
    expected.set(record.userId, {
      promptTokens: current.promptTokens + record.usage.promptTokens,
      completionTokens: current.completionTokens + record.usage.completionTokens,
      totalTokens: current.totalTokens + record.usage.totalTokens
    })
  }
  return { records: planned, expected }
}

/**
 * What a careful caller does after a lost reply: retry the same record (same
 * call id) on a `TokenStoreError`, with a bounded exponential backoff, until it
 * gets an answer.
 */
export const retryUntilAnswered: Schedule.Schedule<unknown, TokenStore.TokenStoreError> = Schedule.exponential(
  "10 millis",
  1.5
).pipe(
  Schedule.union(Schedule.spaced("250 millis")),
  Schedule.intersect(Schedule.recurs(60))
)

const invalid = <A>(effect: Effect.Effect<A, TokenStore.TokenStoreError>, ...fragments: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const error = yield* Effect.flip(effect)
    assert.strictEqual(error._tag, "TokenStoreError")
    assert.strictEqual(error.reason, "InvalidInput")
    for (const fragment of fragments) {
      assert.include(error.message, fragment)
    }
  })

/**
 * Runs the conformance suite against a token store layer, shared by its tests
 * (each test uses its own users and cycles).
 */
export const tokenStoreConformance = <E>(name: string, storeLayer: Layer.Layer<TokenStore.TokenStore, E>): void =>
  layer(storeLayer, { timeout: "30 seconds" })(`TokenStore conformance: ${name}`, (it) => {
    it.effect("records usage and reads it back", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("user")
        const cycle = "2025-03-01"
        assert.strictEqual(
          yield* store.record({ callId: freshId("call"), userId, cycle, usage: usage(10, 5), costMicros: 250 }),
          "recorded"
        )
        assert.strictEqual(
          yield* store.record({ callId: freshId("call"), userId, cycle, usage: { ...usage(1, 2), totalTokens: 4 } }),
          "recorded"
        )
        assert.deepStrictEqual(yield* store.stats(userId, cycle), {
          promptTokens: 11,
          completionTokens: 7,
          totalTokens: 19,
          costMicros: 250,
          cachedTokens: 0,
          cacheWriteTokens: 0,
          reasoningTokens: 0,
          estimatedTokens: 0,
          limit: Option.none(),
          heldTokens: 0
        })
        // Another cycle of the same user is separate.
        assert.strictEqual((yield* store.stats(userId, "2025-04-01")).totalTokens, 0)
      }))

    it.effect("has every field, zero, for an unknown user", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const stats = yield* store.stats(freshId("nobody"), "2025-03-01")
        assert.deepStrictEqual(stats, {
          promptTokens: 0,
          completionTokens: 0,
          totalTokens: 0,
          costMicros: 0,
          cachedTokens: 0,
          cacheWriteTokens: 0,
          reasoningTokens: 0,
          estimatedTokens: 0,
          limit: Option.none(),
          heldTokens: 0
        })
        assert.deepStrictEqual(Object.keys(stats).sort(), [
          "cacheWriteTokens",
          "cachedTokens",
          "completionTokens",
          "costMicros",
          "estimatedTokens",
          "heldTokens",
          "limit",
          "promptTokens",
          "reasoningTokens",
          "totalTokens"
        ])
      }))

    it.effect("records a call once per user and call id", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("user")
        const other = freshId("user")
        const callId = freshId("call")
        const cycle = "2025-03-01"
        const input = { callId, userId, cycle, usage: usage(100, 50), costMicros: 7 }
        assert.strictEqual(yield* store.record(input), "recorded")
        assert.strictEqual(yield* store.record(input), "duplicate")
        // A retry carrying different numbers is still the same call.
        assert.strictEqual(yield* store.record({ ...input, usage: usage(1, 1) }), "duplicate")
        const outcomes = yield* Effect.all(Array.from({ length: 20 }, () => store.record(input)), {
          concurrency: "unbounded"
        })
        assert.isTrue(outcomes.every((outcome) => outcome === "duplicate"))
        assert.deepStrictEqual(yield* store.stats(userId, cycle), {
          promptTokens: 100,
          completionTokens: 50,
          totalTokens: 150,
          costMicros: 7,
          cachedTokens: 0,
          cacheWriteTokens: 0,
          reasoningTokens: 0,
          estimatedTokens: 0,
          limit: Option.none(),
          heldTokens: 0
        })
        // The same call id for another user is another call.
        assert.strictEqual(yield* store.record({ ...input, userId: other }), "recorded")
        assert.strictEqual((yield* store.stats(other, cycle)).totalTokens, 150)
      }))

    it.effect("recordMany: each record once, outcomes in order; an invalid input records nothing", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const alice = freshId("user")
        const bob = freshId("user")
        const cycle = "2025-03-01"
        const first = { callId: freshId("call"), userId: alice, cycle, usage: usage(10, 5), costMicros: 3 }
        const second = { callId: freshId("call"), userId: bob, cycle, usage: usage(1, 1) }
        assert.strictEqual(yield* store.record(first), "recorded")
        const outcomes = yield* store.recordMany([first, second, second, { ...first, callId: freshId("call") }])
        assert.deepStrictEqual(outcomes, ["duplicate", "recorded", "duplicate", "recorded"])
        assert.deepStrictEqual(yield* store.recordMany([]), [])
        assert.strictEqual((yield* store.stats(alice, cycle)).totalTokens, 30)
        assert.strictEqual((yield* store.stats(alice, cycle)).costMicros, 6)
        assert.strictEqual((yield* store.stats(bob, cycle)).totalTokens, 2)
        const invalid = yield* Effect.flip(store.recordMany([
          { callId: freshId("call"), userId: bob, cycle, usage: usage(100, 100) },
          { callId: freshId("call"), userId: bob, cycle, usage: usage(-1, 1) }
        ]))
        assert.strictEqual(invalid.reason, "InvalidInput")
        assert.include(invalid.message, "promptTokens")
        assert.strictEqual((yield* store.stats(bob, cycle)).totalTokens, 2)
      }))

    it.effect("counts concurrent records of distinct calls exactly", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("user")
        const cycle = "2025-03-01"
        yield* Effect.forEach(
          Array.from({ length: 200 }, (_, i) => i),
          (i) => store.record({ callId: `c${i}`, userId, cycle, usage: usage(i, 1) }),
          { concurrency: 50, discard: true }
        )
        const stats = yield* store.stats(userId, cycle)
        assert.strictEqual(stats.promptTokens, (199 * 200) / 2)
        assert.strictEqual(stats.completionTokens, 200)
        assert.strictEqual(stats.totalTokens, (199 * 200) / 2 + 200)
      }))

    it.effect("resets the counters and keeps the limit", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const cycle = freshCycle()
        const limited = freshId("limited")
        const plain = freshId("plain")
        yield* store.record({ callId: "c1", userId: limited, cycle, usage: usage(10, 10), costMicros: 3 })
        yield* store.record({ callId: "c1", userId: plain, cycle, usage: usage(10, 10) })
        yield* store.setLimit(limited, cycle, 1_000)
        yield* store.reset(limited, cycle)
        yield* store.reset(plain, cycle)
        yield* store.reset(freshId("nobody"), cycle)
        assert.deepStrictEqual(yield* store.stats(limited, cycle), {
          promptTokens: 0,
          completionTokens: 0,
          totalTokens: 0,
          costMicros: 0,
          cachedTokens: 0,
          cacheWriteTokens: 0,
          reasoningTokens: 0,
          estimatedTokens: 0,
          limit: Option.some(1_000),
          heldTokens: 0
        })
        assert.strictEqual((yield* store.stats(plain, cycle)).totalTokens, 0)
        // A user without a limit and without usage is no longer listed.
        assert.deepStrictEqual(yield* store.users(cycle), [limited])
        // The call ids recorded before the reset are still known.
        assert.strictEqual(
          yield* store.record({ callId: "c1", userId: plain, cycle, usage: usage(10, 10) }),
          "duplicate"
        )
        assert.strictEqual(
          yield* store.record({ callId: "c2", userId: plain, cycle, usage: usage(1, 2) }),
          "recorded"
        )
        assert.strictEqual((yield* store.stats(plain, cycle)).totalTokens, 3)
      }))

    it.effect("checks limits: none, under, exactly at, over", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("user")
        const cycle = "2025-03-01"
        assert.deepStrictEqual(yield* store.checkLimit(userId, cycle), {
          exceeded: false,
          currentUsage: 0,
          limit: Option.none(),
          remaining: Option.none(),
          heldTokens: 0
        })
        yield* store.record({ callId: "c1", userId, cycle, usage: usage(60, 20) })
        assert.deepStrictEqual(yield* store.checkLimit(userId, cycle), {
          exceeded: false,
          currentUsage: 80,
          limit: Option.none(),
          remaining: Option.none(),
          heldTokens: 0
        })
        yield* store.setLimit(userId, cycle, 100)
        assert.deepStrictEqual(yield* store.checkLimit(userId, cycle), {
          exceeded: false,
          currentUsage: 80,
          limit: Option.some(100),
          remaining: Option.some(20),
          heldTokens: 0
        })
        yield* store.record({ callId: "c2", userId, cycle, usage: usage(15, 5) })
        assert.deepStrictEqual(yield* store.checkLimit(userId, cycle), {
          exceeded: true,
          currentUsage: 100,
          limit: Option.some(100),
          remaining: Option.some(0),
          heldTokens: 0
        })
        yield* store.record({ callId: "c3", userId, cycle, usage: usage(1, 0) })
        assert.deepStrictEqual(yield* store.checkLimit(userId, cycle), {
          exceeded: true,
          currentUsage: 101,
          limit: Option.some(100),
          remaining: Option.some(0),
          heldTokens: 0
        })
        // Raising the limit lifts the block; the limit is part of the stats.
        yield* store.setLimit(userId, cycle, 1_000)
        assert.deepStrictEqual(yield* store.checkLimit(userId, cycle), {
          exceeded: false,
          currentUsage: 101,
          limit: Option.some(1_000),
          remaining: Option.some(899),
          heldTokens: 0
        })
        assert.deepStrictEqual((yield* store.stats(userId, cycle)).limit, Option.some(1_000))
      }))

    it.effect("a limit of 0 is exceeded without any usage", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("user")
        yield* store.setLimit(userId, "2025-03-01", 0)
        assert.deepStrictEqual(yield* store.checkLimit(userId, "2025-03-01"), {
          exceeded: true,
          currentUsage: 0,
          limit: Option.some(0),
          remaining: Option.some(0),
          heldTokens: 0
        })
      }))

    it.effect("lists the users with usage or a limit in a cycle", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const cycle = freshCycle()
        const otherCycle = freshCycle()
        assert.deepStrictEqual(yield* store.users(cycle), [])
        yield* store.record({ callId: "c1", userId: "carol", cycle, usage: usage(1, 1) })
        yield* store.record({ callId: "c2", userId: "carol", cycle, usage: usage(1, 1) })
        yield* store.record({ callId: "c1", userId: "alice", cycle, usage: usage(0, 0) })
        yield* store.setLimit("bob", cycle, 10)
        yield* store.record({ callId: "c1", userId: "dave", cycle: otherCycle, usage: usage(1, 1) })
        assert.deepStrictEqual(yield* store.users(cycle), ["alice", "bob", "carol"])
        assert.deepStrictEqual(yield* store.users(otherCycle), ["dave"])
      }))

    it.effect("rejects invalid input, naming the field and the value", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("user")
        const cycle = "2025-03-01"
        const base = { callId: "c1", userId, cycle, usage: usage(1, 1) }
        const withUsage = (field: keyof TokenStore.TokenCounts, value: unknown) =>
          store.record({ ...base, usage: { ...base.usage, [field]: value } } as TokenStore.RecordInput)
        yield* invalid(withUsage("promptTokens", -1), "usage.promptTokens", "-1")
        yield* invalid(withUsage("completionTokens", 1.5), "usage.completionTokens", "1.5")
        yield* invalid(withUsage("totalTokens", Number.NaN), "usage.totalTokens", "NaN")
        yield* invalid(withUsage("totalTokens", 2 ** 53), "usage.totalTokens", String(2 ** 53))
        yield* invalid(withUsage("promptTokens", Number.POSITIVE_INFINITY), "usage.promptTokens", "Infinity")
        yield* invalid(withUsage("promptTokens", "12"), "usage.promptTokens", `"12"`)
        yield* invalid(store.record({ ...base, costMicros: -5 }), "costMicros", "-5")
        yield* invalid(store.record({ ...base, userId: "" }), "userId", `""`)
        yield* invalid(store.record({ ...base, callId: "" }), "callId", `""`)
        yield* invalid(store.record({ ...base, userId: "bad\uD800" }), "userId")
        yield* invalid(store.record({ ...base, cycle: "2025-02-30" }), "cycle", "2025-02-30")
        yield* invalid(store.record({ ...base, cycle: "2025-3-1" }), "cycle", "2025-3-1")
        yield* invalid(store.record({ ...base, cycle: "b:2025-03-01" }), "cycle")
        yield* invalid(store.stats("", cycle), "userId")
        yield* invalid(store.stats(userId, "March"), "cycle", "March")
        yield* invalid(store.reset(userId, "2025-13-01"), "cycle", "2025-13-01")
        yield* invalid(store.setLimit(userId, cycle, -1), "limit", "-1")
        yield* invalid(store.setLimit(userId, cycle, 0.5), "limit", "0.5")
        yield* invalid(store.checkLimit(userId, ""), "cycle")
        yield* invalid(store.users("2025-02-29"), "cycle", "2025-02-29")
        // Nothing was recorded by the rejected calls.
        assert.strictEqual((yield* store.stats(userId, cycle)).totalTokens, 0)
        assert.deepStrictEqual((yield* store.stats(userId, cycle)).limit, Option.none())
      }))

    it.effect("counts that cannot be stored are refused before anything is written", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("huge")
        const teamId = freshId("huge-team")
        const cycle = "2025-03-01"
        const max = Number.MAX_SAFE_INTEGER
        // A sum of counts that is not a safe integer is invalid on its own.
        yield* invalid(
          store.record({ callId: "s", userId, cycle, usage: { promptTokens: max, completionTokens: 1, totalTokens: max } }),
          "usage",
          "sum"
        )
        assert.strictEqual(
          yield* store.record({ callId: "c1", userId, cycle, usage: { promptTokens: max, completionTokens: 0, totalTokens: max } }),
          "recorded"
        )
        // The team is fine, the user's counters would overflow: nothing is written at either level.
        const error = yield* Effect.flip(
          store.record({ callId: "c2", userId, teamId, cycle, usage: { promptTokens: 1, completionTokens: 1, totalTokens: 2 } })
        )
        assert.strictEqual(error.reason, "InvalidInput")
        assert.include(error.message, "would exceed")
        assert.include(error.message, userId)
        assert.deepInclude(yield* store.stats(userId, cycle), { promptTokens: max, completionTokens: 0, totalTokens: max })
        assert.deepInclude(yield* store.stats({ level: "team", id: teamId }, cycle), { totalTokens: 0 })
        // The stats and the limit check still answer; the failed record can be retried and fails the same way.
        assert.isFalse((yield* store.checkLimit(userId, cycle)).exceeded)
        assert.strictEqual((yield* Effect.flip(store.record({ callId: "c2", userId, cycle, usage: usage(1, 1) }))).reason, "InvalidInput")
        assert.deepInclude(yield* store.stats(userId, cycle), { totalTokens: max })
      }))

    it.effect("rejects invalid reservations, naming the field", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const base: TokenStore.ReserveInput = {
          callId: "r1",
          cycle: "2025-03-01",
          subjects: [{ level: "user", id: freshId("user") }],
          tokens: 10,
          holdTtlMillis: 1_000
        }
        yield* invalid(store.reserve({ ...base, tokens: -1 }), "tokens", "-1")
        yield* invalid(store.reserve({ ...base, holdTtlMillis: 0 }), "holdTtlMillis", "0")
        yield* invalid(store.reserve({ ...base, subjects: [] }), "subjects")
        yield* invalid(store.reserve({ ...base, subjects: [{ level: "squad" as "team", id: "x" }] }), "subjects.0.level", "squad")
        yield* invalid(
          store.reserve({ ...base, rateLimits: { user: { requestsPerMinute: 0 } } }),
          "rateLimits.user.requestsPerMinute",
          "0"
        )
        yield* invalid(store.setLimit({ level: "team", id: "" }, "2025-03-01", 1), "owner.id")
      }))

    it.effect("keeps user ids with separators, braces, spaces and unicode apart", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const cycle = freshCycle()
        const users = [
          "a",
          "a:b",
          `a:${cycle}`,
          "a:call:c1",
          "{x}",
          "x",
          "{",
          "}",
          "a b",
          "a\tb",
          "a\nb",
          "a%3Ab",
          "a%b",
          "%",
          "*",
          "[a]?\\",
          "用户🙂",
          "é",
          "e\u0301",
          "u".repeat(10_240)
        ]
        yield* Effect.forEach(users, (userId, i) =>
          Effect.gen(function*() {
            assert.strictEqual(
              yield* store.record({ callId: "c1", userId, cycle, usage: usage(i + 1, 0) }),
              "recorded"
            )
            yield* store.setLimit(userId, cycle, 1_000 + i)
          }), { discard: true })
        for (const [i, userId] of users.entries()) {
          assert.deepStrictEqual(yield* store.stats(userId, cycle), {
            promptTokens: i + 1,
            completionTokens: 0,
            totalTokens: i + 1,
            costMicros: 0,
            cachedTokens: 0,
            cacheWriteTokens: 0,
            reasoningTokens: 0,
            estimatedTokens: 0,
            limit: Option.some(1_000 + i),
            heldTokens: 0
          }, `user #${i}`)
        }
        assert.deepStrictEqual(yield* store.users(cycle), [...users].sort())
      }))

    it.effect.prop(
      "stats are the sums over distinct call ids of every kind of token, whatever the duplicates",
      {
        calls: FastCheck.array(
          FastCheck.record({
            user: FastCheck.integer({ min: 0, max: 2 }),
            prompt: FastCheck.integer({ min: 0, max: 1_000_000 }),
            completion: FastCheck.integer({ min: 0, max: 1_000_000 }),
            cost: FastCheck.option(FastCheck.integer({ min: 0, max: 1_000 }), { nil: undefined }),
            cached: FastCheck.option(FastCheck.integer({ min: 0, max: 1_000 }), { nil: undefined }),
            cacheWrite: FastCheck.option(FastCheck.integer({ min: 0, max: 1_000 }), { nil: undefined }),
            reasoning: FastCheck.option(FastCheck.integer({ min: 0, max: 1_000 }), { nil: undefined }),
            estimated: FastCheck.boolean()
          }),
          { minLength: 1, maxLength: 15 }
        ),
        order: FastCheck.array(FastCheck.nat(), { maxLength: 60 })
      },
      ({ calls, order }) =>
        Effect.gen(function*() {
          const store = yield* TokenStore.TokenStore
          const run = freshId("prop")
          const cycle = "2025-03-01"
          // Every call at least once, then replays (retries) in any order.
          const sequence = [...calls.keys(), ...order.map((n) => n % calls.length)]
          const outcomes = yield* Effect.forEach(sequence, (i) => {
            const call = calls[i]!
            return store.record({
              callId: `${run}-${i}`,
              userId: `${run}-u${call.user}`,
              cycle,
              usage: {
                ...usage(call.prompt, call.completion),
                cachedTokens: call.cached,
                cacheWriteTokens: call.cacheWrite,
                reasoningTokens: call.reasoning
              },
              costMicros: call.cost,
              estimated: call.estimated
            })
          }, { concurrency: 8 })
          assert.strictEqual(outcomes.filter((o) => o === "recorded").length, calls.length)
          for (const user of [0, 1, 2]) {
            const mine = calls.filter((call) => call.user === user)
            const prompt = mine.reduce((sum, call) => sum + call.prompt, 0)
            const completion = mine.reduce((sum, call) => sum + call.completion, 0)
            const sum = (f: (call: (typeof mine)[number]) => number) => mine.reduce((n, call) => n + f(call), 0)
            assert.deepStrictEqual(yield* store.stats(`${run}-u${user}`, cycle), {
              promptTokens: prompt,
              completionTokens: completion,
              totalTokens: prompt + completion,
              costMicros: sum((call) => call.cost ?? 0),
              cachedTokens: sum((call) => call.cached ?? 0),
              cacheWriteTokens: sum((call) => call.cacheWrite ?? 0),
              reasoningTokens: sum((call) => call.reasoning ?? 0),
              estimatedTokens: sum((call) => call.estimated ? call.prompt + call.completion : 0),
              limit: Option.none(),
              heldTokens: 0
            })
          }
        }),
      { fastCheck: { numRuns: 40 } }
    )
  })
