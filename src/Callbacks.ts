/**
 * Instrumenting LLM calls: `instrument` wraps any effect that calls a model so
 * that the registered handlers hear `start`, then exactly one of `end` /
 * `error`, derived from the call's `Exit`.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { dual } from "effect/Function"
import * as Tracer from "effect/Tracer"
import { currentCallContext } from "./CallContext.js"
import { Dispatcher } from "./Dispatcher.js"
import type * as Dispatch from "./Dispatcher.js"
import type {
  CallInfo,
  ChunkEvent,
  EndEvent,
  ErrorEvent,
  LlmResponse,
  StartEvent,
  ToolEndEvent,
  ToolErrorEvent,
  ToolStartEvent
} from "./Events.js"
import { currentGate, type Gate, type Ticket } from "./internal/admission.js"
import { enclosingOf, type ParentStack, parentsOf, setFiberRef } from "./internal/parents.js"
import * as CallSpan from "./internal/callSpan.js"
import { enrichEnd, enrichError } from "./internal/enrich.js"
import {
  type CallEvents,
  type CallOptions,
  type ToolEvents,
  endEvent,
  errorEvent,
  makeCallEvents,
  makeToolEvents,
  randomCallId,
  type ToolOptions,
  toolTerminal
} from "./internal/callEvents.js"
import { decodeResponseLenient } from "./internal/decode.js"
import { currentOperation } from "./internal/operation.js"
import { type Restore, uninterruptibleMask } from "./internal/steps.js"
import { CurrentTokenCounter } from "./TokenCounter.js"
import { type Calls, CallsTypeId, type CallToken } from "./internal/dispatch/contract.js"

export {
  /**
   * @since 0.1.0
   * @category models
   */
  type CallContext,
  /**
   * @since 0.1.0
   * @category fiber refs
   */
  currentCallContext,
  /**
   * @since 0.1.0
   * @category combinators
   */
  popParent,
  /**
   * @since 0.1.0
   * @category combinators
   */
  pushParent,
  /**
   * @since 0.1.0
   * @category combinators
   */
  withCallContext,
  /**
   * @since 0.3.0
   * @category combinators
   */
  withOperation,
  /**
   * @since 0.1.0
   * @category combinators
   */
  withParent
} from "./CallContext.js"

/**
 * What `instrument` needs to know about a call.
 *
 * @since 0.1.0
 * @category models
 */
export interface InstrumentOptions<A> extends CallOptions {
  /** Reads the response out of the call's result; by default the result itself is the response. */
  readonly response?: ((a: A) => LlmResponse | unknown) | undefined
}

/**
 * A call in progress, for integrations that cannot express the call as one
 * effect (streams): `start` has been dispatched; `finish` dispatches the
 * terminal event exactly once.
 *
 * @since 0.1.0
 * @category models
 */
export interface ActiveCall {
  readonly call: CallInfo
  /**
   * The call's span, when a tracer other than Effect's default is installed;
   * ended by `finish`. Run the call's work under it
   * (`Effect.withParentSpan(span)`) so that its own spans nest.
   */
  readonly span: Tracer.Span | undefined
  readonly startReport: Dispatch.DispatchReport
  /** Milliseconds since the call started, from `Clock`. */
  readonly elapsed: Effect.Effect<number>
  /** Milliseconds since the call started, read from the call's `Clock` at once (for a stream's own loop). */
  readonly elapsedMillis: () => number
  /**
   * Whether some handler of the call hears stream chunks: when it is false,
   * {@link ActiveCall.chunk} builds no event (it only notes the time between
   * chunks for the terminal event).
   */
  readonly hearsChunks: boolean
  /**
   * Offers one streamed delta (text, or reasoning) to the handlers' chunk
   * hooks, synchronously, without ever waiting (see `Handler`'s
   * `onLlmChunk`). Numbered in call order, from 0. Nothing after `finish`.
   * Call it for every delta even when `hearsChunks` is false: the time
   * between chunks goes to the terminal event (`chunkIntervalsMs`).
   */
  readonly chunk: (kind: ChunkEvent["kind"], delta: string) => void
  /**
   * Dispatches end (success) or error (failure) once; later calls do nothing.
   * It runs whole even when its caller is interrupted, and then ends the
   * call's budget hold, if `begin` was admitted by one (a failure releases it;
   * a success leaves it to its token record).
   * `response` is the response of a success, or what a failed or cut-off
   * call produced before it ended: its usage, when absent, is then counted
   * with the token counter in force (`TokenCounter.CurrentTokenCounter`) and
   * flagged estimated.
   */
  readonly finish: <A, E>(
    exit: Exit.Exit<A, E>,
    options?: { readonly response?: unknown; readonly timeToFirstTokenMs?: number | undefined }
  ) => Effect.Effect<Option.Option<Dispatch.DispatchReport>>
}

