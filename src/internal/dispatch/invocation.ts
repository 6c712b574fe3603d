/**
 * One handler invocation, from the hook call to its outcome.
 *
 * The fast path, explained once. A hook is called at once, on the
 * dispatching fiber's stack. When it returns a completed effect (an `Exit`,
 * as `Effect.void` or `Effect.fail(e)` are), its outcome is known on the spot:
 * no fiber, timer or schedule driver is paid for; so is it when it returns a
 * single synchronous step (`Effect.sync(f)`), which is run there (see
 * `syncNow`). When it returns one asynchronous step
 * (`Effect.promise(() => p)`, `Effect.tryPromise(() => p)`, `Effect.async`
 * without a canceller), that step is registered there, and the invocation
 * waits for its resume with no fiber (see `begin`). When it returns steps
 * that need no fiber (a chain of synchronous steps, an `Effect.gen` of them),
 * they run there too, as far as they go (see `runNow`); when they go as far
 * as such an asynchronous step inside continuations (a generator at
 * `yield* Effect.promise(...)`, a promise then a `map`), the invocation
 * waits for its resume with no fiber too, and goes on with them from there
 * (see `waitOf`). Whatever is left of the effect runs on a fiber of its
 * own, started at once; most complete without suspending, and their outcome
 * is known on the spot too (a success then makes no invocation object either). A failure that the retry rule
 * retries is fed to the handler's schedule right there (its step run on the
 * spot as far as it needs no fiber): while attempts fail at once and the
 * schedule asks for no delay, they are retried in the same loop, without a
 * retry fiber.
 *
 * Only an invocation that suspends (an attempt, a retry delay, a schedule
 * step) becomes pending: it then holds a timer for the handler's timeout
 * (retries included), counts as in flight, and settles by itself, driven by
 * resumes, fiber observers and timers rather than by a fiber of its own, whatever
 * happens to the dispatching fiber. Settling calls `done` and frees the slot,
 * exactly once.
 */
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import type * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as Option from "effect/Option"
import * as Runtime from "effect/Runtime"
import * as ScheduleDecision from "effect/ScheduleDecision"
import * as Intervals from "effect/ScheduleIntervals"
import * as Tracer from "effect/Tracer"
import { activeHook } from "../metricLabels.js"
import type { CallbackEvent } from "../../Events.js"
import type { Phase } from "../phases.js"
import * as Outcome from "./outcome.js"
import type { Entry, Hook, State } from "./plan.js"
import type { QueuedStart, Slots } from "./slots.js"
import { type Caller, hookRefsOf, runsHookOf, type Tracing } from "./caller.js"
import type { Timed } from "./deadlines.js"
import { startHookFiber } from "./hookFiber.js"
import { liveClock, startTimer } from "./timer.js"
import { asyncStep, type Register, runNow, thrown, waitOf } from "../steps.js"

/**
 * Told an invocation's outcome, with its entry and the `startedAt` it was
 * invoked with: one function may serve every invocation of a dispatch.
 */
export type Done = (outcome: Outcome.Outcome, entry: Entry, startedAt: number) => void

/** An invocation that did not complete synchronously. */
export interface Pending {
  /** Calls `f` once it has settled (at once if it has). An invocation has one listener. */
  readonly onSettled: (f: () => void) => void
  /** Settles it now: interrupted, or cancelled when it never heard the event. */
  readonly cancel: () => void
}

const nothingThen = (): Effect.Effect<void> => Effect.void

/**
 * Waits for pending invocations, with one callback each and no fiber, then
 * goes on with `then()` (made once they have settled: nothing by default).
 * No canceller: a wait that may be interrupted (a start dispatch, a
 * background consumer at shutdown, a dispatch by hand) cancels them in a
 * finalizer or continuation of its own, with {@link cancelAll}; a terminal
 * dispatch runs uninterruptibly, and its wait ends when they settle, which
 * their timeouts bound. (A canceller would cost every wait an interruption handler.)
 */
