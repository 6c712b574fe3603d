/**
 * The OpenTelemetry GenAI client metrics, recorded by a handler, and the
 * library's own counters that reconcile them with the token store:
 *
 * - `gen_ai.client.token.usage` (histogram, `{token}`): input and output
 *   tokens of every call that reports its usage (and of a call cut off after
 *   it consumed tokens), labelled `gen_ai.token.type` (`input` / `output`).
 * - `gen_ai.client.operation.duration` (histogram, `s`): every call, with
 *   `error.type` when it failed (the HTTP status for HTTP errors: `429`,
 *   `500`; else the error's type).
 * - `gen_ai.client.operation.time_to_first_chunk` (histogram, `s`): streams,
 *   from the start to the first chunk.
 * - `gen_ai.client.operation.time_per_output_chunk` (histogram, `s`): every
 *   chunk of a stream after the first, the time since the previous one
 *   (recorded when the stream ends, from its terminal event: no hook runs
 *   per chunk).
 * - `gen_ai.execute_tool.duration` (histogram, `s`): tool runs, by
 *   `gen_ai.tool.name`, with `error.type` when the tool failed.
 * - `llm_cost_micros_total` (counter): cost in millionths of the price
 *   table's currency.
 * - `llm_tokens_estimated_total` (counter, `gen_ai.token.type`): tokens
 *   counted with a tokenizer because the provider reported none.
 * - `llm_calls_without_usage_total` (counter): calls whose usage was unknown
 *   (no usage reported and none counted).
 * - `llm_metric_labels_folded_total` (counter, `label`): label values folded
 *   into `other` (see below).
 *
 * Every series carries `gen_ai.operation.name`, the provider
 * (`gen_ai.provider.name`; `gen_ai.system` under the legacy conventions, see
 * `SemanticConventions`), `gen_ai.request.model`, and where known
 * `gen_ai.response.model`, `server.address`, `server.port` (from the call's
 * metadata, e.g. `AiLanguageModel`'s `server` option).
 *
 * Cardinality is bounded: labels that come from callers (provider, request
 * and response model, server address, tool name) keep the values of an allow-list
 * (`models`: default the price table's models, see `Cost`) and the first
 * `maxValues` others seen (default 50 per label); any other value is
 * `other`, and counted in `llm_metric_labels_folded_total`. Labels never
 * carry user ids or call ids (per-user usage lives in the TokenStore).
 *
 * Bucket boundaries are the ones the semantic conventions advise. In
 * Prometheus text the dots become underscores
 * (`gen_ai_client_token_usage`), and the `Prometheus` layer exports each
 * metric's unit.
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { Dispatcher } from "effect-llm-callbacks"
 * import * as GenAiMetrics from "effect-llm-callbacks/layers/GenAiMetrics"
 *
 * const Callbacks = GenAiMetrics.layer({ models: ["gpt-4o-mini", "gpt-4o"] }).pipe(
 *   Layer.provideMerge(Dispatcher.layer())
 * )
 * ```
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as MetricLabel from "effect/MetricLabel"
import { operationName } from "../src/Callbacks.js"
import * as Cost from "../src/Cost.js"
import * as Dispatcher from "../src/Dispatcher.js"
import type {
  CallInfo,
  EndEvent,
  ErrorEvent,
  LlmResponse,
  ToolEndEvent,
  ToolErrorEvent
} from "../src/Events.js"
import * as Handler from "../src/Handler.js"
import type { HandlerRegistrationError } from "../src/HandlerError.js"
import * as SemanticConventions from "../src/SemanticConventions.js"

/**
 * `[1, 4, 16, ..., 67108864]`: the advised boundaries of `gen_ai.client.token.usage`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const tokenUsageBoundaries = MetricBoundaries.fromIterable([
  1,
  4,
  16,
  64,
  256,
  1024,
  4096,
  16384,
  65536,
  262144,
  1048576,
  4194304,
  16777216,
  67108864
])

/**
 * `[0.01, 0.02, ..., 81.92]` seconds: the advised boundaries of `gen_ai.client.operation.duration`.
 *
 * @since 0.1.0
 * @category metrics
 */