/**
 * The `gen_ai.operation.name` of a call (OpenTelemetry GenAI conventions):
 * its `metadata["gen_ai.operation.name"]` when that is a non-empty string,
 * else `"chat"`.
 *
 * @since 0.1.0
 * @category getters
 */
export const operationName: (call: CallInfo) => string = CallSpan.operationName

type AnyFiber = Fiber.RuntimeFiber<unknown, unknown>

/** An instrumented effect as a region's `restore` gives it back (see {@link restorable}). */
type Restored<A, E, R> = (restore: Restore) => Effect.Effect<A, E, R>

/**
 * `self` as a region's `restore` gives it back. Under an interruptible caller
 * (the commonest: `restore` is then `Effect.interruptible`) that effect is the
 * same for every run of `self`: made once here, not once per run (a step and
 * its closure, about 130 bytes a call).
 */
const restorable = <A, E, R>(self: Effect.Effect<A, E, R>): Restored<A, E, R> => {
  const interruptibly = Effect.interruptible(self)
  return (restore) => restore === Effect.interruptible ? interruptibly : restore(self)
}

const noDispatcher = (): undefined => undefined

/** The most chunk intervals a terminal event carries. */
const maxIntervals = 10_000

/** Whether the notice of calls run without a dispatcher was logged (see {@link noticeBare}). */
const bareNotice = globalValue(Symbol.for("effect-llm-callbacks/Callbacks/bareNotice"), () => ({ logged: false }))

/**
 * `self`, after the debug line saying that a call (`what`, named by `name`)
 * runs bare, no dispatcher being in its context: logged once per process (a
 * flag shared by every copy of this module), the first time it happens where
 * debug logs are on. Nothing is built otherwise.
 */
const noticeBare = <A, E, R>(
  fiber: AnyFiber,
  self: Effect.Effect<A, E, R>,
  what: string,
  name: string,
  name2 = ""
): Effect.Effect<A, E, R> => {
  if (bareNotice.logged || LogLevel.greaterThan(fiber.getFiberRef(FiberRef.currentMinimumLogLevel), LogLevel.Debug)) {
    return self
  }
  bareNotice.logged = true
  return Effect.zipRight(
    Effect.logDebug(
      `effect-llm-callbacks: ${what} (${name2 === "" ? name : `${name} ${name2}`}) ran without a Dispatcher in its context, so no handler hears ` +
        "it: provide Dispatcher.layer() and handler layers (Dispatcher.toLayer) to the effect that makes it " +
        "(logged once per process)"
    ),
    self
  )
}

/** The dispatcher's contract with `instrument`, when a dispatcher is in context. */
const lookupCalls = (context: Context.Context<never>): Calls | undefined =>
  Context.getOrElse(context, Dispatcher, noDispatcher)?.[CallsTypeId]

/**
 * Starts a call by hand: dispatches `start` and returns an {@link ActiveCall}
 * whose `finish` dispatches the terminal event. `instrument` is built on the
 * same pieces; prefer it whenever the call is one effect. Returns `None` when
 * no dispatcher is in context (under `Budget.guard` the call is admitted all
 * the same: with no `finish`, its hold ends by its TTL).
 *
 * Under `Budget.guard` the call is admitted first (a refusal fails `begin`,
 * and no handler hears of the call); its hold ends with `finish`. A caller
 * interrupted while `start` is dispatched gets no `ActiveCall`: the handlers
 * that heard `start` hear the call's error (interrupted) at once, as with
 * `instrument`.
 *
 * `interruptible: true` is for a stream's acquire (`Stream.acquireRelease`,
 * `Channel.acquireUseRelease`), which runs uninterruptibly: the admission
 * and the start dispatch may then be interrupted all the same, so a consumer
 * interrupted meanwhile (a client gone) stops at once instead of waiting for
 * the start handlers, up to their timeout; `begin` then fails with the
 * interruption and nothing is left to finish. Otherwise they are as
 * interruptible as the caller is.
 *
 * @since 0.1.0
 * @category constructors
 */