export const awaitAll = (
  pendings: ReadonlyArray<Pending>,
  then: () => Effect.Effect<void> = nothingThen
): Effect.Effect<void> =>
  asyncStep((resume) => {
    let left = pendings.length
    const one = () => {
      if (--left === 0) resume(then())
    }
    for (let i = 0; i < pendings.length; i++) pendings[i]!.onSettled(one)
  })

/**
 * Cancels pending invocations (their wait was interrupted), with the slot
 * queue held (see `Slots.holding`); those settled already are left as they are.
 */
export const cancelAll = (slots: Slots, pendings: ReadonlyArray<Pending>): void =>
  slots.holding(() => {
    for (let i = 0; i < pendings.length; i++) pendings[i]!.cancel()
  })

/** What both kinds of pending invocation share: the settled flag, and the one listener told of it. */
abstract class Settles implements Pending {
  settled = false
  private listener: (() => void) | undefined = undefined

  /** Tells the listener, once (`settled` is set by the subclass, before its outcome is reported). */
  protected notify(): void {
    const listener = this.listener
    this.listener = undefined
    if (listener !== undefined) listener()
  }

  onSettled(f: () => void): void {
    if (this.settled) f()
    else this.listener = f
  }

  abstract cancel(): void
}

/** Schedules run their steps here: a step needs no service but the `now` it is given. */
const stepRuntime = Runtime.defaultRuntime

/** Attempts that fail at once and retry without delay before the loop yields (so that a timeout can fire). */
const maxSyncAttempts = 64

/** The effect of a hook call; a throw is a defect of the handler. */
const call = (hook: Hook, arg: unknown): Effect.Effect<void, unknown> => {
  try {
    return hook(arg)
  } catch (defect) {
    return Exit.die(defect)
  }
}

/**
 * An effect as Effect makes it (members its interface does not export): the
 * kind of its step, and, for `Effect.sync(f)` (kind `Sync`), `f`.
 */
interface Primitive {
  readonly _op: string
  readonly effect_instruction_i0: () => unknown
}

/**
 * The effect as an `Exit` when it is one (a completed effect). Effect's
 * exits are its primitives of kinds `Success` and `Failure`, and only they
 * are: this is `Exit.isExit` without its test of a symbol property, which
 * V8 serves as a megamorphic lookup here (hooks return effects of many
 * shapes), about 230 instructions per invocation.
 */
const asExit = <A, E>(effect: Effect.Effect<A, E>): Exit.Exit<A, E> | undefined => {
  const op = (effect as unknown as Primitive)._op
  return op === "Success" || op === "Failure" ? effect as Exit.Exit<A, E> : undefined
}

/**
 * A synchronous step (`Effect.sync(f)`, as hooks that do work are most often
 * written) run here, as a fiber runs it: `f`'s value, or what it throws as a
 * defect (an interrupted exception as Effect's run loop takes it). The
 * commonest attempt that is not an exit, without `runNow`'s machinery.
 */
const syncNow = (effect: Effect.Effect<void, unknown>): Exit.Exit<void, unknown> => {
  try {
    ;(effect as unknown as Primitive).effect_instruction_i0()
    return Exit.void
  } catch (defect) {
    return thrown(defect)
  }
}

/**
 * An attempt begun (see {@link begin}): its exit, known on the spot; the
 * fiber it runs on; or the register function of the one `Async` step it
 * waits on.
 */
type Begun = Exit.Exit<void, unknown> | Fiber.RuntimeFiber<void, unknown> | Register