export const operationDurationBoundaries = MetricBoundaries.fromIterable([
  0.01,
  0.02,
  0.04,
  0.08,
  0.16,
  0.32,
  0.64,
  1.28,
  2.56,
  5.12,
  10.24,
  20.48,
  40.96,
  81.92
])

/**
 * The advised boundaries of `gen_ai.client.operation.time_to_first_chunk` and
 * `time_per_output_chunk`, in seconds: those of the operation duration.
 *
 * @since 0.3.0
 * @category metrics
 */
export const chunkBoundaries = operationDurationBoundaries

/**
 * @since 0.1.0
 * @category metrics
 */
export const tokenUsage = Metric.histogram(
  "gen_ai.client.token.usage",
  tokenUsageBoundaries,
  "Number of input and output tokens used"
)

/**
 * @since 0.1.0
 * @category metrics
 */
export const operationDuration = Metric.histogram(
  "gen_ai.client.operation.duration",
  operationDurationBoundaries,
  "GenAI operation duration"
)

/**
 * @since 0.3.0
 * @category metrics
 */
export const timeToFirstChunk = Metric.histogram(
  "gen_ai.client.operation.time_to_first_chunk",
  chunkBoundaries,
  "Time to receive the first chunk of a streaming response"
)

/**
 * @since 0.3.0
 * @category metrics
 */
export const timePerOutputChunk = Metric.histogram(
  "gen_ai.client.operation.time_per_output_chunk",
  chunkBoundaries,
  "Time between consecutive chunks of a streaming response, for each chunk after the first"
)

/**
 * @since 0.3.0
 * @category metrics
 */
export const toolDuration = Metric.histogram(
  "gen_ai.execute_tool.duration",
  operationDurationBoundaries,
  "Duration of tool runs"
)

/**
 * @since 0.3.0
 * @category metrics
 */
export const costMicros = Metric.counter("llm_cost_micros_total", {
  description: "Cost of the calls in millionths of the price table's currency",
  incremental: true
})

/**
 * @since 0.3.0
 * @category metrics
 */
export const estimatedTokens = Metric.counter("llm_tokens_estimated_total", {
  description: "Tokens counted with a tokenizer because the provider reported none",
  incremental: true
})

/**
 * @since 0.3.0
 * @category metrics
 */
export const callsWithoutUsage = Metric.counter("llm_calls_without_usage_total", {
  description: "Calls whose token usage was neither reported nor counted",
  incremental: true
})

/**
 * @since 0.3.0
 * @category metrics
 */
export const foldedLabels = Metric.counter("llm_metric_labels_folded_total", {
  description: "Label values from callers folded into 'other' to bound the number of series",
  incremental: true
})

/**
 * The unit of each metric of this module, for exporters (`Prometheus` reads it).
 *
 * @since 0.3.0
 * @category metrics
 */
export const units: Readonly<Record<string, string>> = {
  "gen_ai.client.token.usage": "{token}",
  "gen_ai.client.operation.duration": "s",
  "gen_ai.client.operation.time_to_first_chunk": "s",
  "gen_ai.client.operation.time_per_output_chunk": "s",
  "gen_ai.execute_tool.duration": "s",
  "llm_cost_micros_total": "{micro}",
  "llm_tokens_estimated_total": "{token}",
  "llm_calls_without_usage_total": "{call}",
  "llm_metric_labels_folded_total": "{value}"
}

/**
 * The value a folded label takes.
 *
 * @since 0.3.0
 * @category constants
 */
export const other = "other"

/**
 * Options of the GenAI metrics handler.
 *
 * @since 0.1.0
 * @category models
 */
