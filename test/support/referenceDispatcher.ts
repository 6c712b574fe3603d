/**
 * A reference dispatcher in plain, idiomatic Effect: slow and obviously
 * correct, implementing the documented semantics, against which the real
 * dispatcher is checked on random concurrent workloads
 * (`test/Dispatcher.reference.test.ts`).
 *
 * - A global semaphore bounds handler invocations in flight. It is strictly
 *   first come, first served, a released permit going to the longest
 *   waiter (Effect's `Semaphore` lets a newcomer take a permit released at
 *   the same instant, which the documented semantics do not).
 * - One invocation: `Effect.retry` on the handler's schedule (typed failures
 *   only), inside `Effect.timeout`, the whole inside a permit.
 * - A phase fans out to the await handlers by priority (higher first), each
 *   group with `Effect.forEach` (unbounded concurrency); background
 *   deliveries are offered first to each handler's `Queue`, whose consumer
 *   fiber runs them one after the other.
 * - `instrument`: the start dispatch is interruptible; a handler hears the
 *   terminal event (dispatched uninterruptibly) only if it heard start: its
 *   group was reached and its start invocation was not cancelled before an
 *   attempt ended (a queued or background delivery counts once it is queued).
 * - `close` (the layer closing) unregisters the handlers one after the other,
 *   the last registered first, as a scope runs its finalizers: each is taken
 *   out of the audience of calls that start afterwards and, in background
 *   mode, refuses new deliveries (dropped: not heard), runs what it holds,
 *   and stops. Await handlers go on hearing the calls that started before.
 */
import {
  Cause,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Option,
  Queue,
  Ref,
  Schedule,
  type Scope
} from "effect"

export type Phase = "start" | "end" | "error"

export interface RefHandler {
  readonly name: string
  readonly priority: number
  readonly mode: "await" | "background"
  readonly timeout: Duration.DurationInput
  readonly retry: Schedule.Schedule<unknown, unknown> | undefined
  readonly hook: (phase: Phase, callId: string) => Effect.Effect<void, unknown>
}

export interface Counts {
  successes: number
  failures: number
  defects: number
  timeouts: number
  interruptions: number
  retries: number
}

const zero = (): Counts => ({ successes: 0, failures: 0, defects: 0, timeouts: 0, interruptions: 0, retries: 0 })

