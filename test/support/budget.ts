/**
 * Guarded calls and their environment, shared by the budget suite and the
 * multi-process worker (which runs outside vitest, so nothing here imports it).
 */
import * as Deferred from "effect/Deferred"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as TokenUsage from "../../layers/TokenUsage.js"
import * as BillingCycle from "../../src/BillingCycle.js"
import * as Budget from "../../src/Budget.js"
import * as Callbacks from "../../src/Callbacks.js"
import * as Dispatcher from "../../src/Dispatcher.js"

/** Every test's calls count 20 prompt tokens, whatever the prompt. */
export const promptTokens = 20

/** The cycle of calls started at the current `Clock` time (the token handler's default cycle). */
export const currentCycle = BillingCycle.current()

interface CallOptions {
  readonly userId: string
  readonly teamId?: string | undefined
  readonly orgId?: string | undefined
  /** Tokens the call reports using; default its worst case. */
  readonly actual?: number | undefined
  /** `maxTokens` of the call; default 80 (worst case 100). */
  readonly maxTokens?: number | undefined
  /** The model waits for it, when given. */
  readonly go?: Deferred.Deferred<void> | undefined
  /** Incremented when the model is really called. */
  readonly calls?: { n: number } | undefined
  readonly fail?: boolean | undefined
  /** How long the model takes (real or TestClock time). */
  readonly latency?: Duration.DurationInput | undefined
  readonly guard?: Budget.Options | undefined
}

/** One guarded, instrumented model call, reporting `actual` tokens (prompt 20, the rest completion). */
export const guardedCall = (options: CallOptions) => {
  const maxTokens = options.maxTokens ?? 80
  const actual = options.actual ?? promptTokens + maxTokens
  const model = Effect.gen(function*() {
    if (options.calls !== undefined) options.calls.n++
    if (options.go !== undefined) yield* Deferred.await(options.go)
    if (options.latency !== undefined) yield* Effect.sleep(options.latency)
    if (options.fail === true) return yield* Effect.fail("provider error" as const)
    return {
      content: "ok",
      usage: { promptTokens, completionTokens: actual - promptTokens, totalTokens: actual }
    }
  })
  return model.pipe(
    Callbacks.instrument({
      provider: "fake",
      model: "fake-model",
      messages: [{ role: "user", content: "hello" }],
      userId: options.userId,
      teamId: options.teamId,
      orgId: options.orgId,
      params: { maxTokens }
    }),
    // Typed as "fail" so that the tests of either choice see the store error in the channel.
    Budget.guard((options.guard ?? {}) as Budget.FailOptions)
  )
}

/** Waits (yielding, without a clock) until `done` holds; the backends' I/O goes on meanwhile. */
export const until = (done: () => boolean): Effect.Effect<void> =>
  Effect.suspend(() => done() ? Effect.void : Effect.zipRight(Effect.yieldNow(), until(done)))

/** The prompt counter of the tests: 20 tokens for any prompt. */
export const fixedCounter = Layer.succeed(Budget.CurrentPromptCounter, () => Effect.succeed(promptTokens))

/** A dispatcher with the total token-usage handler over `storeLayer`, and the fixed prompt counter. */
export const budgetEnvironment = <ROut, E>(storeLayer: Layer.Layer<ROut, E>) =>
  TokenUsage.layer().pipe(
    Layer.provideMerge(Layer.merge(Dispatcher.layer(), storeLayer)),
    Layer.merge(fixedCounter),
    Layer.orDie
  )

