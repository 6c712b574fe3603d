/**
 * Token counting for what the provider did not report: the usage of a call
 * whose provider reported none, or cut off before it could (a stream stopped
 * early, or failing midway), is counted with the counter in force before any
 * handler hears the call's end or error, and flagged `estimated`: every
 * handler (the token handlers, the metrics) then sees the same counts, so the
 * dashboards reconcile with the token store. No counter is in force by
 * default (nothing is counted: the event carries no usage, and the detailed
 * token handler estimates on its own); `TokenUsage.layerTokenCounter`
 * provides one over a real tokenizer (gpt-tokenizer).
 *
 * @since 0.3.0
 */
import * as Context from "effect/Context"
import type * as Effect from "effect/Effect"
import type { Message } from "./Events.js"

/**
 * Counts the tokens of a prompt (contents plus the chat format's overhead)
 * and of a text, for a model. A count that cannot be made fails (the caller
 * then reports no usage rather than a guess).
 *
 * @since 0.3.0
 * @category models
 */
export interface TokenCounter {
  readonly countMessages: (model: string, messages: ReadonlyArray<Message>) => Effect.Effect<number, unknown>
  readonly countText: (model: string, text: string) => Effect.Effect<number, unknown>
}

/**
 * The token counter in force, read by `Callbacks.begin` when a call is cut
 * off; `undefined` (the default) counts nothing.
 *
 * @since 0.3.0
 * @category references
 */
export class CurrentTokenCounter extends Context.Reference<CurrentTokenCounter>()(
  "effect-llm-callbacks/TokenCounter/CurrentTokenCounter",
  { defaultValue: (): TokenCounter | undefined => undefined }
) {}
