/**
 * Streams, budgets, token accounting and interruption together, on random workloads under the TestClock:
 * 2-10 calls of two users through the instrumented fake model, started at random times: mostly
 * `streamText`, each run as a stream handed out (its call context and `Budget.guardStream` on the
 * stream), the others `generateText` inside `Budget.guard` (a consumer that stops early reads it all); replies that
 * stream (with a delay before, and between deltas), fail midway or fail before any part; consumers that
 * read it all, stop after some deltas, or are interrupted at a random time (also while a slow start handler
 * runs); the token handler in await or background mode; random limits. After every stream ended and the
 * handlers were flushed, for every case:
 *
 * - every call a handler heard start of got exactly one end or error; the model was called only for calls
 *   heard (a refused stream is heard by nobody and calls no model), and a call heard but never sent was
 *   stopped while its start was dispatched: an interrupted error, without usage;
 * - nothing is held in the store;
 * - each user's recorded total is the sum of the usage carried by that user's terminal events (the
 *   reported usage of an end, what a cut-off stream consumed, nothing for a failure before any part);
 * - no user's recorded total passes their limit;
 * - a consumer interrupted at some time has ended within 20 virtual milliseconds (it waited for
 *   nothing, a slow start handler included).
 *
 * `STREAM_BUDGET_RUNS` sets the number of cases (default 60), `STREAM_BUDGET_SEED` their seed.
 */
import * as AiError from "@effect/ai/AiError"
import * as LanguageModel from "@effect/ai/LanguageModel"
import { describe, it } from "@effect/vitest"
import { Effect, FastCheck as fc, Fiber, Layer, Option, Stream, TestClock } from "effect"
import * as AiLanguageModel from "../../layers/AiLanguageModel.js"
import * as AiTesting from "../../layers/AiTesting.js"
import * as TokenUsage from "../../layers/TokenUsage.js"
import { Budget, Callbacks, Dispatcher, type Events, Handler, Testing, TokenStore } from "../../src/index.js"
import { compareCases } from "../support/referenceCases.js"

const { FakeReply } = AiTesting

const cycle = "2026-12-01"
const users = ["ann", "ben"] as const

type Reply =
  | { readonly _tag: "Text"; readonly words: number; readonly delay: number; readonly deltaDelay: number }
  | { readonly _tag: "FailMidStream"; readonly words: number; readonly afterDeltas: number; readonly deltaDelay: number }
  | { readonly _tag: "Fail"; readonly delay: number }

type Consumer =
  | { readonly _tag: "All" }
  | { readonly _tag: "Take"; readonly deltas: number }
  | { readonly _tag: "InterruptAt"; readonly at: number }

interface CallSpec {
  /** A stream (`streamText`, guarded as a stream), or one call (`generateText` in `Budget.guard`). */
  readonly kind: "stream" | "generate"
  readonly user: 0 | 1
  readonly startAt: number
  readonly reply: Reply
  readonly consumer: Consumer
}

interface Case {
  readonly calls: ReadonlyArray<CallSpec>
  readonly limits: readonly [number | undefined, number | undefined]
  readonly tokensMode: "await" | "background"
  /** How long a second handler's start takes (0: at once). */
  readonly slowStart: number
}

const replyOf: fc.Arbitrary<Reply> = fc.oneof(
  fc.record({
    _tag: fc.constant("Text" as const),
    words: fc.integer({ min: 1, max: 12 }),
    delay: fc.integer({ min: 0, max: 300 }),
    deltaDelay: fc.integer({ min: 0, max: 100 })
  }),
  fc.record({
    _tag: fc.constant("FailMidStream" as const),
    words: fc.integer({ min: 2, max: 12 }),
    afterDeltas: fc.integer({ min: 1, max: 2 }),
    deltaDelay: fc.integer({ min: 0, max: 100 })
  }),
  fc.record({ _tag: fc.constant("Fail" as const), delay: fc.integer({ min: 0, max: 300 }) })
)

const consumerOf: fc.Arbitrary<Consumer> = fc.oneof(
  fc.constant({ _tag: "All" as const }),
  fc.record({ _tag: fc.constant("Take" as const), deltas: fc.integer({ min: 1, max: 4 }) }),
  fc.record({ _tag: fc.constant("InterruptAt" as const), at: fc.integer({ min: 0, max: 1_500 }) })
)