export interface Options {
  /** Handler name, default `"gen-ai-metrics"`. */
  readonly name?: string | undefined
  /** Record usage flagged as estimated (counted with a tokenizer). Default `true`. */
  readonly includeEstimated?: boolean | undefined
  /** Most distinct label sets whose arrays are cached (a speed bound). Default 1024. */
  readonly labelCacheSize?: number | undefined
  /**
   * Model names always kept as label values; default: the models of the
   * price table given to {@link layerWithPrices}, else none.
   */
  readonly models?: ReadonlyArray<string> | undefined
  /** Other values kept per label (first come), beyond which values are `other`. Default 50. */
  readonly maxValues?: number | undefined
  /** Which GenAI conventions' names to use. Default: `SemanticConventions.CurrentVersion` when the layer is built. */
  readonly semanticConventions?: SemanticConventions.Version | undefined
  /** Record `time_per_output_chunk` for every chunk after the first (when the stream ends). Default `true`. */
  readonly chunkMetrics?: boolean | undefined
}

interface CallLabels {
  readonly input: ReadonlyArray<MetricLabel.MetricLabel>
  readonly output: ReadonlyArray<MetricLabel.MetricLabel>
  readonly base: ReadonlyArray<MetricLabel.MetricLabel>
}

/** The values kept for one label: the allowed ones, then the first `max` others seen. */
const makeFolder = (label: string, allowed: ReadonlyArray<string>, max: number) => {
  const kept = new Set(allowed)
  let others = 0
  const folded = [MetricLabel.make("label", label)]
  return (value: string): string => {
    if (kept.has(value)) return value
    if (others < max) {
      others++
      kept.add(value)
      return value
    }
    foldedLabels.unsafeUpdate(1, folded)
    return other
  }
}

const responseModelOf = (response: LlmResponse | undefined): string | undefined => response?.model

