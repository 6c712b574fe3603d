/**
 * A reference for stream chunks in plain, idiomatic Effect: slow and
 * obviously correct, implementing the documented semantics of chunk
 * dispatch, against which the real dispatcher's chunk lines are checked on
 * random concurrent workloads (`test/Chunks.reference.test.ts`).
 *
 * - Every handler hears every call's start (the workloads' start hooks
 *   succeed) and so its chunks.
 * - Await handler: one `Queue` and one consumer fiber per call, which runs
 *   the call's chunks one after the other (an invocation: `Effect.retry` on
 *   the handler's schedule inside `Effect.timeout`). Offering a chunk never
 *   waits.
 * - The call's end waits until each handler's queue is drained and its
 *   consumer idle, under `Effect.timeout` with the handler's timeout; past
 *   it, what the queue still holds is dropped (counted) and the consumer is
 *   interrupted (its invocation in flight counted as interrupted). Then the
 *   end is dispatched to every handler, concurrently.
 * - Background handler: one `Queue` for all its deliveries, chunks and ends
 *   alike, and one consumer running them in order.
 */
import { Cause, Deferred, Duration, Effect, Exit, Fiber, Option, Queue, Ref, Schedule, type Scope } from "effect"

export interface ChunkHandler {
  readonly name: string
  readonly mode: "await" | "background"
  readonly timeout: Duration.DurationInput
  readonly retry: Schedule.Schedule<unknown, unknown>
  readonly hook: (phase: "chunk" | "end", callId: string, index: number) => Effect.Effect<void, unknown>
}

export interface ChunkCounts {
  successes: number
  failures: number
  defects: number
  timeouts: number
  interruptions: number
  dropped: number
}

export interface Stream {
  /** Offers one chunk, never waiting. */
  readonly chunk: (index: number) => Effect.Effect<void>
  /** Waits for the lines (bounded), then dispatches the end. */
  readonly end: Effect.Effect<void>
}

export interface ReferenceChunks {
  readonly begin: (callId: string) => Effect.Effect<Stream, never, Scope.Scope>
  readonly flush: Effect.Effect<void>
  readonly counts: (name: string) => ChunkCounts
}

export const make = (handlers: ReadonlyArray<ChunkHandler>): Effect.Effect<ReferenceChunks, never, Scope.Scope> =>
  Effect.gen(function*() {
    const counts = new Map(handlers.map((h) => [
      h.name,
      { successes: 0, failures: 0, defects: 0, timeouts: 0, interruptions: 0, dropped: 0 }
    ]))

    const invoke = (handler: ChunkHandler, phase: "chunk" | "end", callId: string, index: number) => {
      const counted = counts.get(handler.name)!
      const record = (outcome: keyof ChunkCounts) => Effect.sync(() => void counted[outcome]++)
      return Effect.retry(Effect.suspend(() => handler.hook(phase, callId, index)), handler.retry).pipe(
        Effect.disconnect,
        Effect.timeout(handler.timeout),
        Effect.exit,
        Effect.flatMap((exit) => {
          if (Exit.isSuccess(exit)) return record("successes")
          const failure = Cause.failureOption(exit.cause)
          if (Option.isSome(failure)) {
            return Cause.isTimeoutException(failure.value) ? record("timeouts") : record("failures")
          }
          if (Option.isSome(Cause.dieOption(exit.cause))) return record("defects")
          return record("interruptions")
        }),
        Effect.onInterrupt(() => record("interruptions"))
      )
    }

    // Background: one queue and one sequential consumer per handler.
    type Delivery = readonly ["chunk" | "end", string, number, Deferred.Deferred<void>]
    const backgroundQueues = new Map<string, Queue.Queue<Delivery>>()
    const pending: Array<Deferred.Deferred<void>> = []
    for (const handler of handlers) {
      if (handler.mode !== "background") continue
      const queue = yield* Queue.unbounded<Delivery>()
      backgroundQueues.set(handler.name, queue)
      yield* Effect.forkScoped(Effect.forever(
        Effect.flatMap(Queue.take(queue), ([phase, callId, index, done]) =>
          Effect.zipRight(invoke(handler, phase, callId, index), Deferred.succeed(done, undefined)))
      ))
    }
    const offerBackground = (handler: ChunkHandler, phase: "chunk" | "end", callId: string, index: number) =>
      Effect.flatMap(Deferred.make<void>(), (done) =>
        Effect.zipRight(
          Effect.sync(() => pending.push(done)),
          Queue.offer(backgroundQueues.get(handler.name)!, [phase, callId, index, done])
        ))

    const begin = (callId: string) =>
      Effect.gen(function*() {
        // Per await handler: its line for this call.
        const lines = yield* Effect.forEach(handlers.filter((h) => h.mode === "await"), (handler) =>
          Effect.gen(function*() {
            const queue = yield* Queue.unbounded<number>()
            // Chunks offered and not done yet, and who waits for none to be left.
            const busy = yield* Ref.make({ count: 0, waiters: [] as ReadonlyArray<Deferred.Deferred<void>> })
            const done = Effect.flatMap(
              Ref.modify(busy, ({ count, waiters }) =>
                count === 1 ? [waiters, { count: 0, waiters: [] }] as const : [[], { count: count - 1, waiters }] as const),
              (waiters) => Effect.forEach(waiters, (waiter) => Deferred.succeed(waiter, undefined), { discard: true })
            )
            const consumer = yield* Effect.forkScoped(Effect.forever(
              Effect.flatMap(Queue.take(queue), (index) => Effect.ensuring(invoke(handler, "chunk", callId, index), done))
            ))
            return { handler, queue, busy, consumer }
          }))
        const idle = (line: (typeof lines)[number]) =>
          Effect.flatMap(Deferred.make<void>(), (waiter) =>
            Effect.flatMap(
              Ref.modify(line.busy, (state) =>
                state.count === 0 ? [true, state] as const : [false, { ...state, waiters: [...state.waiters, waiter] }] as const),
              (isIdle) => isIdle ? Effect.void : Deferred.await(waiter)
            ))
        const chunk = (index: number) =>
          Effect.gen(function*() {
            for (const line of lines) {
              yield* Ref.update(line.busy, (state) => ({ ...state, count: state.count + 1 }))
              yield* Queue.offer(line.queue, index)
            }
            for (const handler of handlers) {
              if (handler.mode === "background") yield* offerBackground(handler, "chunk", callId, index)
            }
          })
        const end = Effect.gen(function*() {
          yield* Effect.forEach(lines, (line) =>
            Effect.gen(function*() {
              const drained = yield* Effect.timeoutOption(idle(line), line.handler.timeout)
              if (Option.isNone(drained)) {
                const left = yield* Queue.takeAll(line.queue)
                counts.get(line.handler.name)!.dropped += left.length
              }
              yield* Fiber.interrupt(line.consumer)
            }), { concurrency: "unbounded", discard: true })
          for (const handler of handlers) {
            if (handler.mode === "background") yield* offerBackground(handler, "end", callId, -1)
          }
          yield* Effect.forEach(
            handlers.filter((h) => h.mode === "await"),
            (handler) => invoke(handler, "end", callId, -1),
            { concurrency: "unbounded", discard: true }
          )
        })
        return { chunk, end }
      })

    return {
      begin,
      flush: Effect.suspend(() => Effect.forEach(pending.slice(), Deferred.await, { discard: true })),
      counts: (name) => counts.get(name)!
    }
  })
