/**
 * Which OpenTelemetry GenAI semantic conventions the spans and metrics
 * speak. The conventions are mid-redesign (now in
 * `open-telemetry/semantic-conventions-genai`, status Development), and
 * dashboards may still query the names they replaced, so the mapping is
 * versioned:
 *
 * - `"current"` (the default): `gen_ai.provider.name`,
 *   `gen_ai.usage.input_tokens` / `output_tokens`,
 *   `gen_ai.usage.cache_read.input_tokens`,
 *   `gen_ai.usage.cache_creation.input_tokens`,
 *   `gen_ai.usage.reasoning.output_tokens`;
 * - `"legacy"`: the deprecated names instead (`gen_ai.system`,
 *   `gen_ai.usage.prompt_tokens` / `completion_tokens`);
 * - `"both"`: each attribute under both names (a migration period).
 *
 * `OTEL_SEMCONV_STABILITY_OPT_IN` chooses it from the environment
 * (`gen_ai_latest_experimental` for the current names, with `/dup` for both;
 * unset keeps the current names), see {@link config}.
 *
 * @since 0.3.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import { dual } from "effect/Function"
import * as Layer from "effect/Layer"

/**
 * @since 0.3.0
 * @category models
 */
export type Version = "current" | "legacy" | "both"

/**
 * The version in force: spans read it when a call starts, the GenAI
 * metrics handler when it is built.
 *
 * @since 0.3.0
 * @category references
 */
export class CurrentVersion extends Context.Reference<CurrentVersion>()(
  "effect-llm-callbacks/SemanticConventions/CurrentVersion",
  { defaultValue: (): Version => "current" }
) {}

/**
 * Runs an effect with a version in force.
 *
 * @since 0.3.0
 * @category combinators
 */
export const withVersion: {
  (version: Version): <A, E, R>(self: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  <A, E, R>(self: Effect.Effect<A, E, R>, version: Version): Effect.Effect<A, E, R>
} = dual(
  2,
  <A, E, R>(self: Effect.Effect<A, E, R>, version: Version): Effect.Effect<A, E, R> =>
    Effect.provideService(self, CurrentVersion, version)
)

/**
 * The version from `OTEL_SEMCONV_STABILITY_OPT_IN`, a comma-separated list:
 * `gen_ai_latest_experimental` gives the current names, with `/dup`
 * (`gen_ai_latest_experimental/dup`) both; `gen_ai_legacy` (this library's
 * own value) the deprecated ones; unset or without a `gen_ai` value, the
 * current names.
 *
 * @since 0.3.0
 * @category config
 */
export const config: Config.Config<Version> = Config.string("OTEL_SEMCONV_STABILITY_OPT_IN").pipe(
  Config.map((raw): Version => {
    const values = raw.split(",").map((value) => value.trim())
    if (values.includes("gen_ai_latest_experimental/dup")) return "both"
    if (values.includes("gen_ai_legacy")) return "legacy"
    return "current"
  }),
  Config.withDefault<Version>("current")
)

/**
 * Puts the version read from the environment ({@link config}:
 * `OTEL_SEMCONV_STABILITY_OPT_IN`) in force for what the layer is provided to.
 *
 * @since 0.3.0
 * @category layers
 */
export const layerConfig: Layer.Layer<CurrentVersion, ConfigError.ConfigError> = Layer.effect(CurrentVersion, config)

/**
 * Puts a version in force for what the layer is provided to.
 *
 * @since 0.3.0
 * @category layers
 */
export const layer = (version: Version): Layer.Layer<CurrentVersion> => Layer.succeed(CurrentVersion, version)

const current = {
  provider: ["gen_ai.provider.name"],
  inputTokens: ["gen_ai.usage.input_tokens"],
  outputTokens: ["gen_ai.usage.output_tokens"]
} as const

const legacy = {
  provider: ["gen_ai.system"],
  inputTokens: ["gen_ai.usage.prompt_tokens"],
  outputTokens: ["gen_ai.usage.completion_tokens"]
} as const

/**
 * The attribute names of each versioned concept: the provider, input and
 * output tokens. (The attributes that were never renamed have one name.)
 *
 * @since 0.3.0
 * @category getters
 */
export const names = (version: Version): {
  readonly provider: ReadonlyArray<string>
  readonly inputTokens: ReadonlyArray<string>
  readonly outputTokens: ReadonlyArray<string>
} =>
  version === "current"
    ? current
    : version === "legacy"
    ? legacy
    : {
      provider: [...current.provider, ...legacy.provider],
      inputTokens: [...current.inputTokens, ...legacy.inputTokens],
      outputTokens: [...current.outputTokens, ...legacy.outputTokens]
    }

/**
 * The request parameters of a start event as `gen_ai.request.*` attributes,
 * whatever spelling the caller used (`maxTokens`, `max_tokens`,
 * `max_output_tokens`...). Only numbers, strings and string arrays are kept.
 *
 * @since 0.3.0
 * @category getters
 */
export const requestAttributes = (params: Readonly<Record<string, unknown>>): ReadonlyArray<readonly [string, unknown]> => {
  const out: Array<readonly [string, unknown]> = []
  for (const key of Object.keys(params)) {
    const name = requestNames[key]
    if (name === undefined) continue
    const value = params[key]
    if (
      typeof value === "number" && Number.isFinite(value) || typeof value === "string" ||
      Array.isArray(value) && value.every((v) => typeof v === "string")
    ) out.push([name, value])
  }
  return out
}

const requestNames: Readonly<Record<string, string>> = {
  temperature: "gen_ai.request.temperature",
  maxTokens: "gen_ai.request.max_tokens",
  max_tokens: "gen_ai.request.max_tokens",
  maxOutputTokens: "gen_ai.request.max_tokens",
  max_output_tokens: "gen_ai.request.max_tokens",
  max_completion_tokens: "gen_ai.request.max_tokens",
  topP: "gen_ai.request.top_p",
  top_p: "gen_ai.request.top_p",
  topK: "gen_ai.request.top_k",
  top_k: "gen_ai.request.top_k",
  frequencyPenalty: "gen_ai.request.frequency_penalty",
  frequency_penalty: "gen_ai.request.frequency_penalty",
  presencePenalty: "gen_ai.request.presence_penalty",
  presence_penalty: "gen_ai.request.presence_penalty",
  seed: "gen_ai.request.seed",
  stop: "gen_ai.request.stop_sequences",
  stopSequences: "gen_ai.request.stop_sequences",
  stop_sequences: "gen_ai.request.stop_sequences",
  n: "gen_ai.request.choice.count"
}

/**
 * The `error.type` of a failure, per the conventions: the HTTP status when
 * the error carries one (`status`, `statusCode`, `response.status`: `"429"`,
 * `"500"`), else its type (`_tag`, class name).
 *
 * @since 0.3.0
 * @category getters
 */
export const errorType = (error: unknown, fallback: string): string => {
  const status = httpStatusOf(error)
  return status === undefined ? fallback : String(status)
}

/**
 * The HTTP status an error carries, if any (`status`, `statusCode`,
 * `response.status`).
 *
 * @since 0.3.0
 * @category getters
 */
export const httpStatusOf = (error: unknown): number | undefined => {
  if (typeof error !== "object" || error === null) return undefined
  const e = error as {
    readonly status?: unknown
    readonly statusCode?: unknown
    readonly response?: { readonly status?: unknown }
  }
  const status = e.status ?? e.statusCode ??
    (typeof e.response === "object" && e.response !== null ? e.response.status : undefined)
  return typeof status === "number" && Number.isInteger(status) && status >= 100 && status <= 599 ? status : undefined
}
