/**
 * The behaviour of budgets (`Budget.guard` over `TokenStore.reserve`), as one
 * suite run against every token store backend: memory (`test/Budget.test.ts`),
 * Redis (`test/layers/BudgetRedis.test.ts`) and a Redis Cluster
 * (`test/layers/RedisCluster.test.ts`). Time is the `TestClock`'s; the
 * backends take it from Effect's `Clock`, so holds expire and rate windows
 * turn exactly when the tests say.
 */
import { assert, layer } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import type * as Layer from "effect/Layer"
import * as TestClock from "effect/TestClock"
import * as LanguageModel from "@effect/ai/LanguageModel"
import * as Stream from "effect/Stream"
import * as AiLanguageModel from "../../layers/AiLanguageModel.js"
import * as AiTesting from "../../layers/AiTesting.js"
import * as Budget from "../../src/Budget.js"
import * as Callbacks from "../../src/Callbacks.js"
import * as Dispatcher from "../../src/Dispatcher.js"
import * as Handler from "../../src/Handler.js"
import * as TokenStore from "../../src/TokenStore.js"
import { budgetEnvironment, currentCycle, guardedCall, until } from "./budget.js"
import { freshId } from "./tokenStoreConformance.js"

export { budgetEnvironment, currentCycle, fixedCounter, guardedCall, promptTokens, until } from "./budget.js"

/**
 * A `streamText` of `userId` through the instrumented fake model, as a stream handed to someone else
 * to run: its call context and its guard are set on the stream. Worst case 100 (20 + the model's cap
 * of 80). The model answers `reply` (default: "one two three", 20 + 40 tokens), once `go` is done.
 */
export const guardedStream = (options: {
  readonly userId: string
  /** Incremented when the model is really called. */
  readonly calls: { n: number }
  readonly reply?: (() => Effect.Effect<AiTesting.FakeReply>) | undefined
  readonly go?: Deferred.Deferred<void> | undefined
  /** More options of the guard. */
  readonly guard?: Budget.Options | undefined
}) => {
  const script: AiTesting.FakeScript = () =>
    Effect.gen(function*() {
      options.calls.n++
      if (options.go !== undefined) yield* Deferred.await(options.go)
      return options.reply === undefined
        ? AiTesting.FakeReply.Text({ text: "one two three", usage: { inputTokens: 20, outputTokens: 40 } })
        : yield* options.reply()
    })
  return LanguageModel.streamText({ prompt: "hello" }).pipe(
    Callbacks.withCallContext({ userId: options.userId }),
    Budget.guardStream({ maxOutputTokens: { "fake-model": 80 }, ...options.guard }),
    Stream.provideSomeLayer(AiLanguageModel.withCallbacks(AiTesting.layerFakeModel(script), { model: "fake-model" }))
  )
}

/**
 * `n` guarded runs at once, each waiting in the model for `go` once admitted. Returns when every run is
 * decided (admitted, or refused): how many the model got, how many starts the handlers heard, and `end`,
 * which lets the admitted runs end and gives how many succeeded.
 */
const crowd = <R>(
  n: number,
  run: (go: Deferred.Deferred<void>, calls: { n: number }) => Effect.Effect<unknown, unknown, R>
) =>
  Effect.gen(function*() {
    let starts = 0
    yield* Dispatcher.register(Handler.make({ name: freshId("starts"), onLlmStart: () => Effect.sync(() => void starts++) }))
    const go = yield* Deferred.make<void>()
    const calls = { n: 0 }
    let refused = 0
    const fibers = yield* Effect.forEach(Array.from({ length: n }), () =>
      Effect.fork(
        Effect.tapError(run(go, calls), (e) => Effect.sync(() => e instanceof Budget.UsageLimitExceeded && refused++))
      ))
    // Every run is decided (admitted and waiting in the model, or refused) before any ends.
    yield* until(() => calls.n + refused === n)
    const end = Effect.zipRight(
      Deferred.succeed(go, undefined),
      Effect.map(Effect.forEach(fibers, Fiber.await), (exits) => exits.filter(Exit.isSuccess).length)
    )
    return { admitted: calls.n, starts, end }
  })

