import * as Cause from "effect/Cause"
import * as Chunk from "effect/Chunk"
import * as Context from "effect/Context"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as FiberRef from "effect/FiberRef"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Runtime from "effect/Runtime"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import * as Tracer from "effect/Tracer"
import * as CallbackConfig from "../CallbackConfig.js"
import * as Metrics from "../CallbackMetrics.js"
import { type CallbackEvent, type Phase, phaseOf } from "../Events.js"
import * as FiberRefs from "effect/FiberRefs"
import * as Clock from "effect/Clock"
import * as DefaultServices from "effect/DefaultServices"
import { constVoid } from "effect/Function"
import type { Handler, Mode } from "../Handler.js"
import { HandlerError, HandlerRegistrationError, isRetryable } from "../HandlerError.js"
import type * as Dispatcher from "../Dispatcher.js"
import { type Calls, type CallToken, CallsTypeId } from "./calls.js"

// -----------------------------------------------------------------------------
// Registered handlers
// -----------------------------------------------------------------------------

type Hook = (event: any) => Effect.Effect<void, unknown, never>

/**
 * Per-handler counters. They are plain mutable fields on purpose: they are
 * updated on the dispatch hot path, where an Effect `Ref` would cost a fiber
 * operation per invocation. Only the dispatcher writes them.
 */
interface Stats {
  successes: number
  failures: number
  defects: number
  timeouts: number
  interruptions: number
  retries: number
  dropped: number
  inFlight: number
  pending: number
  lastError: Dispatcher.LastError | undefined
  lastOutcome: Metrics.Status | undefined
  /** Background deliveries never run at shutdown (also counted in `dropped`). */
  undelivered: number
  /** Background deliveries interrupted in progress at shutdown (also counted in `interruptions`). */
  interruptedAtShutdown: number
  /** The handler's buffers are being drained (it is being unregistered or the dispatcher closes). */
  closing: boolean
  /** Invocations given up on (timed out, cancelled) whose hook ignores interruption and still runs. */
  overrunning: number
}

type Delivery =
  | { readonly _tag: "Event"; readonly event: CallbackEvent; readonly phase: Phase; readonly span: Tracer.AnySpan | undefined }
  | { readonly _tag: "Flush"; readonly done: Deferred.Deferred<void> }

interface Entry {
  readonly name: string
  readonly hooks: Readonly<Record<Phase, Hook | undefined>>
  /** Background mode: takes runs of consecutive end events at once (`onLlmEndBatch`). */
  readonly endBatch: ((events: ReadonlyArray<CallbackEvent>) => Effect.Effect<void, unknown, never>) | undefined
  readonly context: Context.Context<never>
  readonly timeout: Duration.Duration
  readonly schedule: Schedule.Schedule<unknown, unknown> | undefined
  readonly mode: Mode
  readonly priority: number
  readonly labels: Metrics.HandlerLabels
  readonly stats: Stats
  /** Background mode: one buffer per lane; a call's deliveries always take the same lane. */
  readonly lanes: ReadonlyArray<Lane> | undefined
}

interface PhasePlan {
  /** Await-mode handlers with this hook, grouped by priority, highest first. */
  readonly groups: ReadonlyArray<ReadonlyArray<Entry>>
  readonly background: ReadonlyArray<Entry>
  readonly empty: boolean
}

/** @internal */
export interface Snapshot {
  readonly start: PhasePlan
  readonly end: PhasePlan
  readonly error: PhasePlan
  readonly empty: boolean
}


/**
 * The retry rule, in one place: only typed failures are retried (defects and
 * interruptions are not), and not those that say they would fail again
 * (`HandlerError.NonRetryable`).
 */
const isRetriable = (cause: Cause.Cause<unknown>): boolean => {
  const failure = Cause.failureOption(cause)
  return Option.isSome(failure) && isRetryable(failure.value)
}

const planPhase = (entries: ReadonlyArray<Entry>, phase: Phase): PhasePlan => {
  const withHook = entries.filter((entry) => entry.hooks[phase] !== undefined)
  const awaiting = withHook.filter((entry) => entry.mode === "await")
  const priorities = Array.from(new Set(awaiting.map((entry) => entry.priority))).sort((a, b) => b - a)
  return {
    groups: priorities.map((priority) => awaiting.filter((entry) => entry.priority === priority)),
    background: withHook.filter((entry) => entry.mode === "background"),
    empty: withHook.length === 0
  }
}

const makeSnapshot = (entries: ReadonlyArray<Entry>): Snapshot => {
  const start = planPhase(entries, "start")
  const end = planPhase(entries, "end")
  const error = planPhase(entries, "error")
  return { start, end, error, empty: start.empty && end.empty && error.empty }
}

const emptySnapshot = makeSnapshot([])

/**
 * A background buffer and the producers waiting for room in it (FIFO). A
 * waiting producer costs a callback and a timer: no fiber per waiter.
 */
interface Lane {
  readonly queue: Queue.Queue<Delivery>
  readonly waiters: Array<Waiter>
}

interface Waiter {
  readonly delivery: Delivery
  /** False once it gave up (timeout, interruption). */
  readonly waiting: () => boolean
  /** Called once its delivery is in the buffer. */
  readonly admitted: () => void
  /** Lets the producer go without delivering (the drain counted it as not delivered). */
  readonly abandon: () => void
}

/** Moves waiting producers into the buffer while it has room, in order. */
const admitWaiters = (lane: Lane): void => {
  const waiters = lane.waiters
  let done = 0
  while (done < waiters.length) {
    const waiter = waiters[done]!
    if (waiter.waiting()) {
      if (!Queue.unsafeOffer(lane.queue, waiter.delivery)) break
      waiter.admitted()
    }
    done++
  }
  if (done > 0) waiters.splice(0, done)
}

/**
 * Puts a delivery in a lane, waiting behind the producers already waiting
 * (no timeout: for flush markers, which must follow every delivery before them).
 */
const offerInOrder = (lane: Lane, delivery: Delivery): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    if (lane.waiters.length === 0 && Queue.unsafeOffer(lane.queue, delivery)) return resume(Effect.void)
    let waiting = true
    const release = () => {
      waiting = false
      resume(Effect.void)
    }
    lane.waiters.push({ delivery, waiting: () => waiting, admitted: release, abandon: release })
    return Effect.sync(() => {
      waiting = false
    })
  })

/** A call's lane: a hash of its id, so that all its deliveries keep their order. */
const laneOf = (callId: string, lanes: number): number => {
  let hash = 0
  for (let i = 0; i < callId.length; i++) hash = (hash * 31 + callId.charCodeAt(i)) | 0
  return (hash >>> 0) % lanes
}

