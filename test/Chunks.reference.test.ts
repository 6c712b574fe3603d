/**
 * The real dispatcher's stream chunks against the reference model
 * (test/support/referenceChunks.ts) on random concurrent workloads under the
 * TestClock: 2-6 streams at once, each offering 0-5 chunks at random times
 * and ending at a random time after them; 1-3 handlers, await or
 * background, whose chunk hook has a random behaviour (succeed, fail, die,
 * throw, hang, slow, fail once, ignore interruption...). Compared: per
 * handler and call, the chunks and the end its hooks were invoked with, in
 * order and at which virtual time (attempts included); when each stream's
 * end completed; the outcome counts. `CHUNK_REFERENCE_RUNS` sets the number
 * of cases (default 200), `CHUNK_REFERENCE_SEED` their seed (a failure
 * names it).
 */
import { describe, it } from "@effect/vitest"
import { Effect, Exit, FastCheck as fc, Fiber, Layer, Option, Schedule, Scope, TestClock } from "effect"
import { Callbacks, Dispatcher, Handler } from "../src/index.js"
import { type Behaviour, behaviours, behave } from "./support/behaviours.js"
import { compareCases } from "./support/referenceCases.js"
import * as Reference from "./support/referenceChunks.js"

interface HandlerSpec {
  readonly chunk: Behaviour
  readonly mode: "await" | "background"
}

interface StreamSpec {
  readonly startAt: number
  /** Gaps before each chunk, from the start (ms). */
  readonly gaps: ReadonlyArray<number>
  /** Gap between the last chunk and the end (ms). */
  readonly endAfter: number
}

const TIMEOUT = "1 second"
const retry = Schedule.spaced("200 millis").pipe(Schedule.intersect(Schedule.recurs(2)))
const STEP = 500
const horizon = 60_000

const makeHooks = (specs: ReadonlyArray<HandlerSpec>, now: () => number) => {
  const log = specs.map(() => [] as Array<string>)
  const attempts = new Map<string, number>()
  const hook = (index: number) => (phase: "chunk" | "end", callId: string, chunk: number): Effect.Effect<void, string> => {
    log[index]!.push(`${callId} ${phase} ${chunk} @${now()}`)
    const key = `${index} ${phase} ${callId} ${chunk}`
    const attempt = (attempts.get(key) ?? 0) + 1
    attempts.set(key, attempt)
    return phase === "end" ? Effect.void : behave(specs[index]!.chunk, attempt)
  }
  return { log, hook }
}

interface StreamHandle {
  readonly chunk: (index: number) => Effect.Effect<void>
  readonly end: Effect.Effect<void>
}

/** Starts the streams, offers their chunks and ends them at their times; returns when each end completed. */
const drive = (streams: ReadonlyArray<StreamSpec>, begin: (i: number) => Effect.Effect<StreamHandle>) =>
  Effect.gen(function*() {
    const handles: Array<StreamHandle | undefined> = streams.map(() => undefined)
    const doneAt: Array<number | undefined> = streams.map(() => undefined)
    const origin = yield* TestClock.currentTimeMillis
    const actions = new Map<number, Array<Effect.Effect<void>>>()
    const at = (t: number, action: Effect.Effect<void>) => actions.set(t, [...(actions.get(t) ?? []), action])
    for (const [i, stream] of streams.entries()) {
      const start = 137 * i + stream.startAt
      at(start, Effect.map(begin(i), (handle) => void (handles[i] = handle)))
      let t = start
      for (const [n, gap] of stream.gaps.entries()) {
        t += gap
        at(t, Effect.suspend(() => handles[i]!.chunk(n)))
      }
      at(
        t + stream.endAfter,
        Effect.asVoid(Effect.forkDaemon(Effect.suspend(() =>
          Effect.zipRight(
            handles[i]!.end,
            Effect.map(TestClock.currentTimeMillis, (now) => void (doneAt[i] = now - origin))
          )
        )))
      )
    }
    let now = 0
    for (const t of Array.from(actions.keys()).sort((x, y) => x - y)) {
      if (t > now) yield* TestClock.adjust(t - now)
      now = t
      // In order: a stream begins before its chunks of the same instant.
      for (const action of actions.get(t)!) yield* action
    }
    while (now < horizon && doneAt.some((d) => d === undefined)) {
      yield* TestClock.adjust(STEP)
      now += STEP
    }
    return doneAt
  })