/**
 * Begins an attempt of `effect`. A completed effect (an `Exit`) is its own
 * exit. Otherwise its steps that need no fiber run here, as a fiber would
 * run them, as far as they go (see `runNow`: a synchronous step, a chain or
 * an `Effect.gen` of them, commits); their exit, when they got to the end,
 * is the attempt's. When what is left is one `Async` step, alone or inside
 * continuations, the attempt needs no fiber: it waits for that step's resume
 * (see `Invocation.awaitResume`), and goes on from there inside them (see
 * `waitOf`).
 * `Effect.promise(() => p)`, `Effect.tryPromise(() => p)` and `Effect.async`
 * without a canceller commit to one (the promise made, the register function
 * called); with an `AbortSignal` or a canceller they commit to more.
 * Whatever else is left runs on a hook fiber, started at once, which gives
 * the exit at once when it completes without suspending.
 *
 * Nothing runs here when the attempt's fiber would have a parent span (the
 * handler's span, or one in its context): a defect made on a fiber carries
 * that span. No `Async` step waits with no fiber for a caller on a scheduler
 * of its own (see `Caller.fiberless`). One thing tells an attempt run so
 * from one on a fiber: `Fiber.getCurrentFiber` in its steps gives the
 * caller's fiber (they run on the dispatching fiber's stack), or, in those
 * after a wait, none.
 */
const begin = (
  effect: Effect.Effect<void, unknown>,
  entry: Entry,
  caller: Caller,
  span: Tracer.AnySpan | undefined
): Begun => {
  // The kind of step, read once per effect (a megamorphic load where hooks return effects of many shapes).
  const op = (effect as unknown as Primitive)._op
  if (op === "Success" || op === "Failure") return effect as Exit.Exit<void, unknown>
  let next = effect
  if (span === undefined && !entry.spanInContext) {
    if (op === "Sync") return syncNow(effect)
    next = runNow(effect)
    const left = (next as unknown as Primitive)._op
    if (left === "Success" || left === "Failure") return next as Exit.Exit<void, unknown>
    if (caller.fiberless()) {
      const register = waitOf(next)
      if (register !== undefined) return register
    }
  }
  const refs = hookRefsOf(caller, contextOf(entry, span), span === undefined ? entry.hookRefs : undefined)
  const fiber = startHookFiber(caller.fiberClass(), refs, next)
  return fiber.unsafePoll() ?? fiber
}

/** The outcome of one schedule step: the next state, the output, the decision. */
type Step = Exit.Exit<readonly [unknown, unknown, ScheduleDecision.ScheduleDecision], unknown>

/** The context of a hook's fibers: the handler's, with the call's span as parent when traced. */
const contextOf = (entry: Entry, span: Tracer.AnySpan | undefined): Context.Context<never> =>
  span === undefined ? entry.context : Context.add(entry.context, Tracer.ParentSpan, span)

/** An invocation whose first attempt did not succeed on the spot: see the module's comment. */
class Invocation extends Settles implements Timed {
  attempts = 1
  /** An attempt ran to its end (the hook processed the event): a cancellation is no longer "did not hear it". */
  heard = false
  /** Counts as in flight, under its timeout. */
  suspended = false
  running: Fiber.RuntimeFiber<void, unknown> | undefined = undefined
  /** Its timeout on a clock other than the live one (else it is in the handler's `deadlines`). */
  cancelTimer: (() => void) | undefined = undefined
  deadline = 0
  previousTimed: Timed | undefined = undefined
  nextTimed: Timed | undefined = undefined
  timed = false
  cancelDelay: (() => void) | undefined = undefined
  scheduleState: unknown = undefined
  private runtimeMemo: Runtime.Runtime<never> | undefined = undefined

  constructor(
    readonly state: State,
    readonly entry: Entry,
    readonly phase: Phase,
    readonly hook: Hook,
    readonly arg: unknown,
    readonly caller: Caller,
    readonly span: Tracer.AnySpan | undefined,
    readonly startedAt: number,
    readonly done: Done
  ) {
    super()
  }

  /** The runtime of its timer fibers (off the live clock) and retry delays: the handler's context, the caller's refs. */
  runtime(): Runtime.Runtime<never> {
    return this.runtimeMemo ??= Runtime.make({
      context: contextOf(this.entry, this.span),
      fiberRefs: this.caller.refs(),
      runtimeFlags: Runtime.defaultRuntimeFlags
    })
  }

