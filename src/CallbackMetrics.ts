/**
 * The callback runtime's own metrics, recorded by the dispatcher for every
 * handler. Names and labels follow the Python design's Prometheus metrics, so
 * its dashboards' PromQL keeps working:
 *
 * - `callback_executions_total{callback_type, phase, status}` (counter)
 * - `callback_duration_seconds{callback_type, phase}` (histogram)
 * - `callback_errors_total{callback_type, error_type}` (counter; `failed`,
 *   `defect`, `timeout`, `interrupted`, `dropped`)
 * - `active_callbacks` (gauge of handler invocations in flight)
 * - `callback_queue_depth{callback_type}` (gauge, background buffers)
 * - `callback_dropped_total{callback_type}` (counter, background deliveries
 *   that could not be buffered or drained)
 * - `callback_retries_total{callback_type, phase}` (counter)
 * - `budget_admissions_total{level, outcome}` (counter, `Budget.guard`)
 * - `token_usage_invalid_total{callback_type}` (counter, the token handlers)
 *
 * Labels never carry user ids or call ids: their sets stay bounded by the
 * number of registered handlers.
 *
 * @since 0.1.0
 */
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import type * as MetricHook from "effect/MetricHook"
import * as MetricKey from "effect/MetricKey"
import * as MetricLabel from "effect/MetricLabel"
import type { Phase } from "./Events.js"

/**
 * Outcome of one handler invocation, the `status` label.
 *
 * @since 0.1.0
 * @category models
 */
export type Status = "success" | "failed" | "defect" | "timeout" | "interrupted" | "dropped"

const executionsKey = MetricKey.counter("callback_executions_total", {
  description: "Callback handler invocations by handler, phase and outcome",
  incremental: true
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const executionsTotal = Metric.fromMetricKey(executionsKey)

/**
 * Prometheus' default buckets, in seconds.
 *
 * @since 0.1.0
 * @category metrics
 */
export const durationBoundaries = MetricBoundaries.fromIterable([
  0.001,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30
])

const durationKey = MetricKey.histogram(
  "callback_duration_seconds",
  durationBoundaries,
  "Callback handler invocation duration in seconds, retries included"
)

/**
 * @since 0.1.0
 * @category metrics
 */
export const durationSeconds = Metric.fromMetricKey(durationKey)

/**
 * @since 0.1.0
 * @category metrics
 */
export const errorsTotal = Metric.counter("callback_errors_total", {
  description: "Callback handler errors by handler and error type",
  incremental: true
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const activeCallbacks = Metric.gauge("active_callbacks", {
  description: "Callback handler invocations in flight"
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const queueDepth = Metric.gauge("callback_queue_depth", {
  description: "Background deliveries waiting in a handler's buffer"
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const droppedTotal = Metric.counter("callback_dropped_total", {
  description: "Background deliveries that could not be buffered or were not drained at shutdown",
  incremental: true
})

/**
 * @since 0.1.0
 * @category metrics
 */
export const retriesTotal = Metric.counter("callback_retries_total", {
  description: "Retries of callback handler invocations",
  incremental: true
})

/**
 * Budget admissions by level (`user`, `team`, `org`; `none` when admitted)
 * and outcome (`admitted`, `over_limit`, `rate_limited`, `store_error`).
 *
 * @since 0.2.0
 * @category metrics
 */
export const budgetAdmissionsTotal = Metric.counter("budget_admissions_total", {
  description: "Budget admissions of instrumented calls by level and outcome",
  incremental: true
})

/**
 * Token usage that could not be recorded because it was invalid (negative,
 * fractional, not a number, too large), by handler.
 *
 * @since 0.2.0
 * @category metrics
 */
export const invalidUsageTotal = Metric.counter("token_usage_invalid_total", {
  description: "Calls whose reported token usage was invalid and was not recorded",
  incremental: true
})

const statuses: ReadonlyArray<Status> = ["success", "failed", "defect", "timeout", "interrupted", "dropped"]
const phases: ReadonlyArray<Phase> = ["start", "end", "error"]

/**
 * Precomputed label sets for one handler. Metric hooks are cached per label
 * array identity, so reusing these arrays keeps an update on the dispatch hot
 * path to a map lookup.
 *
 * @since 0.1.0
 * @category models
 */
export interface HandlerLabels {
  /**
   * The registry hooks of `callback_executions_total` and
   * `callback_duration_seconds` for this handler, resolved once: updating a
   * hook directly skips the per-update lookup of the label set.
   */
  readonly executionHooks: Readonly<Record<Phase, Readonly<Record<Status, MetricHook.MetricHook<number, unknown>>>>>
  readonly durationHooks: Readonly<Record<Phase, MetricHook.MetricHook<number, unknown>>>
  readonly execution: Readonly<Record<Phase, Readonly<Record<Status, ReadonlyArray<MetricLabel.MetricLabel>>>>>
  readonly duration: Readonly<Record<Phase, ReadonlyArray<MetricLabel.MetricLabel>>>
  readonly error: Readonly<Record<Exclude<Status, "success">, ReadonlyArray<MetricLabel.MetricLabel>>>
  readonly handler: ReadonlyArray<MetricLabel.MetricLabel>
}

/**
 * @since 0.1.0
 * @category constructors
 */
export const makeHandlerLabels = (handler: string): HandlerLabels => {
  const type = MetricLabel.make("callback_type", handler)
  const execution = {} as Record<Phase, Record<Status, ReadonlyArray<MetricLabel.MetricLabel>>>
  const duration = {} as Record<Phase, ReadonlyArray<MetricLabel.MetricLabel>>
  for (const phase of phases) {
    const phaseLabel = MetricLabel.make("phase", phase)
    duration[phase] = [type, phaseLabel]
    execution[phase] = {} as Record<Status, ReadonlyArray<MetricLabel.MetricLabel>>
    for (const status of statuses) execution[phase][status] = [type, phaseLabel, MetricLabel.make("status", status)]
  }
  const error = {} as Record<Exclude<Status, "success">, ReadonlyArray<MetricLabel.MetricLabel>>
  for (const status of statuses) {
    if (status !== "success") error[status] = [type, MetricLabel.make("error_type", status)]
  }
  const executionHooks = {} as Record<Phase, Record<Status, MetricHook.MetricHook<number, unknown>>>
  const durationHooks = {} as Record<Phase, MetricHook.MetricHook<number, unknown>>
  for (const phase of phases) {
    durationHooks[phase] = Metric.globalMetricRegistry.get(MetricKey.taggedWithLabels(durationKey, duration[phase]))
    executionHooks[phase] = {} as Record<Status, MetricHook.MetricHook<number, unknown>>
    for (const status of statuses) {
      executionHooks[phase][status] = Metric.globalMetricRegistry.get(
        MetricKey.taggedWithLabels(executionsKey, execution[phase][status])
      )
    }
  }
  return { executionHooks, durationHooks, execution, duration, error, handler: [type] }
}