export const begin = (
  options: Omit<InstrumentOptions<unknown>, "response">,
  behaviour?: { readonly interruptible?: boolean | undefined }
): Effect.Effect<Option.Option<ActiveCall>> =>
  Effect.withFiberRuntime((fiber) => {
    const gate = fiber.getFiberRef(currentGate)
    const calls = lookupCalls(fiber.currentContext)
    if (calls === undefined) {
      const bare = gate === undefined ? Effect.succeedNone : admitUnfinished(fiber as AnyFiber, gate, options)
      return noticeBare(fiber as AnyFiber, bare, "the call begun by hand", options.provider, options.model)
    }
    const token = calls.begin()
    const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
    const startedAt = clock.unsafeCurrentTimeMillis()
    const events = makeCallEvents(
      options,
      fiber.getFiberRef(currentCallContext),
      startedAt,
      enclosingOf(fiber as AnyFiber),
      calls.nextCallId,
      fiber.getFiberRef(currentOperation)
    )
    const context = fiber.currentContext
    const span = CallSpan.startSpan(fiber as AnyFiber, events.call, clock, undefined, events.start.params)
    const conventions = span === undefined ? undefined : CallSpan.conventionsOf(fiber as AnyFiber)
    const timing = span !== undefined && fiber.getFiberRef(FiberRef.currentTracerTimingEnabled)
    const underSpan = <X>(effect: Effect.Effect<X>): Effect.Effect<X> =>
      span === undefined ? effect : Effect.withParentSpan(effect, span)
    let finished = false
    const sink = calls.chunks(token, fiber as AnyFiber, span)
    let chunks = 0
    let previous = 0
    // The time between chunks is kept for the terminal event (no event is built per chunk for it).
    const intervals: Array<number> = []
    const chunk = (kind: ChunkEvent["kind"], delta: string) => {
      if (finished) return
      const elapsedMs = clock.unsafeCurrentTimeMillis() - startedAt
      const index = chunks++
      if (index > 0 && intervals.length < maxIntervals) intervals.push(elapsedMs - previous)
      if (sink !== undefined) {
        sink({ _tag: "Chunk", call: events.call, index, kind, delta, elapsedMs, intervalMs: elapsedMs - previous })
      }
      previous = elapsedMs
    }
    const terminal = (
      exit: Exit.Exit<unknown, unknown>,
      finishOptions: Parameters<ActiveCall["finish"]>[1]
    ): Effect.Effect<Option.Option<Dispatch.DispatchReport>> => {
      const durationMs = clock.unsafeCurrentTimeMillis() - startedAt
      const ttft = finishOptions?.timeToFirstTokenMs
      const dispatch = (terminal: EndEvent | ErrorEvent) => {
        const event = intervals.length === 0 ? terminal : { ...terminal, chunkIntervalsMs: intervals }
        if (span !== undefined) CallSpan.endSpan(timing, span, event, exit, clock, conventions!)
        return Effect.asSome(underSpan(calls.dispatch(token, event)))
      }
      if (Exit.isSuccess(exit)) {
        const response = finishOptions !== undefined && "response" in finishOptions
          ? finishOptions.response
          : exit.value
        const completed = completeEnd(context, events, endEvent(events, response, durationMs, ttft))
        return completed instanceof Counted ? Effect.flatMap(completed.event, dispatch) : dispatch(completed)
      }
      const partial = finishOptions?.response === undefined
        ? undefined
        : decodeResponseLenient(finishOptions.response).response
      if (partial === undefined || partial.usage !== undefined) {
        return dispatch(enrichError(context, errorEvent(events, exit.cause, durationMs, ttft, partial)))
      }
      return Effect.flatMap(
        estimateUsage(context, events.call.model, events.start.messages, partial),
        (response) => dispatch(enrichError(context, errorEvent(events, exit.cause, durationMs, ttft, response)))
      )
    }
    // Once, and whole: an interrupted caller still dispatches the terminal event and ends the budget's hold.
    const finishing = (ticket: Ticket | undefined): ActiveCall["finish"] => (exit, finishOptions) =>
      Effect.uninterruptible(Effect.suspend(() => {
        if (finished) return Effect.succeedNone
        finished = true
        const dispatched = terminal(exit, finishOptions)
        return ticket === undefined ? dispatched : Effect.ensuring(dispatched, ticket.close(exit))
      }))
    // What may be interrupted: as interruptible as the caller, or at all times.
    const interruptibly = (restore: Restore): Restore => behaviour?.interruptible === true ? Effect.interruptible : restore
    // Run in a region made uninterruptible by the caller: only the start dispatch may be interrupted.
    const start = (restore: Restore, ticket: Ticket | undefined): Effect.Effect<Option.Option<ActiveCall>> => {
      const finish = finishing(ticket)
      return Effect.matchCauseEffect(interruptibly(restore)(underSpan(calls.dispatch(token, events.start))), {
        // Interrupted while `start` was dispatched: whoever heard it hears the call's end now.
        onFailure: (cause) => Effect.zipRight(finish(Exit.failCause(cause)), Effect.failCause(cause)),
        onSuccess: (startReport) =>
          Effect.succeed(Option.some<ActiveCall>({
            call: events.call,
            span,
            startReport,
            elapsed: Effect.sync(() => clock.unsafeCurrentTimeMillis() - startedAt),
            elapsedMillis: () => clock.unsafeCurrentTimeMillis() - startedAt,
            hearsChunks: sink !== undefined,
            chunk,
            finish
          }))
      })
    }
    if (gate === undefined) return uninterruptibleMask((restore) => start(restore, undefined))
    return uninterruptibleMask((restore) =>
      Effect.flatMap(
        admission(interruptibly(restore)(gate.admit(events.start)), span && endRefused(fiber as AnyFiber, span, clock)),
        (ticket) => start(restore, ticket)
      )
    )
  })