  /** Goes on from an attempt begun (see {@link begin}), synchronously as far as it goes. */
  go(begun: Begun): void {
    let attemptsNow = 0
    for (;;) {
      if (typeof begun === "function") {
        const now = this.awaitResume(begun)
        if (now === undefined) return
        // Resumed while registering: the attempt goes on here, in this loop.
        begun = begin(now, this.entry, this.caller, this.span)
        continue
      }
      const exit = asExit(begun)
      if (exit === undefined) return this.awaitAttempt(begun as Fiber.RuntimeFiber<void, unknown>)
      let next = this.afterAttempt(exit)
      if (next === undefined) return
      if (++attemptsNow >= maxSyncAttempts) next = Effect.zipRight(Effect.yieldNow(), next)
      begun = begin(next, this.entry, this.caller, this.span)
    }
  }

  /** Runs attempts from `effect` on, synchronously as far as they go. */
  run(effect: Effect.Effect<void, unknown>): void {
    this.go(begin(effect, this.entry, this.caller, this.span))
  }

  /** An attempt suspended on `fiber`: from now on the invocation is pending, and goes on when the fiber ends. */
  private awaitAttempt(fiber: Fiber.RuntimeFiber<void, unknown>): void {
    this.running = fiber
    this.suspend()
    fiber.addObserver((exit) => this.onAttemptExit(exit))
  }

  /**
   * An attempt waits on an `Async` step, with no fiber: `register` is called
   * with a resume of which the first call counts, as a fiber's. Resumed while
   * registering, it returns the effect resumed with, with which the attempt
   * goes on at once (in the caller's loop, which bounds the attempts made
   * without yielding). Else the invocation is pending from now on, and goes
   * on from the effect it is resumed with, in a microtask (see
   * `State.resumes`). Settled before that (timed out, cancelled), it drops
   * the effect: a fiber interrupted on such a step (it has no canceller)
   * ends at once, and drops it too.
   */
  private awaitResume(register: Register): Effect.Effect<void, unknown> | undefined {
    let registering = true
    let resumed = false
    let now: Effect.Effect<void, unknown> | undefined
    const resume = (effect: Effect.Effect<void, unknown>): void => {
      if (resumed) return
      resumed = true
      if (registering) now = effect
      else {
        this.state.resumes.push(() => {
          // Settled meanwhile (timed out, cancelled): the effect it was resumed with is dropped.
          if (!this.settled) this.run(effect)
        })
      }
    }
    try {
      register(resume)
    } catch (defect) {
      resume(Exit.die(defect))
    }
    registering = false
    if (now === undefined) this.suspend()
    return now
  }

  /** An attempt's fiber ended (its observer: made per fiber, not per invocation, as most invocations have none). */
  private onAttemptExit(exit: Exit.Exit<void, unknown>): void {
    if (this.settled) return
    const next = this.afterAttempt(exit)
    if (next !== undefined) this.run(next)
  }

  /** Settles on success or a final failure; else returns the next attempt, or `undefined` while a step or delay runs. */
  private afterAttempt(exit: Exit.Exit<void, unknown>): Effect.Effect<void, unknown> | undefined {
    this.running = undefined
    this.heard = true
    if (Exit.isSuccess(exit)) {
      this.settle(Outcome.succeeded(this.attempts))
      return undefined
    }
    const schedule = this.entry.schedule
    if (schedule === undefined || !Outcome.isRetriable(exit.cause)) {
      this.settle(Outcome.classify(this.entry.name, this.phase, exit.cause, this.attempts))
      return undefined
    }
    const error = Option.getOrUndefined(Cause.failureOption(exit.cause))
    const now = this.caller.clock.unsafeCurrentTimeMillis()
    // Run on the spot as far as it needs no fiber (the schedules handlers are
    // given are made of pure steps); what is left, on a fiber.
    const step = runNow(schedule.step(now, error, this.scheduleState === undefined ? schedule.initial : this.scheduleState))
    let stepped: Step | null = asExit(step) ?? null
    if (stepped === null) {
      const fiber = Runtime.runFork(stepRuntime)(step)
      stepped = fiber.unsafePoll()
      if (stepped === null) {
        this.suspend()
        fiber.addObserver((stepExit) => {
          if (this.settled) return
          const next = this.afterStep(stepExit, exit.cause, now)
          if (next !== undefined) this.run(next)
        })
        return undefined
      }
    }
    return this.afterStep(stepped!, exit.cause, now)
  }

