/**
 * The dispatcher: fans each event out to the registered handlers, isolates
 * every outcome, and owns the fibers of background handlers.
 *
 * - Handlers of equal priority run concurrently; a higher priority group
 *   completes before a lower one starts.
 * - Each invocation runs under its handler's timeout (retries included) and
 *   retry schedule; at most `maxConcurrent` invocations are in flight (those
 *   of a call a hook makes run past the bound: their hook holds a slot).
 * - Every outcome becomes a {@link HandlerResult} in the {@link DispatchReport},
 *   is logged (failures) and counted in metrics. Dispatch never fails.
 * - The common case (a hook that completes without suspending) runs
 *   synchronously: no fiber switch, timer or schedule is paid for.
 *
 * @since 0.1.0
 */
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import * as CallbackConfig from "./CallbackConfig.js"
import type { Handler } from "./Handler.js"
import type { HandlerRegistrationError } from "./HandlerError.js"
import type * as contract from "./internal/dispatch/contract.js"
import * as internal from "./internal/dispatch/registry.js"
import * as Outbox from "./Outbox.js"

/**
 * The outcome of one handler for one event. Background handlers report
 * `"queued"` (or `"dropped"`) here; their outcome shows in `health` and metrics.
 *
 * @since 0.1.0
 * @category models
 */
export interface HandlerResult extends contract.HandlerResult {}

/**
 * Every handler's result for one event.
 *
 * @since 0.1.0
 * @category models
 */
export interface DispatchReport extends contract.DispatchReport {}

/**
 * A handler's latest error, dated by the `Clock` of the dispatcher's layer.
 *
 * @since 0.1.0
 * @category models
 */
export interface LastError extends contract.LastError {}

/**
 * One handler's counters in a {@link HealthReport}. `overrunning` counts
 * invocations given up on (timed out, or cancelled with their call) whose
 * hook ignores interruption and is still running: they hold no concurrency
 * slot, and show here until they really end.
 *
 * @since 0.1.0
 * @category models
 */
export interface HandlerHealth extends contract.HandlerHealth {}

/**
 * `healthy`: every handler's latest invocation succeeded. `degraded`: some
 * handler's latest invocation did not, or (read through {@link health} with
 * an `Outbox` in context) records are waiting in the token store's outbox.
 * `closed`: the dispatcher is shutting down. `outbox`: the outbox's stats
 * (pending records and bytes, the oldest one's age, written, dropped,
 * expired, rejected), when there is one.
 *
 * @since 0.1.0
 * @category models
 */
export interface HealthReport extends contract.HealthReport {}

/**
 * @since 0.1.0
 * @category models
 */
export declare namespace Dispatcher {
  /**
   * `register`, `dispatch`, `flush`, `health` and `handlers`; and, under a
   * symbol key, the internal contract with `instrument`.
   *
   * @since 0.1.0
   * @category models
   */
  export interface Service extends contract.Service {}
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
 * The dispatcher's health and, when an `Outbox` is in context (the token
 * store's, see `Outbox.layer`), the outbox's: the report is `degraded`
 * while records wait there for the store.
 *
 * @since 0.1.0
 * @category accessors
 */
export const health: Effect.Effect<HealthReport, never, Dispatcher> = Effect.flatMap(Dispatcher, (d) =>
  Effect.flatMap(Effect.serviceOption(Outbox.Outbox), (outbox) =>
    Option.match(outbox, {
      onNone: () => d.health,
      onSome: (outbox) =>
        Effect.zipWith(d.health, outbox.stats, (report, stats): HealthReport => ({
          ...report,
          status: report.status === "healthy" && stats.pending > 0 ? "degraded" : report.status,
          outbox: stats
        }))
    })))
