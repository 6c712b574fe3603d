/**
 * The operation the instrumented calls of a region are attempts of
 * (`CallContext.withOperation`): its id and how many attempts it had.
 */
import * as FiberRef from "effect/FiberRef"
import { globalValue } from "effect/GlobalValue"

/**
 * One operation: its attempts are the instrumented calls made directly in
 * its region (their enclosing call is `enclosing`); calls nested inside an
 * attempt are not attempts of it. The counter is the operation's own: it is
 * made anew each time the region runs.
 */
export interface Operation {
  readonly id: string
  readonly enclosing: string | undefined
  attempts: number
}

export const currentOperation: FiberRef.FiberRef<Operation | undefined> = globalValue(
  Symbol.for("effect-llm-callbacks/CallContext/currentOperation"),
  () => FiberRef.unsafeMake<Operation | undefined>(undefined)
)

/** The next attempt of the operation in force for a call whose enclosing call is `enclosing`, if it is one. */
export const nextAttempt = (
  operation: Operation | undefined,
  enclosing: string | undefined
): { readonly operationId: string; readonly attempt: number } | undefined =>
  operation === undefined || operation.enclosing !== enclosing
    ? undefined
    : { operationId: operation.id, attempt: ++operation.attempts }
