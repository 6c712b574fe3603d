/**
 * What the dispatcher offers: its reports and health (re-exported by the
 * public `Dispatcher` module), its service, and the internal contract with
 * `instrument` (and `Callbacks.begin`), carried by the service under a symbol
 * key, as Effect's own `TypeId`s are. `instrument` needs to dispatch one
 * call's events to the handlers of the moment it started, synchronously where
 * it can, and to tell the terminal dispatch which handlers heard `start`; no
 * downcast of the public service is needed for it.
 */
import type * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import type * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import type * as Tracer from "effect/Tracer"
import type * as Metrics from "../../CallbackMetrics.js"
import type { CallbackEvent, Phase } from "../../Events.js"
import type { Handler, Mode } from "../../Handler.js"
import type { HandlerError, HandlerRegistrationError } from "../../HandlerError.js"
import type { Stats } from "../../Outbox.js"

/**
 * The outcome of one handler for one event. Background handlers report
 * `"queued"` (or `"dropped"`) here; their outcome shows in `health` and metrics.
 */
export interface HandlerResult {
  readonly handler: string
  readonly phase: Phase
  readonly mode: Mode
  readonly status: Metrics.Status | "queued"
  readonly attempts: number
  readonly durationMs: number
  readonly error: HandlerError | undefined
}

/** Every handler's result for one event. */
export interface DispatchReport {
  readonly phase: Phase
  readonly callId: string
  readonly results: ReadonlyArray<HandlerResult>
}


/** A handler's latest error. */
export interface LastError {
  readonly phase: Phase
  readonly reason: HandlerError["reason"]
  readonly message: string
  /** Epoch milliseconds, from the `Clock` of the dispatcher's layer. */
  readonly at: number
}

/** One handler's counters. */
export interface HandlerHealth {
  readonly name: string
  readonly mode: Mode
  readonly priority: number
  readonly successes: number
  readonly failures: number
  readonly defects: number
  readonly timeouts: number
  readonly interruptions: number
  readonly retries: number
  readonly dropped: number
  readonly inFlight: number
  /**
   * Invocations given up on (timed out, or cancelled with their call) whose
   * hook ignores interruption and is still running. They hold no
   * concurrency slot: a stuck hook never takes the global bound from the
   * other handlers, and shows here until it really ends.
   */
  readonly overrunning: number
  readonly pending: number
  readonly lastError: Option.Option<LastError>
}

/**
 * `healthy`: every handler's latest invocation succeeded. `degraded`: some
 * handler's latest invocation did not. `closed`: the dispatcher is shutting down.
 */
export interface HealthReport {
  readonly status: "healthy" | "degraded" | "closed"
  readonly handlers: ReadonlyArray<HandlerHealth>
  readonly inFlight: number
  readonly pending: number
  /** The token store's outbox, when one is in the context of the `Dispatcher.health` call. */
  readonly outbox?: Stats | undefined
}

/** The key of the contract on the dispatcher service. */
export const CallsTypeId: unique symbol = Symbol.for("effect-llm-callbacks/Dispatcher/Calls") as never

/**
 * One call's dispatch state: the handlers registered when it started (its
 * terminal event goes to the same set, whatever registrations change
 * meanwhile) and, once its start was dispatched, those that did not hear it
 * (their start was cancelled or dropped, or their priority group was not
 * reached): they hear no terminal event of the call. It travels with the call,
 * from the start dispatch to the terminal one.
 */
export interface CallToken {
  /** No handler would hear anything of the call. */
  readonly empty: boolean
}

/** What the dispatcher offers `instrument`. */
export interface Calls {
  /** A token for a call starting now. */
  readonly begin: () => CallToken
  /**
   * A new call id: UUID-shaped, 74 random bits drawn per dispatcher followed
   * by a 48-bit counter. Unique across processes with overwhelming
   * probability (call ids are idempotency keys in a shared store), and
   * cheaper than a UUID per call.
   */
  readonly nextCallId: () => string
  /**
   * Dispatches one of the call's events on the given (current) fiber,
   * synchronously as far as the handlers allow; `undefined` when nothing is
   * left to do. The report is discarded. A start dispatch may be
   * interrupted; when it returns an effect, the caller calls `settleStart`
   * once that effect has ended, whatever its exit, from a continuation that
   * runs even when it was interrupted (one made in a region the caller made
   * uninterruptible, as `instrument` does). A terminal dispatch must be run
   * uninterruptibly, as `instrument` does: its waits have no canceller.
   */
  readonly run: (
    token: CallToken,
    event: CallbackEvent,
    fiber: Fiber.RuntimeFiber<unknown, unknown>
  ) => Effect.Effect<void> | undefined
  /**
   * Settles a start dispatch of `run` that returned an effect: records who did
   * not hear it and, when `failed` (it was interrupted), cancels what it
   * still waits for.
   */
  readonly settleStart: (token: CallToken, failed: boolean) => void
  /** Dispatches one of the call's events and reports every handler's outcome. */
  readonly dispatch: (token: CallToken, event: CallbackEvent) => Effect.Effect<DispatchReport>
  /**
   * The sink of a call's stream chunks, which never waits (see
   * `internal/dispatch/chunks`); `undefined` when no handler of the call has
   * a chunk hook (nothing need be built per chunk). Hooks that need a fiber
   * run with `fiber`'s refs and under `span`.
   */
  readonly chunks: (
    token: CallToken,
    fiber: Fiber.RuntimeFiber<unknown, unknown>,
    span: Tracer.AnySpan | undefined
  ) => ((event: CallbackEvent) => void) | undefined
}

/** The dispatcher service. */
export interface Service {
  /** Registers a handler for the lifetime of the scope; `context` satisfies its hooks. */
  readonly register: <E, R>(
    handler: Handler<E, R>,
    context: Context.Context<R>
  ) => Effect.Effect<void, HandlerRegistrationError, Scope.Scope>
  /** Dispatches to the handlers registered now. */
  readonly dispatch: (event: CallbackEvent) => Effect.Effect<DispatchReport>
  /** Waits until every background delivery enqueued so far is done. */
  readonly flush: Effect.Effect<void>
  readonly health: Effect.Effect<HealthReport>
  /** Names of the registered handlers. */
  readonly handlers: Effect.Effect<ReadonlyArray<string>>
  /** @internal The contract with `instrument`. */
  readonly [CallsTypeId]: Calls
}