/**
 * An end event that takes an effect to build (its usage counted): told
 * apart from an event by its class, where `Effect.isEffect` on every
 * terminal event was a property test of many shapes at one place (about 200
 * instructions).
 */
class Counted {
  constructor(readonly event: Effect.Effect<EndEvent>) {}
}

/**
 * The end event as handlers hear it: when the provider reported no usage and
 * a token counter is in force, the usage is counted first (the only case that
 * takes an effect, returned as `Counted`); then the steps of `enrich` (the cost).
 */
const completeEnd = (
  context: Context.Context<never>,
  events: { readonly call: CallInfo; readonly start: StartEvent },
  ended: EndEvent
): EndEvent | Counted =>
  ended.response.usage === undefined && ended.outputIssues === undefined &&
    Context.get(context, CurrentTokenCounter) !== undefined
    ? new Counted(Effect.map(
      estimateUsage(context, events.call.model, events.start.messages, ended.response),
      (response) => enrichEnd(context, { ...ended, response })
    ))
    : enrichEnd(context, ended)

/**
 * Dispatches a run's terminal event on its fiber and gives back the run's
 * exit. With a span: the span is ended first, and the fiber's context (where
 * the span was set in place) is restored once the dispatch is done.
 */
const closeRun = <A, E>(
  calls: Calls,
  token: CallToken,
  fiber: AnyFiber,
  event: EndEvent | ErrorEvent | ToolEndEvent | ToolErrorEvent,
  exit: Exit.Exit<A, E>,
  span: Tracer.Span | undefined,
  clock: Clock.Clock,
  outerContext: Context.Context<never>
): Effect.Effect<A, E> => {
  if (span === undefined) {
    const rest = calls.run(token, event, fiber)
    return rest === undefined ? exit : Effect.zipRight(rest, exit)
  }
  CallSpan.endSpan(fiber.getFiberRef(FiberRef.currentTracerTimingEnabled), span, event, exit, clock, CallSpan.conventionsOf(fiber))
  const leave = () => setFiberRef(fiber, FiberRef.currentContext, outerContext)
  const rest = calls.run(token, event, fiber)
  if (rest === undefined) {
    leave()
    return exit
  }
  return Effect.zipRight(Effect.ensuring(rest, Effect.sync(leave)), exit)
}

/**
 * The response of a call whose provider reported no usage (it was cut off, or the provider reports none), with
 * its usage counted by the token counter in force (prompt, and the output
 * received) and flagged estimated; as it is when no counter is in force or
 * the count fails.
 */
