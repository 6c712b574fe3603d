/**
 * Typed errors of the callback runtime.
 *
 * @since 0.1.0
 */
import * as Schema from "effect/Schema"

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
    phase: Schema.Literal("start", "end", "error"),
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