// -----------------------------------------------------------------------------
// Outcomes
// -----------------------------------------------------------------------------

interface Outcome {
  readonly status: Metrics.Status | "queued"
  readonly attempts: number
  readonly error: HandlerError | undefined
  /** Interrupted by the dispatch it belongs to (its caller was interrupted), not by the hook itself. */
  readonly cancelled?: true
}

/** The outcome of an invocation cancelled by its dispatch. */
const cancelledOutcome = (entry: Entry, phase: Phase, attempts: number): Outcome => ({
  ...classify(entry, phase, Cause.interrupt(FiberId.none), attempts),
  cancelled: true
})

const SUCCESS: Outcome = { status: "success", attempts: 1, error: undefined }
const QUEUED: Outcome = { status: "queued", attempts: 0, error: undefined }

const describe = (u: unknown): string => {
  if (u instanceof Error) return u.message === "" ? u.name : `${u.name}: ${u.message}`
  if (typeof u === "object" && u !== null && "_tag" in u) {
    const message = (u as { message?: unknown }).message
    return typeof message === "string" && message !== "" ? `${String(u._tag)}: ${message}` : String(u._tag)
  }
  try {
    return typeof u === "string" ? u : JSON.stringify(u) ?? String(u)
  } catch {
    return String(u)
  }
}

const classify = (
  entry: Entry,
  phase: Phase,
  cause: Cause.Cause<unknown>,
  attempts: number
): Outcome => {
  // Timeouts are the dispatcher's own (see `timedOut`): a hook failing with a
  // `TimeoutException` of its own has failed, not timed out.
  const failure = Cause.failureOption(cause)
  if (Option.isSome(failure)) {
    return {
      status: "failed",
      attempts,
      error: new HandlerError({
        reason: "Failed",
        handler: entry.name,
        phase,
        message: describe(failure.value),
        cause: failure.value
      })
    }
  }
  const defect = Cause.dieOption(cause)
  if (Option.isSome(defect)) {
    return {
      status: "defect",
      attempts,
      error: new HandlerError({
        reason: "Defect",
        handler: entry.name,
        phase,
        message: describe(defect.value),
        cause: defect.value
      })
    }
  }
  return {
    status: "interrupted",
    attempts,
    error: new HandlerError({ reason: "Interrupted", handler: entry.name, phase, message: "interrupted" })
  }
}

/** The invocation outlived its handler's timeout (retries included). */
const timedOut = (entry: Entry, phase: Phase, attempts: number): Outcome => ({
  status: "timeout",
  attempts,
  error: new HandlerError({
    reason: "Timeout",
    handler: entry.name,
    phase,
    message: `timed out after ${Duration.format(entry.timeout)} (${attempts} attempt(s))`
  })
})

// -----------------------------------------------------------------------------
// Concurrency slots
// -----------------------------------------------------------------------------

/**
 * The global bound on handler invocations in flight. Effect's `Semaphore`
 * offers no synchronous try-acquire, and waiting on it costs a fiber per
 * waiting invocation. Here an invocation that finds no free slot is queued as
 * a thunk, started (synchronously, in order) when a slot frees up.
 */
class Slots {
  active = 0
  private queue: Array<QueuedStart | undefined> = []
  private head = 0
  private draining = false
  constructor(readonly max: number) {}

  tryTake(): boolean {
    if (this.active < this.max) {
      this.active++
      return true
    }
    return false
  }

  release(): void {
    this.active--
    this.drain()
  }

  /** Queues `start`, to be called holding a slot; the handle is for `cancel`. */
  enqueue(start: () => void): QueuedStart {
    const queued: QueuedStart = { start }
    this.queue.push(queued)
    this.drain()
    return queued
  }

  /**
   * Removes a queued start that has not run; false when it already ran. The
   * handle is the queued start itself, never a position: positions are reused
   * once the queue is emptied and reset.
   */
  cancel(queued: QueuedStart): boolean {
    if (queued.start === undefined) return false
    queued.start = undefined
    return true
  }

  private drain(): void {
    if (this.draining) return
    this.draining = true
    try {
      while (this.active < this.max && this.head < this.queue.length) {
        const queued = this.queue[this.head]!
        this.queue[this.head++] = undefined
        const start = queued.start
        if (start !== undefined) {
          queued.start = undefined
          this.active++
          start()
        }
      }
      if (this.head === this.queue.length) {
        this.queue = []
        this.head = 0
      }
    } finally {
      this.draining = false
    }
  }
}

/** A start waiting for a slot; `start` is cleared once it ran or was cancelled. */
interface QueuedStart {
  start: (() => void) | undefined
}

/** The least real time the shutdown drain waits on a clock other than the live one (see `drain`). */
const realTimeFloor = Duration.seconds(5)

/** The default (live) clock, for which a timeout needs no fiber of its own. */
const liveClock: Clock.Clock = Context.get(DefaultServices.liveServices, Clock.Clock)

/** Effect's default tracer, which exports nowhere: no handler spans under it. */
const nativeTracer: Tracer.Tracer = Context.get(DefaultServices.liveServices, Tracer.Tracer)

/** What a dispatch needs to open a span per handler invocation, when a real tracer is installed. */
interface Tracing {
  readonly tracer: Tracer.Tracer
  readonly clock: Clock.Clock
}

const tracingOf = (fiber: Fiber.RuntimeFiber<unknown, unknown>): Tracing | undefined => {
  const tracer = fiber.currentTracer
  if (tracer === nativeTracer || !fiber.getFiberRef(FiberRef.currentTracerEnabled)) return undefined
  return { tracer, clock: Context.get(fiber.currentDefaultServices, Clock.Clock) }
}

/** setTimeout's longest delay; longer ones would fire at once. */
const maxTimerMillis = 2_147_483_647

/**
 * Calls `onTimeout` after `timeout` on the clock of `runtime`, and returns
 * the function that cancels it. With the live clock this is a plain timer;
 * with any other clock (TestClock) it is a fiber sleeping on that clock.
 */
const startTimer = (
  timeout: Duration.Duration,
  runtime: Runtime.Runtime<never>,
  onTimeout: () => void
): () => void => {
  if (!Duration.isFinite(timeout)) return constVoid
  const clock = Context.get(FiberRefs.getOrDefault(runtime.fiberRefs, DefaultServices.currentServices), Clock.Clock)
  if (clock === liveClock) {
    const handle = setTimeout(onTimeout, Math.min(Duration.toMillis(timeout), maxTimerMillis))
    return () => clearTimeout(handle)
  }
  const fiber = Runtime.runFork(runtime)(clock.sleep(timeout))
  fiber.addObserver((exit) => {
    if (Exit.isSuccess(exit)) onTimeout()
  })
  return () => fiber.unsafeInterruptAsFork(FiberId.none)
}