const caseOf: fc.Arbitrary<Case> = fc.record({
  calls: fc.array(
    fc.record({
      kind: fc.constantFrom("stream" as const, "stream" as const, "generate" as const),
      user: fc.constantFrom(0 as const, 1 as const),
      startAt: fc.integer({ min: 0, max: 1_000 }),
      reply: replyOf,
      consumer: consumerOf
    }),
    { minLength: 2, maxLength: 10 }
  ),
  limits: fc.tuple(
    fc.constantFrom(undefined, 0, 150, 400, 1_000),
    fc.constantFrom(undefined, 150, 1_000)
  ),
  tokensMode: fc.constantFrom("await" as const, "background" as const),
  slowStart: fc.constantFrom(0, 0, 400)
})

const words = (n: number) => Array.from({ length: n }, (_, i) => `w${i}`).join(" ")

/** The fake model's reply to call `i` (its prompt is `call i`). */
const script = (calls: ReadonlyArray<CallSpec>, modelCalls: Array<number>): AiTesting.FakeScript => (request) => {
  const i = Number(request.text.split(" ")[1])
  modelCalls.push(i)
  const reply = calls[i]!.reply
  const usage = { inputTokens: 10, outputTokens: reply._tag === "Fail" ? 0 : reply.words }
  switch (reply._tag) {
    case "Text":
      return FakeReply.Text({ text: words(reply.words), usage, delay: reply.delay, deltaDelay: reply.deltaDelay })
    case "FailMidStream":
      return FakeReply.FailMidStream({
        text: words(reply.words),
        afterDeltas: reply.afterDeltas,
        deltaDelay: reply.deltaDelay,
        error: new AiError.UnknownError({ module: "Test", method: "stream", description: "reset" })
      })
    case "Fail":
      return FakeReply.Fail({
        error: new AiError.UnknownError({ module: "Test", method: "stream", description: "429" }),
        delay: reply.delay
      })
  }
}