export interface Reference {
  readonly instrument: <A, E, R>(callId: string, call: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** Waits until every background delivery is done. */
  readonly flush: Effect.Effect<void>
  readonly counts: (name: string) => Counts
  /** Closes it (the layer's scope closing): see the module's comment. */
  readonly close: Effect.Effect<void>
}

/** A first-come-first-served semaphore of `permits`: see the module's comment. */
const fifoSemaphore = (permits: number) =>
  Effect.map(
    Ref.make({ available: permits, waiters: [] as ReadonlyArray<Deferred.Deferred<void>> }),
    (state) => {
      const release = Effect.flatMap(
        Ref.modify(state, (s) =>
          s.waiters.length > 0
            ? [s.waiters[0], { ...s, waiters: s.waiters.slice(1) }] as const
            : [undefined, { ...s, available: s.available + 1 }] as const),
        (next) => next === undefined ? Effect.void : Deferred.succeed(next, undefined)
      )
      // Run uninterruptibly but for the wait, which `restore` makes interruptible.
      const acquire = (restore: <X, Y, Z>(effect: Effect.Effect<X, Y, Z>) => Effect.Effect<X, Y, Z>) =>
        Effect.flatMap(Deferred.make<void>(), (turn) =>
          Effect.flatMap(
            Ref.modify(state, (s) =>
              s.available > 0 && s.waiters.length === 0
                ? [true, { ...s, available: s.available - 1 }] as const
                : [false, { ...s, waiters: [...s.waiters, turn] }] as const),
            (taken) =>
              taken ? Effect.void : restore(Deferred.await(turn)).pipe(
                // Interrupted while waiting: leave the line, or pass on a permit handed over meanwhile.
                Effect.onInterrupt(() =>
                  Effect.flatMap(
                    Ref.modify(state, (s) =>
                      s.waiters.includes(turn)
                        ? [false, { ...s, waiters: s.waiters.filter((w) => w !== turn) }] as const
                        : [true, s] as const),
                    (handed) => handed ? release : Effect.void
                  )
                )
              )
          ))
      return <A, E, R>(effect: Effect.Effect<A, E, R>) =>
        Effect.uninterruptibleMask((restore) => Effect.zipRight(acquire(restore), Effect.ensuring(restore(effect), release)))
    }
  )

export const make = (
  handlers: ReadonlyArray<RefHandler>,
  maxConcurrent: number
): Effect.Effect<Reference, never, Scope.Scope> =>
  Effect.gen(function*() {
    const withPermit = yield* fifoSemaphore(maxConcurrent)
    /** Unregistered handlers: out of the audience of new calls; in background mode, refusing deliveries. */
    const removed = new Set<string>()
    const counts = new Map(handlers.map((h) => [h.name, zero()]))

    /**
     * One invocation; its outcome is counted. `heard` is called when the
     * handler heard the event: the invocation ended by itself (success,
     * failure, defect, timeout), or was interrupted from outside after an
     * attempt had ended.
     */
    const invoke = (handler: RefHandler, phase: Phase, callId: string, heard: () => void): Effect.Effect<void> =>
      Effect.gen(function*() {
        let attempts = 0
        let ended = false
        const attempt = Effect.suspend(() => {
          attempts++
          return handler.hook(phase, callId)
        }).pipe(
          Effect.onExit((exit) =>
            Effect.sync(() => {
              if (!(Exit.isFailure(exit) && Cause.isInterruptedOnly(exit.cause))) ended = true
            })
          )
        )
        // Only typed failures are retried (Effect.retry leaves defects and interruptions alone).
        const retried = handler.retry === undefined ? attempt : Effect.retry(attempt, handler.retry)
        const counted = counts.get(handler.name)!
        const record = (outcome: Exclude<keyof Counts, "retries">) =>
          Effect.sync(() => {
            counted[outcome]++
            counted.retries += Math.max(0, attempts - 1)
          })
        const classified = retried.pipe(
          // A hook that ignores interruption does not hold the invocation past its timeout.
          Effect.disconnect,
          Effect.timeout(handler.timeout),
          Effect.exit,
          Effect.flatMap((exit) => {
            if (Exit.isSuccess(exit)) return record("successes")
            const cause = exit.cause
            if (Option.isSome(Cause.failureOption(cause))) {
              return Cause.isTimeoutException(Option.getOrThrow(Cause.failureOption(cause)))
                ? record("timeouts")
                : record("failures")
            }
            if (Option.isSome(Cause.dieOption(cause))) return record("defects")
            return record("interruptions")
          }),
          Effect.zipRight(Effect.sync(heard))
        )
        yield* withPermit(classified).pipe(
          Effect.onInterrupt(() =>
            Effect.zipRight(record("interruptions"), Effect.sync(() => {
              if (ended) heard()
            }))
          )
        )
      })

    // Background: one queue and one sequential consumer per handler.
    const queues = new Map<string, Queue.Queue<readonly [Phase, string, Deferred.Deferred<void>]>>()
    const consumers = new Map<string, Fiber.RuntimeFiber<never>>()
    const pendingDeliveries = new Map<string, Array<Deferred.Deferred<void>>>()
    for (const handler of handlers) {
      if (handler.mode !== "background") continue
      const queue = yield* Queue.unbounded<readonly [Phase, string, Deferred.Deferred<void>]>()
      queues.set(handler.name, queue)
      pendingDeliveries.set(handler.name, [])
      consumers.set(
        handler.name,
        yield* Effect.forkScoped(Effect.forever(
          Effect.flatMap(Queue.take(queue), ([phase, callId, done]) =>
            Effect.zipRight(invoke(handler, phase, callId, () => {}), Deferred.succeed(done, undefined)))
        ))
      )
    }

    const awaitGroups = Array.from(new Set(handlers.filter((h) => h.mode === "await").map((h) => h.priority)))
      .sort((a, b) => b - a)
      .map((priority) => handlers.filter((h) => h.mode === "await" && h.priority === priority))

    /** Dispatches one phase to `audience`; returns who heard it (start), interruptibly. */
    const dispatch = (phase: Phase, callId: string, audience: ReadonlySet<string>, heard: Set<string>) =>
      Effect.gen(function*() {
        for (const handler of handlers) {
          if (handler.mode !== "background" || !audience.has(handler.name) || removed.has(handler.name)) continue
          const done = yield* Deferred.make<void>()
          pendingDeliveries.get(handler.name)!.push(done)
          yield* Queue.offer(queues.get(handler.name)!, [phase, callId, done])
          heard.add(handler.name)
        }
        for (const group of awaitGroups) {
          const members = group.filter((h) => audience.has(h.name))
          yield* Effect.forEach(
            members,
            (handler) => invoke(handler, phase, callId, () => heard.add(handler.name)),
            { concurrency: "unbounded", discard: true }
          )
        }
      })

    const everyone = new Set(handlers.map((h) => h.name))

    const instrument = <A, E, R>(callId: string, call: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.gen(function*() {
          const heard = new Set<string>()
          const audience = new Set(Array.from(everyone).filter((name) => !removed.has(name)))
          const started = yield* Effect.exit(restore(dispatch("start", callId, audience, heard)))
          const exit = Exit.isFailure(started) ? (started as Exit.Exit<never, never>) : yield* Effect.exit(restore(call))
          // The terminal dispatch runs whatever the caller does: in a fiber of its own,
          // which the caller's interruption does not reach, while the caller waits for it
          // (uninterruptibly). Inside it, timeouts interrupt hooks as usual.
          const terminal = yield* Effect.forkDaemon(
            Effect.interruptible(dispatch(Exit.isSuccess(exit) ? "end" : "error", callId, heard, new Set()))
          )
          yield* Fiber.join(terminal)
          return yield* exit
        })
      )

    const flushOne = (name: string) =>
      Effect.suspend(() => Effect.forEach(pendingDeliveries.get(name)!.slice(), Deferred.await, { discard: true }))
    return {
      instrument,
      flush: Effect.forEach(Array.from(pendingDeliveries.keys()), flushOne, { discard: true }),
      counts: (name) => counts.get(name)!,
      close: Effect.forEach(handlers.slice().reverse(), (handler) =>
        Effect.suspend(() => {
          removed.add(handler.name)
          const consumer = consumers.get(handler.name)
          return consumer === undefined ? Effect.void : Effect.zipRight(flushOne(handler.name), Fiber.interrupt(consumer))
        }), { discard: true })
    }
  })