/**
 * The handler recording the GenAI client metrics. Its hooks record
 * synchronously (no fiber, no timer).
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeHandler = (options: Options = {}): Handler.Handler => {
  const includeEstimated = options.includeEstimated ?? true
  const chunkMetrics = options.chunkMetrics ?? true
  const cacheSize = options.labelCacheSize ?? 1024
  const max = options.maxValues ?? 50
  const names = SemanticConventions.names(options.semanticConventions ?? "current")
  const models = options.models ?? []
  const foldProvider = makeFolder("provider", [], max)
  const foldModel = makeFolder("model", models, max)
  const foldResponseModel = makeFolder("response_model", models, max)
  const foldServer = makeFolder("server", [], max)
  const foldTool = makeFolder("tool", [], max)
  // Metric hooks are looked up by label array, so reusing arrays keeps an
  // update to a map lookup. Bounded: past the limit, labels are built per call.
  const cache = new Map<string, CallLabels>()
  const labelsOf = (call: CallInfo, responseModel: string | undefined): CallLabels => {
    const operation = operationName(call)
    const provider = foldProvider(call.provider)
    const model = foldModel(call.model)
    const response = responseModel === undefined ? undefined : foldResponseModel(responseModel)
    const address = call.metadata["server.address"]
    const server = typeof address === "string" ? foldServer(address) : undefined
    const port = call.metadata["server.port"]
    const key = `${operation}\u0000${provider}\u0000${model}\u0000${response}\u0000${server}\u0000${port}`
    let labels = cache.get(key)
    if (labels === undefined) {
      const base = [MetricLabel.make("gen_ai.operation.name", operation)]
      for (const name of names.provider) base.push(MetricLabel.make(name, provider))
      base.push(MetricLabel.make("gen_ai.request.model", model))
      if (response !== undefined) base.push(MetricLabel.make("gen_ai.response.model", response))
      if (server !== undefined) base.push(MetricLabel.make("server.address", server))
      if (server !== undefined && typeof port === "number") base.push(MetricLabel.make("server.port", String(port)))
      labels = {
        base,
        input: [...base, MetricLabel.make("gen_ai.token.type", "input")],
        output: [...base, MetricLabel.make("gen_ai.token.type", "output")]
      }
      if (cache.size < cacheSize) cache.set(key, labels)
    }
    return labels
  }
  const recordUsage = (labels: CallLabels, response: LlmResponse | undefined, errorLabels?: ReadonlyArray<MetricLabel.MetricLabel>) => {
    const usage = response?.usage
    if (usage === undefined) {
      callsWithoutUsage.unsafeUpdate(1, labels.base)
      return
    }
    if (usage.estimated === true) {
      estimatedTokens.unsafeUpdate(usage.promptTokens, labels.input)
      estimatedTokens.unsafeUpdate(usage.completionTokens, labels.output)
      if (!includeEstimated) return
    }
    tokenUsage.unsafeUpdate(usage.promptTokens, errorLabels === undefined ? labels.input : [...labels.input, ...errorLabels])
    tokenUsage.unsafeUpdate(usage.completionTokens, errorLabels === undefined ? labels.output : [...labels.output, ...errorLabels])
    const micros = Cost.microsOf({ response: response! })
    if (micros !== undefined && micros > 0) costMicros.unsafeUpdate(micros, labels.base)
  }
  const onLlmEnd = Handler.sync((event: EndEvent) => {
    const labels = labelsOf(event.call, responseModelOf(event.response))
    operationDuration.unsafeUpdate(event.durationMs / 1000, labels.base)
    if (event.timeToFirstTokenMs !== undefined) timeToFirstChunk.unsafeUpdate(event.timeToFirstTokenMs / 1000, labels.base)
    if (chunkMetrics) recordIntervals(event.chunkIntervalsMs, labels.base)
    recordUsage(labels, event.response)
  })
  const onLlmError = Handler.sync((event: ErrorEvent) => {
    const labels = labelsOf(event.call, responseModelOf(event.response))
    const errorLabels = [
      MetricLabel.make("error.type", SemanticConventions.errorType(event.failure.error, event.failure.errorType))
    ]
    operationDuration.unsafeUpdate(event.durationMs / 1000, [...labels.base, ...errorLabels])
    if (event.timeToFirstTokenMs !== undefined) timeToFirstChunk.unsafeUpdate(event.timeToFirstTokenMs / 1000, labels.base)
    if (chunkMetrics) recordIntervals(event.chunkIntervalsMs, labels.base)
    // A call cut off after it consumed tokens: they were billed.
    if (event.response !== undefined) recordUsage(labels, event.response, errorLabels)
  })
  // Every chunk after the first, recorded when the stream ends: no hook per chunk.
  const recordIntervals = (intervals: ReadonlyArray<number> | undefined, labels: ReadonlyArray<MetricLabel.MetricLabel>) => {
    if (intervals === undefined) return
    for (let i = 0; i < intervals.length; i++) timePerOutputChunk.unsafeUpdate(intervals[i]! / 1000, labels)
  }
  const toolLabels = (event: ToolEndEvent | ToolErrorEvent) => {
    const labels = [
      MetricLabel.make("gen_ai.operation.name", "execute_tool"),
      MetricLabel.make("gen_ai.tool.name", foldTool(event.tool.name))
    ]
    if (event._tag === "ToolError") {
      labels.push(MetricLabel.make("error.type", SemanticConventions.errorType(event.failure.error, event.failure.errorType)))
    }
    return labels
  }
  const onToolTerminal = Handler.sync((event: ToolEndEvent | ToolErrorEvent) =>
    toolDuration.unsafeUpdate(event.durationMs / 1000, toolLabels(event))
  )
  return Handler.make({
    name: options.name ?? "gen-ai-metrics",
    onLlmEnd,
    onLlmError,
    onToolEnd: onToolTerminal,
    onToolError: onToolTerminal
  })
}

/**
 * Registers the GenAI metrics handler with the dispatcher for the layer's
 * lifetime. The semantic conventions default to the version in force when
 * the layer is built (`SemanticConventions.CurrentVersion`).
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<never, HandlerRegistrationError, Dispatcher.Dispatcher> =>
  Dispatcher.toLayer(Effect.map(SemanticConventions.CurrentVersion, (version) =>
    makeHandler({ ...options, semanticConventions: options.semanticConventions ?? version })))

/**
 * The GenAI metrics handler whose allow-list of models is a price table's
 * (the models the application pays for), plus `options.models`.
 *
 * @since 0.3.0
 * @category layers
 */
export const layerWithPrices = (
  prices: Cost.Prices,
  options: Options = {}
): Layer.Layer<never, HandlerRegistrationError, Dispatcher.Dispatcher> =>
  layer({ ...options, models: [...Object.keys(prices), ...(options.models ?? [])] })