/** Completion of a pending invocation, awaitable by any number of fibers. */
class Settlement {
  settled = false
  private waiters: Array<() => void> | undefined
  readonly wait: Effect.Effect<void> = Effect.async<void>((resume) => {
    if (this.settled) return resume(Effect.void)
    const wake = () => resume(Effect.void)
    ;(this.waiters ??= []).push(wake)
    return Effect.sync(() => {
      this.waiters = this.waiters?.filter((w) => w !== wake)
    })
  })

  /** Marks it settled and wakes the waiters; false when it already was. */
  settle(): boolean {
    if (this.settled) return false
    this.settled = true
    const waiters = this.waiters
    this.waiters = undefined
    if (waiters !== undefined) for (const wake of waiters) wake()
    return true
  }
}

// -----------------------------------------------------------------------------
// The dispatcher
// -----------------------------------------------------------------------------

/**
 * The dispatching fiber's refs, read only when a hook needs a fiber of its
 * own: `getFiberRefs` copies the fiber's ref map, which a hook that returns a
 * completed effect never needs.
 */
type LazyRefs = () => FiberRefs.FiberRefs

const lazyRefs = (fiber: Fiber.RuntimeFiber<unknown, unknown>): LazyRefs => {
  let refs: FiberRefs.FiberRefs | undefined
  return () => refs ??= fiber.getFiberRefs()
}

const isBatch = (arg: CallbackEvent | ReadonlyArray<CallbackEvent>): arg is ReadonlyArray<CallbackEvent> =>
  Array.isArray(arg)

/** An invocation that did not complete synchronously. */
interface Pending {
  /** Completes when the invocation has settled (it never fails). */
  readonly wait: Effect.Effect<void>
  /** Settles it as interrupted, now. */
  readonly cancel: () => void
}

interface Results {
  readonly collect: boolean
  readonly items: Array<Dispatcher.HandlerResult>
  /** How many await groups were started (start phase only). */
  reached?: number
  /** Handlers of started groups whose start was cancelled (queued for a slot, or running). */
  notStarted?: Array<string>
}

/** A call's token (see `internal/calls`): its snapshot, and the handlers that did not hear its start. */
interface Token extends CallToken {
  readonly snapshot: Snapshot
  excluded: ReadonlySet<string> | undefined
}

const withoutUnreached = (plan: PhasePlan, excluded: ReadonlySet<string>): PhasePlan => {
  const groups = plan.groups
    .map((group) => group.filter((entry) => !excluded.has(entry.name)))
    .filter((group) => group.length > 0)
  return { groups, background: plan.background, empty: groups.length === 0 && plan.background.length === 0 }
}