  /** The schedule's decision: give up, retry now, or retry after a delay. */
  private afterStep(
    stepped: Step,
    cause: Cause.Cause<unknown>,
    now: number
  ): Effect.Effect<void, unknown> | undefined {
    if (Exit.isFailure(stepped) || ScheduleDecision.isDone(stepped.value[2])) {
      this.settle(Outcome.classify(this.entry.name, this.phase, cause, this.attempts))
      return undefined
    }
    this.scheduleState = stepped.value[0]
    const delay = Intervals.start(stepped.value[2].intervals) - now
    if (delay <= 0) return this.nextAttempt()
    this.suspend()
    this.cancelDelay = startTimer(Duration.millis(delay), this.runtime(), () => {
      this.cancelDelay = undefined
      if (!this.settled) this.run(this.nextAttempt())
    })
    return undefined
  }

  private nextAttempt(): Effect.Effect<void, unknown> {
    this.attempts++
    return call(this.hook, this.arg)
  }

  /** From now on it is pending: in flight, under its timeout. */
  private suspend(): void {
    if (this.suspended) return
    this.suspended = true
    this.entry.stats.inFlight++
    activeHook.update(this.state.slots.active)
    const deadlines = this.entry.deadlines
    if (deadlines === undefined) return
    if (this.caller.clock === liveClock) {
      deadlines.add(this)
    } else {
      // With a zero timeout the timer may fire at once: `settle` is ready for it.
      this.cancelTimer = startTimer(this.entry.timeout, this.runtime(), () => this.expire())
    }
  }

  expire(): void {
    this.settle(Outcome.timedOut(this.entry.name, this.phase, this.entry.timeout, this.attempts))
  }

  settle(outcome: Outcome.Outcome): void {
    if (this.settled) return
    this.settled = true
    if (this.timed) this.entry.deadlines!.remove(this)
    if (this.cancelTimer !== undefined) this.cancelTimer()
    if (this.cancelDelay !== undefined) this.cancelDelay()
    const running = this.running
    if (running !== undefined && running.unsafePoll() === null) {
      // Given up on (timed out, cancelled): interrupted, and no longer
      // holding its slot, so that one stuck hook cannot take the global
      // bound from every other handler. A hook that ignores the
      // interruption goes on running: it is counted as overrunning in
      // `health` until it really ends.
      running.unsafeInterruptAsFork(FiberId.none)
      if (running.unsafePoll() === null) {
        const stats = this.entry.stats
        stats.overrunning++
        running.addObserver(() => stats.overrunning--)
      }
    }
    if (this.suspended) this.entry.stats.inFlight--
    this.done(outcome, this.entry, this.startedAt)
    // The dispatch waiting for it is woken before the slot goes to the next
    // invocation in line: at one instant, the waiting dispatch goes on first.
    this.notify()
    this.state.slots.release()
    if (this.suspended) activeHook.update(this.state.slots.active)
  }

  cancel(): void {
    this.settle(
      this.heard
        ? Outcome.interrupted(this.entry.name, this.phase, this.attempts)
        : Outcome.cancelled(this.entry.name, this.phase, this.attempts)
    )
  }
}

/** An invocation holding a slot; `undefined` when it completed synchronously (`done` was called). */
const startWithSlot = (
  state: State,
  entry: Entry,
  phase: Phase,
  hook: Hook,
  arg: unknown,
  caller: Caller,
  span: Tracer.AnySpan | undefined,
  startedAt: number,
  done: Done
): Pending | undefined => {
  const begun = begin(call(hook, arg), entry, caller, span)
  // A success (Effect's successful exits are its steps of kind `Success`; a fiber's kind is `Commit`).
  if (typeof begun !== "function" && (begun as unknown as Primitive)._op === "Success") {
    // The commonest case of all, without an invocation object.
    state.slots.release()
    done(Outcome.SUCCESS, entry, startedAt)
    return undefined
  }
  const invocation = new Invocation(state, entry, phase, hook, arg, caller, span, startedAt, done)
  invocation.go(begun)
  return invocation.settled ? undefined : invocation
}