const estimateUsage = (
  context: Context.Context<never>,
  model: string,
  messages: StartEvent["messages"],
  response: LlmResponse
): Effect.Effect<LlmResponse> => {
  const counter = Context.get(context, CurrentTokenCounter)
  if (counter === undefined) return Effect.succeed(response)
  const model_ = response.model ?? model
  return Effect.zipWith(
    counter.countMessages(model_, messages),
    response.reasoning === undefined
      ? counter.countText(model_, response.content)
      : Effect.zipWith(counter.countText(model_, response.content), counter.countText(model_, response.reasoning), (a, b) => a + b),
    (promptTokens, completionTokens): LlmResponse => ({
      ...response,
      usage: { promptTokens, completionTokens, totalTokens: promptTokens + completionTokens, estimated: true }
    })
  ).pipe(Effect.orElseSucceed(() => response))
}

/**
 * One instrumented run (a model call or a tool run), from its start dispatch
 * to its terminal one: what its continuations need, held in one object (its
 * steps are methods, not a closure each).
 */
abstract class InstrumentedRun<
  A,
  E,
  Events extends { readonly call: CallInfo; readonly start: StartEvent | ToolStartEvent },
  Options
> {
  /** Runs made inside it see it as their parent (see `run`). */
  private entered = false
  /** The fiber's context when the run is entered: set again once its terminal event is dispatched. */
  outerContext: Context.Context<never> = Context.empty()

  constructor(
    readonly calls: Calls,
    readonly token: CallToken,
    readonly events: Events,
    readonly options: Options,
    readonly clock: Clock.Clock,
    readonly parents: ParentStack,
    readonly span: Tracer.Span | undefined
  ) {}

  /** Its terminal event for `exit`; `Counted` when building it takes an effect (a token count). */
  protected abstract terminalEvent(
    exit: Exit.Exit<A, E>,
    durationMs: number
  ): EndEvent | ErrorEvent | ToolEndEvent | ToolErrorEvent | Counted

  /**
   * Its continuations (`matchCauseEffect` takes this object as its options).
   * Nothing the run keeps while the call runs (this object, the closures on
   * the fiber's stack) refers to the fiber: a reference to the fiber from its
   * own stack made V8 allocate every call's fiber in the old generation
   * ("pretenuring"; docs/benchmarks.md), which made a call with no-op
   * handlers 30-40% slower. A continuation runs on its fiber, which Effect's
   * runtime makes the current one (`Fiber.getCurrentFiber`) while it
   * evaluates it: the terminal step takes it from there.
   */
  readonly onFailure = (cause: Cause.Cause<E>): Effect.Effect<A, E> => this.onItsFiber(Exit.failCause(cause))
  readonly onSuccess = (value: A): Effect.Effect<A, E> => this.onItsFiber(Exit.succeed(value))

  private onItsFiber(exit: Exit.Exit<A, E>): Effect.Effect<A, E> {
    const current = Fiber.getCurrentFiber()
    return Option.isSome(current)
      ? this.terminal(current.value, exit)
      : Effect.withFiberRuntime((fiber) => this.terminal(fiber as AnyFiber, exit))
  }

  /**
   * Dispatches `start` on `fiber` (the current one), then runs `self`, in a
   * region made uninterruptible by the caller, whose `restore` gives the
   * start dispatch's waits and `self` the caller's interruptibility. The
   * terminal event follows whatever happens, interruption while `start` is
   * dispatched included (the run never runs then, but the handlers that
   * heard `start` still hear exactly one terminal event). The run's span is
   * set on the fiber here, not before (a call a gate refuses never enters,
   * and leaves the fiber's context as it was): it is the parent of everything
   * inside the run and of the handler invocations; `outerContext` is restored
   * once the terminal event is dispatched.
   */
  enter<R>(self: Restored<A, E, R>, restore: Restore, fiber: AnyFiber): Effect.Effect<A, E, R> {
    this.outerContext = fiber.currentContext
    const span = this.span
    if (span !== undefined) setFiberRef(fiber, FiberRef.currentContext, Context.add(this.outerContext, Tracer.ParentSpan, span))
    const started = this.calls.run(this.token, this.events.start, fiber)
    // The start dispatch completed synchronously (the common case).
    if (started === undefined) return this.run(self(restore))
    // It waits: settled here, whichever way it ends (these continuations run even when it is interrupted).
    return Effect.matchCauseEffect(restore(started), {
      onFailure: (cause) => {
        this.calls.settleStart(this.token, true)
        return this.onFailure(cause)
      },
      onSuccess: () => {
        this.calls.settleStart(this.token, false)
        return this.run(self(restore))
      }
    })
  }

  /** {@link enter}, in a region of its own (a call under an admission gate: once admitted). */
  region<R>(self: Restored<A, E, R>): Effect.Effect<A, E, R> {
    return uninterruptibleMask((restore) => onCurrentFiber((fiber) => this.enter(self, restore, fiber)))
  }

  /**
   * Enters the run and runs it: the instrumented calls made inside it (a
   * tool's sub-agent's model calls) see it as their parent. The region it
   * runs in is uninterruptible and `terminal` always runs, so leaving is
   * guaranteed without a second acquire/release on the hot path.
   */
  private run<R>(restored: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> {
    this.parents.push(this.events.call.callId)
    this.entered = true
    return Effect.matchCauseEffect(restored, this)
  }

  /** Dispatches the terminal event of `exit` on `fiber` (the run's), then gives `exit` back. */
  private terminal(fiber: AnyFiber, exit: Exit.Exit<A, E>): Effect.Effect<A, E> {
    const span = this.span
    if (span !== undefined && Exit.isFailure(exit)) {
      const cause = CallSpan.uncapture(exit.cause, span)
      if (cause !== exit.cause) exit = Exit.failCause(cause)
    }
    // Leave the run (see `run`).
    if (this.entered) this.parents.remove(this.events.call.callId)
    const event = this.terminalEvent(exit, this.clock.unsafeCurrentTimeMillis() - this.events.call.startedAt)
    if (!(event instanceof Counted)) return this.dispatchTerminal(fiber, event, exit)
    const final = exit
    return Effect.flatMap(event.event, (event) => this.dispatchTerminal(fiber, event, final))
  }

  private dispatchTerminal(
    fiber: AnyFiber,
    event: EndEvent | ErrorEvent | ToolEndEvent | ToolErrorEvent,
    exit: Exit.Exit<A, E>
  ): Effect.Effect<A, E> {
    return closeRun(this.calls, this.token, fiber, event, exit, this.span, this.clock, this.outerContext)
  }
}

/** A model call: its terminal event is `end` (the response read, usage counted when missing, cost) or `error`. */
class InstrumentedCall<A, E> extends InstrumentedRun<A, E, CallEvents, InstrumentOptions<A>> {
  protected terminalEvent(exit: Exit.Exit<A, E>, durationMs: number): EndEvent | ErrorEvent | Counted {
    if (Exit.isFailure(exit)) return errorEvent(this.events, exit.cause, durationMs)
    let response: unknown
    let issues: Array<string> | undefined
    try {
      const read = this.options.response
      response = read === undefined ? exit.value : read(exit.value)
    } catch (error) {
      // A throwing reader must not break the call: the handlers get the issue as data.
      issues = [`response: the response reader threw: ${String(error)}`]
    }
    return completeEnd(this.outerContext, this.events, endEvent(this.events, response, durationMs, undefined, issues))
  }
}

/** A tool run: its terminal event is `tool_end` or `tool_error`, from its exit (and `failureOf`). */
class InstrumentedTool<A, E> extends InstrumentedRun<A, E, ToolEvents, ToolRunOptions<A>> {
  protected terminalEvent(exit: Exit.Exit<A, E>, durationMs: number): ToolEndEvent | ToolErrorEvent {
    return toolTerminal(this.events, exit, durationMs, this.options.failureOf)
  }
}

/**
 * Runs `body` with the current fiber, read from Effect's runtime (which sets
 * it while it evaluates a fiber's steps), without a step of its own; with
 * `Effect.withFiberRuntime` where none is set.
 */
const onCurrentFiber = <A, E, R>(body: (fiber: AnyFiber) => Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => {
  const current = Fiber.getCurrentFiber()
  return Option.isSome(current) ? body(current.value) : Effect.withFiberRuntime((fiber) => body(fiber as AnyFiber))
}

/**
 * The whole call is one region made uninterruptible at once (the dispatch of
 * `start` and the continuations that dispatch the terminal event run in it;
 * `restore` gives the call the caller's interruptibility): its body reads the
 * fiber from the runtime rather than taking a step of its own to be given it
 * (`Effect.withFiberRuntime`), which saves a step of Effect's run loop on
 * every instrumented call (several hundred instructions) and costs a call that
 * runs bare (no handler hears it) the region's steps.
 */
const instrumentImpl = <A, E, R>(
  self: Effect.Effect<A, E, R>,
  options: InstrumentOptions<A>
): Effect.Effect<A, E, R> => {
  const restored = restorable(self)
  return uninterruptibleMask((restore) =>
    onCurrentFiber((fiber) => {
      const gate = fiber.getFiberRef(currentGate)
      const calls = lookupCalls(fiber.currentContext)
      const token = calls?.begin()
      // No handler would hear the call: it runs bare, unless a tracer wants its span.
      if (calls === undefined || token === undefined || (token.empty && !CallSpan.tracing(fiber))) {
        const bare = gate === undefined ? self : admitBare(fiber, gate, self, options)
        return restore(calls === undefined ? noticeBare(fiber, bare, "the instrumented call", options.provider, options.model) : bare)
      }
      const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
      const startedAt = clock.unsafeCurrentTimeMillis()
      const parents = parentsOf(fiber)
      const events = makeCallEvents(
        options,
        fiber.getFiberRef(currentCallContext),
        startedAt,
        parents.top(),
        calls.nextCallId,
        fiber.getFiberRef(currentOperation)
      )
      const span = CallSpan.startSpan(fiber, events.call, clock, undefined, events.start.params)
      const run = new InstrumentedCall<A, E>(calls, token, events, options, clock, parents, span)
      return gate === undefined
        ? run.enter(restored, restore, fiber)
        : restore(admitted(gate, events.start, run.region(restored), span && endRefused(fiber, span, clock)))
    })
  )
}

/**
 * A gate's admission of a call (run as interruptibly as its caller chooses).
 * A refusal, or an interruption meanwhile, fails it before any handler hears
 * of the call (`refused` runs first). The refusal's type is the gate
 * installer's to declare (see `internal/admission`).
 */
const admission = (
  admit: Effect.Effect<Ticket, unknown>,
  refused: ((cause: Cause.Cause<unknown>) => Effect.Effect<void>) | undefined
): Effect.Effect<Ticket> => (refused === undefined ? admit : Effect.tapErrorCause(admit, refused)) as Effect.Effect<Ticket>

/** Ends the span of a call the gate refused, with the refusal as its error (as an error event's span ends). */
const endRefused = (fiber: AnyFiber, span: Tracer.Span, clock: Clock.Clock) => (cause: Cause.Cause<unknown>) =>
  Effect.sync(() => CallSpan.endRefusedSpan(fiber, span, clock, cause))

/**
 * Runs an instrumented call through the admission gate in force: admitted
 * (interruptibly) before its start, its ticket closed with its `Exit` once
 * its terminal event was dispatched.
 */
const admitted = <A, E, R>(
  gate: Gate,
  start: StartEvent,
  call: Effect.Effect<A, E, R>,
  refused?: ((cause: Cause.Cause<unknown>) => Effect.Effect<void>) | undefined
): Effect.Effect<A, E, R> =>
  uninterruptibleMask((restore) =>
    Effect.flatMap(
      admission(restore(gate.admit(start)), refused),
      (ticket) => Effect.onExit(restore(call), (exit) => ticket.close(exit))
    )
  )

/** The start event of a call no handler will hear, for the gate: a call id of its own. */
const unheardStart = (fiber: AnyFiber, options: CallOptions): StartEvent => {
  const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
  return makeCallEvents(
    options,
    fiber.getFiberRef(currentCallContext),
    clock.unsafeCurrentTimeMillis(),
    enclosingOf(fiber),
    randomCallId,
    fiber.getFiberRef(currentOperation)
  ).start
}

/** A call under a gate without handlers: admitted all the same. */
const admitBare = <A, E, R>(
  fiber: AnyFiber,
  gate: Gate,
  self: Effect.Effect<A, E, R>,
  options: InstrumentOptions<A>
): Effect.Effect<A, E, R> => admitted(gate, unheardStart(fiber, options), self)

/**
 * A call begun by hand under a gate without a dispatcher: admitted all the
 * same; with no `finish` to end its hold (and no handler to record it), the
 * hold ends as a success's does without a record, by its TTL.
 */
const admitUnfinished = (fiber: AnyFiber, gate: Gate, options: CallOptions): Effect.Effect<Option.Option<never>> =>
  Effect.flatMap(
    gate.admit(unheardStart(fiber, options)) as Effect.Effect<Ticket>,
    (ticket) => Effect.as(ticket.close(Exit.void), Option.none())
  )

/**
 * Wraps an LLM call so that every registered handler hears `start`, then
 * exactly one of `end` / `error`. The result, typed error, defect and
 * interruption are exactly the bare call's, whatever the handlers do. Without
 * a `Dispatcher` in context the call runs bare.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Callbacks } from "effect-llm-callbacks"
 *
 * declare const callModel: Effect.Effect<{ text: string; input: number; output: number }, Error>
 *
 * const answer = callModel.pipe(
 *   Callbacks.instrument({
 *     provider: "openai",
 *     model: "gpt-4o-mini",
 *     messages: [{ role: "user", content: "Hello" }],
 *     userId: "alice",
 *     response: (r) => ({
 *       content: r.text,
 *       usage: { promptTokens: r.input, completionTokens: r.output, totalTokens: r.input + r.output }
 *     })
 *   })
 * )
 * ```
 *
 * @since 0.1.0
 * @category combinators
 */
export const instrument: {
  <A = any>(
    options: InstrumentOptions<A>
  ): <A2 extends A, E, R>(self: Effect.Effect<A2, E, R>) => Effect.Effect<A2, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, options: InstrumentOptions<NoInfer<A>>): Effect.Effect<A, E, R>
} = dual(2, instrumentImpl)

/**
 * What `instrumentTool` needs to know about a tool run.
 *
 * @since 0.3.0
 * @category models
 */
export interface ToolRunOptions<A = any> extends ToolOptions {
  /**
   * For tools that return their failure as a result (to hand it to the
   * model): the failure within a result, or `undefined` when it is none. A
   * result with a failure is heard as `tool_error`; the effect still succeeds.
   */
  readonly failureOf?: ((result: A) => unknown) | undefined
}

const instrumentToolImpl = <A, E, R>(self: Effect.Effect<A, E, R>, options: ToolRunOptions<A>): Effect.Effect<A, E, R> => {
  const restored = restorable(self)
  // One region, as a model call's (see `instrumentImpl`).
  return uninterruptibleMask((restore) =>
    onCurrentFiber((fiber) => {
      const calls = lookupCalls(fiber.currentContext)
      const token = calls?.begin()
      if (calls === undefined || token === undefined || (token.empty && !CallSpan.tracing(fiber))) {
        return restore(calls === undefined ? noticeBare(fiber, self, "the instrumented tool run", options.name) : self)
      }
      const clock = Context.get(fiber.currentDefaultServices, Clock.Clock)
      const startedAt = clock.unsafeCurrentTimeMillis()
      const parents = parentsOf(fiber)
      const events = makeToolEvents(options, fiber.getFiberRef(currentCallContext), startedAt, parents.top(), calls.nextCallId)
      const span = CallSpan.startSpan(fiber, events.call, clock, events.start.tool)
      return new InstrumentedTool<A, E>(calls, token, events, options, clock, parents, span).enter(restored, restore, fiber)
    })
  )
}

/**
 * Wraps a tool run (hand-written tool code, in an agent loop or inside a
 * model call) so that every registered handler hears `tool_start`, then
 * exactly one of `tool_end` / `tool_error`, derived from its `Exit`, with the
 * tool's name, parameters, result or failure and duration. Its result, typed
 * error, defect and interruption are exactly the bare run's. Its parent is
 * the LLM call that asked for it: `parentCallId`, else the enclosing
 * instrumented call. Model calls made inside it see it as their parent.
 * (`layers/AiLanguageModel` does this for `@effect/ai` toolkit handlers.)
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Callbacks } from "effect-llm-callbacks"
 *
 * declare const getWeather: (city: string) => Effect.Effect<{ celsius: number }, Error>
 *
 * const run = getWeather("Paris").pipe(
 *   Callbacks.instrumentTool({ name: "get_weather", params: { city: "Paris" }, parentCallId: "call-1" })
 * )
 * ```
 *
 * @since 0.3.0
 * @category combinators
 */
export const instrumentTool: {
  <A = any>(options: ToolRunOptions<A>): <A2 extends A, E, R>(self: Effect.Effect<A2, E, R>) => Effect.Effect<A2, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, options: ToolRunOptions<NoInfer<A>>): Effect.Effect<A, E, R>
} = dual(2, instrumentToolImpl)
