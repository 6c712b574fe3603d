/**
 * The OpenTelemetry GenAI client metrics, recorded by a handler:
 *
 * - `gen_ai.client.token.usage` (histogram, `{token}`): input and output
 *   tokens of every call that reports its usage, labelled `gen_ai.token.type`
 *   (`input` / `output`), `gen_ai.operation.name`, `gen_ai.provider.name`,
 *   `gen_ai.request.model`. Nothing is recorded when the usage is unknown.
 * - `gen_ai.client.operation.duration` (histogram, seconds): every call, with
 *   `error.type` when it failed.
 *
 * Bucket boundaries are the ones the semantic conventions advise. Labels never
 * carry user ids or call ids (per-user usage lives in the TokenStore). In
 * Prometheus text the dots become underscores (`gen_ai_client_token_usage`).
 *
 * @example
 * ```ts
 * import { Layer } from "effect"
 * import { Dispatcher } from "effect-llm-callbacks"
 * import * as GenAiMetrics from "effect-llm-callbacks/layers/GenAiMetrics"
 *
 * const Callbacks = GenAiMetrics.layer().pipe(Layer.provideMerge(Dispatcher.layer()))
 * ```
 *
 * @since 0.1.0
 */
import type * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as MetricLabel from "effect/MetricLabel"
import { operationName } from "../src/Callbacks.js"
import * as Dispatcher from "../src/Dispatcher.js"
import type { CallInfo, EndEvent, ErrorEvent } from "../src/Events.js"
import * as Handler from "../src/Handler.js"
import type { HandlerRegistrationError } from "../src/HandlerError.js"

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
 * @since 0.1.0
 * @category metrics
 */
export const tokenUsage = Metric.histogram(
  "gen_ai.client.token.usage",
  tokenUsageBoundaries,
  "Number of input and output tokens used, in {token}"
)

/**
 * @since 0.1.0
 * @category metrics
 */
export const operationDuration = Metric.histogram(
  "gen_ai.client.operation.duration",
  operationDurationBoundaries,
  "GenAI operation duration, in seconds"
)

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
  /** Most distinct label sets whose arrays are cached (a speed bound, not a cardinality cap). Default 1024. */
  readonly labelCacheSize?: number | undefined
}

interface CallLabels {
  readonly input: ReadonlyArray<MetricLabel.MetricLabel>
  readonly output: ReadonlyArray<MetricLabel.MetricLabel>
  readonly duration: ReadonlyArray<MetricLabel.MetricLabel>
}

const makeLabels = (operation: string, provider: string, model: string): CallLabels => {
  const base = [
    MetricLabel.make("gen_ai.operation.name", operation),
    MetricLabel.make("gen_ai.provider.name", provider),
    MetricLabel.make("gen_ai.request.model", model)
  ]
  return {
    input: [...base, MetricLabel.make("gen_ai.token.type", "input")],
    output: [...base, MetricLabel.make("gen_ai.token.type", "output")],
    duration: base
  }
}

/**
 * The handler recording the GenAI client metrics. It records synchronously
 * (no fiber, no timer) on end and error.
 *
 * @since 0.1.0
 * @category constructors
 */
export const makeHandler = (options: Options = {}): Handler.Handler => {
  const includeEstimated = options.includeEstimated ?? true
  const cacheSize = options.labelCacheSize ?? 1024
  // Metric hooks are looked up by label array, so reusing arrays keeps an
  // update to a map lookup. Bounded: past the limit, labels are built per call.
  const cache = new Map<string, CallLabels>()
  const labelsOf = (call: CallInfo): CallLabels => {
    const operation = operationName(call)
    const key = `${operation}\u0000${call.provider}\u0000${call.model}`
    let labels = cache.get(key)
    if (labels === undefined) {
      labels = makeLabels(operation, call.provider, call.model)
      if (cache.size < cacheSize) cache.set(key, labels)
    }
    return labels
  }
  // Synchronous hooks (Handler.sync): the dispatcher runs them inline, no fiber per call.
  const onLlmEnd = Handler.sync((event: EndEvent) => {
    const labels = labelsOf(event.call)
    operationDuration.unsafeUpdate(event.durationMs / 1000, labels.duration)
    const usage = event.response.usage
    if (usage === undefined || (usage.estimated === true && !includeEstimated)) return
    tokenUsage.unsafeUpdate(usage.promptTokens, labels.input)
    tokenUsage.unsafeUpdate(usage.completionTokens, labels.output)
  })
  const onLlmError = Handler.sync((event: ErrorEvent) => {
    operationDuration.unsafeUpdate(event.durationMs / 1000, [
      ...labelsOf(event.call).duration,
      MetricLabel.make("error.type", event.failure.errorType)
    ])
  })
  return Handler.make({ name: options.name ?? "gen-ai-metrics", onLlmEnd, onLlmError })
}

/**
 * Registers the GenAI metrics handler with the dispatcher for the layer's lifetime.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options = {}): Layer.Layer<never, HandlerRegistrationError, Dispatcher.Dispatcher> =>
  Dispatcher.toLayer(makeHandler(options))