const check = (c: Case) =>
  Effect.gen(function*() {
    const violations: Array<string> = []
    const modelCalls: Array<number> = []
    const environment = Layer.mergeAll(
      AiTesting.layerFakeModel(script(c.calls, modelCalls)).pipe(AiLanguageModel.withCallbacks({ model: "fake-model" })),
      TokenUsage.layer({ cycleStartDate: cycle, mode: c.tokensMode }),
      TokenUsage.layerTokenCounter,
      Testing.layerRecorder({ priority: 1 }),
      c.slowStart === 0 ? Layer.empty : Dispatcher.toLayer(Handler.make({
        name: "slow-start",
        onLlmStart: () => Effect.sleep(c.slowStart),
        timeout: "5 seconds"
      }))
    ).pipe(Layer.provideMerge(Layer.merge(Dispatcher.layer(), TokenStore.layerMemory)))
    yield* Effect.gen(function*() {
      const store = yield* TokenStore.TokenStore
      for (const [u, limit] of c.limits.entries()) if (limit !== undefined) yield* store.setLimit(users[u]!, cycle, limit)
      const streamOf = (i: number, call: CallSpec) => {
        const stream = LanguageModel.streamText({ prompt: `call ${i}` }).pipe(
          Callbacks.withCallContext({ userId: users[call.user] }),
          Budget.guardStream({ cycleStartDate: cycle, maxOutputTokens: { "fake-model": 50 } })
        )
        return call.consumer._tag === "Take"
          ? stream.pipe(Stream.filter((part) => part.type === "text-delta"), Stream.take(call.consumer.deltas))
          : stream
      }
      const generated = (i: number, call: CallSpec) =>
        LanguageModel.generateText({ prompt: `call ${i}` }).pipe(
          Callbacks.withCallContext({ userId: users[call.user] }),
          Budget.guard({ cycleStartDate: cycle, maxOutputTokens: { "fake-model": 50 } })
        )
      const fibers = yield* Effect.forEach(c.calls, (call, i) =>
        Effect.fork(Effect.zipRight(
          Effect.sleep(call.startAt),
          Effect.either(call.kind === "stream" ? Stream.runDrain(streamOf(i, call)) : generated(i, call))
        )))
      yield* Effect.forEach(c.calls, (call, i) =>
        call.consumer._tag === "InterruptAt"
          ? Effect.fork(Effect.zipRight(Effect.sleep(call.startAt + call.consumer.at), Fiber.interrupt(fibers[i]!)))
          : Effect.void)
      // An interrupted consumer stops at once, whatever it was waiting for (a slow start handler included):
      // the clock is moved to each interruption, then by 1 ms at most 20 times, well short of the slow start
      // handler's 400 (the dispatcher's hook fibers are no children of the test's: the clock does not wait
      // for them to settle).
      const interruptions = c.calls.flatMap((call, i) =>
        call.consumer._tag === "InterruptAt" ? [{ i, at: call.startAt + call.consumer.at }] : []
      ).sort((x, y) => x.at - y.at)
      let now = 0
      for (const { at, i } of interruptions) {
        if (at > now) yield* TestClock.adjust(at - now)
        now = Math.max(now, at)
        let done = Option.isSome(yield* Fiber.poll(fibers[i]!))
        for (let k = 0; k < 20 && !done; k++) {
          yield* TestClock.adjust(1)
          now++
          done = Option.isSome(yield* Fiber.poll(fibers[i]!))
        }
        if (!done) violations.push(`call ${i}: interrupted at ${at}, still running at ${now}`)
      }
      for (let t = 0; t < 20 && !(yield* Effect.forEach(fibers, Fiber.poll)).every(Option.isSome); t++) {
        yield* TestClock.adjust("500 millis")
      }
      if (!(yield* Effect.forEach(fibers, Fiber.poll)).every(Option.isSome)) violations.push("a stream did not end")
      const flushed = yield* Effect.fork(Dispatcher.flush)
      yield* TestClock.adjust("10 seconds")
      yield* Fiber.join(flushed)

      const events = yield* Testing.events
      const starts = events.filter((e) => e._tag === "Start").map((e) => e.call.callId)
      const terminals = events.filter((e): e is Events.EndEvent | Events.ErrorEvent => e._tag === "End" || e._tag === "Error")
      for (const id of starts) {
        const n = terminals.filter((e) => e.call.callId === id).length
        if (n !== 1) violations.push(`call ${id}: ${n} terminal events`)
      }
      if (terminals.length !== starts.length) violations.push(`${terminals.length} terminal events for ${starts.length} starts`)
      // The model is called for calls heard only; a call heard but not sent was stopped while its start
      // was dispatched (its consumer interrupted meanwhile): its error says so, and it carries no usage.
      const indexOf = (e: Events.CallbackEvent) => e._tag === "Start" ? JSON.stringify(e.messages).match(/call (\d+)/)?.[1] : undefined
      const heardCalls = events.filter((e) => e._tag === "Start")
      for (const i of modelCalls) {
        if (!heardCalls.some((e) => indexOf(e) === String(i))) violations.push(`call ${i}: sent to the model, not heard`)
      }
      for (const start of heardCalls) {
        if (modelCalls.includes(Number(indexOf(start)))) continue
        const terminal = terminals.find((e) => e.call.callId === start.call.callId)
        if (terminal?._tag !== "Error" || !terminal.interrupted || terminal.response !== undefined) {
          violations.push(`call ${indexOf(start)}: heard, not sent, and not an interrupted error without usage`)
        }
      }
      for (const [u, user] of users.entries()) {
        const stats = yield* store.stats(user, cycle)
        const heard = terminals
          .filter((e) => e.call.userId === user)
          .reduce((n, e) => n + (e.response?.usage?.totalTokens ?? 0), 0)
        if (stats.heldTokens !== 0) violations.push(`${user}: ${stats.heldTokens} tokens still held`)
        if (stats.totalTokens !== heard) violations.push(`${user}: ${stats.totalTokens} recorded, ${heard} in the events`)
        const limit = c.limits[u]
        if (limit !== undefined && stats.totalTokens > limit) violations.push(`${user}: ${stats.totalTokens} past the limit ${limit}`)
      }
    }).pipe(Effect.provide(environment), Effect.scoped)
    return violations
  })

const runs = Number(process.env["STREAM_BUDGET_RUNS"] ?? 60)
const seed = Number(process.env["STREAM_BUDGET_SEED"] ?? Math.floor(Math.random() * 2 ** 31))

describe("streams, budgets, token accounting and interruption together", () => {
  it.effect(
    `one terminal event per call heard, nothing held, usage recorded as heard, no limit passed (${runs} random cases)`,
    () =>
      compareCases({
        cases: fc.sample(caseOf, { numRuns: runs, seed }),
        compare: check,
        seed: `STREAM_BUDGET_SEED=${seed}`,
        concurrency: 8
      }),
    Math.max(300_000, runs * 1_000)
  )
})