/** @internal */
export const make = (
  options: CallbackConfig.Resolved
): Effect.Effect<Dispatcher.Dispatcher.Service, never, Scope.Scope> =>
  Effect.gen(function*() {
    const entries = new Map<string, Entry>()
    let snapshot: Snapshot = emptySnapshot
    let closed = false
    const slots = new Slots(options.maxConcurrent)
    // The layer's clock (a TestClock in tests) dates the last error of each handler.
    const clock = yield* Effect.clock
    // Registered at once so that the gauge is exported before any invocation suspends.
    Metrics.activeCallbacks.unsafeUpdate(0, [])

    const defaultSchedule: Schedule.Schedule<unknown, unknown> | undefined =
      options.enableRecovery && options.maxRetryAttempts > 1
        ? Schedule.exponential(options.retryDelay).pipe(
          Schedule.intersect(Schedule.recurs(options.maxRetryAttempts - 1))
        )
        : undefined

    const record = (entry: Entry, phase: Phase, outcome: Outcome, seconds: number): void => {
      const stats = entry.stats
      const status = outcome.status
      if (status === "queued") return
      entry.labels.executionHooks[phase][status].update(1)
      entry.labels.durationHooks[phase].update(seconds)
      if (outcome.attempts > 1) {
        stats.retries += outcome.attempts - 1
        Metrics.retriesTotal.unsafeUpdate(outcome.attempts - 1, entry.labels.duration[phase])
      }
      stats.lastOutcome = status
      switch (status) {
        case "success":
          stats.successes++
          return
        case "failed":
          stats.failures++
          break
        case "defect":
          stats.defects++
          break
        case "timeout":
          stats.timeouts++
          break
        case "interrupted":
          stats.interruptions++
          break
        case "dropped":
          stats.dropped++
          Metrics.droppedTotal.unsafeUpdate(1, entry.labels.handler)
          break
      }
      Metrics.errorsTotal.unsafeUpdate(1, entry.labels.error[status])
      if (outcome.error !== undefined) {
        stats.lastError = { phase, reason: outcome.error.reason, message: outcome.error.message, at: clock.unsafeCurrentTimeMillis() }
      }
    }

    const logFailures = (event: CallbackEvent, results: ReadonlyArray<Dispatcher.HandlerResult>) =>
      Effect.forEach(results.filter((result) => result.error !== undefined), (result) =>
        Effect.logWarning(`callback handler ${result.handler} ${result.status} on ${result.phase}`).pipe(
          Effect.annotateLogs({
            callId: event.call.callId,
            handler: result.handler,
            phase: result.phase,
            reason: result.error!.reason,
            error: result.error!.message,
            attempts: result.attempts
          })
        ), { discard: true })

    // -- one invocation -------------------------------------------------------

    const contextFor = (entry: Entry, span: Tracer.AnySpan | undefined): Context.Context<never> =>
      span === undefined ? entry.context : Context.add(entry.context, Tracer.ParentSpan, span)

    const runtimeFor = (entry: Entry, refs: LazyRefs, span: Tracer.AnySpan | undefined) =>
      Runtime.make({ context: contextFor(entry, span), fiberRefs: refs(), runtimeFlags: Runtime.defaultRuntimeFlags })

    /**
     * Runs one invocation, holding a slot. The hook first runs synchronously
     * on a fiber of its own that starts at once; when it completes without
     * suspending (the common case) the outcome is known here and no timer,
     * schedule or join is paid for: `done` is called and `undefined` returned.
     * Otherwise it returns a {@link Pending} invocation that settles by itself
     * (see `pending`), whatever happens to the dispatching fiber.
     */
    const startWithSlot = (
      entry: Entry,
      phase: Phase,
      hook: Hook,
      arg: unknown,
      refs: LazyRefs,
      span: Tracer.AnySpan | undefined,
      done: (outcome: Outcome) => void
    ): Pending | undefined => {
      let effect: Effect.Effect<void, unknown>
      try {
        effect = hook(arg)
      } catch (defect) {
        slots.release()
        done(classify(entry, phase, Cause.die(defect), 1))
        return undefined
      }
      let exit: Exit.Exit<void, unknown> | null
      let first: Fiber.RuntimeFiber<void, unknown> | undefined
      let runtime: Runtime.Runtime<never> | undefined
      if (Exit.isExit(effect)) {
        exit = effect as Exit.Exit<void, unknown>
      } else {
        runtime = runtimeFor(entry, refs, span)
        first = Runtime.runFork(runtime)(effect)
        exit = first.unsafePoll()
      }
      if (exit !== null) {
        if (Exit.isSuccess(exit)) {
          slots.release()
          done(SUCCESS)
          return undefined
        }
        if (entry.schedule === undefined || !isRetriable(exit.cause)) {
          slots.release()
          done(classify(entry, phase, exit.cause, 1))
          return undefined
        }
        return pending(entry, phase, hook, arg, runtime ?? runtimeFor(entry, refs, span), undefined, exit.cause, done)
      }
      return pending(entry, phase, hook, arg, runtime!, first, undefined, done)
    }

    /**
     * An invocation that did not complete synchronously: its first attempt
     * suspended (`first`), or failed with a retriable error (`failure`). It
     * settles by itself, driven by fiber observers rather than by a fiber of
     * its own: one timer bounds the whole invocation (retries included), and
     * a retry fiber is started only after a failure. Settling releases
     * the slot and calls `done`, exactly once.
     */
    const pending = (
      entry: Entry,
      phase: Phase,
      hook: Hook,
      arg: unknown,
      runtime: Runtime.Runtime<never>,
      first: Fiber.RuntimeFiber<void, unknown> | undefined,
      failure: Cause.Cause<unknown> | undefined,
      done: (outcome: Outcome) => void
    ): Pending => {
      const settlement = new Settlement()
      let attempts = 1
      // Whether an attempt ran to its end (the hook processed the event): a
      // cancellation after that is no longer "did not hear it".
      let completed = first === undefined
      let running: Fiber.RuntimeFiber<void, unknown> | undefined = first
      entry.stats.inFlight++
      Metrics.activeCallbacks.unsafeUpdate(slots.active, [])
      let cancelTimer: (() => void) | undefined
      const settle = (outcome: Outcome) => {
        if (settlement.settled) return
        if (cancelTimer !== undefined) cancelTimer()
        if (running !== undefined && running.unsafePoll() === null) {
          // Given up on (timed out, cancelled): interrupted, and no longer
          // holding its slot, so that one stuck hook cannot take the global
          // bound from every other handler. A hook that ignores the
          // interruption goes on running: it is counted as overrunning in
          // `health` until it really ends.
          const overrunning = running
          overrunning.unsafeInterruptAsFork(FiberId.none)
          if (overrunning.unsafePoll() === null) {
            entry.stats.overrunning++
            overrunning.addObserver(() => entry.stats.overrunning--)
          }
        }
        entry.stats.inFlight--
        done(outcome)
        settlement.settle()
        slots.release()
        Metrics.activeCallbacks.unsafeUpdate(slots.active, [])
      }
      // Started after `settle` exists: with a zero timeout it may fire at once.
      cancelTimer = startTimer(entry.timeout, runtime, () => settle(timedOut(entry, phase, attempts)))
      const retry = (cause: Cause.Cause<unknown>) => {
        // Feed the first failure to the schedule, then run the hook again.
        let replayed = false
        const attempt = Effect.suspend(() => {
          if (!replayed) {
            replayed = true
            return Effect.failCause(cause)
          }
          attempts++
          return hook(arg)
        })
        running = Runtime.runFork(runtime)(Effect.retry(attempt, { schedule: entry.schedule!, while: isRetryable }))
        running.addObserver((exit) => {
          settle(Exit.isSuccess(exit) ? { ...SUCCESS, attempts } : classify(entry, phase, exit.cause, attempts))
        })
      }
      if (first !== undefined) {
        first.addObserver((exit) => {
          if (settlement.settled) return
          completed = true
          if (Exit.isSuccess(exit)) settle(SUCCESS)
          else if (entry.schedule !== undefined && isRetriable(exit.cause)) retry(exit.cause)
          else settle(classify(entry, phase, exit.cause, attempts))
        })
      } else {
        retry(failure!)
      }
      return {
        wait: settlement.wait,
        cancel: () =>
          settle(
            completed
              ? classify(entry, phase, Cause.interrupt(FiberId.none), attempts)
              : cancelledOutcome(entry, phase, attempts)
          )
      }
    }

    /**
     * One invocation from start to outcome. Returns `undefined` when it
     * completed synchronously (`done` was called), else the pending invocation.
     */
    const invoke = (
      entry: Entry,
      phase: Phase,
      hook: Hook,
      arg: unknown,
      refs: LazyRefs,
      span: Tracer.AnySpan | undefined,
      done: (outcome: Outcome) => void
    ): Pending | undefined => {
      if (slots.tryTake()) return startWithSlot(entry, phase, hook, arg, refs, span, done)
      // Saturated: queue the start until a slot frees up; no fiber waits for it.
      // The caller's refs are read now: by the time it starts, the caller has moved on.
      refs()
      const settlement = new Settlement()
      let started: Pending | undefined
      const finish = (outcome: Outcome) => {
        done(outcome)
        settlement.settle()
      }
      const queued = slots.enqueue(() => {
        started = startWithSlot(entry, phase, hook, arg, refs, span, finish)
      })
      return {
        wait: settlement.wait,
        cancel: () => {
          // Started and still pending: cancel it. Started and done at once: nothing to cancel.
          // Still queued: it never runs.
          if (started !== undefined) started.cancel()
          else if (slots.cancel(queued)) finish(cancelledOutcome(entry, phase, 0))
        }
      }
    }

    /**
     * {@link invoke}, in a child span of the call's span (`callback <handler>
     * <phase>`) when a real tracer is installed; the hook's own spans nest in it.
     */
    const invokeTraced = (
      entry: Entry,
      phase: Phase,
      hook: Hook,
      arg: CallbackEvent | ReadonlyArray<CallbackEvent>,
      refs: LazyRefs,
      span: Tracer.AnySpan | undefined,
      tracing: Tracing | undefined,
      done: (outcome: Outcome) => void
    ): Pending | undefined => {
      if (tracing === undefined) return invoke(entry, phase, hook, arg, refs, span, done)
      const handlerSpan = tracing.tracer.span(
        `callback ${entry.name} ${phase}`,
        span === undefined ? Option.none() : Option.some(span),
        Context.empty(),
        [],
        tracing.clock.unsafeCurrentTimeNanos(),
        "internal"
      )
      handlerSpan.attribute("callback.handler", entry.name)
      handlerSpan.attribute("callback.phase", phase)
      handlerSpan.attribute("callback.mode", entry.mode)
      if (isBatch(arg)) handlerSpan.attribute("callback.batch_size", arg.length)
      else handlerSpan.attribute("llm.call_id", arg.call.callId)
      return invoke(entry, phase, hook, arg, refs, handlerSpan, (outcome) => {
        handlerSpan.attribute("callback.status", outcome.status)
        handlerSpan.attribute("callback.attempts", outcome.attempts)
        handlerSpan.end(
          tracing.clock.unsafeCurrentTimeNanos(),
          outcome.error === undefined ? Exit.void : Exit.fail(outcome.error)
        )
        done(outcome)
      })
    }

    // -- fan-out ----------------------------------------------------------------

    /**
     * Records an outcome (metrics, health) and adds it to `results`. Without
     * `collect` (the path `instrument` takes, which discards the report), only
     * the results worth logging are kept, so a successful dispatch allocates
     * nothing per handler.
     */
    const result = (
      entry: Entry,
      phase: Phase,
      outcome: Outcome,
      startedAt: number,
      results: Results
    ): number => {
      const now = performance.now()
      const ms = now - startedAt
      record(entry, phase, outcome, ms / 1000)
      if (results.collect || outcome.error !== undefined) {
        results.items.push({
          handler: entry.name,
          phase,
          mode: entry.mode,
          status: outcome.status,
          attempts: outcome.attempts,
          durationMs: ms,
          error: outcome.error
        })
      }
      return now
    }

    const enqueue = (
      entry: Entry,
      phase: Phase,
      event: CallbackEvent,
      fiber: Fiber.RuntimeFiber<unknown, unknown>,
      results: Results
    ): Effect.Effect<void> | undefined => {
      const lanes = entry.lanes!
      const lane = lanes.length === 1 ? lanes[0]! : lanes[laneOf(event.call.callId, lanes.length)]!
      const now = performance.now()
      if (closed) {
        result(entry, phase, dropped(entry, phase, "the dispatcher is shutting down"), now, results)
        if (phase === "start") (results.notStarted ??= []).push(entry.name)
        return undefined
      }
      const delivery: Delivery = { _tag: "Event", event, phase, span: fiber.currentSpan }
      entry.stats.pending++
      // Producers already waiting go first.
      if (lane.waiters.length === 0 && Queue.unsafeOffer(lane.queue, delivery)) {
        Metrics.queueDepth.unsafeUpdate(entry.stats.pending, entry.labels.handler)
        result(entry, phase, QUEUED, now, results)
        return undefined
      }
      // Buffer full: wait for room (backpressure), bounded by the handler's
      // timeout; then the delivery is dropped, counted and logged.
      return Effect.async<void>((resume) => {
        let waiting = true
        let cancelTimer: (() => void) | undefined
        const giveUp = (why: string) => {
          waiting = false
          if (cancelTimer !== undefined) cancelTimer()
          entry.stats.pending--
          result(entry, phase, dropped(entry, phase, why), now, results)
          // A handler whose start was dropped did not hear it: no terminal event either.
          if (phase === "start") (results.notStarted ??= []).push(entry.name)
        }
        lane.waiters.push({
          delivery,
          waiting: () => waiting,
          admitted: () => {
            waiting = false
            if (cancelTimer !== undefined) cancelTimer()
            Metrics.queueDepth.unsafeUpdate(entry.stats.pending, entry.labels.handler)
            result(entry, phase, QUEUED, now, results)
            resume(Effect.void)
          },
          abandon: () => {
            if (!waiting) return
            waiting = false
            if (cancelTimer !== undefined) cancelTimer()
            resume(Effect.void)
          }
        })
        cancelTimer = startTimer(
          entry.timeout,
          Runtime.make({ context: Context.empty(), fiberRefs: fiber.getFiberRefs(), runtimeFlags: Runtime.defaultRuntimeFlags }),
          () => {
            if (!waiting) return
            giveUp(`buffer full for ${Duration.format(entry.timeout)}`)
            resume(Effect.void)
          }
        )
        // Interrupted while waiting (a start dispatch whose caller was interrupted).
        return Effect.sync(() => {
          if (waiting) giveUp("the caller was interrupted while the buffer was full")
        })
      })
    }

    const dropped = (entry: Entry, phase: Phase, why: string): Outcome => ({
      status: "dropped",
      attempts: 0,
      error: new HandlerError({ reason: "Dropped", handler: entry.name, phase, message: `not delivered: ${why}` })
    })

    /**
     * Waits for pending invocations. The dispatching fiber may be
     * uninterruptible (terminal dispatch): the wait then ends when they
     * settle, which their timeouts bound. When it is interrupted (start
     * dispatch), they are cancelled.
     */
    const awaitPending = (pendings: ReadonlyArray<Pending>): Effect.Effect<void> =>
      Effect.onInterrupt(
        pendings.length === 1 ? pendings[0]!.wait : Effect.forEach(pendings, (p) => p.wait, { discard: true }),
        () =>
          Effect.sync(() => {
            for (const p of pendings) p.cancel()
          })
      )

    /**
     * Runs the await groups from `from` on, synchronously as far as they go:
     * returns `undefined` when every invocation completed without suspending,
     * or the effect that waits for the suspended ones and runs the rest.
     */
    const runGroupsSync = (
      plan: PhasePlan,
      phase: Phase,
      event: CallbackEvent,
      results: Results,
      from: number,
      refs: LazyRefs,
      span: Tracer.AnySpan | undefined,
      tracing: Tracing | undefined
    ): Effect.Effect<void> | undefined => {
      let time = performance.now()
      for (let g = from; g < plan.groups.length; g++) {
        const group = plan.groups[g]!
        results.reached = g + 1
        let waiting: Array<Pending> | undefined
        for (let i = 0; i < group.length; i++) {
          const entry = group[i]!
          const startedAt = time
          const started = invokeTraced(entry, phase, entry.hooks[phase]!, event, refs, span, tracing, (outcome) => {
            // Cancelled (queued for a slot, or running) by the interruption of the start
            // dispatch: the handler did not hear start, so it hears no terminal event either.
            if (outcome.cancelled === true) (results.notStarted ??= []).push(entry.name)
            time = result(entry, phase, outcome, startedAt, results)
          })
          if (started !== undefined) {
            ;(waiting ??= []).push(started)
            time = performance.now()
          }
        }
        if (waiting !== undefined) {
          const rest = g + 1
          return rest < plan.groups.length
            ? Effect.zipRight(
              awaitPending(waiting),
              Effect.withFiberRuntime<void>((fiber) =>
                runGroupsSync(plan, phase, event, results, rest, lazyRefs(fiber), fiber.currentSpan, tracing) ?? Effect.void
              )
            )
            : awaitPending(waiting)
        }
      }
      return undefined
    }

    /**
     * Dispatches on the caller's fiber: enqueues background deliveries and runs
     * the await handlers synchronously as far as they go. Returns `undefined`
     * when everything is done and nothing needs logging (the common case, with
     * no effect allocated), or the effect that completes the dispatch.
     */
    const run = (
      token: Token,
      event: CallbackEvent,
      fiber: Fiber.RuntimeFiber<unknown, unknown>,
      results: Results
    ): Effect.Effect<void> | undefined => {
      const phase: Phase = event._tag === "Start" ? "start" : event._tag === "End" ? "end" : "error"
      let plan = token.snapshot[phase]
      if (phase !== "start" && token.excluded !== undefined) plan = withoutUnreached(plan, token.excluded)
      if (plan.empty) return undefined
      const tracing = tracingOf(fiber)
      let backpressure: Array<Effect.Effect<void>> | undefined
      for (let i = 0; i < plan.background.length; i++) {
        const waiting = enqueue(plan.background[i]!, phase, event, fiber, results)
        if (waiting !== undefined) (backpressure ??= []).push(waiting)
      }
      let rest: Effect.Effect<void> | undefined
      if (backpressure !== undefined) {
        // Backpressure: the await handlers run after the buffers took the
        // deliveries (each wait is bounded by its handler's timeout).
        rest = Effect.zipRight(
          Effect.all(backpressure, { discard: true }),
          Effect.withFiberRuntime<void>((fiber) =>
            runGroupsSync(plan, phase, event, results, 0, lazyRefs(fiber), fiber.currentSpan, tracing) ?? Effect.void
          )
        )
      } else if (plan.groups.length > 0) {
        rest = runGroupsSync(plan, phase, event, results, 0, lazyRefs(fiber), fiber.currentSpan, tracing)
      }
      if (rest === undefined) {
        if (phase === "start" && results.notStarted !== undefined) token.excluded = new Set(results.notStarted)
        return hasError(results.items) ? logFailures(event, results.items) : undefined
      }
      if (phase === "start") {
        // Whichever way the start dispatch ends, the token says who did not
        // hear it: those cancelled or dropped, and, when it was interrupted,
        // the groups it never reached.
        const startPlan = plan
        rest = Effect.onExit(rest, (exit) =>
          Effect.sync(() => {
            const excluded = new Set<string>(results.notStarted)
            if (Exit.isFailure(exit)) {
              for (let g = results.reached ?? 0; g < startPlan.groups.length; g++) {
                for (const entry of startPlan.groups[g]!) excluded.add(entry.name)
              }
            }
            if (excluded.size > 0) token.excluded = excluded
          }))
      }
      return Effect.flatMap(rest, () => hasError(results.items) ? logFailures(event, results.items) : Effect.void)
    }

    const hasError = (items: ReadonlyArray<Dispatcher.HandlerResult>): boolean => {
      for (let i = 0; i < items.length; i++) {
        if (items[i]!.error !== undefined) return true
      }
      return false
    }

    const dispatchWith = (token: Token, event: CallbackEvent): Effect.Effect<Dispatcher.DispatchReport> =>
      Effect.withFiberRuntime((fiber) => {
        const results: Results = { collect: true, items: [] }
        const report: Dispatcher.DispatchReport = {
          phase: phaseOf(event),
          callId: event.call.callId,
          results: results.items
        }
        const rest = run(token, event, fiber, results)
        return rest === undefined ? Effect.succeed(report) : Effect.as(rest, report)
      })

    // -- background consumers -------------------------------------------------

    /**
     * Accounts for background deliveries that will never run (shutdown):
     * counts the events among `deliveries` as dropped, releases flush
     * markers, and returns the log line, if any.
     */
    const undelivered = (entry: Entry, deliveries: Iterable<Delivery>): Effect.Effect<void> =>
      Effect.sync(() => {
        let lost = 0
        for (const delivery of deliveries) {
          if (delivery._tag === "Flush") Deferred.unsafeDone(delivery.done, Exit.void)
          else lost++
        }
        if (lost === 0) return
        entry.stats.pending -= lost
        entry.stats.dropped += lost
        entry.stats.undelivered += lost
        Metrics.droppedTotal.unsafeUpdate(lost, entry.labels.handler)
        Metrics.errorsTotal.unsafeUpdate(lost, entry.labels.error.dropped)
        Metrics.queueDepth.unsafeUpdate(entry.stats.pending, entry.labels.handler)
      })

    /**
     * One line per handler at close, when something was not delivered: the
     * deliveries never run (buffered, waiting for room, or left in a batch)
     * and those interrupted in progress, each counted once.
     */
    const shutdownSummary = (entry: Entry): Effect.Effect<void> =>
      Effect.suspend(() => {
        const lost = entry.stats.undelivered + entry.stats.interruptedAtShutdown
        if (lost === 0) return Effect.void
        return Effect.logError(
          `callback handler ${entry.name}: ${lost} background deliveries not delivered at shutdown ` +
            `(${entry.stats.undelivered} never run, ${entry.stats.interruptedAtShutdown} interrupted in progress; ` +
            `shutdown timeout ${Duration.format(options.shutdownTimeout)})` +
            (clock === liveClock
              ? ""
              : "; the dispatcher runs on a clock other than the live one (a TestClock?): a handler " +
                "sleeping on it waits until the clock is moved; adjust it and Dispatcher.flush before the layer closes")
        ).pipe(
          Effect.annotateLogs({
            handler: entry.name,
            undelivered: entry.stats.undelivered,
            interrupted: entry.stats.interruptedAtShutdown
          })
        )
      })

    /**
     * The consumer of a background handler: takes deliveries in batches and
     * runs them in order, synchronously as far as they go (a batch of
     * handlers that complete at once costs one fiber turn), waiting for one
     * that suspends before the next. One consumer per lane, and a call's
     * deliveries always in the same lane, keep start before end for each call.
     */
    const consume = (entry: Entry, lane: Lane): Effect.Effect<never> => {
      /** A batch in progress: `next` is the first delivery not started yet. */
      interface Batch {
        readonly items: ReadonlyArray<Delivery>
        next: number
        readonly failed: Array<readonly [CallbackEvent, ReadonlyArray<Dispatcher.HandlerResult>]>
      }
      const runBatch = (batch: Batch, refs: LazyRefs, tracing: Tracing | undefined): Effect.Effect<void> => {
        const items = batch.items
        const failed = batch.failed
        for (let i = batch.next; i < items.length; i++) {
          const delivery = items[i]!
          if (delivery._tag === "Flush") {
            batch.next = i + 1
            Deferred.unsafeDone(delivery.done, Exit.void)
            continue
          }
          const startedAt = performance.now()
          if (delivery.phase === "end" && entry.endBatch !== undefined) {
            // A run of consecutive end events goes to the batch hook at once.
            const events: Array<CallbackEvent> = [delivery.event]
            while (i + 1 < items.length) {
              const next = items[i + 1]!
              if (next._tag !== "Event" || next.phase !== "end") break
              events.push(next.event)
              i++
            }
            // Started: from now on the run is accounted by its own outcome.
            batch.next = i + 1
            const running = invokeTraced(entry, "end", entry.endBatch, events, refs, delivery.span, tracing, (outcome) => {
              for (const event of events) {
                const results: Results = { collect: false, items: [] }
                entry.stats.pending--
                if (outcome.status === "interrupted" && entry.stats.closing) entry.stats.interruptedAtShutdown++
                result(entry, "end", outcome, startedAt, results)
                if (results.items.length > 0) failed.push([event, results.items])
              }
            })
            if (running !== undefined) return continueAfter(running, batch, tracing)
            continue
          }
          batch.next = i + 1
          const results: Results = { collect: false, items: [] }
          const hook = entry.hooks[delivery.phase]!
          const running = invokeTraced(entry, delivery.phase, hook, delivery.event, refs, delivery.span, tracing, (outcome) => {
            entry.stats.pending--
            if (outcome.status === "interrupted" && entry.stats.closing) entry.stats.interruptedAtShutdown++
            result(entry, delivery.phase, outcome, startedAt, results)
            if (results.items.length > 0) failed.push([delivery.event, results.items])
          })
          if (running !== undefined) return continueAfter(running, batch, tracing)
        }
        Metrics.queueDepth.unsafeUpdate(entry.stats.pending, entry.labels.handler)
        return failed.length === 0
          ? Effect.void
          : Effect.forEach(failed, ([event, results]) => logFailures(event, results), { discard: true })
      }
      // Waits for a delivery that suspended, then runs the rest of the batch.
      const continueAfter = (running: Pending, batch: Batch, tracing: Tracing | undefined): Effect.Effect<void> =>
        Effect.zipRight(
          awaitPending([running]),
          Effect.withFiberRuntime<void>((fiber) => runBatch(batch, lazyRefs(fiber), tracing))
        )
      return Effect.forever(
        Effect.flatMap(
          Queue.takeBetween(lane.queue, 1, 4096),
          (taken) =>
            Effect.withFiberRuntime<void>((fiber) => {
              // Room was made: let waiting producers in before running the batch.
              admitWaiters(lane)
              const batch: Batch = { items: Chunk.toReadonlyArray(taken), next: 0, failed: [] }
              // Interrupted (shutdown): the delivery in progress is accounted by
              // its own (interrupted) outcome, the ones not started yet once, here.
              return Effect.onInterrupt(
                runBatch(batch, lazyRefs(fiber), tracingOf(fiber)),
                () => undelivered(entry, batch.items.slice(batch.next))
              )
            })
        )
      )
    }

    const flushEntry = (entry: Entry): Effect.Effect<void> =>
      Effect.forEach(
        entry.lanes!,
        (lane) =>
          Effect.flatMap(Deferred.make<void>(), (done) =>
            Effect.zipRight(offerInOrder(lane, { _tag: "Flush", done }), Deferred.await(done))),
        { concurrency: "unbounded", discard: true }
      )

    // Finalizers run uninterruptibly; the flush is made interruptible so that
    // the shutdown timeout can cut it short. What is still buffered, or still
    // waiting for room, then never runs: it is counted and logged as not
    // delivered (a delivery in progress is interrupted and counted as such).
    const drain = (entry: Entry) =>
      Effect.interruptible(Effect.zipRight(Effect.sync(() => (entry.stats.closing = true)), flushEntry(entry))).pipe(
        // Bounded by the layer's clock (a TestClock moves it in tests), and, on
        // any other clock than the live one, by real time too: under a
        // TestClock nobody moves, a busy handler would otherwise hold the
        // layer's close for ever. The real-time bound is a safety net, never
        // shorter than `realTimeFloor`, so that a test moving its clock on a
        // slow machine still sees the virtual bound decide.
        Effect.timeoutOption(options.shutdownTimeout),
        Effect.withClock(clock),
        (bounded) =>
          clock === liveClock
            ? bounded
            : Effect.map(
              Effect.withClock(
                Effect.timeoutOption(bounded, Duration.max(options.shutdownTimeout, realTimeFloor)),
                liveClock
              ),
              Option.flatten
            ),
        Effect.flatMap((drained) =>
          Option.isSome(drained) ? Effect.void : Effect.forEach(entry.lanes!, (lane) =>
            Effect.flatMap(Queue.takeAll(lane.queue), (buffered) => {
              const waiting: Array<Delivery> = []
              for (const waiter of lane.waiters) {
                if (!waiter.waiting()) continue
                waiting.push(waiter.delivery)
                waiter.abandon()
              }
              lane.waiters.length = 0
              return undelivered(entry, [...Chunk.toReadonlyArray(buffered), ...waiting])
            }), { discard: true })
        )
      )

    // -- registration -----------------------------------------------------------

    const validate = (handler: Handler<unknown, unknown>): Either.Either<
      { timeout: Duration.Duration; mode: Mode; priority: number; bufferSize: number; concurrency: number },
      HandlerRegistrationError
    > => {
      const fail = (reason: HandlerRegistrationError["reason"], message: string) =>
        Either.left(new HandlerRegistrationError({ reason, handler: String(handler.name), message }))
      if (typeof handler.name !== "string" || handler.name.trim() === "") {
        return fail("InvalidName", "a handler needs a non-empty name")
      }
      if (closed) return fail("Closed", `cannot register ${handler.name}: the dispatcher is closed`)
      if (entries.has(handler.name)) {
        return fail("DuplicateName", `a handler named ${JSON.stringify(handler.name)} is already registered`)
      }
      const policy = handler.policy
      let timeout = options.timeout
      if (policy.timeout !== undefined) {
        const decoded = Duration.decodeUnknown(policy.timeout)
        // `Duration` clamps negative numbers to zero: reject them before it does.
        const negative = (typeof policy.timeout === "number" || typeof policy.timeout === "bigint") &&
          policy.timeout < 0
        if (negative || Option.isNone(decoded) || Duration.toMillis(decoded.value) < 0) {
          return fail("InvalidPolicy", `${handler.name}: timeout must be a non-negative duration, got ${String(policy.timeout)}`)
        }
        timeout = decoded.value
      }
      const mode = policy.mode ?? options.mode
      if (mode !== "await" && mode !== "background") {
        return fail("InvalidPolicy", `${handler.name}: mode must be "await" or "background", got ${String(mode)}`)
      }
      const priority = policy.priority ?? 0
      if (!Number.isFinite(priority)) {
        return fail("InvalidPolicy", `${handler.name}: priority must be a finite number, got ${String(priority)}`)
      }
      const bufferSize = policy.bufferSize ?? options.bufferSize
      if (!Number.isSafeInteger(bufferSize) || bufferSize < 1) {
        return fail("InvalidPolicy", `${handler.name}: bufferSize must be an integer >= 1, got ${String(bufferSize)}`)
      }
      const concurrency = policy.concurrency ?? 1
      if (!Number.isSafeInteger(concurrency) || concurrency < 1) {
        return fail("InvalidPolicy", `${handler.name}: concurrency must be an integer >= 1, got ${String(concurrency)}`)
      }
      return Either.right({ timeout, mode, priority, bufferSize, concurrency })
    }

    const register = <E, R>(
      handler: Handler<E, R>,
      context: Context.Context<R>
    ): Effect.Effect<void, HandlerRegistrationError, Scope.Scope> =>
      Effect.gen(function*() {
        const checked = yield* validate(handler as Handler<unknown, unknown>)
        const lanes = checked.mode === "background"
          ? yield* Effect.all(
            Array.from({ length: checked.concurrency }, () =>
              Effect.map(
                Queue.bounded<Delivery>(Math.max(1, Math.ceil(checked.bufferSize / checked.concurrency))),
                (queue): Lane => ({ queue, waiters: [] })
              ))
          )
          : undefined
        const endBatch = handler.onLlmEndBatch as Entry["endBatch"]
        const entry: Entry = {
          name: handler.name,
          hooks: {
            start: handler.onLlmStart as Hook | undefined,
            // Without a per-event end hook, a batch hook hears each end event alone
            // (await mode, and the rare end that is not part of a run).
            end: (handler.onLlmEnd as Hook | undefined) ??
              (endBatch === undefined ? undefined : (event: CallbackEvent) => endBatch([event])),
            error: handler.onLlmError as Hook | undefined
          },
          endBatch: checked.mode === "background" ? endBatch : undefined,
          context: context as Context.Context<never>,
          timeout: checked.timeout,
          schedule: options.enableRecovery
            ? handler.policy.retry ?? defaultSchedule
            : undefined,
          mode: checked.mode,
          priority: checked.priority,
          labels: Metrics.makeHandlerLabels(handler.name),
          stats: {
            successes: 0,
            failures: 0,
            defects: 0,
            timeouts: 0,
            interruptions: 0,
            retries: 0,
            dropped: 0,
            inFlight: 0,
            pending: 0,
            lastError: undefined,
            lastOutcome: undefined,
            undelivered: 0,
            interruptedAtShutdown: 0,
            closing: false,
            overrunning: 0
          },
          lanes
        }
        if (lanes !== undefined) {
          // Finalizers run in reverse: the drain (below) while the consumers are
          // alive, then the consumers are interrupted, then one summary line.
          yield* Effect.addFinalizer(() => shutdownSummary(entry))
          for (const lane of lanes) yield* Effect.forkScoped(Effect.interruptible(consume(entry, lane)))
        }
        yield* Effect.addFinalizer(() =>
          Effect.suspend(() => {
            entries.delete(entry.name)
            snapshot = makeSnapshot(Array.from(entries.values()))
            return lanes === undefined
              ? Effect.void
              : Effect.zipRight(drain(entry), Effect.forEach(lanes, (lane) => Queue.shutdown(lane.queue), { discard: true }))
          })
        )
        entries.set(entry.name, entry)
        snapshot = makeSnapshot(Array.from(entries.values()))
      })

    // -- health -----------------------------------------------------------------

    const health = Effect.sync((): Dispatcher.HealthReport => {
      const handlers = Array.from(entries.values()).map((entry): Dispatcher.HandlerHealth => ({
        name: entry.name,
        mode: entry.mode,
        priority: entry.priority,
        successes: entry.stats.successes,
        failures: entry.stats.failures,
        defects: entry.stats.defects,
        timeouts: entry.stats.timeouts,
        interruptions: entry.stats.interruptions,
        retries: entry.stats.retries,
        dropped: entry.stats.dropped,
        inFlight: entry.stats.inFlight,
        overrunning: entry.stats.overrunning,
        pending: entry.stats.pending,
        lastError: entry.stats.lastError === undefined ? Option.none() : Option.some(entry.stats.lastError)
      }))
      const degraded = Array.from(entries.values()).some((entry) =>
        entry.stats.lastOutcome !== undefined && entry.stats.lastOutcome !== "success"
      )
      return {
        status: closed ? "closed" : degraded ? "degraded" : "healthy",
        handlers,
        inFlight: slots.active,
        pending: handlers.reduce((n, h) => n + h.pending, 0)
      }
    })

    const flush = Effect.suspend(() =>
      Effect.forEach(
        Array.from(entries.values()).filter((entry) => entry.lanes !== undefined),
        flushEntry,
        { concurrency: "unbounded", discard: true }
      )
    )

    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        closed = true
        return Effect.forEach(
          Array.from(entries.values()).filter((entry) => entry.lanes !== undefined),
          drain,
          { concurrency: "unbounded", discard: true }
        )
      })
    )

    const begin = (): Token => ({ snapshot, excluded: undefined, empty: snapshot.empty })
    // Tokens are made by `begin` above only: the cast recovers what it made.
    const calls: Calls = {
      begin,
      run: (token, event, fiber) => run(token as Token, event, fiber, { collect: false, items: [] }),
      dispatch: (token, event) => dispatchWith(token as Token, event)
    }
    const service: Dispatcher.Dispatcher.Service = {
      [CallsTypeId]: calls,
      register,
      dispatch: (event) => Effect.suspend(() => dispatchWith(begin(), event)),
      flush,
      health,
      handlers: Effect.sync(() => Array.from(entries.keys()))
    }
    return service
  })
