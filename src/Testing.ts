/**
 * Test kit: a recorder handler that captures every event in order (every
 * phase: starts, stream chunks, tool runs, ends and errors), for users
 * testing their apps and their own handlers.
 *
 * @example
 * ```ts
 * import { Effect } from "effect"
 * import { Callbacks, Testing } from "effect-llm-callbacks"
 *
 * const program = Effect.gen(function*() {
 *   yield* Effect.succeed({ content: "hi" }).pipe(Callbacks.instrument({ provider: "fake", model: "m" }))
 *   const events = yield* Testing.events
 *   // events: [Start, End]
 * }).pipe(Effect.provide(Testing.layer()))
 * ```
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as ConfigError from "effect/ConfigError"
import type * as CallbackConfig from "./CallbackConfig.js"
import * as Dispatcher from "./Dispatcher.js"
import type { CallbackEvent } from "./Events.js"
import * as Handler from "./Handler.js"
import type { HandlerRegistrationError } from "./HandlerError.js"
import { phases, phaseTable } from "./internal/phases.js"

/**
 * @since 0.1.0
 * @category models
 */
export declare namespace Recorder {
  /**
   * @since 0.1.0
   * @category models
   */
  export interface Service {
    /** Every event heard so far, in the order the recorder heard them. */
    readonly events: Effect.Effect<ReadonlyArray<CallbackEvent>>
    /** The events of one call, in order. */
    readonly eventsOf: (callId: string) => Effect.Effect<ReadonlyArray<CallbackEvent>>
    /** Events discarded because the recorder was full. */
    readonly discarded: Effect.Effect<number>
    readonly clear: Effect.Effect<void>
  }
}

/**
 * @since 0.1.0
 * @category tags
 */
export class Recorder extends Context.Tag("effect-llm-callbacks/Recorder")<Recorder, Recorder.Service>() {}

/**
 * Options of the recorder.
 *
 * @since 0.1.0
 * @category models
 */
export interface RecorderOptions {
  /** Handler name, default `"recorder"`. */
  readonly name?: string | undefined
  readonly mode?: Handler.Mode | undefined
  readonly priority?: number | undefined
  /** Most events kept; older ones are discarded (and counted). Default 100,000. */
  readonly capacity?: number | undefined
}

/**
 * A recorder handler registered with the dispatcher in context.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerRecorder = (
  options: RecorderOptions = {}
): Layer.Layer<Recorder, HandlerRegistrationError, Dispatcher.Dispatcher> =>
  Layer.scoped(
    Recorder,
    Effect.gen(function*() {
      const capacity = options.capacity ?? 100_000
      let events: Array<CallbackEvent> = []
      let discarded = 0
      const push = Handler.sync((event: CallbackEvent) => {
        events.push(event)
        if (events.length > capacity) {
          events.shift()
          discarded++
        }
      })
      // Every phase: the table names the hooks.
      const hooks: Record<string, typeof push> = {}
      for (const phase of phases) hooks[phaseTable[phase].hook] = push
      yield* Dispatcher.register(Handler.make({
        name: options.name ?? "recorder",
        mode: options.mode,
        priority: options.priority,
        ...hooks
      }))
      return {
        events: Effect.sync(() => events.slice()),
        eventsOf: (callId) => Effect.sync(() => events.filter((event) => event.call.callId === callId)),
        discarded: Effect.sync(() => discarded),
        clear: Effect.sync(() => {
          events = []
          discarded = 0
        })
      }
    })
  )

/**
 * A dispatcher (with the given options) and a recorder: everything a test
 * needs to see what handlers hear. The shutdown timeout defaults to 1 second.
 * A background handler still busy when the test's scope closes under a
 * `TestClock` nobody moves (one sleeping on that clock) delays the close by
 * the shutdown timeout of real time, at least 5 seconds, and what it did not
 * deliver is logged. To test background handlers, move the clock and
 * `Dispatcher.flush` before asserting.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (
  options: CallbackConfig.Options & { readonly recorder?: RecorderOptions | undefined } = {}
): Layer.Layer<Recorder | Dispatcher.Dispatcher, HandlerRegistrationError | ConfigError.ConfigError> =>
  layerRecorder(options.recorder).pipe(
    Layer.provideMerge(Dispatcher.layer({ shutdownTimeout: "1 second", ...options }))
  )

/**
 * Every event the recorder heard so far.
 *
 * @since 0.1.0
 * @category accessors
 */
export const events: Effect.Effect<ReadonlyArray<CallbackEvent>, never, Recorder> = Effect.flatMap(
  Recorder,
  (recorder) => recorder.events
)