/** An invocation waiting for a slot. */
class Queued extends Settles {
  started: Pending | undefined = undefined
  handle: QueuedStart | undefined = undefined

  constructor(
    readonly state: State,
    readonly entry: Entry,
    readonly phase: Phase,
    readonly startedAt: number,
    readonly done: Done
  ) {
    super()
  }

  readonly finish = (outcome: Outcome.Outcome): void => {
    this.done(outcome, this.entry, this.startedAt)
    this.settled = true
    this.notify()
  }

  cancel(): void {
    // Started and still pending: cancel it. Started and done at once: nothing to cancel.
    // Still queued: it never runs.
    if (this.started !== undefined) this.started.cancel()
    else if (this.handle !== undefined && this.state.slots.cancel(this.handle)) {
      this.finish(Outcome.cancelled(this.entry.name, this.phase, 0))
    }
  }
}

/**
 * One invocation from start to outcome. Returns `undefined` when it
 * completed synchronously (`done` was called), else the pending invocation.
 */
export const invoke = (
  state: State,
  entry: Entry,
  phase: Phase,
  hook: Hook,
  arg: unknown,
  caller: Caller,
  span: Tracer.AnySpan | undefined,
  startedAt: number,
  done: Done
): Pending | undefined => {
  if (state.slots.tryTake()) return startWithSlot(state, entry, phase, hook, arg, caller, span, startedAt, done)
  if (runsHookOf(caller.fiber, state)) {
    // A call made by a hook (a handler that calls a model itself): the hook
    // waiting for it holds a slot, so a wait for one here could last until
    // that hook's timeout, and with every slot so held, nothing would move.
    // It runs at once, counted in flight, past the bound.
    state.slots.takeBeyondBound()
    return startWithSlot(state, entry, phase, hook, arg, caller, span, startedAt, done)
  }
  // Saturated: queue the start until a slot frees up; no fiber waits for it.
  // The caller's refs are read now: by the time it starts, the caller has moved on.
  caller.refs()
  const queued = new Queued(state, entry, phase, startedAt, done)
  queued.handle = state.slots.enqueue(() => {
    queued.started = startWithSlot(state, entry, phase, hook, arg, caller, span, startedAt, queued.finish)
  })
  return queued.settled ? undefined : queued
}

/**
 * {@link invoke}, in a child span of the call's span (`callback <handler>
 * <phase>`) when a real tracer is installed; the hook's own spans nest in it.
 */
export const invokeTraced = (
  state: State,
  entry: Entry,
  phase: Phase,
  hook: Hook,
  arg: CallbackEvent | ReadonlyArray<CallbackEvent>,
  caller: Caller,
  span: Tracer.AnySpan | undefined,
  tracing: Tracing | undefined,
  startedAt: number,
  done: Done
): Pending | undefined => {
  if (tracing === undefined) return invoke(state, entry, phase, hook, arg, caller, span, startedAt, done)
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
  if (Array.isArray(arg)) handlerSpan.attribute("callback.batch_size", arg.length)
  else handlerSpan.attribute("llm.call_id", (arg as CallbackEvent).call.callId)
  return invoke(state, entry, phase, hook, arg, caller, handlerSpan, startedAt, (outcome) => {
    handlerSpan.attribute("callback.status", outcome.status)
    handlerSpan.attribute("callback.attempts", outcome.attempts)
    handlerSpan.end(
      tracing.clock.unsafeCurrentTimeNanos(),
      outcome.error === undefined ? Exit.void : Exit.fail(outcome.error)
    )
    done(outcome, entry, startedAt)
  })
}
