/**
 * Typed errors of the callback runtime.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"
import { phases } from "./internal/phases.js"

/**
 * What went wrong with one handler invocation. It is recorded in the dispatch
 * report, logged and counted; it never reaches the instrumented call.
 *
 * - `Failed`: the hook failed with its typed error (after retries).
 * - `Defect`: the hook died or threw.
 * - `Timeout`: the invocation, retries included, exceeded the handler's timeout.
 * - `Interrupted`: the invocation was interrupted (the dispatcher was shutting down).
 * - `Dropped`: a background delivery could not be buffered or drained.
 *
 * @since 0.1.0
 * @category errors
 */
export class HandlerError extends Schema.TaggedError<HandlerError>("effect-llm-callbacks/HandlerError")(
  "HandlerError",
  {
    reason: Schema.Literal("Failed", "Defect", "Timeout", "Interrupted", "Dropped"),
    handler: Schema.String,
    phase: Schema.Literal(...phases),
    message: Schema.String,
    cause: Schema.optional(Schema.Unknown)
  }
) {}

/**
 * A handler definition that cannot be registered: an empty name, a negative
 * timeout, a bad priority or buffer size, or a name already registered.
 *
 * @since 0.1.0
 * @category errors
 */
export class HandlerRegistrationError extends Schema.TaggedError<HandlerRegistrationError>(
  "effect-llm-callbacks/HandlerRegistrationError"
)("HandlerRegistrationError", {
  reason: Schema.Literal("InvalidName", "InvalidPolicy", "DuplicateName", "Closed"),
  handler: Schema.String,
  message: Schema.String
}) {}

/**
 * The key of an error's "do not retry" flag. A hook failing with an error
 * whose `[NonRetryable]` is `true` (e.g. a `TokenStoreError` for invalid
 * input, which fails the same way every time) is not retried, whatever its
 * handler's schedule.
 *
 * @since 0.2.0
 * @category symbols
 */
export const NonRetryable: unique symbol = Symbol.for("effect-llm-callbacks/NonRetryable") as never

/**
 * Whether a hook's typed failure may be retried (see {@link NonRetryable}).
 *
 * @since 0.2.0
 * @category guards
 */
export const isRetryable = (error: unknown): boolean =>
  !(typeof error === "object" && error !== null && NonRetryable in error &&
    (error as { readonly [NonRetryable]: unknown })[NonRetryable] === true)