/** The suite. */
export const budgetConformance = <E>(name: string, storeLayer: Layer.Layer<TokenStore.TokenStore, E>): void =>
  layer(budgetEnvironment(storeLayer), { timeout: "60 seconds" })(`Budget conformance: ${name}`, (it) => {
    it.effect("200 concurrent calls of one user with room for 10: 10 admitted, usage is what they used", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("crowd")
        const cycle = yield* currentCycle
        yield* store.setLimit(userId, cycle, 1_000)
        const { admitted, end, starts } = yield* crowd(200, (go, calls) => guardedCall({ userId, go, calls }))
        assert.strictEqual(admitted, 10)
        assert.strictEqual(starts, 10)
        assert.deepInclude(yield* store.stats(userId, cycle), { heldTokens: 1_000, totalTokens: 0 })
        assert.strictEqual(yield* end, 10)
        assert.deepInclude(yield* store.stats(userId, cycle), { heldTokens: 0, totalTokens: 1_000 })
      }).pipe(Effect.scoped))

    it.effect("streamText: 40 streams at once with room for 4: 4 admitted, held while they stream, settled to what they used", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("streams")
        const cycle = yield* currentCycle
        yield* store.setLimit(userId, cycle, 400)
        const { admitted, end, starts } = yield* crowd(40, (go, calls) => Stream.runCollect(guardedStream({ userId, go, calls })))
        assert.strictEqual(admitted, 4)
        assert.strictEqual(starts, 4)
        assert.deepInclude(yield* store.stats(userId, cycle), { heldTokens: 400, totalTokens: 0 })
        assert.strictEqual(yield* end, 4)
        assert.deepInclude(yield* store.stats(userId, cycle), { heldTokens: 0, totalTokens: 240 })
        // Settled to 60 each, not the worst case of 100: the room left (160) admits two more, one at a time.
        const calls = { n: 0 }
        const more = yield* Effect.forEach([0, 1, 2], () => Effect.exit(Stream.runCollect(guardedStream({ userId, calls }))))
        assert.deepStrictEqual(more.map(Exit.isSuccess), [true, true, false])
        assert.deepInclude(yield* store.stats(userId, cycle), { heldTokens: 0, totalTokens: 360 })
      }).pipe(Effect.scoped))

    it.effect("a refusal names the level and its figures, and the model is not called", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("named")
        const cycle = yield* currentCycle
        yield* store.setLimit(userId, cycle, 150)
        assert.isTrue(Exit.isSuccess(yield* Effect.exit(guardedCall({ userId, actual: 60 }))))
        const calls = { n: 0 }
        const refused = yield* Effect.flip(guardedCall({ userId, calls }))
        assert.strictEqual(calls.n, 0)
        assert.deepInclude(refused, {
          _tag: "UsageLimitExceeded",
          userId,
          level: "user",
          id: userId,
          cycle,
          limit: 150,
          currentUsage: 60,
          heldTokens: 0,
          requestedTokens: 100
        })
        assert.include((refused as Budget.UsageLimitExceeded).message, "needs up to 100")
      }))

    it.effect("settling to the actual usage frees the rest of the hold", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("settle")
        const cycle = yield* currentCycle
        yield* store.setLimit(userId, cycle, 300)
        let admitted = 0
        for (let i = 0; i < 10; i++) {
          const exit = yield* Effect.exit(guardedCall({ userId, actual: 40 }))
          if (Exit.isSuccess(exit)) admitted++
        }
        // 40 per call against a worst case of 100: admitted while used + 100 <= 300.
        assert.strictEqual(admitted, 6)
        assert.deepInclude(yield* store.stats(userId, cycle), { totalTokens: 240, heldTokens: 0 })
      }))

    it.effect("a failed or interrupted call releases its hold and records nothing", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("release")
        const cycle = yield* currentCycle
        yield* store.setLimit(userId, cycle, 100)
        assert.strictEqual(yield* Effect.flip(guardedCall({ userId, fail: true })), "provider error")
        assert.deepInclude(yield* store.stats(userId, cycle), { totalTokens: 0, heldTokens: 0 })
        const go = yield* Deferred.make<void>()
        const calls = { n: 0 }
        const fiber = yield* Effect.fork(guardedCall({ userId, go, calls }))
        yield* until(() => calls.n === 1)
        assert.strictEqual((yield* store.stats(userId, cycle)).heldTokens, 100)
        assert.isTrue(Exit.isInterrupted(yield* Fiber.interrupt(fiber)))
        assert.deepInclude(yield* store.stats(userId, cycle), { totalTokens: 0, heldTokens: 0 })
        // The whole limit is there again.
        assert.isTrue(Exit.isSuccess(yield* Effect.exit(guardedCall({ userId }))))
      }))

    it.effect("team and organisation limits: all checked at once, the tightest wins", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const cycle = yield* currentCycle
        const teamId = freshId("team")
        const orgId = freshId("org")
        yield* store.setLimit({ level: "team", id: teamId }, cycle, 250)
        yield* store.setLimit({ level: "org", id: orgId }, cycle, 300)
        const go = yield* Deferred.make<void>()
        const calls = { n: 0 }
        const members = [freshId("member"), freshId("member"), freshId("member")]
        const fibers = yield* Effect.forEach(members, (userId) => Effect.fork(guardedCall({ userId, teamId, orgId, go, calls })))
        yield* until(() => calls.n === 2 && fibers.some((f) => f.unsafePoll() !== null))
        // Two calls hold 200 of the team's 250 (and of the org's 300); the third needs 100.
        const third = fibers.find((f) => f.unsafePoll() !== null)!
        const refusedMember = members[fibers.indexOf(third)]!
        assert.deepInclude(yield* Effect.flip(Fiber.join(third)), {
          _tag: "UsageLimitExceeded",
          userId: refusedMember,
          level: "team",
          id: teamId,
          limit: 250,
          heldTokens: 200
        })
        // Another team of the same organisation: the organisation's 300 is the tightest now.
        yield* store.setLimit({ level: "team", id: "other-team" }, cycle, 10_000)
        const refused = yield* Effect.flip(guardedCall({ userId: freshId("member"), teamId: "other-team", orgId, maxTokens: 90 }))
        assert.deepInclude(refused, { _tag: "UsageLimitExceeded", level: "org", id: orgId, limit: 300, heldTokens: 200 })
        yield* Deferred.succeed(go, undefined)
        for (const fiber of fibers) if (fiber !== third) yield* Fiber.join(fiber)
        assert.deepInclude(yield* store.stats({ level: "team", id: teamId }, cycle), { totalTokens: 200, heldTokens: 0 })
        assert.deepInclude(yield* store.stats({ level: "org", id: orgId }, cycle), { totalTokens: 200, heldTokens: 0 })
        assert.deepInclude(yield* store.stats(refusedMember, cycle), { totalTokens: 0, heldTokens: 0 })
      }))

    it.effect("rate limits: requests and tokens per minute, refused with when to retry", () =>
      Effect.gen(function*() {
        // Start in the middle of a minute.
        yield* TestClock.adjust("90 seconds")
        const userId = freshId("rate")
        const guard = { rateLimits: { user: { requestsPerMinute: 3 } } }
        for (let i = 0; i < 3; i++) yield* guardedCall({ userId, guard })
        const refused = yield* Effect.flip(guardedCall({ userId, guard }))
        assert.deepInclude(refused, {
          _tag: "RateLimitExceeded",
          level: "user",
          id: userId,
          kind: "requests",
          limit: 3,
          current: 3,
          retryAfterMillis: 30_000
        })
        yield* TestClock.adjust("30 seconds")
        yield* guardedCall({ userId, guard })
        // Tokens count each call's worst case (100) when it is admitted.
        const tokenGuard = { rateLimits: { team: { tokensPerMinute: 250 } } }
        const teamId = freshId("rate-team")
        yield* guardedCall({ userId: freshId("a"), teamId, guard: tokenGuard, actual: 30 })
        yield* guardedCall({ userId: freshId("b"), teamId, guard: tokenGuard, actual: 30 })
        const tokens = yield* Effect.flip(guardedCall({ userId: freshId("c"), teamId, guard: tokenGuard }))
        assert.deepInclude(tokens, { _tag: "RateLimitExceeded", level: "team", kind: "tokens", limit: 250, current: 200 })
      }))

    it.effect("the hold of a process that died expires after its TTL", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("dead")
        const cycle = yield* currentCycle
        yield* store.setLimit(userId, cycle, 1_000)
        // Another process reserved 950 and died before settling.
        assert.deepStrictEqual(
          yield* store.reserve({
            callId: freshId("lost"),
            cycle,
            subjects: [{ level: "user", id: userId }],
            tokens: 950,
            holdTtlMillis: 60_000
          }),
          { _tag: "Reserved" }
        )
        assert.deepInclude(yield* Effect.flip(guardedCall({ userId })), { _tag: "UsageLimitExceeded", heldTokens: 950 })
        yield* TestClock.adjust("59 seconds")
        assert.isTrue(Exit.isFailure(yield* Effect.exit(guardedCall({ userId }))))
        yield* TestClock.adjust("1 second")
        yield* guardedCall({ userId })
        assert.deepInclude(yield* store.stats(userId, cycle), { totalTokens: 100, heldTokens: 0 })
      }))

    it.effect("reserving and recording the same call again count once", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("again")
        const cycle = yield* currentCycle
        const callId = freshId("call")
        const subjects = [{ level: "user", id: userId }, { level: "team", id: `${userId}-team` }] as const
        const reserve = store.reserve({ callId, cycle, subjects, tokens: 70, holdTtlMillis: 60_000 })
        yield* reserve
        yield* reserve
        assert.strictEqual((yield* store.stats(userId, cycle)).heldTokens, 70)
        const record = store.record({
          callId,
          userId,
          teamId: `${userId}-team`,
          cycle,
          usage: { promptTokens: 10, completionTokens: 20, totalTokens: 30 }
        })
        assert.strictEqual(yield* record, "recorded")
        assert.strictEqual(yield* record, "duplicate")
        // A reservation retried after the record holds nothing.
        yield* reserve
        for (const owner of [userId, { level: "team" as const, id: `${userId}-team` }]) {
          assert.deepInclude(yield* store.stats(owner, cycle), { totalTokens: 30, heldTokens: 0 })
        }
        // Releasing what is not held is harmless.
        yield* store.release({ callId, cycle, subjects })
        assert.deepInclude(yield* store.stats(userId, cycle), { totalTokens: 30, heldTokens: 0 })
      }))

    it.effect("a call reserved again once its hold expired holds again, within the limit", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const userId = freshId("expired")
        const cycle = yield* currentCycle
        yield* store.setLimit(userId, cycle, 100)
        const reserve = (callId: string) =>
          store.reserve({ callId, cycle, subjects: [{ level: "user", id: userId }], tokens: 70, holdTtlMillis: 60_000 })
        const callId = freshId("call")
        assert.strictEqual((yield* reserve(callId))._tag, "Reserved")
        yield* TestClock.adjust("60 seconds")
        // Its hold is gone: the same call is held anew, and counts against the limit again.
        assert.strictEqual((yield* reserve(callId))._tag, "Reserved")
        assert.strictEqual((yield* store.stats(userId, cycle)).heldTokens, 70)
        assert.strictEqual((yield* reserve(freshId("other")))._tag, "OverLimit")
      }))

    it.effect("two users' reservations of one call id through one team: the team holds it once, and nothing after", () =>
      Effect.gen(function*() {
        // A call id names one call; two users given the same one (a caller's
        // bug) must not leave the team holding tokens that no release frees.
        const store = yield* TokenStore.TokenStore
        const cycle = yield* currentCycle
        const first = freshId("shared-a")
        const second = freshId("shared-b")
        const team = { level: "team", id: `${first}-team` } as const
        const callId = freshId("call")
        const subjectsOf = (userId: string) => [{ level: "user", id: userId } as const, team]
        const reserve = (userId: string, tokens: number) =>
          store.reserve({ callId, cycle, subjects: subjectsOf(userId), tokens, holdTtlMillis: 60_000 })
        assert.strictEqual((yield* reserve(first, 70))._tag, "Reserved")
        assert.strictEqual((yield* reserve(second, 30))._tag, "Reserved")
        // The team holds the call once: one of the two holds (the latest, or
        // on a Cluster, where the team is reserved on its own, the first), not their sum.
        assert.include([30, 70], (yield* store.stats(team, cycle)).heldTokens)
        yield* store.release({ callId, cycle, subjects: subjectsOf(first) })
        yield* store.release({ callId, cycle, subjects: subjectsOf(second) })
        for (const owner of [first, second, team]) {
          assert.deepInclude(yield* store.stats(owner, cycle), { totalTokens: 0, heldTokens: 0 })
        }
        // The same through an expiry: a new reservation, then the old holds expire.
        assert.strictEqual((yield* reserve(first, 70))._tag, "Reserved")
        assert.strictEqual((yield* reserve(second, 30))._tag, "Reserved")
        yield* TestClock.adjust("60 seconds")
        for (const owner of [first, second, team]) {
          assert.deepInclude(yield* store.stats(owner, cycle), { heldTokens: 0 })
        }
      }))

    it.effect("the user, team and organisation given to instrument are the ones enforced", () =>
      Effect.gen(function*() {
        const store = yield* TokenStore.TokenStore
        const cycle = yield* currentCycle
        const userId = freshId("own")
        yield* store.setLimit(userId, cycle, 50)
        // The call context names someone else: instrument's own user wins.
        const refused = yield* Effect.flip(
          guardedCall({ userId }).pipe(Callbacks.withCallContext({ userId: freshId("someone-else") }))
        )
        assert.deepInclude(refused, { _tag: "UsageLimitExceeded", id: userId })
        // Without a user in instrument, the call context's is used.
        const contextUser = freshId("context")
        yield* store.setLimit(contextUser, cycle, 50)
        const fromContext = yield* Effect.succeed({ content: "x" }).pipe(
          Callbacks.instrument({ provider: "fake", model: "m", params: { maxTokens: 100 } }),
          Budget.guard(),
          Callbacks.withCallContext({ userId: contextUser }),
          Effect.flip
        )
        assert.deepInclude(fromContext, { _tag: "UsageLimitExceeded", id: contextUser })
      }))
  })
