/**
 * The keys of the dispatcher's per-handler metrics, and the label sets and
 * metric hooks of each handler, resolved once when it is registered.
 */
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import type * as MetricHook from "effect/MetricHook"
import * as MetricKey from "effect/MetricKey"
import * as MetricLabel from "effect/MetricLabel"
import { type Phase, phases } from "./phases.js"

/** Outcome of one handler invocation, the `status` label. */
export type Status = "success" | "failed" | "defect" | "timeout" | "interrupted" | "dropped"

const statuses: ReadonlyArray<Status> = ["success", "failed", "defect", "timeout", "interrupted", "dropped"]

export const activeKey = MetricKey.gauge("active_callbacks", { description: "Callback handler invocations in flight" })

/** The registry hook of `active_callbacks` (it has no labels), resolved once: an update is a call. */
export const activeHook: MetricHook.MetricHook<number, unknown> = Metric.globalMetricRegistry.get(activeKey)

export const executionsKey = MetricKey.counter("callback_executions_total", {
  description: "Callback handler invocations by handler, phase and outcome",
  incremental: true
})

/**
 * Prometheus' default buckets, in seconds.
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


export const durationKey = MetricKey.histogram(
  "callback_duration_seconds",
  durationBoundaries,
  "Callback handler invocation duration in seconds, retries included"
)


/**
 * Precomputed label sets for one handler. Metric hooks are cached per label
 * array identity, so reusing these arrays keeps an update on the dispatch hot
 * path to a map lookup.
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

/** The label sets and metric hooks of one handler, resolved once at registration. */
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
