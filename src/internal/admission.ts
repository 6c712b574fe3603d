/**
 * The admission contract between `instrument` and a budget: a budget guard
 * installs a gate for the region it wraps; every instrumented call started in
 * it is admitted through the gate (with its own call info, so the user, team
 * and organisation given to `instrument` are the ones checked) before its
 * `start` is dispatched, and closes its ticket with the call's `Exit` after its
 * terminal event was dispatched.
 *
 * A refusal is a failure of the admission, and becomes the failure of the
 * instrumented call. Its type is the gate installer's to declare: only
 * `Budget.guard` installs gates, and its own type adds its refusals to the
 * error channel of the region it wraps.
 */
import type * as Effect from "effect/Effect"
import type * as Exit from "effect/Exit"
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"
import type { StartEvent } from "../Events.js"

/** What an admitted call holds until it ends. */
export interface Ticket {
  /** Runs once, after the call's terminal event was dispatched (also on interruption). */
  readonly close: (exit: Exit.Exit<unknown, unknown>) => Effect.Effect<void>
}

/** Admits calls; installed by `Budget.guard`. */
export interface Gate {
  /** Admits the call described by its start event, or fails with the refusal. */
  readonly admit: (start: StartEvent) => Effect.Effect<Ticket, unknown>
}

/** The gate in force, if any. */
export const currentGate: FiberRef.FiberRef<Gate | undefined> = globalValue(
  Symbol.for("effect-llm-callbacks/internal/admission/currentGate"),
  () => FiberRef.unsafeMake<Gate | undefined>(undefined)
)
