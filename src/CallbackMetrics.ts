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
import * as keys from "./internal/metricLabels.js"

/**
 * Outcome of one handler invocation, the `status` label.
 *
 * @since 0.1.0
 * @category models
 */
export type Status = keys.Status


/**
 * @since 0.1.0
 * @category metrics
 */
export const executionsTotal = Metric.fromMetricKey(keys.executionsKey)

/**
 * Prometheus' default buckets, in seconds.
 *
 * @since 0.1.0
 * @category metrics
 */
export const durationBoundaries = keys.durationBoundaries

/**
 * @since 0.1.0
 * @category metrics
 */
export const durationSeconds = Metric.fromMetricKey(keys.durationKey)

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
export const activeCallbacks = Metric.fromMetricKey(keys.activeKey)

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

/**
 * The unit of each metric of this module, for exporters (the `Prometheus`
 * layer exports it as `# UNIT`).
 *
 * @since 0.3.0
 * @category metrics
 */
export const units: Readonly<Record<string, string>> = {
  callback_executions_total: "{invocation}",
  callback_duration_seconds: "s",
  callback_errors_total: "{error}",
  active_callbacks: "{invocation}",
  callback_queue_depth: "{delivery}",
  callback_dropped_total: "{delivery}",
  callback_retries_total: "{retry}",
  budget_admissions_total: "{call}",
  token_usage_invalid_total: "{call}"
}
