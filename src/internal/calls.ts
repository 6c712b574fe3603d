/**
 * The internal contract between `instrument` (and `Callbacks.begin`) and the
 * dispatcher, carried by the public service under a symbol key, as Effect's
 * own `TypeId`s are: `instrument` needs to dispatch one call's events to the
 * handlers of the moment it started, synchronously where it can, and to tell
 * the terminal dispatch which handlers heard `start`. No downcast of the
 * public service is needed.
 */
import type * as Effect from "effect/Effect"
import type * as Fiber from "effect/Fiber"
import type { DispatchReport } from "../Dispatcher.js"
import type { CallbackEvent } from "../Events.js"

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
   * Dispatches one of the call's events on the given (current) fiber,
   * synchronously as far as the handlers allow; `undefined` when nothing is
   * left to do. The report is discarded.
   */
  readonly run: (
    token: CallToken,
    event: CallbackEvent,
    fiber: Fiber.RuntimeFiber<unknown, unknown>
  ) => Effect.Effect<void> | undefined
  /** Dispatches one of the call's events and reports every handler's outcome. */
  readonly dispatch: (token: CallToken, event: CallbackEvent) => Effect.Effect<DispatchReport>
}
