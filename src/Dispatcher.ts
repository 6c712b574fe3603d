/**
 * The dispatcher: fans each event out to the registered handlers, isolates
 * every outcome, and owns the fibers of background handlers.
 *
 * - Handlers of equal priority run concurrently; a higher priority group
 *   completes before a lower one starts.
 * - Each invocation runs under its handler's timeout (retries included) and
 *   retry schedule; at most `maxConcurrent` invocations are in flight.
 * - Every outcome becomes a {@link HandlerResult} in the {@link DispatchReport},
 *   is logged (failures) and counted in metrics. Dispatch never fails.
 * - The common case (a hook that completes without suspending) runs
 *   synchronously: no fiber switch, timer or schedule is paid for.
 *
 * @since 0.1.0
 */
import { type Calls, CallsTypeId } from "./internal/calls.js"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as CallbackConfig from "./CallbackConfig.js"
import type * as Metrics from "./CallbackMetrics.js"
import type { CallbackEvent, Phase } from "./Events.js"
import type { Handler, Mode } from "./Handler.js"
import type { HandlerError, HandlerRegistrationError } from "./HandlerError.js"
import * as internal from "./internal/dispatcher.js"

/**
 * The outcome of one handler for one event. Background handlers report
 * `"queued"` (or `"dropped"`) here; their outcome shows in `health` and metrics.
 *
 * @since 0.1.0
 * @category models
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

/**
 * Every handler's result for one event.
 *
 * @since 0.1.0
 * @category models
 */
export interface DispatchReport {
  readonly phase: Phase
  readonly callId: string
  readonly results: ReadonlyArray<HandlerResult>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface LastError {
  readonly phase: Phase
  readonly reason: HandlerError["reason"]
  readonly message: string
  /** Epoch milliseconds, from the `Clock` of the dispatcher's layer. */
  readonly at: number
}

/**
 * @since 0.1.0
 * @category models
 */
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
 *
 * @since 0.1.0
 * @category models
 */
export interface HealthReport {
  readonly status: "healthy" | "degraded" | "closed"
  readonly handlers: ReadonlyArray<HandlerHealth>
  readonly inFlight: number
  readonly pending: number
}

/**
 * @since 0.1.0
 * @category models
 */
export declare namespace Dispatcher {
  /**
   * @since 0.1.0
   * @category models
   */
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
    /** @internal The contract with `instrument` (see `internal/calls`). */
    readonly [CallsTypeId]: Calls
  }
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Dispatcher extends Context.Tag("effect-llm-callbacks/Dispatcher")<Dispatcher, Dispatcher.Service>() {}

/**
 * Builds a dispatcher. Closing the scope drains background deliveries,
 * bounded by the shutdown timeout, and logs what could not be delivered.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (
  options: CallbackConfig.Options = {}
): Effect.Effect<Dispatcher.Service, ConfigError.ConfigError, Scope.Scope> =>
  Effect.flatMap(CallbackConfig.resolve(options), internal.make)

/**
 * The dispatcher with explicit options (unset ones take the defaults).
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: CallbackConfig.Options = {}): Layer.Layer<Dispatcher, ConfigError.ConfigError> =>
  Layer.scoped(Dispatcher, make(options))

/**
 * The dispatcher configured from the environment (`CALLBACK_*`, see
 * `CallbackConfig`). A bad value fails the layer, naming the variable.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig: Layer.Layer<Dispatcher, ConfigError.ConfigError> = Layer.scoped(
  Dispatcher,
  Effect.flatMap(CallbackConfig.config, internal.make)
)

/**
 * Registers a handler for the lifetime of the current scope, at run time.
 * Its requirements come from the current context.
 *
 * @since 0.1.0
 * @category registration
 */
export const register = <E, R>(
  handler: Handler<E, R>
): Effect.Effect<void, HandlerRegistrationError, Dispatcher | Scope.Scope | R> =>
  Effect.flatMap(
    Effect.context<R>(),
    (context) => Effect.flatMap(Dispatcher, (dispatcher) => dispatcher.register(handler, context))
  )

/**
 * A layer that registers a handler with the dispatcher for the layer's
 * lifetime. The handler's requirements are satisfied when the layer is built
 * (its context is captured then), so dispatch needs none.
 *
 * Accepts a handler or an effect that builds one (e.g. reading services).
 *
 * @since 0.1.0
 * @category layers
 */
export const toLayer = <E, R, E2 = never, R2 = never>(
  handler: Handler<E, R> | Effect.Effect<Handler<E, R>, E2, R2>
): Layer.Layer<never, HandlerRegistrationError | E2, Dispatcher | Exclude<R, Scope.Scope> | R2> =>
  Layer.scopedDiscard(
    Effect.flatMap(
      Effect.isEffect(handler) ? handler : Effect.succeed(handler),
      (h) => register(h)
    )
  ) as any

/**
 * Dispatch, flush and health of the dispatcher in context.
 *
 * @since 0.1.0
 * @category accessors
 */
export const flush: Effect.Effect<void, never, Dispatcher> = Effect.flatMap(Dispatcher, (d) => d.flush)

/**
 * @since 0.1.0
 * @category accessors
 */
export const health: Effect.Effect<HealthReport, never, Dispatcher> = Effect.flatMap(Dispatcher, (d) => d.health)