const runReal = (specs: ReadonlyArray<HandlerSpec>, streams: ReadonlyArray<StreamSpec>) =>
  Effect.gen(function*() {
    const clock = yield* Effect.clock
    const origin = clock.unsafeCurrentTimeMillis()
    const { hook, log } = makeHooks(specs, () => clock.unsafeCurrentTimeMillis() - origin)
    const scope = yield* Scope.make()
    const context = yield* Layer.buildWithScope(Dispatcher.layer({ shutdownTimeout: "1 minute" }), scope)
    yield* Effect.forEach(specs, (spec, index) =>
      Dispatcher.register(Handler.make({
        name: `h${index}`,
        mode: spec.mode,
        timeout: TIMEOUT,
        retry,
        onLlmChunk: (event) => hook(index)("chunk", event.call.callId, event.index),
        onLlmEnd: (event) => hook(index)("end", event.call.callId, -1)
      })).pipe(Scope.extend(scope), Effect.provide(context)))
    const doneAt = yield* drive(streams, (i) =>
      Effect.map(
        Callbacks.begin({ provider: "p", model: "m", callId: `c${i}` }).pipe(Effect.provide(context)),
        (active) => {
          const call = Option.getOrThrow(active)
          return {
            chunk: () => Effect.sync(() => call.chunk("text", "d")),
            end: Effect.asVoid(call.finish(Exit.succeed({ content: "" })))
          }
        }
      ))
    yield* Dispatcher.flush.pipe(Effect.provide(context), Effect.fork, Effect.tap(() => TestClock.adjust(horizon)), Effect.flatMap(Fiber.join))
    const health = yield* Dispatcher.health.pipe(Effect.provide(context))
    const counts = specs.map((_, index) => {
      const h = health.handlers.find((x) => x.name === `h${index}`)!
      return {
        successes: h.successes,
        failures: h.failures,
        defects: h.defects,
        timeouts: h.timeouts,
        interruptions: h.interruptions,
        dropped: h.dropped
      }
    })
    yield* Scope.close(scope, Exit.void).pipe(Effect.fork, Effect.tap(() => TestClock.adjust("5 seconds")), Effect.flatMap(Fiber.join))
    return { log, doneAt, counts }
  })

const runReference = (specs: ReadonlyArray<HandlerSpec>, streams: ReadonlyArray<StreamSpec>) =>
  Effect.gen(function*() {
    const clock = yield* Effect.clock
    const origin = clock.unsafeCurrentTimeMillis()
    const { hook, log } = makeHooks(specs, () => clock.unsafeCurrentTimeMillis() - origin)
    const scope = yield* Scope.make()
    const reference = yield* Reference.make(specs.map((spec, index) => ({
      name: `h${index}`,
      mode: spec.mode,
      timeout: TIMEOUT,
      retry,
      hook: hook(index)
    }))).pipe(Scope.extend(scope))
    const doneAt = yield* drive(streams, (i) => reference.begin(`c${i}`).pipe(Scope.extend(scope)))
    yield* reference.flush.pipe(Effect.fork, Effect.tap(() => TestClock.adjust(horizon)), Effect.flatMap(Fiber.join))
    const counts = specs.map((_, index) => ({ ...reference.counts(`h${index}`) }))
    yield* Scope.close(scope, Exit.void).pipe(Effect.fork, Effect.tap(() => TestClock.adjust("5 seconds")), Effect.flatMap(Fiber.join))
    return { log, doneAt, counts }
  })

/** Per call, its lines in order (interleavings across calls may differ). */
const byCall = (log: ReadonlyArray<string>) => {
  const calls = new Map<string, Array<string>>()
  for (const line of log) {
    const callId = line.split(" ")[0]!
    calls.set(callId, [...(calls.get(callId) ?? []), line])
  }
  return Object.fromEntries(Array.from(calls.entries()).sort(([a], [b]) => a.localeCompare(b)))
}

// Chunk hooks only: "interruptSelf" interrupts its own invocation, which both count the same way.
const chunkBehaviours = behaviours

const caseOf = fc.record({
  specs: fc.array(
    fc.record({
      chunk: fc.constantFrom(...chunkBehaviours),
      mode: fc.constantFrom<"await" | "background">("await", "await", "await", "background")
    }),
    { minLength: 1, maxLength: 3 }
  ),
  streams: fc.array(
    fc.record({
      startAt: fc.constantFrom(0, 50, 100),
      // Gaps and delays never land on a multiple of the 1 s timeout plus a hook's duration.
      gaps: fc.array(fc.constantFrom(0, 110, 260, 430), { maxLength: 5 }),
      endAfter: fc.constantFrom(0, 70, 190, 610)
    }),
    { minLength: 2, maxLength: 6 }
  )
})

type Case = typeof caseOf extends fc.Arbitrary<infer A> ? A : never

const compare = (c: Case) =>
  Effect.gen(function*() {
    const real = yield* runReal(c.specs, c.streams)
    const reference = yield* runReference(c.specs, c.streams)
    const differences: Array<string> = []
    const differ = (what: string, a: unknown, b: unknown) => {
      if (JSON.stringify(a) !== JSON.stringify(b)) differences.push(`${what}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`)
    }
    for (const [index] of c.specs.entries()) {
      differ(`h${index} heard`, byCall(real.log[index]!), byCall(reference.log[index]!))
    }
    differ("end completion times", real.doneAt, reference.doneAt)
    differ("counts", real.counts, reference.counts)
    return differences
  })

const runs = Number(process.env["CHUNK_REFERENCE_RUNS"] ?? 200)
const seed = Number(process.env["CHUNK_REFERENCE_SEED"] ?? Math.floor(Math.random() * 2 ** 31))

describe("stream chunks against the reference model", () => {
  it.effect(
    `same chunks and ends per handler and call, at the same virtual times; same counts (${runs} random cases)`,
    () =>
      compareCases({
        cases: fc.sample(caseOf, { numRuns: runs, seed }),
        compare,
        seed: `CHUNK_REFERENCE_SEED=${seed}`,
        concurrency: 8
      }),
    Math.max(600_000, runs * 500)
  )
})
